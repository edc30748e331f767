import pytest

from medadv_tutorial.report import markdown_table


def test_table_rounds_floats_and_keeps_other_values():
    text = markdown_table([[0.12345, 3, "x"]], ["a", "b", "c"], digits=3)
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 0.123 | 3 | x |"]


def test_pipes_inside_cells_are_escaped():
    # a bare | would end the cell: the row would get one cell too many and the table break
    lines = markdown_table([["|cos|", 1.0]], ["max |δ|", "v"]).splitlines()
    assert lines[0] == "| max \\|δ\\| | v |"
    assert lines[2] == "| \\|cos\\| | 1.00 |"
    assert all(line.replace("\\|", "").count("|") == 3 for line in lines)


def test_rows_must_match_headers():
    with pytest.raises(ValueError, match="one value per header"):
        markdown_table([[1, 2]], ["a"])


# ------------------------------------------------------------------ numbers in the prose


def test_span_and_join_and_auc_se_known_answers():
    from medadv_tutorial.report import and_join, auc_se, span

    assert span([0.642, 0.538, 0.6]) == "0.54–0.64"
    assert span([0.501, 0.499]) == "0.50"  # both round alike: one number
    assert span([0.5], digits=1) == "0.5" and span([]) == "n/a"
    assert and_join(["MGM", "KD", "ISO"]) == "MGM, KD and ISO"
    assert and_join(["MGM", "KD"]) == "MGM and KD" and and_join(["MGM"]) == "MGM" and and_join([]) == "none"
    assert and_join(x for x in "ab") == "a and b"
    # Hanley & McNeil at AUROC 0.5: sqrt((2n + 1) / (12 n^2)); n = 1: sqrt(3 / 12) = 0.5
    assert auc_se(1) == 0.5 and auc_se(30) == pytest.approx(0.0751, abs=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        span([0.1, float("nan")])
    with pytest.raises(TypeError, match="list of strings"):
        and_join("MGM")
    with pytest.raises(ValueError, match=r"n \(images per class\) must be an int >= 1"):
        auc_se(0)


def test_table_unpacks_as_rows_and_headers():
    from medadv_tutorial.report import Table

    rows, headers = Table([[1.0]], ["a"])
    assert markdown_table(*Table([[1.0]], ["a"])) == markdown_table(rows, headers) == "| a |\n|---|\n| 1.00 |"


def test_show_table_prints_text_outside_a_notebook(capsys):
    from medadv_tutorial.metrics import Interval
    from medadv_tutorial.report import show_table, text_table

    rows = [["PGD", Interval(0.91, 0.85, 0.96)], ["a|b", 0.5]]
    show_table(rows, ["attack", "AUROC"])
    out = capsys.readouterr().out
    assert "IPython" not in out and "Markdown object" not in out
    assert out.splitlines() == ["attack  AUROC", "------  -----------------", "PGD     0.91 [0.85, 0.96]",
                                "a|b     0.50"]
    assert out.rstrip("\n") == text_table(rows, ["attack", "AUROC"])
    with pytest.raises(ValueError, match="one value per header"):
        text_table([[1, 2]], ["one"])
