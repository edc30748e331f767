"""Every chapter starts with the set-up cell that ``tests/setup_cell.py`` generates.

The cell installs the package at the version the chapter was written with (git tag
``v<version>`` of ``_config.yml``'s repository), so a chapter whose cell drifted would install
another version in Colab.  Fix a failure with::

    python tests/setup_cell.py --write && jupytext --sync book/*.ipynb
"""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path

import pytest
import yaml
from setup_cell import REPO, cell_source, chapters, first_code_cell, repository_url, version

import medadv_tutorial

BOOK = REPO / "book"
FIX = "run: python tests/setup_cell.py --write && jupytext --sync book/*.ipynb"


def drift(found: str, where: str) -> str | None:
    """``None`` when ``found`` is the generated cell, else a message that says what differs."""
    expected = cell_source()
    if found.strip("\n") == expected:
        return None
    exp, got = expected.splitlines(), found.strip("\n").splitlines()
    for i, (e, g) in enumerate(zip(exp, got), 1):
        if e != g:
            return f"{where}: line {i} of the set-up cell is {g!r}, expected {e!r}; {FIX}"
    return f"{where}: the set-up cell has {len(got)} lines, expected {len(exp)}; {FIX}"


def ipynb_first_code_cell(path: Path) -> str:
    """Source of the first code cell of a stored notebook (read as plain JSON)."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"]
            return "".join(src) if isinstance(src, list) else src
    raise ValueError(f"{path.name} has no code cell")


CHAPTERS = chapters()


def test_there_are_chapters_and_notebooks():
    assert CHAPTERS, f"no book/NN_*.py chapters in {BOOK}"
    assert sorted(p.stem for p in CHAPTERS) == sorted(p.stem for p in BOOK.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_twin_first_cell_is_generated(py):
    problem = drift(first_code_cell(py.read_text()), f"book/{py.name}")
    assert problem is None, problem


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.with_suffix(".ipynb").name)
def test_notebook_first_cell_is_generated(py):
    ipynb = py.with_suffix(".ipynb")
    problem = drift(ipynb_first_code_cell(ipynb), f"book/{ipynb.name}")
    assert problem is None, problem


def test_versions_agree():
    """pyproject's version is the one the cell installs, the package reports, and pip sees."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version() == pyproject
    assert medadv_tutorial.__version__ == pyproject, (
        f"medadv_tutorial.__version__ is {medadv_tutorial.__version__!r} but pyproject.toml says "
        f"{pyproject!r}; change both together"
    )
    try:
        installed = importlib.metadata.version("medadv-tutorial")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("medadv-tutorial is not installed (only imported from the source tree)")
    # The cell reinstalls from git when these differ, which fails offline (CI) and is slow anywhere.
    assert installed == pyproject, (
        f"the installed metadata says {installed!r}, pyproject.toml {pyproject!r}: "
        "reinstall with `pip install --no-deps -e .`"
    )


# Known answers: the check sees a changed cell, and the cell is built from the one source.


def test_cell_comes_from_config_and_pyproject():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert repository_url() == config["repository"]["url"]
    src = cell_source()
    assert f'"{config["repository"]["url"]}", "{version()}"' in src
    assert 'git+{REPOSITORY}@v{VERSION}' in src  # installs the release tag, not main
    compile(src, "<setup cell>", "exec")  # valid Python


def test_modified_cell_is_detected():
    good = cell_source()
    assert drift(good, "x") is None
    assert drift("\n" + good + "\n", "x") is None  # surrounding blank lines do not matter
    older = good.replace(f'"{version()}"', '"0.0.1"')
    assert older != good
    message = drift(older, "book/99_x.py")
    assert message is not None and "0.0.1" in message and "book/99_x.py" in message
    assert drift(good.replace("@v{VERSION}", ""), "x") is not None  # installs main again
    assert drift(good + "\nprint('extra')", "x") is not None
    assert drift("\n".join(good.splitlines()[:-1]), "x") is not None


def test_first_code_cell_skips_header_and_markdown(tmp_path):
    text = (
        "# ---\n# jupyter:\n#   jupytext: {}\n# ---\n\n"
        "# %% [markdown]\n# # Title\n\n"
        '# %% tags=["x"]\nprint(1)\n\n'
        "# %%\nprint(2)\n"
    )
    assert first_code_cell(text) == "print(1)"
    nb = {"cells": [{"cell_type": "markdown", "source": ["# T"]},
                    {"cell_type": "code", "source": ["a = 1\n", "b = 2"]},
                    {"cell_type": "code", "source": ["c = 3"]}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    assert ipynb_first_code_cell(tmp_path / "x.ipynb") == "a = 1\nb = 2"
