"""The chapters' CI time budget (tests/budget.py, tests/ci_budget.json) and the README's copy of it."""

import re
from pathlib import Path

import pytest
import torch

import budget

REPO = Path(__file__).resolve().parents[1]
PLAN = budget.load()


def test_every_chapter_has_a_budget_and_the_shares_add_up():
    chapters = sorted(f"book/{p.name}" for p in (REPO / "book").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(PLAN["chapters"]) == chapters
    assert all(s > 0 for s in PLAN["chapters"].values())
    assert sum(PLAN["chapters"].values()) < PLAN["ci_total_s"], "the chapters' nbval is part of the CI total"


def test_a_chapter_over_one_and_a_half_times_its_scaled_budget_fails():
    plan = {"calibration_s": 1.0, "chapters": {"book/05_hfc.ipynb": 100.0, "book/01_training.ipynb": 50.0}}
    # on the reference machine: 149 s passes, 151 s fails
    assert budget.over_budget({"book/05_hfc.ipynb": 149.0}, plan, 1.0) == []
    (msg,) = budget.over_budget({"book/05_hfc.ipynb": 151.0, "book/01_training.ipynb": 10.0}, plan, 1.0)
    assert msg.startswith("book/05_hfc.ipynb: 151 s") and "= 150 s" in msg
    # a machine twice as slow (its calibration takes 2 s) gets twice the time
    assert budget.over_budget({"book/05_hfc.ipynb": 290.0}, plan, 2.0) == []
    assert budget.over_budget({"book/05_hfc.ipynb": 310.0}, plan, 2.0) != []
    # unit-test files are not chapters; a chapter without a budget is reported
    assert budget.over_budget({"tests/test_gmm.py": 1e6}, plan, 1.0) == []
    (msg,) = budget.over_budget({"book/09_new.ipynb": 1.0}, plan, 1.0)
    assert "no budget" in msg
    with pytest.raises(ValueError, match="calibration_s must be > 0"):
        budget.over_budget({}, plan, 0.0)


def test_the_readme_table_shows_the_budget_file():
    text = (REPO / "README.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| `book/\d\d_", line)]
    assert rows == budget.readme_rows(PLAN)
    assert f"{PLAN['ci_total_s']:.0f} s" in text


def test_calibration_takes_seconds_and_leaves_threads_and_the_generator_alone():
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    s = budget.calibrate(repeats=1)
    assert 0.05 < s < 60
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), state)
