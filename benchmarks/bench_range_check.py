"""Cost of the model's [0, 1] input check: EfficientNet-Lite0 forward passes with and without it.

Usage::

    python benchmarks/bench_range_check.py                   # CUDA if available, else CPU
    python benchmarks/bench_range_check.py --device cpu --batch 25 --size 128 --repeats 20

``Classifier.normalize`` checks that an input which does not require a gradient lies in
[0, 1] (one ``aminmax`` and one read of two numbers).  This script times, on the same model
and batch, a no-grad forward pass with the check and one with the check replaced by a no-op,
alternating the two ``--repeats`` times after one warm-up each, and prints the median times
and their ratio (goal: <= 1.01).  It also times the attack-step case, a forward and backward
pass with an input that requires a gradient (the check is skipped there), as a reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medadv_tutorial import models  # noqa: E402
from medadv_tutorial.numerics import pin  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    pin()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = models.build_model("efficientnet_lite0", 2, 3, args.size, pretrained=False).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    checked = models.check_unit_range

    def forward(with_check: bool) -> float:
        models.check_unit_range = checked if with_check else (lambda t, name="x": t)
        try:
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                model(x)
            _sync(device)
            return time.perf_counter() - t0
        finally:
            models.check_unit_range = checked

    def attack_step() -> float:
        xa = x.clone().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        model(xa).sum().backward()
        _sync(device)
        return time.perf_counter() - t0

    forward(True), forward(False), attack_step()
    on, off = [], []
    for _ in range(args.repeats):
        on.append(forward(True))
        off.append(forward(False))
    step = statistics.median(attack_step() for _ in range(max(3, args.repeats // 4)))
    t_on, t_off = statistics.median(on), statistics.median(off)
    check = [0.0] * args.repeats
    for i in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        checked(x)
        _sync(device)
        check[i] = time.perf_counter() - t0
    t_check = statistics.median(check)
    print(f"device {device}, batch {args.batch} x 3 x {args.size} x {args.size}, {args.threads} thread(s)")
    print(f"no-grad forward with the range check     {t_on * 1e3:9.2f} ms")
    print(f"no-grad forward without it (reference)   {t_off * 1e3:9.2f} ms")
    print(f"ratio with / without                     {t_on / t_off:9.3f}   (goal <= 1.01; timing noise included)")
    print(f"the check alone                          {t_check * 1e3:9.3f} ms = {t_check / t_off:.2%} of a forward pass")
    print(f"attack step (forward + backward, check skipped)  {step * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
