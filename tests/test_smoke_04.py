"""Chapter 04_detection runs end to end under the ``smoke`` profile (see ``tests/smoke.py``)."""

from smoke import run_under_smoke


def test_runs_under_smoke(tmp_path):
    run_under_smoke("04_detection.ipynb", tmp_path)
