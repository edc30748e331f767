"""Readers' copies of the chapters: the notebooks the Colab buttons open, in plain Markdown.

Colab and plain Jupyter render none of MyST's roles and fences, so a chapter opened there shows
``{glue:md}`hfc_steps``` where the book shows a number.  This script writes, for every chapter
``book/NN_name.ipynb``, a copy ``colab/NN_name.ipynb`` in which

* a glue role (``{glue:}``, ``{glue:md}``, ``{glue:text}`key:fmt```) becomes the value stored in
  the chapter's own run (the ``ci`` profile's outputs), and a ``{glue:figure}`` fence the figure
  itself (a Markdown attachment) with its caption;
* a citation (``{cite:p}``, ``{cite:t}``) becomes "(Author et al., year)" -- the labels of the
  book's bibliography (``book/_ext/author_year.py``) -- linked to the bibliography page;
* ``{py:func}`` and the other Python roles become code linked to the API page;
* an admonition becomes a block quote (a dropdown: an HTML ``<details>`` block);
* an exercise keeps its answer cell (the scaffold ``...``) and its check, without the check's stored
  output; its solution (the cell tagged ``exercise-solution`` and the "Solution" dropdown) is left
  out, and so are the cells the book removes (``remove-cell``: the tests of the checks);
* the cells tagged ``bookkeeping`` (the glue calls that carry numbers into the prose and the checks
  of the chapter's claims, which ``tools/bookkeeping.py`` moves out of the story's cells and the
  book collapses) are left out: the copy's prose already holds the numbers, and a student reads
  the story's code;
* ``{ref}`` and ``{doc}`` become their text (a section's title, a figure's caption, a page's
  title), and ``(label)=`` targets go.

The stored outputs stay as the book shows them: without the glue records (which no plain notebook
shows), stderr (progress bars and warnings) and the outputs of cells tagged ``remove-output``.  The copies
are committed; ``tests/test_reader_copies.py`` fails when one is out of sync with its chapter or
keeps a MyST construct.  Rewrite them (after re-executing a chapter)::

    python tools/reader_copies.py --write
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
OUT = REPO / "colab"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
RECORD = "application/papermill.record/"
DROPPED = {"remove-cell", "exercise-solution", "bookkeeping"}  # cells a reader's copy leaves out

ROLE = re.compile(r"\{(?P<role>[a-z]+(?::[a-z]*)?)\}`(?P<body>[^`]*)`")
LABEL_LINE = re.compile(r"^\((?P<label>[A-Za-z0-9_-]+)\)=\s*$")
FENCE_OPEN = re.compile(r"^(?P<mark>:{3,}|`{3,})\{(?P<name>[a-z:-]+)\}\s*(?P<arg>.*)$")
OPTION = re.compile(r"^:(?P<key>[a-z-]+):\s*(?P<value>.*)$")
# what must not survive in a reader's copy: a role, a directive fence, a target
LEFTOVER = re.compile(r"\{[a-z]+(?::[a-z]*)?\}`|^\s*(?::{3,}|`{3,})\{|^\s*\([A-Za-z0-9_-]+\)=\s*$", re.M)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _config_value(section: str, key: str) -> str:
    """``section.key`` of ``_config.yml`` (read without a YAML dependency)."""
    text = (REPO / "_config.yml").read_text()
    block = re.search(rf"^{section}:\n((?:[ \t]+.*\n|\s*\n)+)", text, re.M)
    found = re.search(rf"^\s+{key}:\s*(\S+)", block.group(1), re.M) if block else None
    if not found:
        raise ValueError(f"_config.yml has no {section}.{key}")
    return found.group(1).strip("\"'")


def book_url() -> str:
    """The published book's address (``html.baseurl`` of ``_config.yml``), ending in ``/``."""
    return _config_value("html", "baseurl").rstrip("/") + "/"


# --- what the roles point at -------------------------------------------------------------------


def citation_labels(bib: Path = BOOK / "references.bib") -> dict[str, str]:
    """``{key: "Madry et al., 2018"}``: the bibliography's own labels (``book/_ext/author_year.py``)."""
    from pybtex.database import parse_file

    sys.path.insert(0, str(BOOK / "_ext"))
    try:
        from author_year import AuthorYearLabelStyle, AuthorYearSortingStyle
    finally:
        sys.path.remove(str(BOOK / "_ext"))
    entries = AuthorYearSortingStyle().sort(list(parse_file(str(bib)).entries.values()))
    return {e.key: label for e, label in zip(entries, AuthorYearLabelStyle().format_labels(entries))}


