"""The chapters' CI time budget (``tests/ci_budget.json``), scaled to the machine that runs the tests.

The budget of each chapter is the seconds its nbval run (all cells, ``ci`` profile, in CI's
order and cache state) took on the reference machine named in the file.  Machines differ: the
same CI took 1.3-1.6x longer on some than on others.  So the budget is scaled by a calibration
measured on both machines -- :func:`calibrate`: the seconds of a fixed piece of the chapters'
own work (PGD steps of the book's EfficientNet-Lite0 on one thread) -- and a chapter fails the
run when its measured time exceeds ``TOLERANCE`` times its scaled budget (``tests/conftest.py``
checks at the end of every run that executed chapters).  A change that makes a chapter
expensive is then noticed in the change that makes it; the README's table shows the same
numbers (a test keeps them equal).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

BUDGET_FILE = Path(__file__).resolve().parent / "ci_budget.json"
TOLERANCE = 1.5
"""A chapter fails when it takes more than this many times its (scaled) budget."""


def load(path: Path = BUDGET_FILE) -> dict:
    """The budget file: ``{"reference": {...}, "calibration_s": float, "chapters": {path: seconds}, ...}``."""
    data = json.loads(Path(path).read_text())
    for key in ("reference", "calibration_s", "chapters"):
        if key not in data:
            raise KeyError(f"{path} has no {key!r} entry")
    return data


def calibrate(repeats: int = 3) -> float:
    """Seconds of a fixed workload like the chapters' own (the minimum of ``repeats`` runs).

    Ten PGD steps of the book's EfficientNet-Lite0 (random weights, drawn from a local seed) on
    eight grayscale 128-px images, one thread; the thread count and torch's generator are
    given back.  About a second on the reference machine.
    """
    import torch

    from medadv_tutorial.attacks import PGD
    from medadv_tutorial.models import build_model
    from medadv_tutorial.rng import scoped_threads, seeded_global_rng

    with scoped_threads(1), seeded_global_rng(0):
        model = build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=128, pretrained=False)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8, 1, 128, 128, generator=g)
        y = torch.randint(0, 2, (8,), generator=g)
        attack = PGD(1 / 255, steps=10, seed=0)
        attack(model, x[:2], y[:2])  # warm-up (allocations, oneDNN primitives)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            attack(model, x, y)
            times.append(time.perf_counter() - t0)
    return min(times)


def over_budget(seconds: dict[str, float], budget: dict, calibration_s: float,
                tolerance: float = TOLERANCE) -> list[str]:
    """One message per chapter whose ``seconds`` exceed ``tolerance`` x its budget scaled to this machine.

    ``seconds``: ``{chapter path: measured seconds}`` (other paths are ignored);
    ``calibration_s``: :func:`calibrate` on this machine.  A chapter with no budget is an error.
    """
    if not calibration_s > 0:
        raise ValueError(f"calibration_s must be > 0 seconds, got {calibration_s!r}")
    speed = calibration_s / budget["calibration_s"]  # > 1: this machine is slower than the reference
    out = []
    for path, s in sorted(seconds.items()):
        if not path.endswith(".ipynb"):
            continue
        if path not in budget["chapters"]:
            out.append(f"{path}: no budget in {BUDGET_FILE.name}; add its measured CI time there and in the README")
            continue
        limit = tolerance * budget["chapters"][path] * speed
        if s > limit:
            out.append(f"{path}: {s:.0f} s, over {tolerance:g} x its budget of {budget['chapters'][path]:.0f} s "
                       f"scaled to this machine ({speed:.2f} x the reference's calibration time) = {limit:.0f} s")
    return out


def readme_rows(budget: dict) -> list[str]:
    """The README's budget table rows: chapter, ``ci`` execution time (s), share of the CI run."""
    total = budget["ci_total_s"]
    rows = []
    for path, s in budget["chapters"].items():
        rows.append(f"| `{path}` | {s:.0f} | {s / total:.0%} |")
    return rows

