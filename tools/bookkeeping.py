"""Move a chapter's bookkeeping out of the story's cells, into cells tagged ``bookkeeping``.

The chapters' code cells tell the story and also carry bookkeeping: the glue calls that put
measured numbers into the prose (``book.glue(...)``, ``book.glue_results(...)``) and the checks
of the chapter's claims (top-level ``assert`` statements, ``if book.check_claims(profile):``
blocks).  This script rewrites the py:percent twins (``book/NN_name.py``) so that a student reads
the story's code: in every code cell, the top-level bookkeeping statements (with the comment
lines directly above each) move, in order, into a new code cell right after it, tagged
``["bookkeeping", "hide-input"]`` (plus the cell's ``nbval-ignore-output`` / ``remove-output``
tags, so that nbval and the page treat their outputs as before).  The HTML collapses those cells
and the readers' copies (``tools/reader_copies.py``) leave them out.  A cell whose statements are
all bookkeeping is tagged in place instead.

What counts as bookkeeping (top-level statements only):

* an expression statement that calls a glue helper (:data:`GLUE`: ``book.glue``,
  ``book.glue_results``, ...), unless the call draws its figure (an argument calls
  ``plots.*`` or ``plt.*``: that is the figure's code, which the story keeps);
* an ``assert``;
* an ``if`` whose test calls ``book.check_claims(...)`` and whose branches hold only asserts,
  glue calls, ``pass``, and assignments to plain names (the values the asserts compare), also
  inside nested ``if`` / ``for`` blocks;
* a ``for`` loop whose body holds only glue calls and asserts (``for k in names: book.glue(...)``).

What stays where it is, with a warning naming the chapter and line:

* a statement that reads a name a later statement left in the cell assigns (or mutates: ``x[k] =``,
  ``x.a =``): moved behind it, it would see another value;
* a loop variable or a claim block's assignment read by later story code (the readers' copies
  drop the bookkeeping cell, and with it the name);
* trailing bookkeeping whose removal would leave an expression (not a call known to return
  ``None``, and not ending in ``;``) as the cell's last statement: the cell would start
  displaying that expression's value;
* a statement that shares a line with another one.

Cells tagged ``bookkeeping`` (already done: running the script twice changes nothing),
``remove-cell``, ``remove-input`` (hidden already) or ``exercise-answer`` / ``exercise-solution`` /
``exercise-check`` are left alone.  Everything else of the file is kept byte for byte; the blank
lines between cells follow jupytext's rules, so ``jupytext --sync`` writes the same text back.

Usage::

    python tools/bookkeeping.py book/0[1-6]_*.py          # rewrite in place, print a summary
    python tools/bookkeeping.py --check book/0[1-6]_*.py  # exit 1 if a visible cell still holds bookkeeping

Afterwards, pair the notebooks (``jupytext --sync book/0[1-6]_*.py``), re-execute the chapters
(the new cells have no outputs yet: their glue records come with the next run) and rewrite the
readers' copies (``python tools/reader_copies.py --write``).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

TAG = "bookkeeping"
NEW_TAGS = [TAG, "hide-input"]
GLUE = {"glue", "glue_results", "glue_figure", "glue_settings"}  # book.<name>(...) or a bare <name>(...)
GLUE_MODULES = {"book", "myst_nb"}
GUARDS = {"check_claims"}  # if book.check_claims(profile): ...
FIGURE_MODULES = {"plots", "plt"}  # a glue call whose arguments call these draws its figure: story code
# calls that return None: a cell ending with one displays nothing
QUIET_CALLS = {"show_table", "print", "display", "say", "show", "tight_layout"}
SKIP_TAGS = {TAG, "remove-cell", "remove-input",  # done already, or hidden
             "exercise-answer", "exercise-solution", "exercise-check"}  # the exercises' own cells
INHERITED_TAGS = ("nbval-ignore-output", "remove-output")  # the moved statements' outputs stay treated alike

HEADER = re.compile(r"^# %%(?P<rest>.*)$")
TAGS = re.compile(r"\btags=(?P<list>\[[^\]]*\])")


# --- cells --------------------------------------------------------------------------------------


@dataclass
class Cell:
    header: str  # the "# %% ..." line, without its newline
    source: list[str]  # the cell's lines up to its last non-blank one, without newlines
    blank: int  # blank lines between the cell and the next header (or the end of the file)
    start: int  # 1-based line number of the header in the file

    @property
    def markdown(self) -> bool:
        return "[markdown]" in self.header or "[md]" in self.header or "[raw]" in self.header

    @property
    def tags(self) -> list[str]:
        m = TAGS.search(self.header)
        return json.loads(m.group("list")) if m else []

    def text(self) -> str:
        return "\n".join([self.header, *self.source] + [""] * self.blank) + "\n"


def split_cells(text: str) -> tuple[str, list[Cell]]:
    """``(preamble, cells)`` of a py:percent text: the preamble (jupytext's header) is every line
    before the first ``# %%``."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    starts = [i for i, line in enumerate(lines) if HEADER.match(line)]
    if not starts:
        return text, []
    preamble = "".join(line + "\n" for line in lines[:starts[0]])
    cells = []
    for k, s in enumerate(starts):
        body = lines[s + 1:starts[k + 1] if k + 1 < len(starts) else len(lines)]
        n = len(body)
        while n and not body[n - 1].strip():
            n -= 1
        cells.append(Cell(lines[s], body[:n], len(body) - n, s + 1))
    return preamble, cells


def with_tags(header: str, tags: list[str]) -> str:
    """``header`` with its ``tags=[...]`` set to ``tags`` (jupytext's spelling: ``["a", "b"]``)."""
    spelled = "tags=" + json.dumps(tags, ensure_ascii=False)
    if TAGS.search(header):
        return TAGS.sub(lambda m: spelled, header, count=1)
    return header.rstrip() + " " + spelled


def lines_between(prev: list[str], nxt: list[str]) -> int:
    """The blank lines jupytext puts between two cells by default (PEP 8: two after a def or a class)."""
    from jupytext.pep8 import pep8_lines_between_cells

    return pep8_lines_between_cells(prev, nxt, ".py")


# --- statements ---------------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _root(node: ast.AST) -> str:
    return _dotted(node).split(".", 1)[0]


def is_glue_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id in GLUE) or (
        isinstance(f, ast.Attribute) and f.attr in GLUE and _dotted(f.value) in GLUE_MODULES)


