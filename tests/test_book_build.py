"""What a reader sees in the built book: generated tables render as tables, no text line is cut.

The book is built (``jupyter-book build book/ -W --keep-going``, 15-30 s on two cores) from a
copy of ``book/``, ``_config.yml`` and ``_toc.yml`` in a temporary folder, so the working tree
gets no ``_build``.  The checks mirror ``../shared/tools/book_check.py``:

* the build passes with ``-W`` (missing glue keys, broken references);
* no chapter page has a raw-pipe paragraph (``<p>| a | b |``): myst-nb parses ``text/markdown``
  outputs as CommonMark, which has no tables, unless ``nb_render_markdown_format: myst``, and
  a header row with an unescaped ``|`` in a cell (``max |δ|``) is no table either;
* every chapter page has at least as many ``<table>`` elements as its notebook has Markdown
  tables (printed by ``report.show_table``, or written in the prose), and every row of those
  tables has as many cells as its header;
* no stored text output line (stream, or ``text/plain`` shown without ``text/markdown`` or
  ``image/png``) in ``book/*.ipynb`` is over 100 characters: the page cuts it off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
WIDTH = 100  # characters a stored text line may have before the page cuts it off

RAW_TABLE = re.compile(r"<p>\s*\|(?:[^|\n]*\|){2,}")  # a paragraph that starts like "| a | b |"
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")  # |---|:--:|
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_PIPE = re.compile(r"(?<!\\)\|")  # a cell separator: a pipe not escaped as \|
HIDDEN_TAGS = {"remove-output", "remove_output", "remove-cell", "remove_cell", "remove-input-output"}


# --- checks (plain functions, so that the known-answer tests below can feed them) -------------


def raw_tables(html: str) -> list[str]:
    """The raw-pipe paragraphs of a page (first 80 characters of each)."""
    return [m.group(0)[:80] for m in RAW_TABLE.finditer(html)]


def count_tables(html: str) -> int:
    return html.count("<table")


def markdown_tables(text: str) -> int:
    """Number of pipe tables in Markdown ``text`` (one per ``|---|---|`` rule line)."""
    return sum(bool(TABLE_RULE.match(line)) for line in text.splitlines())


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def expected_tables(nb: dict) -> int:
    """Tables a notebook's page should show: shown ``text/markdown`` outputs and Markdown cells."""
    n = 0
    for cell in nb["cells"]:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] == "markdown" and not tags & {"remove-cell", "remove_cell"}:
            n += markdown_tables(_text(cell["source"]))
        if cell["cell_type"] != "code" or tags & HIDDEN_TAGS:
            continue
        for out in cell.get("outputs", []):
            if "scrapbook" in out.get("metadata", {}):  # glue(..., display=False): shown elsewhere
                continue
            n += markdown_tables(_text(out.get("data", {}).get("text/markdown", "")))
    return n


def _cells_in(row: str) -> int:
    parts = CELL_PIPE.split(row.strip())
    return len(parts) - (parts[0].strip() == "") - (len(parts) > 1 and parts[-1].strip() == "")


def malformed_table_rows(text: str) -> list[str]:
    """Rows of the pipe tables in ``text`` whose cell count differs from their rule line's.

    An unescaped ``|`` inside a cell (``max |δ|``) adds cells: in the header it stops the table
    from being a table at all, in a body row it shifts the row's cells silently.
    Write it as ``\\|`` (``report.markdown_table`` should escape it).
    """
    lines, bad = text.splitlines(), []
    for i, line in enumerate(lines):
        if i == 0 or not TABLE_RULE.match(line):
            continue
        width = _cells_in(line)
        j = i + 1
        rows = [lines[i - 1]]
        while j < len(lines) and "|" in lines[j] and lines[j].strip():
            rows.append(lines[j])
            j += 1
        bad += [row.strip()[:80] for row in rows if _cells_in(row) != width]
    return bad


def notebook_markdown(nb: dict) -> list[str]:
    """The Markdown a notebook's page renders: Markdown cells and ``text/markdown`` outputs."""
    texts = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            texts.append(_text(cell["source"]))
        for out in cell.get("outputs", []):
            texts.append(_text(out.get("data", {}).get("text/markdown", "")))
    return [t for t in texts if t]


