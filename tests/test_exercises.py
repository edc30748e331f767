"""``book.check_answer``, the check under the chapters' exercises: known answers and messages."""

import math

import numpy as np
import pytest
import torch

from medadv_tutorial import book, metrics


def test_right_answers_pass_and_say_so(capsys):
    book.check_answer("sensitivity", 0.8000004, 0.8)
    book.check_answer("rates", torch.tensor([0.5, 0.25]), np.array([0.5, 0.25]))
    book.check_answer("per task", {"a": [1, 2], "b": None, "c": "x"}, {"a": (1.0, 2.0), "b": None, "c": "x"})
    book.check_answer("interval", metrics.Interval(0.9, 0.8, 1.0), (0.9, 0.8, 1.0))
    book.check_answer("undefined", math.nan, float("nan"))
    book.check_answer("loose", 0.52, 0.5, tol=0.05)
    assert capsys.readouterr().out.splitlines() == [
        "sensitivity: correct", "rates: correct", "per task: correct", "interval: correct", "undefined: correct",
        "loose: correct"]


@pytest.mark.parametrize("value, expected, message", [
    (0.38, 0.62, r"sensitivity is not right yet: expected 0.62 \(within 1e-06\), got 0.38\. Hint: rows"),
    ([0.5], [0.5, 0.25], r"expected shape \(2,\), got shape \(1,\)"),
    ([0.5, 0.3], [0.5, 0.25], r"expected \[0.5\s+0.25\]"),
    ({"a": 1.0}, {"b": 1.0}, r"expected the keys \['b'\], got \['a'\]"),
    ({"a": 1.0}, {"a": 2.0}, r"\['a'\]: expected 2 "),
    ([1.0], {"a": 1.0}, r"expected a dict"),
    (None, 0.5, r"expected a number, got None"),
    ("0.5", 0.5, r"expected a number, got '0.5'"),
    (0.5, None, r"expected None, got 0.5"),
    (1, True, r"expected True, got 1"),
    (math.nan, 0.5, r"expected 0.5"),
])
def test_wrong_answers_raise_with_what_was_expected(value, expected, message):
    with pytest.raises(AssertionError, match=message):
        book.check_answer("sensitivity", value, expected, hint="rows are the true classes.")


def test_bad_arguments_name_themselves():
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        book.check_answer("", 1.0, 1.0)
    with pytest.raises(ValueError, match=r"tol \(absolute tolerance\) must be >= 0"):
        book.check_answer("x", 1.0, 1.0, tol=-1)
    with pytest.raises(TypeError, match="hint must be a string"):
        book.check_answer("x", 1.0, 1.0, hint=3)
    with pytest.raises(TypeError, match="expected must be a number"):
        book.check_answer("x", 1.0, object())


def test_a_scaffold_is_not_answered_yet_and_does_not_fail(capsys):
    assert book.check_answer("sensitivity", ..., 0.8) is False
    assert book.check_answer("intervals", {"a": ..., "b": (1, 2, 3)}, {"a": (1, 2, 3), "b": (1, 2, 3)}) is False
    assert book.check_answer("pair", (..., 0.5), (0.5, 0.5)) is False
    assert book.check_answer("sensitivity", 0.8, 0.8) is True
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sensitivity: not answered yet (replace the ... in your answer cell)" and out[-1] == \
        "sensitivity: correct"
    with pytest.raises(AssertionError):  # None is an answer (a wrong one here), not the scaffold
        book.check_answer("sensitivity", None, 0.8)


def test_check_rejects_tests_a_check_both_ways(capsys):
    def check(x):
        return book.check_answer("x", x, 1.0)

    book.check_rejects(check, 2.0, why="two instead of one")
    assert capsys.readouterr().out.strip() == "the check rejects two instead of one"
    with pytest.raises(AssertionError, match=r"accepted a wrong answer \(one is not wrong\)"):
        book.check_rejects(check, 1.0, why="one is not wrong")

    def lenient(x):  # a check that fails on scaffolds: a reader's copy would stop there
        return book.check_answer("x", float(x) if x is not ... else x / 1, 1.0)

    with pytest.raises(TypeError):
        book.check_rejects(lenient, 2.0, why="two")

    def silent(x):
        if x is ...:
            return None
        return book.check_answer("x", x, 1.0)

    with pytest.raises(AssertionError, match="not answered yet"):
        book.check_rejects(silent, 2.0, why="two")
    with pytest.raises(TypeError, match="why must say"):
        book.check_rejects(check, 2.0, why="")
    with pytest.raises(TypeError, match="check must be"):
        book.check_rejects("check", 2.0, why="two")
