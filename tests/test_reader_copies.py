"""The readers' copies (colab/*.ipynb, tools/reader_copies.py): in sync with the chapters, no MyST left, and
each conversion checked on known answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import bookkeeping  # noqa: E402
import reader_copies as rc  # noqa: E402

sys.path.remove(str(REPO / "tools"))

URL = "https://example.org/book/"


@pytest.fixture(scope="module")
def copies():
    return rc.build()


def test_every_chapter_has_a_copy_in_sync(copies):
    """Regenerate and compare: a chapter re-executed or edited without `python tools/reader_copies.py --write`
    fails here."""
    assert sorted(p.name for p in copies) == sorted(p.name for p in rc.CHAPTERS) and len(copies) >= 6
    stale = [p.name for p, text in copies.items() if not p.exists() or p.read_text() != text]
    assert not stale, f"out of sync with their chapters (run python tools/reader_copies.py --write): {stale}"
    extra = sorted(p.name for p in rc.OUT.glob("*.ipynb")) if rc.OUT.is_dir() else []
    assert extra == sorted(p.name for p in copies), f"colab/ holds copies of no chapter: {extra}"


def test_no_myst_left_and_numbers_where_the_book_has_them(copies):
    for path, text in copies.items():
        nb = json.loads(text)
        chapter = json.loads((rc.BOOK / path.name).read_text())
        md = "\n".join(rc._text(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        assert not rc.leftovers(md), f"{path.name} keeps MyST markup: {rc.leftovers(md)[:5]}"
        assert "application/papermill.record/" not in text, f"{path.name} keeps glue records"
        # every glue role of the chapter became its stored value
        glue = rc.glue_values(chapter)
        used = [m.group("body").split(":")[0].strip() for c in chapter["cells"] if c["cell_type"] == "markdown"
                for m in rc.ROLE.finditer(rc._text(c["source"])) if m.group("role").startswith("glue")]
        assert used and set(used) <= set(glue)
        kept = [c for c in chapter["cells"] if not rc.DROPPED & set(c.get("metadata", {}).get("tags", []))]
        assert len(nb["cells"]) == len(kept) <= len(chapter["cells"])
        tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
        assert "exercise-solution" not in tags and "remove-cell" not in tags
        assert all(not c.get("outputs") for c in nb["cells"] if "exercise-check" in c.get("metadata", {}).get("tags", []))
        figures = sum(len(c.get("attachments", {})) for c in nb["cells"])
        assert figures == md.count("](attachment:"), path.name
        # no exercise solution in a reader's copy: the dropdowns stay in the book
        assert ":class: dropdown" not in md and ("Solution: in [the book's version" in md or "Solution" not in md)


def _ctx(**glue):
    return rc.Context({k: v for k, v in glue.items()}, {"madry2018towards": "Madry et al., 2018",
                                                        "lee2018simple": "Lee et al., 2018"},
                      {"sec-x": "Three data sets", "fig-drift": "the figure “Drift”"}, {"api": "API reference"}, URL,
                      "01_x")


def test_roles_known_answers():
    ctx = _ctx(acc={"text/plain": "0.846"}, name={"text/markdown": "MGM and MAHA", "text/plain": "<Markdown>"},
               n={"text/plain": "50"}, s={"text/plain": "'chest X-ray'"})
    conv = rc.convert_roles
    assert conv("accuracy {glue:}`acc`, {glue:text}`acc:.1%` of {glue:text}`n:d`", ctx) == "accuracy 0.846, 84.6% of 50"
    assert conv("{glue:md}`name` on {glue:}`s`", ctx) == "MGM and MAHA on chest X-ray"
    assert conv("PGD {cite:p}`madry2018towards`", ctx) == f"PGD ([Madry et al., 2018]({URL}references.html))"
    assert conv("{cite:p}`madry2018towards,lee2018simple`", ctx) == (
        f"([Madry et al., 2018; Lee et al., 2018]({URL}references.html))")
    assert conv("{cite:t}`lee2018simple`", ctx) == f"[Lee et al. (2018)]({URL}references.html)"
    assert conv("{py:func}`reproduce.run_grid\n<medadv_tutorial.reproduce.run_grid>`", ctx) == (
        f"[`reproduce.run_grid`]({URL}api.html#medadv_tutorial.reproduce.run_grid)")
    assert conv("{py:mod}`medadv_tutorial.hfc`", ctx) == f"[`medadv_tutorial.hfc`]({URL}api.html#medadv_tutorial.hfc)"
    assert conv("{py:func}`~medadv_tutorial.hfc.other_class`", ctx) == (
        f"[`other_class`]({URL}api.html#medadv_tutorial.hfc.other_class)")
    assert conv("see {ref}`sec-x` and {ref}`the drift figure <fig-drift>`", ctx) == (
        "see Three data sets and the drift figure")
    assert conv("{doc}`api`", ctx) == f"[API reference]({URL}api.html)"
    for bad, match in [("{glue:}`missing`", "no glue record 'missing'"), ("{cite:p}`nobody2020`", "nobody2020"),
                       ("{ref}`sec-none`", "sec-none"), ("{abbr}`x`", "no plain-Markdown form")]:
        with pytest.raises((KeyError, ValueError), match=match):
            conv(bad, ctx)


def test_fences_known_answers():
    ctx = _ctx(fig_a={"image/png": "iVBORw0KGgo=", "text/plain": "<Image>"}, v={"text/plain": "3"})
    att = {}
    md = ("(sec-x)=\n## Title\n\n```{glue:figure} fig_a\n:name: fig-a\n\nThe caption, {glue:}`v` images.\n```\n"
          ":::{admonition} Learning objectives\n- one\n- two {glue:}`v`\n:::\n"
          ":::{admonition} Solution\n:class: dropdown\nThe answer is 42.\n:::\n"
          ":::{admonition} Why\n:class: dropdown\nBecause.\n:::")
    out = rc.convert_markdown(md, ctx, att)
    assert "(sec-x)=" not in out and out.startswith("## Title")
    assert "![fig_a](attachment:fig_a.png)" in out and "*The caption, 3 images.*" in out
    assert att == {"fig_a.png": {"image/png": "iVBORw0KGgo="}}
    assert "> **Learning objectives**\n>\n> - one\n> - two 3" in out
    assert "42" not in out and f"Solution: in [the book's version of this chapter]({URL}01_x.html)" in out
    assert "<details><summary><b>Why</b></summary>\n\nBecause.\n\n</details>" in out
    assert not rc.leftovers(out)
    with pytest.raises(ValueError, match="never closed"):
        rc.convert_markdown(":::{admonition} Open\ntext", ctx, {})
    with pytest.raises(ValueError, match="no plain-Markdown form for the directive"):
        rc.convert_markdown("```{mermaid}\ngraph\n```", ctx, {})
    with pytest.raises(KeyError, match="no stored image/png"):
        rc.convert_markdown("```{glue:figure} v\n```", ctx, {})


def test_leftover_check_known_answers():
    assert rc.leftovers("a {glue:md}`x` b\n:::{admonition} T\n(lab)=\n```{note}\n") == [
        "{glue:md}`", ":::{", "(lab)=", "```{"]
    assert rc.leftovers("plain `code` and $x$ and ```python\n``` and (a)= inline") == []


def test_outputs_as_the_book_shows_them():
    nb = {"metadata": {"jupytext": {}}, "nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "code", "metadata": {"tags": ["remove-output"]}, "source": "plot()", "outputs": [
            {"output_type": "display_data", "data": {"image/png": "x"}, "metadata": {}}]},
        {"cell_type": "code", "metadata": {}, "source": "run()", "outputs": [
            {"output_type": "stream", "name": "stderr", "text": "progress 10%"},
            {"output_type": "stream", "name": "stdout", "text": "done"},
            {"output_type": "display_data", "data": {rc.RECORD + "text/plain": "1"},
             "metadata": {"scrapbook": {"name": "k"}}}]}]}
    out = rc.reader_copy(nb, _ctx())
    assert out["cells"][0]["outputs"] == [] and [o["text"] for o in out["cells"][1]["outputs"]] == ["done"]
    assert "jupytext" not in out["metadata"] and "colab" in out["metadata"]
    assert len(nb["cells"][1]["outputs"]) == 3  # the chapter itself is left as it was


def test_bookkeeping_cells_are_left_out():
    nb = {"metadata": {}, "nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "code", "metadata": {}, "source": "acc = evaluate()", "outputs": []},
        {"cell_type": "code", "metadata": {"tags": ["bookkeeping", "hide-input"]}, "source": "book.glue('acc', acc)",
         "outputs": [{"output_type": "display_data", "data": {rc.RECORD + "text/plain": "0.9"},
                      "metadata": {"scrapbook": {"name": "acc"}}}]},
        {"cell_type": "markdown", "metadata": {}, "source": "Accuracy {glue:}`acc`."}]}
    out = rc.reader_copy(nb, _ctx(**rc.glue_values(nb)))
    assert [c["source"] for c in out["cells"]] == ["acc = evaluate()", "Accuracy 0.9."]


def test_no_bookkeeping_in_the_code_a_student_reads():
    """Glue calls and claim checks (top-level asserts, ``if book.check_claims(profile):`` blocks) live in cells
    tagged ``bookkeeping``, which the book collapses and the readers' copies leave out, so that a student reads
    the story's code.  Fix: ``python tools/bookkeeping.py book/0[1-6]_*.py`` (then ``jupytext --sync``, re-execute,
    ``python tools/reader_copies.py --write``); a statement it leaves in place (its warnings say why) is moved by
    hand."""
    twins = sorted(rc.BOOK.glob("[0-9][0-9]_*.py"))
    assert len(twins) >= 6
    left = [line for twin in twins for line in bookkeeping.leftovers(twin.read_text(), twin.name)]
    assert not left, f"{len(left)} bookkeeping statements in cells a student reads:\n" + "\n".join(left)


def _tagged(nb: dict, tag: str) -> list[str]:
    return [rc._text(c["source"]) for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("chapter", [p for p in rc.CHAPTERS if "(checked)" in p.read_text()], ids=lambda p: p.stem)
def test_every_checked_exercise_has_a_scaffold_a_solution_a_check_and_a_test_of_the_check(chapter):
    """The pattern of a checked exercise: an answer cell of scaffolds (``...``), a solution (in the book only), a
    check function that is called, and a test (CI only) that the check rejects a plausible wrong answer."""
    nb = json.loads(chapter.read_text())
    md = "\n".join(rc._text(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    n = md.count("(checked)")
    answers, solutions = _tagged(nb, "exercise-answer"), _tagged(nb, "exercise-solution")
    checks, tests = _tagged(nb, "exercise-check"), [t for t in _tagged(nb, "remove-cell") if "check_rejects" in t]
    assert n == len(answers) == len(solutions) == len(checks) == len(tests), (n, len(answers), len(solutions),
                                                                                len(checks), len(tests))
    for answer in answers:
        assert " = ..." in answer, f"an answer cell without a scaffold:\n{answer}"
    for solution in solutions:
        assert " = ..." not in solution
    for check, test in zip(checks, tests):
        name = check.split("def ", 1)[1].split("(", 1)[0]
        assert name.startswith("check_") and f"{name}(" in check.split("\n\n\n")[-1], name  # defined and called
        assert f"book.check_rejects({name}," in test
    for cell in nb["cells"]:
        if "exercise-solution" in cell.get("metadata", {}).get("tags", []):
            assert "hide-input" in cell["metadata"]["tags"]  # a dropdown in the HTML