def long_lines(nb: dict, width: int = WIDTH) -> list[str]:
    """Stored text output lines over ``width`` characters, as ``cell N: <start of line>``.

    Counts what ``book_check.py`` counts: stream outputs, and ``text/plain`` of outputs that
    have neither ``text/markdown`` nor ``image/png`` (those render the richer form instead).
    """
    found = []
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code, 1):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if out.get("output_type") == "stream":
                text = _text(out.get("text"))
            elif "text/markdown" not in data and "image/png" not in data:
                text = _text(data.get("text/plain"))
            else:
                continue
            found += [f"code cell {i}: {len(line)} chars: {line[:60]}..."
                      for line in text.splitlines() if len(line) > width]
    return found


def build_book(dest: Path, *, page: str | None = None, config_edit=None):
    """Copy the book to ``dest`` and build it there; returns the build result and the HTML folder.

    ``page`` (a notebook's stem) builds that page alone; ``config_edit`` (str -> str) changes
    the copied ``_config.yml`` (both for the known-answer test).
    """
    shutil.copytree(BOOK, dest / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__"))
    shutil.copy2(REPO / "_toc.yml", dest / "_toc.yml")
    shutil.copytree(REPO / "colab", dest / "colab")  # the readers' copies the Colab buttons open
    config = (REPO / "_config.yml").read_text()
    (dest / "_config.yml").write_text(config_edit(config) if config_edit else config)
    assert (dest / "book" / "_toc.yml").resolve() == (dest / "_toc.yml").resolve(), (
        "book/_toc.yml must be a relative symlink to ../_toc.yml"
    )
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
           f"book/{page}.ipynb" if page else "book/", "-W", "--keep-going"]
    env = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=900, env=env)
    result.stdout, result.stderr = ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)
    # jupyter-book puts _build beside the _config.yml it finds (the copy's root).
    html = dest / "_build" / ("_page/book-" + page if page else "") / "html"
    return result, html


def _log_excerpt(result, n: int = 20) -> str:
    log = (result.stdout + result.stderr).splitlines()
    warnings = [line for line in log if "WARNING" in line or "ERROR" in line or "Error" in line]
    return "\n".join(warnings[:n] or log[-n:])


# --- the built book ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    result, html = build_book(tmp_path_factory.mktemp("book-build"))
    if not html.is_dir():
        pytest.fail(f"jupyter-book build book/ produced no HTML:\n{_log_excerpt(result, 40)}")
    return result, html


def test_build_has_no_warnings(built):
    result, _ = built
    assert result.returncode == 0, (
        f"jupyter-book build book/ -W failed (exit {result.returncode}):\n{_log_excerpt(result)}"
    )


SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc=\"([^\"]+)\"")


def mathjax_sources(html: str) -> list[str]:
    """The ``src`` of every script of a page that loads MathJax."""
    return [src for src in SCRIPT_SRC.findall(html) if "mathjax" in src.lower()]


def test_maths_renders_offline(built):
    """Every page with a formula loads MathJax from the build (``_static/mathjax``), never from the web."""
    _, html_dir = built
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not in the build"
    pages = [p for p in sorted(html_dir.glob("*.html")) if "\\(" in p.read_text() or "\\[" in p.read_text()]
    assert len(pages) >= 5, f"expected formulas on the chapter pages, found them on {[p.name for p in pages]}"
    for page in pages:
        sources = mathjax_sources(page.read_text())
        assert sources, f"{page.name} has formulas but loads no MathJax"
        remote = [s for s in sources if s.startswith(("http:", "https:", "//"))]
        assert not remote, f"{page.name} loads MathJax from the web: {remote}"
        for src in sources:
            assert (page.parent / src.split("?")[0]).resolve().is_file(), f"{page.name}: {src} is not in the build"


def test_colab_buttons_open_the_readers_copies(built):
    """Every chapter's Colab button opens colab/<chapter>.ipynb (the plain-Markdown copy), not book/<chapter>.ipynb."""
    _, html_dir = built
    for ipynb in NOTEBOOKS:
        html = (html_dir / f"{ipynb.stem}.html").read_text()
        colab = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', html)
        assert colab, f"{ipynb.stem}.html has no Colab button"
        assert all(u.endswith(f"/blob/main/colab/{ipynb.stem}.ipynb") for u in colab), colab


