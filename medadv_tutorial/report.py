"""Small helpers for the chapters' printouts: tables that render in Jupyter and in the book."""

from __future__ import annotations

from typing import Sequence


def _fmt(v, digits: int) -> str:
    """A cell's text: floats rounded; a ``|`` inside a cell escaped, so it does not end the cell."""
    text = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[Sequence], headers: Sequence[str], digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; floats are rounded to ``digits`` decimals.

    Rounding keeps stored notebook outputs stable across CPUs (the regression test
    compares text) while the chapters assert their claims on the unrounded numbers.
    """
    from .checks import check_int

    digits = check_int(digits, "digits", 0)
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
        raise TypeError(f"rows must be a list of rows (lists of cell values), got {type(rows).__name__}")
    rows = list(rows)
    for name, seq in (("headers", headers), *((f"rows[{i}]", r) for i, r in enumerate(rows))):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
            raise TypeError(f"{name} must be a list of cell values, got {type(seq).__name__}")
    bad = [i for i, r in enumerate(rows) if len(r) != len(headers)]
    if bad:
        raise ValueError(f"every row must have one value per header ({len(headers)}); rows[{bad[0]}] has "
                         f"{len(rows[bad[0]])}")
    lines = ["| " + " | ".join(_fmt(h, digits) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def show_table(rows: Sequence[Sequence], headers: Sequence[str], digits: int = 2) -> None:
    """Display :func:`markdown_table` as Markdown in a notebook (falls back to print)."""
    text = markdown_table(rows, headers, digits)
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:  # pragma: no cover - outside IPython
        print(text)