def _markdown_sources(nb: dict) -> list[str]:
    return [_text(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def targets(notebooks: dict[str, dict]) -> dict[str, str]:
    """``{label: text}`` for ``{ref}``: a section target's heading, a figure's caption (first sentence)."""
    found = {}
    for nb in notebooks.values():
        for src in _markdown_sources(nb):
            lines = src.splitlines()
            for i, line in enumerate(lines):
                m = LABEL_LINE.match(line)
                if m:
                    heading = next((l for l in lines[i + 1:] if l.strip()), "")
                    found[m.group("label")] = heading.lstrip("#").strip()
                m = OPTION.match(line.strip())
                if m and m.group("key") == "name":
                    caption = " ".join(l.strip() for l in lines[i + 1:] if l.strip() and not OPTION.match(l.strip())
                                       and not l.strip().startswith(("```", ":::")))
                    found[m.group("value").strip()] = "the figure “" + caption.split(". ")[0].rstrip(".") + "”"
    return found


def page_titles() -> dict[str, str]:
    """``{docname: title}`` of the Markdown pages and the chapters (their first heading)."""
    titles = {}
    for path in sorted(BOOK.glob("*.md")):
        m = re.search(r"^#\s+(.+)$", path.read_text(), re.M)
        titles[path.stem] = m.group(1).strip() if m else path.stem
    for path in CHAPTERS:
        src = "\n".join(_markdown_sources(json.loads(path.read_text())))
        m = re.search(r"^#\s+(.+)$", src, re.M)
        titles[path.stem] = m.group(1).strip() if m else path.stem
    return titles


def glue_values(nb: dict) -> dict[str, dict]:
    """``{name: {mime: value}}`` of the chapter's glue records (its stored outputs)."""
    values = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                values[name] = {k[len(RECORD):]: v for k, v in out.get("data", {}).items() if k.startswith(RECORD)}
    return values


class Context:
    """What the conversion of one chapter reads: its glue values and the book-wide references."""

    def __init__(self, glue: dict, cites: dict, refs: dict, titles: dict, url: str, page: str = ""):
        self.glue, self.cites, self.refs, self.titles, self.url = glue, cites, refs, titles, url
        self.page = page  # the chapter's page name, for links to its HTML

    def value(self, key: str, role: str) -> str:
        name, _, fmt = key.partition(":") if role == "glue:text" else (key, "", "")
        if name not in self.glue:
            raise KeyError(f"no glue record {name!r} in the chapter's stored outputs")
        data = self.glue[name]
        if role in ("glue:md", "glue:") and "text/markdown" in data:
            return _text(data["text/markdown"]).strip()
        plain = _text(data.get("text/plain", "")).strip()
        if fmt:
            number = int(plain) if re.fullmatch(r"-?\d+", plain) else float(plain)
            return format(number, fmt)
        return plain.strip("'\"") if plain[:1] in "'\"" else plain


# --- the conversion ----------------------------------------------------------------------------


def _py_role(body: str, url: str) -> str:
    m = re.fullmatch(r"(?P<text>.+?)\s*<(?P<target>[^>]+)>", body, re.S)
    if m:
        text, target = m.group("text").strip(), m.group("target").strip()
    else:
        target = body.strip().lstrip("~")
        text = target.rsplit(".", 1)[-1] if body.strip().startswith("~") else target
    target = target.lstrip("~")
    if not target.startswith("medadv_tutorial"):
        target = "medadv_tutorial." + target
    return f"[`{text}`]({url}api.html#{target})"


def convert_roles(text: str, ctx: Context) -> str:
    """Every inline role of ``text`` as plain Markdown."""

    def one(m: re.Match) -> str:
        role, body = m.group("role"), m.group("body")
        if role.startswith("glue"):
            return ctx.value(body.strip(), role)
        if role.startswith("cite"):
            keys = [k.strip() for k in body.split(",")]
            unknown = [k for k in keys if k not in ctx.cites]
            if unknown:
                raise KeyError(f"citation keys {unknown} are not in references.bib")
            link = f"{ctx.url}references.html"
            if role == "cite:t":
                return "; ".join(f"[{ctx.cites[k].replace(', ', ' (', 1)})]({link})" for k in keys)
            return "([" + "; ".join(ctx.cites[k] for k in keys) + f"]({link}))"
        if role.startswith("py:"):
            return _py_role(body, ctx.url)
        if role in ("ref", "numref"):
            m2 = re.fullmatch(r"(?P<text>.+?)\s*<(?P<target>[^>]+)>", body, re.S)
            if m2:
                return m2.group("text").strip()
            if body.strip() not in ctx.refs:
                raise KeyError(f"unknown reference target {body.strip()!r}")
            return ctx.refs[body.strip()]
        if role == "doc":
            m2 = re.fullmatch(r"(?P<text>.+?)\s*<(?P<target>[^>]+)>", body)
            doc = (m2.group("target") if m2 else body).strip()
            text = m2.group("text").strip() if m2 else ctx.titles.get(doc, doc)
            return f"[{text}]({ctx.url}{doc}.html)"
        if role == "math":
            return f"${body}$"
        raise ValueError(f"no plain-Markdown form for the role {{{role}}}`{body}`")

    return ROLE.sub(one, text)


def _blocks(lines: list[str]):
    """Split Markdown lines into plain lines and directive blocks ``(name, arg, options, body_lines)``."""
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i].strip())
        if not m:
            yield lines[i]
            i += 1
            continue
        mark, name, arg = m.group("mark"), m.group("name"), m.group("arg").strip()
        j, depth, body = i + 1, 0, []
        while j < len(lines):
            s = lines[j].strip()
            if FENCE_OPEN.match(s) and FENCE_OPEN.match(s).group("mark") == mark:
                depth += 1
            elif s == mark:
                if depth == 0:
                    break
                depth -= 1
            body.append(lines[j])
            j += 1
        else:
            raise ValueError(f"the {{{name}}} fence opened by {lines[i]!r} is never closed")
        options = {}
        while body and OPTION.match(body[0].strip()):
            o = OPTION.match(body[0].strip())
            options[o.group("key")] = o.group("value").strip()
            body = body[1:]
        yield name, arg, options, body
        i = j + 1