def test_mathjax_check_known_answers():
    assert mathjax_sources('<script defer="defer" src="_static/mathjax/tex-chtml.js?v=1"></script>') == [
        "_static/mathjax/tex-chtml.js?v=1"]
    assert mathjax_sources('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
                           '<script src="_static/x.js"></script>') == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"]


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_tables_render_as_tables(built, ipynb):
    _, html_dir = built
    page = html_dir / f"{ipynb.stem}.html"
    assert page.exists(), f"{page.name} was not built"
    html = page.read_text()
    raw = raw_tables(html)
    assert not raw, (
        f"{page.name} shows {len(raw)} table(s) as raw pipe text, e.g. {raw[0]!r}; "
        "is nb_render_markdown_format: myst still set in _config.yml? is a | inside a cell unescaped?"
    )
    expected = expected_tables(json.loads(ipynb.read_text()))
    assert count_tables(html) >= expected, (
        f"{page.name} has {count_tables(html)} <table> elements, its notebook {expected} Markdown tables"
    )


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_tables_are_well_formed(ipynb):
    bad = [row for text in notebook_markdown(json.loads(ipynb.read_text()))
           for row in malformed_table_rows(text)]
    assert not bad, (
        f"{ipynb.name}: {len(bad)} table row(s) whose cell count differs from the header rule's "
        f"(an unescaped | inside a cell? write \\|): " + "; ".join(map(repr, bad[:5]))
    )


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_text_line_is_cut_off(ipynb):
    found = long_lines(json.loads(ipynb.read_text()))
    assert not found, (
        f"{ipynb.name}: {len(found)} stored text output line(s) over {WIDTH} characters "
        "(cut off in the built book):\n" + "\n".join(found[:10])
    )


# --- known answers: the checks do catch what they look for ------------------------------------

TABLE_MD = "| detector | AUROC |\n|---|---:|\n| MGM | 0.99 |"


def test_checks_known_answers():
    assert raw_tables(f"<p>{TABLE_MD}</p>") and not raw_tables("<table><tr><td>1</td></tr></table>")
    assert raw_tables("<p>| <strong>MGM</strong> | 0.99 |\n|---|---|</p>")
    assert not raw_tables("<p>The set |A| has two elements.</p>\n<p>|x| is small</p>")
    assert count_tables('<table class="x"></table><table>') == 2
    assert markdown_tables(TABLE_MD) == 1 and markdown_tables(TABLE_MD + "\n\ntext\n\n" + TABLE_MD) == 2
    assert markdown_tables("a | b\n--- | ---\n1 | 2") == 1 and markdown_tables("text --- text") == 0
    nb = {"cells": [
        {"cell_type": "markdown", "source": TABLE_MD, "metadata": {}},
        {"cell_type": "code", "metadata": {}, "source": "", "outputs": [
            {"output_type": "display_data", "metadata": {},
             "data": {"text/markdown": TABLE_MD, "text/plain": "<Markdown> " + "x" * 200}},
            {"output_type": "stream", "name": "stdout", "text": ["ok\n", "y" * 101 + "\n"]},
            {"output_type": "execute_result", "metadata": {}, "data": {"text/plain": "z" * 100}},
            {"output_type": "display_data", "metadata": {"scrapbook": {"name": "t"}},
             "data": {"text/markdown": TABLE_MD}},
        ]},
        {"cell_type": "code", "metadata": {"tags": ["remove-output"]}, "source": "",
         "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"text/markdown": TABLE_MD}}]},
    ]}
    assert expected_tables(nb) == 2  # the prose table and the shown output; not glued or removed
    found = long_lines(nb)
    assert len(found) == 1 and "101 chars" in found[0]  # the 101-char stream line only
    assert malformed_table_rows(TABLE_MD) == [] and malformed_table_rows("| a \\| b | c |\n|---|---|") == []
    assert malformed_table_rows("| x | max |δ| |\n|---|---|\n| a | 1 |") == ["| x | max |δ| |"]
    assert malformed_table_rows("| x | y |\n|---|---|\n| mean |c| | 1 |") == ["| mean |c| | 1 |"]


def test_check_catches_commonmark_tables(tmp_path):
    """Known answer on a real build: with myst-nb's default (CommonMark) rendering of Markdown
    outputs, chapter 1's generated tables come out as raw pipe paragraphs, and the check sees them."""
    page = NOTEBOOKS[0].stem
    generated = expected_tables(json.loads(NOTEBOOKS[0].read_text()))
    result, html_dir = build_book(
        tmp_path, page=page,
        config_edit=lambda c: re.sub(r"nb_render_markdown_format:\s*myst", "nb_render_markdown_format: commonmark", c),
    )
    html = html_dir / f"{page}.html"
    assert html.exists(), f"the single-page build made no {html}:\n{_log_excerpt(result)}"
    raw = raw_tables(html.read_text())
    assert generated and len(raw) >= 1, f"CommonMark rendering should leave raw tables; found {raw}"
