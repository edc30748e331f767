"""Every chapter notebook has a jupytext twin (``.py``, percent format) with the same cells."""

import json
import re
from pathlib import Path

import jupytext
import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_chapters():
    assert NOTEBOOKS, f"no chapter notebooks found in {BOOK}"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_twin_in_sync(ipynb):
    twin = ipynb.with_suffix(".py")
    assert twin.exists(), f"{ipynb.name} has no jupytext twin {twin.name}; run: jupytext --sync {ipynb}"
    nb = jupytext.read(ipynb)
    py = jupytext.read(twin)
    assert _cells(nb) == _cells(py), (
        f"{ipynb.name} and {twin.name} differ; run: jupytext --sync book/{ipynb.name}"
    )


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_outputs_and_colab_install_cell(ipynb):
    nb = jupytext.read(ipynb)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert any(c.get("outputs") for c in code), f"{ipynb.name} has no stored outputs"
    # its exact text is checked against tests/setup_cell.py by tests/test_setup_cell.py
    assert "medadv-tutorial" in code[0].source and "pip" in code[0].source, (
        f"the first code cell of {ipynb.name} must install the package when it is missing"
    )


MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:home|root|work|tmp|content|Users|opt|mnt)/[\w.-]+")


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_name_no_machine_path(ipynb):
    # nbval compares the stored text on other machines: a printed folder would differ there
    nb = json.loads(ipynb.read_text())
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
            found = MACHINE_PATH.search(text)
            assert not found, f"{ipynb.name}, cell {i}: stored output names a machine path {found.group(0)!r}"


def test_machine_path_pattern():
    assert MACHINE_PATH.search("models and caches: /work/main/.cache/medadv")
    assert not MACHINE_PATH.search("models and caches: $MEDADV_CACHE, 1/255, ~/.cache/x")


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_has_a_smoke_test(ipynb):
    # one file per chapter, so that pytest-xdist (--dist loadfile) spreads the smoke runs
    smoke = BOOK.parent / "tests" / f"test_smoke_{ipynb.name[:2]}.py"
    assert smoke.exists(), f"{ipynb.name} has no smoke test: add {smoke.name} (see tests/smoke.py)"
    assert f'run_under_smoke("{ipynb.name}"' in smoke.read_text(), f"{smoke.name} does not run {ipynb.name}"