def convert_markdown(source: str, ctx: Context, attachments: dict) -> str:
    """A Markdown cell's source as plain Markdown (figures go into ``attachments``)."""
    out, plain = [], []

    def flush():  # roles may span lines: convert a run of plain lines at once
        if plain:
            out.extend(convert_roles("\n".join(plain), ctx).split("\n"))
            plain.clear()

    for item in _blocks(source.splitlines()):
        if isinstance(item, str):
            if not LABEL_LINE.match(item):
                plain.append(item)
            continue
        flush()
        name, arg, options, body = item
        inner = convert_markdown("\n".join(body), ctx, attachments).strip("\n")
        if name == "glue:figure":
            data = ctx.glue.get(arg, {})
            if "image/png" not in data:
                raise KeyError(f"the figure {arg!r} has no stored image/png record")
            attachments[f"{arg}.png"] = {"image/png": _text(data["image/png"])}
            out += [f"![{arg}](attachment:{arg}.png)", "", f"*{inner}*" if inner else ""]
        elif name == "admonition" and arg.lower().startswith("solution"):
            out.append(f"*{arg}: in [the book's version of this chapter]({ctx.url}{ctx.page}.html).*")
        elif name == "admonition" or name in ("note", "tip", "warning", "important", "seealso"):
            title = arg or name.capitalize()
            if "dropdown" in options.get("class", ""):
                out += [f"<details><summary><b>{title}</b></summary>", "", inner, "", "</details>"]
            else:
                out += [f"> **{title}**", ">"] + [f"> {l}".rstrip() for l in inner.splitlines()]
        else:
            raise ValueError(f"no plain-Markdown form for the directive {{{name}}}")
    flush()
    return "\n".join(out)


def reader_copy(nb: dict, ctx: Context) -> dict:
    """The reader's copy of a chapter notebook (a new dict; ``nb`` is left as it was)."""
    nb = copy.deepcopy(nb)
    # what the book leaves out (remove-cell: the tests of the exercises' checks), the exercises' solutions and
    # the bookkeeping (glue calls and claim checks: tools/bookkeeping.py)
    nb["cells"] = [c for c in nb["cells"] if not DROPPED & set(c.get("metadata", {}).get("tags", []))]
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            attachments = {}
            cell["source"] = convert_markdown(_text(cell["source"]), ctx, attachments)
            if attachments:
                cell["attachments"] = attachments
        elif cell["cell_type"] == "code":
            # the book removes stderr (progress bars, warnings), the outputs of cells tagged remove-output (a
            # figure it shows through its glue:figure instead) and shows no glue record: so does the copy
            # an exercise's check has not seen the student's answer yet: no stored "correct" under it
            removed = bool({"remove-output", "exercise-check"} & set(cell.get("metadata", {}).get("tags", [])))
            cell["outputs"] = [o for o in cell.get("outputs", []) if not removed
                               and "scrapbook" not in o.get("metadata", {})
                               and not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    nb["metadata"].pop("jupytext", None)
    nb["metadata"]["colab"] = {"provenance": []}
    return nb


def build() -> dict[Path, str]:
    """``{path of the copy: its JSON text}`` for every chapter."""
    notebooks = {p.stem: json.loads(p.read_text()) for p in CHAPTERS}
    cites, refs, titles, url = citation_labels(), targets(notebooks), page_titles(), book_url()
    copies = {}
    for stem, nb in notebooks.items():
        ctx = Context(glue_values(nb), cites, refs, titles, url, stem)
        copies[OUT / f"{stem}.ipynb"] = json.dumps(reader_copy(nb, ctx), indent=1, ensure_ascii=False) + "\n"
    return copies


def leftovers(text: str) -> list[str]:
    """The MyST constructs left in Markdown ``text`` (empty for a clean reader's copy)."""
    return [m.group(0).strip() for m in LEFTOVER.finditer(text)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write colab/*.ipynb (default: check only)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in build().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if args.write:
                path.parent.mkdir(exist_ok=True)
                path.write_text(text)
    for path in stale:
        print(f"{'wrote' if args.write else 'out of sync'}: {path.relative_to(REPO)}")
    return 0 if args.write or not stale else 1


if __name__ == "__main__":
    sys.exit(main())