def draws_figure(call: ast.Call) -> bool:
    """Whether a glue call builds its figure in its arguments (``book.glue("fig", plots.grid(...))``)."""
    args = [*call.args, *(k.value for k in call.keywords)]
    return any(isinstance(n, ast.Call) and _root(n.func) in FIGURE_MODULES for a in args for n in ast.walk(a))


def is_guard(test: ast.AST) -> bool:
    return isinstance(test, ast.Call) and (
        (isinstance(test.func, ast.Name) and test.func.id in GUARDS)
        or (isinstance(test.func, ast.Attribute) and test.func.attr in GUARDS))


def _walrus(node: ast.AST) -> bool:
    return any(isinstance(n, ast.NamedExpr) for n in ast.walk(node))


def _glue_stmt(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and is_glue_call(stmt.value) and not draws_figure(stmt.value)


def _claim_body(stmts: list[ast.stmt]) -> bool:
    """Statements a claims block may hold: asserts, glue, pass, assignments to names, nested blocks of those."""
    def ok(s):
        if isinstance(s, (ast.Assert, ast.Pass)) or _glue_stmt(s):
            return True
        if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            return all(isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Starred, ast.Store))
                       for t in targets for n in ast.walk(t))
        if isinstance(s, ast.If):
            return _claim_body(s.body) and _claim_body(s.orelse)
        if isinstance(s, ast.For):
            return not s.orelse and _claim_body(s.body)
        return False
    return all(ok(s) for s in stmts)


def bookkeeping_kind(stmt: ast.stmt) -> str | None:
    """``"glue"``, ``"assert"``, ``"claims"`` or ``"loop"`` for a bookkeeping statement, else ``None``."""
    if _walrus(stmt):
        return None
    if _glue_stmt(stmt):
        return "glue"
    if isinstance(stmt, ast.Assert):
        return "assert"
    if isinstance(stmt, ast.If) and is_guard(stmt.test) and _claim_body(stmt.body) and _claim_body(stmt.orelse):
        return "claims"
    if isinstance(stmt, ast.For) and not stmt.orelse and stmt.body and all(
            _glue_stmt(s) or isinstance(s, ast.Assert) for s in stmt.body):
        return "loop"
    return None


