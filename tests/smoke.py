"""Run a chapter end to end under the ``smoke`` profile (used by ``tests/test_smoke_NN.py``).

The ``smoke`` profile takes the ``full`` code path (224 px, whole-split sampling rules, batch
logic, selection sets larger than the test set) on a few dozen images.  Outputs are not compared (they mean nothing at this size) and the chapters skip
their claims under ``smoke``; what is tested is that ``full`` cannot crash for lack of a run.

What runs is the chapter's reader's copy (``colab/<chapter>``, ``tools/reader_copies.py``), the
notebook a student opens in Colab: its exercises hold scaffolds (``...``) and no solutions, so the
run also shows that a student's Run All passes every exercise's check as "not answered yet"
(nbval runs the book's own notebooks, with the solutions, under ``ci``).

Each chapter executes in its own kernel (``jupyter nbconvert --execute``) with
``MEDADV_PROFILE=smoke``, so nothing leaks into the nbval kernels of the same worker.  One
test file per chapter, so that ``pytest-xdist --dist loadfile`` can spread them over workers.
"""

import os
import subprocess
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "book"
COPIES = BOOK.parent / "colab"
CHAPTERS = sorted(p.name for p in BOOK.glob("[0-9][0-9]_*.ipynb"))


def run_under_smoke(chapter: str, tmp_path: Path) -> None:
    """Execute the reader's copy ``colab/<chapter>`` with ``MEDADV_PROFILE=smoke``; fail with its error output."""
    assert chapter in CHAPTERS, f"{chapter} is not a chapter of the book ({CHAPTERS})"
    env = dict(os.environ, MEDADV_PROFILE="smoke")
    cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
           "--ExecutePreprocessor.timeout=1200", "--output-dir", str(tmp_path), str(COPIES / chapter)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=BOOK)
    assert out.returncode == 0, f"{chapter} failed under the smoke profile:\n{out.stderr[-4000:]}"
    text = (tmp_path / chapter).read_text()
    # the claims skip themselves under smoke, where the copy checks any: its bookkeeping cells, which hold the
    # chapter's claim checks, are left out of it (tools/bookkeeping.py)
    claims = "check_claims(" in (COPIES / chapter).read_text()
    assert "claims not checked under the 'smoke' profile" in text or not claims
    if "(checked)" in (BOOK / chapter).read_text():  # a student's Run All: every check waits for an answer
        assert "not answered yet" in text and ": correct" not in text
