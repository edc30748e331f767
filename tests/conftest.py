"""Test-session defaults: the CPU pin, offline data from ../shared/data, the ci profile, a local cache.

Values already in the environment win (``.ci/run`` sets them explicitly); the notebooks
run by nbval inherit these variables from the pytest process.
"""

import os
import sys
from pathlib import Path

from medadv_tutorial import allocator, numerics

numerics.pin()  # on purpose, first: the CPU numerics pin, before numpy loads (importing the package does not)
allocator.retain_freed_memory()  # on purpose: freed memory stays in the process (medadv_tutorial/allocator.py)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/budget.py
os.environ.setdefault("MEDADV_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("MEDADV_CACHE", str(REPO / ".cache" / "medadv"))
os.environ.setdefault("MEDADV_PROFILE", "ci")
torch.set_num_threads(int(os.environ.get("MEDADV_TEST_THREADS", "1")))

import kernel_start  # noqa: E402

kernel_start.install()  # a chapter's kernel that dies while starting is started again (tests/kernel_start.py)


# --------------------------------------------------------------------------- longest first
# pytest-xdist (--dist loadfile --no-loadscope-reorder) hands files to the two workers in this
# order, so the long chapter executions start first and the short unit-test modules fill the
# gaps at the end.  Measured per-file times (printed at the end of every run) set the order;
# files not listed keep their collection order after these.
LONGEST_FIRST = (
    "book/05_hfc.ipynb",
    "book/02_attacks.ipynb",
    "tests/test_smoke_05.py",
    "book/04_detection.ipynb",
    "book/03_features.ipynb",
    "tests/test_full_path.py",
    "tests/test_smoke_04.py",
    "book/01_training.ipynb",
    "tests/test_smoke_01.py",
    "tests/test_smoke_03.py",
    "tests/test_book_build.py",
    "tests/test_smoke_07.py",
    # reads the chest X-ray detector suite and PGD run that chapter 4 stores in the result cache
    "book/07_explanations.ipynb",
    # last of the chapters: it reads back from the result cache what chapters 4 and 5 computed
    "book/06_reproduce.ipynb",
    "tests/test_smoke_06.py",
    "tests/test_reproduce.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: cells keep their order


# --------------------------------------------------------------------------- time per file
# CI prints how long each test file took (a chapter's nbval cells, its smoke run, each unit-test
# module): the sum of setup, call and teardown over the file's items, as the workers report them.
_SECONDS_PER_FILE: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    _SECONDS_PER_FILE[path] = _SECONDS_PER_FILE.get(path, 0.0) + report.duration


# --------------------------------------------------------------------------- time budget
# A chapter whose nbval run took more than 1.5x its budget (tests/ci_budget.json, scaled to this
# machine by a one-second calibration; see tests/budget.py) fails the run, so that an expensive
# addition is noticed in the change that makes it.
_OVER_BUDGET: list[str] = []


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    chapters = {p: s for p, s in _SECONDS_PER_FILE.items() if p.endswith(".ipynb")}
    if hasattr(config, "workerinput") or not chapters or os.environ.get("MEDADV_PROFILE") != "ci":
        return
    import budget

    calibration = budget.calibrate()
    plan = budget.load()
    _OVER_BUDGET[:] = [f"calibration on this machine: {calibration:.2f} s (reference {plan['calibration_s']:.2f} s)"]
    over = budget.over_budget(chapters, plan, calibration)
    _OVER_BUDGET.extend(over)
    if over and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput") or not _SECONDS_PER_FILE:  # an xdist worker: the controller reports
        return
    tr = terminalreporter
    tr.section("time per file (setup + call + teardown, summed over its items)")
    chapters = {p: s for p, s in _SECONDS_PER_FILE.items() if p.endswith(".ipynb")}
    for path, s in sorted(_SECONDS_PER_FILE.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"{s:8.1f} s  {path}")
    tr.write_line(f"{sum(_SECONDS_PER_FILE.values()):8.1f} s  in all ({sum(chapters.values()):.1f} s of nbval "
                  f"in {len(chapters)} chapters)")
    if _OVER_BUDGET:
        tr.section("chapter time budget (tests/ci_budget.json, x1.5, scaled to this machine)")
        for line in _OVER_BUDGET[1:] or ["every executed chapter within its budget"]:
            tr.write_line(line, red=line is not None and len(_OVER_BUDGET) > 1)
        tr.write_line(_OVER_BUDGET[0])