def _target_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


class _Names(ast.NodeVisitor):
    """Names a statement reads from the enclosing scope (``loads``) and binds or mutates in it
    (``binds``: assignments, loop targets, imports, defs, ``del``, and the base name of
    ``x[...] =`` / ``x.a =``).  Comprehensions, lambdas and function bodies are their own scopes."""

    def __init__(self):
        self.loads: set[str] = set()
        self.binds: set[str] = set()
        self.scopes: list[set[str]] = []

    def _local(self, name: str) -> bool:
        return any(name in s for s in self.scopes)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            if not self._local(node.id):
                self.loads.add(node.id)
        elif not self.scopes:
            self.binds.add(node.id)

    def _mutated(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)) and not self.scopes:
            root = _root(node.value) if isinstance(node.value, (ast.Name, ast.Attribute)) else ""
            if root:
                self.binds.add(root)
        self.generic_visit(node)

    visit_Attribute = visit_Subscript = _mutated

    def _comprehension(self, node):
        bound = set().union(*(_target_names(g.target) for g in node.generators))
        self.visit(node.generators[0].iter)  # evaluated in the enclosing scope
        self.scopes.append(bound)
        for i, g in enumerate(node.generators):
            if i:
                self.visit(g.iter)
            for cond in g.ifs:
                self.visit(cond)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        self.scopes.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def _arguments(self, args: ast.arguments) -> set[str]:
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        for d in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(d)
        return {a.arg for a in every if a is not None}

    def visit_Lambda(self, node):
        self.scopes.append(self._arguments(node.args))
        self.visit(node.body)
        self.scopes.pop()

    def visit_FunctionDef(self, node):
        for d in node.decorator_list:
            self.visit(d)
        if not self.scopes:
            self.binds.add(node.name)
        local = self._arguments(node.args) | {
            n.id for s in node.body for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        self.scopes.append(local)
        for s in node.body:
            self.visit(s)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        for n in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(n)
        if not self.scopes:
            self.binds.add(node.name)
        self.scopes.append(set())
        for s in node.body:
            self.visit(s)
        self.scopes.pop()

    def visit_Import(self, node):
        if not self.scopes:
            self.binds |= {(a.asname or a.name).split(".")[0] for a in node.names}

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node):
        if node.name and not self.scopes:
            self.binds.add(node.name)
        self.generic_visit(node)


def names(stmt: ast.stmt) -> tuple[set[str], set[str]]:
    """``(loads, binds)`` of a top-level statement (see :class:`_Names`)."""
    v = _Names()
    v.visit(stmt)
    return v.loads, v.binds


def reads(stmt: ast.stmt) -> set[str]:
    """The names a statement reads before binding them itself (a loop reads its iterable, not its target)."""
    loads, binds = names(stmt)
    if isinstance(stmt, (ast.For, ast.If)):
        return loads - binds | names(stmt.iter if isinstance(stmt, ast.For) else stmt.test)[0]
    return loads


def _first_line(stmt: ast.stmt) -> int:
    return min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])


def _quiet(stmt: ast.stmt, line: str) -> bool:
    """Whether a cell ending with ``stmt`` displays nothing."""
    if not isinstance(stmt, ast.Expr):
        return True
    if line.split("#", 1)[0].rstrip().endswith(";"):
        return True
    v = stmt.value
    return isinstance(v, ast.Call) and (is_glue_call(v) or _dotted(v.func).rsplit(".", 1)[-1] in QUIET_CALLS)


# --- one chapter --------------------------------------------------------------------------------


@dataclass
class Report:
    chapter: str
    moved: int = 0  # statements moved into new cells
    created: int = 0  # new bookkeeping cells
    tagged: int = 0  # cells tagged bookkeeping in place (all their statements were bookkeeping)
    figures: int = 0  # glue calls kept because they draw their figure
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.chapter}: {self.moved} statements moved into {self.created} new cells, "
                f"{self.tagged} cells tagged in place, {self.figures} figure-drawing glue calls kept, "
                f"{len(self.warnings)} warnings")


