"""Small helpers for the chapters' printouts: tables that render in Jupyter and in the book."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class Table(NamedTuple):
    """A table as plain data: ``rows`` (lists of cell values) and their ``headers``.

    ``show_table(*table)`` displays it (it unpacks as ``rows, headers``).
    """

    rows: list
    headers: list


STACK_INTERVALS = 4
"""A Markdown table whose rows hold at least this many interval cells shows each interval
under its estimate (``0.72<br>[0.65, 0.79]``), so that wide tables fit the page."""


def _is_interval(v) -> bool:
    from .metrics import Interval

    return isinstance(v, Interval)


def _fmt(v, digits: int, stack: bool = False) -> str:
    """A cell's text: floats rounded; a :class:`~medadv_tutorial.metrics.Interval` as
    :func:`interval_cell` (its interval on a second line when ``stack``); a ``|`` inside a
    cell escaped, so it does not end the cell."""
    if _is_interval(v):
        text = interval_cell(v, digits)
        # stacked: the interval on its own line, its two ends kept together (no-break space)
        text = text.replace(" [", "<br>[").replace(", ", ",\u00a0") if stack else text
    else:
        text = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[Sequence], headers: Sequence[str], digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; floats are rounded to ``digits`` decimals.

    :class:`~medadv_tutorial.metrics.Interval` cells show ``estimate [low, high]``; when a row
    holds :data:`STACK_INTERVALS` or more of them, each interval goes on a second line of its
    cell (an HTML line break), which keeps wide tables within the page.

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
    stack = any(sum(map(_is_interval, r)) >= STACK_INTERVALS for r in rows)
    lines = ["| " + " | ".join(_fmt(h, digits) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v, digits, stack) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: Sequence[Sequence], headers: Sequence[str], digits: int = 2) -> str:
    """The same table as :func:`markdown_table`, as plain text for a terminal: columns padded to
    their widest cell, intervals on one line (``0.93 [0.89, 0.96]``), a rule under the headers."""
    cells = _plain_cells(rows, headers, digits)
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plain_cells(rows, headers, digits) -> list[list[str]]:
    markdown_table(rows, headers, digits)  # the same checks of rows and headers
    return [[_fmt(h, digits).replace("\\|", "|") for h in headers]] + \
        [[_fmt(v, digits).replace("\\|", "|") for v in r] for r in rows]


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (where Markdown is displayed), not in a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with Jupyter
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_table(rows: Sequence[Sequence], headers: Sequence[str], digits: int = 2) -> None:
    """Display :func:`markdown_table` as Markdown in a notebook; in a terminal (a script,
    ``python -m ...``) print :func:`text_table` instead."""
    if not in_notebook():
        print(text_table(rows, headers, digits))
        return
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(rows, headers, digits)))


def interval_cell(interval, digits: int = 2) -> str:
    """A table cell ``"0.93 [0.89, 0.96]"``: an estimate and its interval, rounded to ``digits``.

    ``interval`` is a :class:`medadv_tutorial.metrics.Interval` (from ``metrics.rate_interval``
    or ``metrics.auroc_interval``) or any ``(estimate, low, high)`` triple of numbers; the cell
    goes into the rows of :func:`show_table` like any other value.  An undefined estimate
    (NaN) shows as ``"n/a"``; an undefined interval as ``"0.93 [n/a]"``.
    """
    from .checks import check_int

    digits = check_int(digits, "digits", 0)
    try:
        estimate, low, high = (float(v) for v in interval)
    except (TypeError, ValueError) as err:
        raise TypeError(f"interval must be a metrics.Interval or an (estimate, low, high) triple of numbers, "
                        f"got {interval!r}") from err
    if math.isnan(estimate):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{estimate:.{digits}f} [n/a]"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# ------------------------------------------------------------------ numbers in the prose


def span(values, digits: int = 2) -> str:
    """``"0.54–0.64"`` (smallest–largest, rounded to ``digits``), one number when both round
    alike, ``"n/a"`` for no values: a range quoted in the prose."""
    from .checks import check_int

    digits = check_int(digits, "digits", 0)
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"values must be numbers, not NaN, got {values}")
    if not values:
        return "n/a"
    lo, hi = (f"{v:.{digits}f}" for v in (min(values), max(values)))
    return lo if lo == hi else f"{lo}–{hi}"


def and_join(items) -> str:
    """``"a, b and c"`` for the prose; ``"a"`` for one item, ``"none"`` for no items."""
    if isinstance(items, (str, bytes)):
        raise TypeError(f"items must be a list of strings, got the string {items!r}")
    items = [str(i) for i in items]
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def auc_se(n: int) -> float:
    """Standard error of an AUROC near 0.5 with ``n`` clean and ``n`` adversarial images.

    Hanley & McNeil (1982) at AUROC = 0.5: ``sqrt((2n + 1) / (12 n^2))``; about ``0.075`` for
    ``n = 30``.  The prose uses it to say how far apart two AUROCs on small sets may lie by
    sampling alone.
    """
    from .checks import check_int

    n = check_int(n, "n (images per class)")
    return math.sqrt((2 * n + 1) / (12 * n * n))
