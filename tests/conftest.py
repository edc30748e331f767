"""Test-session defaults: the CPU pin, offline data from ../shared/data, the ci profile, a local cache.

Values already in the environment win (``.ci/run`` sets them explicitly); the notebooks
run by nbval inherit these variables from the pytest process.
"""

import os
from pathlib import Path

import medadv_tutorial  # noqa: F401  first: pins the CPU math libraries (numerics) before numpy loads
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MEDADV_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("MEDADV_CACHE", str(REPO / ".cache" / "medadv"))
os.environ.setdefault("MEDADV_PROFILE", "ci")
torch.set_num_threads(int(os.environ.get("MEDADV_TEST_THREADS", "1")))
