"""Author-year citations in the text *and* in the bibliography (a local Sphinx extension).

sphinxcontrib-bibtex's ``author_year`` reference style cites "(Madry et al., 2018)" in the
text, but its bibliography styles label the entries "[MMS+18]" (``alpha``) or "[1]"
(``plain``).  This extension registers, under the name ``book_author_year``:

* a pybtex label style that labels each entry the way the text cites it,
  "Madry et al., 2018" (one author: "Krizhevsky, 2009"; two: "Carlini and Wagner, 2017"),
  with "a", "b", ... after the year when one author list has several entries in one year;
* a pybtex formatting style (pybtex's ``unsrt`` entries, sorted by the label's authors, then
  year and title, with those labels), for ``bibtex_default_style``;
* a sphinxcontrib-bibtex reference style, sphinxcontrib-bibtex's ``author_year`` with round
  brackets, "; " between the works of one parenthetical citation, and the year taken from
  the label, so that the text says "2017a" where the bibliography does, for
  ``bibtex_reference_style``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pybtex.plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle
from sphinxcontrib.bibtex.plugin import register_plugin as register_reference_style
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.referencing.basic_author_year import (
    BasicAuthorYearParentheticalReferenceStyle,
    BasicAuthorYearTextualReferenceStyle,
)
from sphinxcontrib.bibtex.style.template import join, join2, node, post_text, pre_text, reference

NAME = "book_author_year"  # sphinxcontrib-bibtex already has a reference style "author_year"
YEAR_SEP = ", "  # between the authors and the year in a label


def _last_name(person) -> str:
    """The last name with its "von" part ("van der Maaten"), BibTeX braces removed."""
    return " ".join(person.prelast_names + person.last_names).replace("{", "").replace("}", "")


def _authors(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in persons]
    if not names:
        return entry.fields.get("title", entry.key)
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} et al."


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Authors, year", with a, b, ... after the year where labels would repeat."""

    def format_labels(self, sorted_entries):
        labels = [_authors(e) + YEAR_SEP + e.fields.get("year", "n.d.") for e in sorted_entries]
        count, seen = Counter(labels), Counter()
        for label in labels:
            if count[label] > 1:
                seen[label] += 1
                yield label + chr(ord("a") + seen[label] - 1)
            else:
                yield label


class AuthorYearSortingStyle(BaseSortingStyle):
    """By the label's authors ("Yao et al."), then year and title: equal labels end up adjacent."""

    def sorting_key(self, entry):
        return _authors(entry).lower(), entry.fields.get("year", ""), entry.fields.get("title", "").lower()


class AuthorYearStyle(UnsrtStyle):
    """pybtex's ``unsrt`` entries, sorted by author, year and title, labelled "Authors, year"."""

    default_label_style = AuthorYearLabelStyle
    default_sorting_style = AuthorYearSortingStyle


@node
def label_year(children, data):
    """The year as the entry's label writes it ("2017a" where two entries share "2017")."""
    assert not children
    return Text(data["formatted_entry"].label.rsplit(YEAR_SEP, 1)[-1])


@dataclass
class _Parenthetical(BasicAuthorYearParentheticalReferenceStyle):
    def inner(self, role_name: str):  # the base class's, with label_year for year
        return join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
            pre_text,
            reference[join(sep=self.author_year_sep)[
                self.person.author_or_editor_or_title(full="s" in role_name), label_year]],
            post_text,
        ]


@dataclass
class _Textual(BasicAuthorYearTextualReferenceStyle):
    def inner(self, role_name: str):  # the base class's, with label_year for year
        return join(sep=self.text_reference_sep)[
            self.person.author_or_editor_or_title(full="s" in role_name),
            join[
                self.bracket.left,
                join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
                    pre_text, reference[label_year], post_text],
                self.bracket.right,
            ],
        ]


def _round(**kwargs):
    return field(default_factory=lambda: BracketStyle(left="(", right=")", **kwargs))


@dataclass
class AuthorYearLabelReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's ``author_year`` with round brackets, "(Lee et al., 2018; Ma et al.,
    2018)", and the year read from the bibliography label."""

    bracket_textual: BracketStyle = _round()
    bracket_parenthetical: BracketStyle = _round(sep="; ")
    bracket_author: BracketStyle = _round()
    bracket_label: BracketStyle = _round()
    bracket_year: BracketStyle = _round()

    def __post_init__(self):
        super().__post_init__()
        self.styles[:2] = [  # the base class's first two styles, with label_year for the year
            _Parenthetical(
                bracket=self.bracket_parenthetical, person=self.person,
                author_year_sep=self.author_year_sep, pre_text_sep=self.pre_text_sep,
                post_text_sep=self.post_text_sep),
            _Textual(
                bracket=self.bracket_textual, person=self.person,
                text_reference_sep=self.text_reference_sep, pre_text_sep=self.pre_text_sep,
                post_text_sep=self.post_text_sep),
        ]
        self.role_style.update((role, style) for style in self.styles[:2] for role in style.role_names())


def setup(app):
    pybtex.plugin.register_plugin("pybtex.style.labels", NAME, AuthorYearLabelStyle)
    pybtex.plugin.register_plugin("pybtex.style.formatting", NAME, AuthorYearStyle)
    register_reference_style("sphinxcontrib.bibtex.style.referencing", NAME,
                             AuthorYearLabelReferenceStyle)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
