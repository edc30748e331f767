"""Chapter 07_explanations runs end to end under the ``smoke`` profile (see ``tests/smoke.py``)."""

from smoke import run_under_smoke


def test_runs_under_smoke(tmp_path):
    run_under_smoke("07_explanations.ipynb", tmp_path)