@dataclass
class _Parsed:
    cell: Cell
    tree: ast.Module | None


def _parse(cells: list[Cell], report: Report) -> list[_Parsed]:
    out = []
    for c in cells:
        tree = None
        if not c.markdown:
            try:
                tree = ast.parse("\n".join(c.source) + "\n")
            except SyntaxError as e:
                report.warnings.append(f"{report.chapter}:{c.start + (e.lineno or 0)}: cell does not parse ({e.msg}); "
                                       "left alone")
        out.append(_Parsed(c, tree))
    return out


def _later_story(parsed: list[_Parsed], k: int) -> list[tuple[int, ast.stmt]]:
    """``(file line, statement)`` of every non-bookkeeping top-level statement in the cells after cell ``k``."""
    later = []
    for p in parsed[k + 1:]:
        if p.tree is not None and TAG not in p.cell.tags:
            later += [(p.cell.start + s.lineno, s) for s in p.tree.body if not bookkeeping_kind(s)]
    return later


def _movable(cell: Cell, tree: ast.Module, later: list[tuple[int, ast.stmt]], report: Report) -> list[bool]:
    """Which top-level statements of a cell are bookkeeping that can leave it (warnings for those that cannot)."""
    body = tree.body
    line = lambda s: cell.start + s.lineno  # noqa: E731  (the file's line: the header is cell.start)
    kinds = [bookkeeping_kind(s) for s in body]
    for s, k in zip(body, kinds):
        if isinstance(s, ast.Expr) and is_glue_call(s.value) and not k and draws_figure(s.value):
            report.figures += 1
    move = [bool(k) for k in kinds]
    spans = [(_first_line(s), s.end_lineno) for s in body]
    for i, s in enumerate(body):
        if not move[i]:
            continue
        a, b = spans[i]
        shared = [j for j, (c, d) in enumerate(spans) if j != i and c <= b and d >= a]
        if shared:
            move[i] = False
            report.warnings.append(f"{report.chapter}:{line(s)}: shares a line with another statement; left in place")
    changed = True
    while changed:  # leaving one statement in place can make another one's move unsafe: repeat until stable
        changed = False
        for i, s in enumerate(body):
            if not move[i]:
                continue
            stays_after = [(line(r), r) for j, r in enumerate(body) if j > i and not move[j]]
            why = None
            for at, r in stays_after:
                hit = sorted(reads(s) & names(r)[1])
                if hit:
                    why = (f"reads {', '.join(hit)}, which line {at} (later in the cell, staying) assigns; "
                           "moved behind it, it would see another value")
                    break
            binds = names(s)[1]
            if why is None and binds:
                for at, r in stays_after + later:
                    loads, rebinds = names(r)
                    hit = sorted(binds & (loads - rebinds))
                    if hit:
                        why = (f"binds {', '.join(hit)}, which line {at} reads; the readers' copies drop "
                               "bookkeeping cells")
                        break
            if why:
                move[i], changed = False, True
                report.warnings.append(f"{report.chapter}:{line(s)}: {why}; left in place")
    if not all(move) and move[-1]:
        # the cell's display: its last statement after the move must show what the last one showed (nothing)
        last = max(i for i, m in enumerate(move) if not m)
        if not _quiet(body[last], cell.source[body[last].end_lineno - 1]):
            for i in range(last + 1, len(body)):
                move[i] = False
            report.warnings.append(
                f"{report.chapter}:{line(body[last + 1])}: moving the trailing bookkeeping would make line "
                f"{line(body[last])} the cell's last statement and display its value; left in place")
    return move


def _blocks(cell: Cell, body: list[ast.stmt], move: list[bool]) -> list[tuple[int, int]]:
    """0-based ``[first, last]`` source lines of each moved statement, with the comment lines right above it."""
    blocks = []
    for i, s in enumerate(body):
        if not move[i]:
            continue
        first, last = _first_line(s) - 1, s.end_lineno - 1
        floor = body[i - 1].end_lineno - 1 if i else -1
        while first - 1 > floor and cell.source[first - 1].startswith("#"):
            first -= 1
        blocks.append((first, last))
    return blocks


