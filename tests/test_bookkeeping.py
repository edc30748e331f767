"""tools/bookkeeping.py, which moves the chapters' glue calls and claim checks into cells tagged
``bookkeeping``: known answers on a small py:percent text."""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import bookkeeping as bk  # noqa: E402

sys.path.remove(str(REPO / "tools"))

HEADER = """\
# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
# ---

# %% [markdown]
# # A chapter
# assert this line is prose, and so is book.glue("x", x)

"""

BEFORE = HEADER + """\
# %%
x = compute()
show_table(x)
# the number the prose quotes
book.glue("x", x, digits=2)

assert x > 0  # an invariant

# %% tags=["nbval-ignore-output"]
y = 1
book.glue_results(y=y)
y = 2
print(y)

# %%
# The claims, on the unrounded numbers.
if book.check_claims(profile):
    band = 0.5
    assert x > band

# %% tags=["remove-cell"]
assert x > 0

# %% tags=["exercise-check"]
book.glue("z", 3)

# %% tags=["remove-output", "nbval-ignore-output"]
fig = plots.grid(x)
book.glue("fig_x", fig)


def f():
    return 1


book.glue("n", f())

# %%
book.glue("fig_y", plots.grid(x))

# %%
ax.legend()
book.glue("fig_z", fig)

# %%
for k in names:
    book.glue(k, 1)
print(k)

# %% [markdown]
# Text.
"""

AFTER = HEADER + """\
# %%
x = compute()
show_table(x)

# %% tags=["bookkeeping", "hide-input"]
# the number the prose quotes
book.glue("x", x, digits=2)

assert x > 0  # an invariant

# %% tags=["nbval-ignore-output"]
y = 1
book.glue_results(y=y)
y = 2
print(y)

# %% tags=["bookkeeping", "hide-input"]
# The claims, on the unrounded numbers.
if book.check_claims(profile):
    band = 0.5
    assert x > band

# %% tags=["remove-cell"]
assert x > 0

# %% tags=["exercise-check"]
book.glue("z", 3)

# %% tags=["remove-output", "nbval-ignore-output"]
fig = plots.grid(x)


def f():
    return 1


# %% tags=["bookkeeping", "hide-input", "remove-output", "nbval-ignore-output"]
book.glue("fig_x", fig)
book.glue("n", f())

# %%
book.glue("fig_y", plots.grid(x))

# %%
ax.legend()
book.glue("fig_z", fig)

# %%
for k in names:
    book.glue(k, 1)
print(k)

# %% [markdown]
# Text.
"""


def test_known_answer():
    """Moved with the comment above it (the blank line between two moved statements kept); a glue call
    that reads a name reassigned later in the cell stays; a cell of claims only is tagged in place;
    removed and exercise cells are left alone; the new cell keeps the output tags; a glue call that
    draws its figure is the figure's code and stays; so do trailing glue calls that would leave an
    expression with a value as the cell's last statement, and a loop whose variable is read later."""
    after, report = bk.rewrite(BEFORE, "ch")
    assert after == AFTER
    assert (report.moved, report.created, report.tagged, report.figures) == (4, 2, 1, 1)
    assert report.warnings == [
        "ch:21: reads y, which line 22 (later in the cell, staying) assigns; moved behind it, it would see "
        "another value; left in place",
        "ch:53: moving the trailing bookkeeping would make line 52 the cell's last statement and display its "
        "value; left in place",
        "ch:56: binds k, which line 58 reads; the readers' copies drop bookkeeping cells; left in place"]


def test_idempotent_and_the_check_lists_what_is_left():
    after, _ = bk.rewrite(BEFORE, "ch")
    again, report = bk.rewrite(after, "ch")
    assert again == after and (report.moved, report.created, report.tagged) == (0, 0, 0)
    assert [w.split(": ", 1)[1] for w in bk.leftovers(after, "ch")] == [
        "book.glue_results(y=y)", 'book.glue("fig_z", fig)', "for k in names:"]
    assert len(bk.leftovers(BEFORE, "ch")) == 8  # not the glue call that draws its figure (fig_y): the figure's code


def test_jupytext_writes_the_same_text_back():
    """The blank lines between cells are jupytext's own: pairing the notebook changes nothing."""
    after, _ = bk.rewrite(BEFORE, "ch")
    nb = jupytext.reads(after, "py:percent")
    body = lambda text: text[text.index("# %%"):]  # noqa: E731  (jupytext adds its version to the header)
    assert body(jupytext.writes(nb, "py:percent")) == body(after)
    assert [c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"][:3] == [
        [], ["bookkeeping", "hide-input"], ["nbval-ignore-output"]]
    assert not any("lines_to_next_cell" in c.metadata for c in nb.cells)


def test_text_without_bookkeeping_is_left_byte_for_byte():
    text = HEADER + "# %%\nx = 1\n\n\ndef f():\n    return x\n\n\n# %% tags=[\"full-width\"]\nf()\n"
    assert bk.rewrite(text)[0] == text
    assert bk.rewrite(text.rstrip("\n"))[0] == text.rstrip("\n")


def test_a_statement_that_shares_its_line_or_binds_nothing_new():
    text = "# %%\nx = 1; book.glue('x', x)\ny = 2\n"
    after, report = bk.rewrite(text, "ch")
    assert after == text and "ch:2: shares a line" in report.warnings[0]
    # a later assignment of a name the moved statement does not read is no obstacle
    after, report = bk.rewrite("# %%\nx = 1\nbook.glue('x', x)\ny = 2\n", "ch")
    assert after == "# %%\nx = 1\ny = 2\n\n# %% tags=[\"bookkeeping\", \"hide-input\"]\nbook.glue('x', x)\n"
    assert not report.warnings
    # ... but a mutation of one is: x[0] = 2 changes what the glue call would read
    after, report = bk.rewrite("# %%\nx = [1]\nbook.glue('x', x[0])\nx[0] = 2\n", "ch")
    assert "reads x" in report.warnings[0]


def test_cli_rewrites_in_place_and_check_exits_1_while_bookkeeping_is_left(tmp_path, capsys):
    twin = tmp_path / "01_x.py"
    twin.write_text("# %%\nx = 1\nbook.glue('x', x)\n")
    assert bk.main(["--check", str(twin)]) == 1
    assert bk.main([str(twin)]) == 0
    assert "1 statements moved into 1 new cells" in capsys.readouterr().out
    assert bk.main(["--check", str(twin)]) == 0
    assert twin.read_text().endswith('# %% tags=["bookkeeping", "hide-input"]\nbook.glue(\'x\', x)\n')
