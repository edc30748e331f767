"""Known answers for the book's local Sphinx extensions (book/_ext): author-year labels and the
rewriting of the package's ``name: description`` docstring fields for napoleon."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinxcontrib.bibtex")
from pybtex.database import Entry, Person  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import author_year  # noqa: E402
import package_docstrings  # noqa: E402


def _entry(key, authors, year, title):
    entry = Entry("article", fields={"year": year, "title": title},
                  persons={"author": [Person(a) for a in authors]})
    entry.key = key
    return entry


def _entries():
    e = {
        "cw_b": _entry("cw_b", ["Carlini, Nicholas", "Wagner, David"], "2017", "Towards evaluating"),
        "cw_a": _entry("cw_a", ["Carlini, Nicholas", "Wagner, David"], "2017", "Adversarial examples"),
        "yao23": _entry("yao23", ["Yao, Q.", "He, Z.", "Li, Y."], "2023", "Hiding"),
        "yao21": _entry("yao21", ["Yao, Q.", "He, Z.", "Lin, Y."], "2021", "Constraint"),
        "kriz": _entry("kriz", ["Krizhevsky, Alex"], "2009", "Tiny images"),
        "vdm": _entry("vdm", ["van der Maaten, Laurens", "Hinton, Geoffrey"], "2008", "t-SNE"),
    }
    return e


def test_labels_are_author_year_with_suffixes_for_repeats():
    style = author_year.AuthorYearStyle()
    entries = style.sort(_entries().values())
    labels = dict(zip((e.key for e in entries), style.format_labels(entries)))
    assert labels == {
        "cw_a": "Carlini and Wagner, 2017a",  # same authors and year: a, b by title
        "cw_b": "Carlini and Wagner, 2017b",
        "kriz": "Krizhevsky, 2009",
        "vdm": "van der Maaten and Hinton, 2008",
        "yao21": "Yao et al., 2021",  # by first author and year, whatever the later authors
        "yao23": "Yao et al., 2023",
    }
    assert [e.key for e in entries] == ["cw_a", "cw_b", "kriz", "vdm", "yao21", "yao23"]


def test_reference_style_uses_round_brackets_and_the_label_year():
    style = author_year.AuthorYearLabelReferenceStyle()
    assert isinstance(style.role_style["p"], author_year._Parenthetical)
    assert isinstance(style.role_style["t"], author_year._Textual)
    assert (style.bracket_parenthetical.left, style.bracket_parenthetical.right) == ("(", ")")
    assert style.bracket_parenthetical.sep == "; "


DOC = """Summary.

Parameters
----------
x: (N, C, H, W) images in [0, 1].
seed, generator: make the start
    reproducible.
already : int
    numpy style, left alone.

Returns the images.
"""


def test_docstring_fields_are_rewritten_for_napoleon():
    out = package_docstrings.convert(DOC.splitlines())
    assert out == [
        "Summary.", "",
        "Parameters", "----------",
        "x", "    (N, C, H, W) images in [0, 1].",
        "seed, generator", "    make the start", "    reproducible.",
        "already : int", "    numpy style, left alone.",
        "", "",  # two blank lines: napoleon ends the section before the prose
        "Returns the images.",
    ]


def test_docstring_conversion_escapes_fitted_attribute_names_and_leaves_prose_alone():
    out = package_docstrings.convert(["Attributes", "----------", "weights_: (K,).", "n_iter_: int."])
    assert out == ["Attributes", "----------", "weights\\_", "    (K,).", "n_iter\\_", "    int."]
    prose = ["Summary.", "", "x: not a field outside a section.", "", "Notes", "-----", "a: b"]
    assert package_docstrings.convert(prose) == prose
    # prose right under the fields, without a blank line, also closes the section
    out = package_docstrings.convert(["Parameters", "----------", "x: one.", "Returns y."])
    assert out == ["Parameters", "----------", "x", "    one.", "", "", "Returns y."]