def _split(cell: Cell, blocks: list[tuple[int, int]]) -> tuple[list[str], list[str]]:
    """``(lines that stay, lines of the new cell)``."""
    src, gone = cell.source, set()
    moved = []
    for k, (a, b) in enumerate(blocks):
        if k and all(not src[j].strip() for j in range(blocks[k - 1][1] + 1, a)):
            moved += src[blocks[k - 1][1] + 1:a]  # adjacent in the cell (blank lines between): keep the gap
        moved += src[a:b + 1]
        gone |= set(range(a, b + 1))
    stay: list[str] = []
    drop_blank = False
    for j, line in enumerate(src):
        if j in gone:
            # a statement between blank lines takes the blank lines after it along
            drop_blank = drop_blank or not stay or not stay[-1].strip()
            continue
        if drop_blank and not line.strip():
            continue
        drop_blank = False
        stay.append(line)
    while stay and not stay[-1].strip():
        stay.pop()
    while stay and not stay[0].strip():
        stay.pop(0)
    return stay, moved


def rewrite(text: str, chapter: str = "<text>") -> tuple[str, Report]:
    """``(new text, report)``: ``text`` (a py:percent twin) with its bookkeeping moved (module docstring)."""
    report = Report(chapter)
    preamble, cells = split_cells(text)
    parsed = _parse(cells, report)
    out = [preamble]
    for k, p in enumerate(parsed):
        cell, tree = p.cell, p.tree
        if tree is None or not tree.body or SKIP_TAGS & set(cell.tags):
            out.append(cell.text())
            continue
        move = _movable(cell, tree, _later_story(parsed, k), report)
        if not any(move):
            out.append(cell.text())
            continue
        if all(move):
            report.tagged += 1
            out.append(Cell(with_tags(cell.header, cell.tags + [t for t in NEW_TAGS if t not in cell.tags]),
                            cell.source, cell.blank, cell.start).text())
            continue
        stay, moved = _split(cell, _blocks(cell, tree.body, move))
        tags = NEW_TAGS + [t for t in cell.tags if t in INHERITED_TAGS]
        nxt = parsed[k + 1].cell.source if k + 1 < len(parsed) else []
        last = k + 1 == len(parsed)
        before = lines_between(stay, moved)
        after = cell.blank if last or cell.blank != lines_between(cell.source, nxt) else lines_between(moved, nxt)
        out.append(Cell(cell.header, stay, before, cell.start).text())
        out.append(Cell(with_tags("# %%", tags), moved, after, cell.start).text())
        report.moved += sum(move)
        report.created += 1
    new = "".join(out)
    if not text.endswith("\n"):
        new = new[:-1]
    return new, report


def leftovers(text: str, chapter: str = "<text>") -> list[str]:
    """``chapter:line: statement`` for every bookkeeping statement left in a cell a student sees (not
    tagged ``bookkeeping``, removed, or an exercise's): what ``--check`` reports."""
    found = []
    for cell in split_cells(text)[1]:
        if cell.markdown or SKIP_TAGS & set(cell.tags):
            continue
        try:
            tree = ast.parse("\n".join(cell.source) + "\n")
        except SyntaxError:
            continue
        for s in tree.body:
            if bookkeeping_kind(s):
                found.append(f"{chapter}:{cell.start + s.lineno}: {cell.source[s.lineno - 1].strip()[:80]}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("twins", nargs="+", type=Path, help="py:percent chapters (book/NN_name.py)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a visible cell still holds bookkeeping")
    args = parser.parse_args(argv)
    if args.check:
        found = [f for path in args.twins for f in leftovers(path.read_text(), str(path))]
        print("\n".join(found) if found else f"no bookkeeping left in the visible cells of {len(args.twins)} twins")
        return 1 if found else 0
    for path in args.twins:
        text = path.read_text()
        new, report = rewrite(text, str(path))
        if new != text:
            path.write_text(new)
        print(report.summary() + ("" if new != text else " (unchanged)"))
        for w in report.warnings:
            print("  warning: " + w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
