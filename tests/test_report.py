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
