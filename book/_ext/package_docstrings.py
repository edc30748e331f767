"""The package's docstring convention, made readable to napoleon (a local Sphinx extension).

``medadv_tutorial`` writes its parameter lists under numpy-style headers as one
``name: description`` line per parameter (continuation lines indented), and often follows
the list with prose after a single blank line ("Returns ..."):

.. code-block:: text

    Parameters
    ----------
    x: (N, C, H, W) images in [0, 1].
    eps: L-inf budget.

    Returns the adversarial images.

napoleon's numpy parser wants ``name`` alone on its line (or ``name : type``) with the
description indented below, and ends a section only at two blank lines, so it would read each
description as a type and the prose as more parameters.  Before napoleon runs
(``autodoc-process-docstring``, earlier priority), this rewrites each such field as ``name``
plus its indented description (a trailing ``_``, scikit-learn's mark of fitted attributes,
escaped) and closes the section before the prose.  Docstrings already in
napoleon's format pass unchanged.  NamedTuple fields, listed in their class's ``Attributes``,
are not documented a second time as members ("Alias for field number 0").
"""

from __future__ import annotations

import re

FIELD_SECTIONS = {"parameters", "other parameters", "attributes"}  # Returns etc. pass as written
# "x: ...", "seed, generator: ...", "**kwargs: ...", "``x_adv``: ..." (not "name : type")
FIELD = re.compile(r"^((?:\*{0,2}\w+|``[^`]+``)(?:, (?:\*{0,2}\w+|``[^`]+``))*):(?:\s+(.*))?$")
# a field already in napoleon's form: "name" alone or "name : type"
NUMPY_FIELD = re.compile(r"^\*{0,2}\w+(?:, \*{0,2}\w+)*(?: : .*)?$")
UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
# "weights_" would be a link target in reST: escape the trailing underscore of field names
TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=,|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_header(lines: list[str], i: int) -> bool:
    return (i + 1 < len(lines) and lines[i].strip() != "" and UNDERLINE.match(lines[i + 1])
            and _indent(lines[i]) == _indent(lines[i + 1]))


def _is_field(line: str) -> bool:
    return bool(FIELD.match(line.strip()) or NUMPY_FIELD.match(line.strip()))


def convert(lines: list[str]) -> list[str]:
    """Rewrite the ``name: description`` fields of ``lines`` (one docstring) for napoleon."""
    out: list[str] = []
    i, section_indent = 0, None  # section_indent: indent of the field section we are in
    while i < len(lines):
        line = lines[i]
        if _is_header(lines, i):
            section_indent = _indent(line) if line.strip().lower() in FIELD_SECTIONS else None
            out += [line, lines[i + 1]]
            i += 2
            continue
        if section_indent is None:
            out.append(line)
            i += 1
            continue
        if line.strip() == "":  # inside a field section: does the section go on after it?
            j = i
            while j < len(lines) and lines[j].strip() == "":
                j += 1
            ends = (j == len(lines) or _indent(lines[j]) < section_indent or _is_header(lines, j)
                    or (_indent(lines[j]) == section_indent and not _is_field(lines[j])))
            if ends:
                out += ["", ""]  # napoleon ends a section at two blank lines
                section_indent = None
            else:
                out += lines[i:j]
            i = j
            continue
        match = FIELD.match(line.strip()) if _indent(line) == section_indent else None
        if match:
            pad = " " * section_indent
            out.append(pad + TRAILING_UNDERSCORE.sub(r"\\_", match.group(1)))
            if match.group(2):
                out.append(pad + "    " + match.group(2))
        elif _indent(line) == section_indent and NUMPY_FIELD.match(line.strip()):
            out.append(line)  # napoleon's own form
        elif _indent(line) <= section_indent:  # prose right under the fields: close the section
            out += ["", ""]
            section_indent = None
            continue
        else:
            out.append(line)  # a description's continuation line
        i += 1
    return out


def _process(app, what, name, obj, options, lines):
    lines[:] = convert(lines)


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """NamedTuple fields are documented in their class's Attributes section, not twice."""
    return True if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number") else None


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", _process, priority=400)  # napoleon: 500
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
