"""Peak host memory of chapter 1's data in the ``full`` profile (224 px): eager vs native resolution.

Usage::

    python benchmarks/memory_full_profile.py                  # n = 5000 of CIFAR-10 train (f = 0.1), ~5 min
    python benchmarks/memory_full_profile.py --n 2000         # a quicker run (f = 0.04)
    python benchmarks/memory_full_profile.py --check-full     # also load the real full splits (after only)

Chapter 1 (``book/01_training.py``) holds the train and test sets of chest X-ray, fundus
(RetinaMNIST) and CIFAR-10 plus PneumoniaMNIST train, then calls ``training.get_model`` for each
task, which loads that task's test and train sets again and iterates them in batches.  This
script replays those loads in a fresh process per run and reads the process's peak resident
memory (``getrusage`` ``ru_maxrss``), minus its resident memory after the imports.

* ``before``: every split resized to 224 px at load time and held as ``uint8``, as the loader did
  until the native-resolution change (the same decoding, then the old resize of the whole split
  in chunks of 256, then the native pixels are dropped).
* ``after``: :func:`medadv_tutorial.data.load_dataset` as it is now (native pixels held,
  resized per batch).

Every split is cut to the same fraction ``f`` of its full size (``f = n / 50,000``, the CIFAR-10
training set), so all memory the loads take grows in proportion to ``f``.  Each mode runs at
``f`` and ``f / 2``; the straight line through the two peaks, taken to ``f = 1``, is the
extrapolated peak of the full splits.  The goal is under 6 GB for chapter 1 in ``full``
(a standard Colab runtime has 12.7 GB).  Training memory is not included: in ``full`` the model's
activations live on the GPU.

Measured on the 2-core CI machine (torch 2.14.1; 0.74 GB resident after the imports):

=========  ===================  ===================  ==========================================
mode       n=2000 (f=0.04)      n=5000 (f=0.1)       measured on the full splits
=========  ===================  ===================  ==========================================
before     19.3 GB              20.2 GB              (does not fit this 23 GB machine)
after      1.5 GB               2.5 GB               1.9 GB (``--check-full``, 3.5 min)
=========  ===================  ===================  ==========================================

With native-resolution images the data are a small part of the peak, so at small ``n`` freed
memory is reused and the line underestimates the slope (1.5 GB against 1.9 GB measured); the
default ``n=5000`` overestimates instead.  The eager loader's peak is dominated by the 224-px
copies and extrapolates steadily.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# Full split sizes (offline data folder; MedMNIST official splits).
FULL = {("chest_xray", "train"): 5216, ("chest_xray", "test"): 624,
        ("retinamnist", "train"): 1080, ("retinamnist", "test"): 400,
        ("cifar10", "train"): 50000, ("cifar10", "test"): 10000,
        ("pneumoniamnist", "train"): 4708}
TASKS = ("chest_xray", "retinamnist", "cifar10")
GB = 1e9


def _rss() -> int:
    """Current resident set size in bytes (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def child(mode: str, frac: float | None) -> dict:
    """Replay chapter 1's loads; ``frac=None`` loads the full splits."""
    import torch

    torch.set_num_threads(1)
    import torch.nn.functional as F

    from medadv_tutorial import data
    from medadv_tutorial.profiles import get_profile

    full = get_profile("full")
    size = full.image_size

    class Eager(torch.utils.data.Dataset):
        """The former loader's result: the whole split resized to ``size`` px, uint8."""

        def __init__(self, ds):
            native = ds.native
            self.images = torch.empty((len(native), native.shape[1], size, size), dtype=torch.uint8)
            for s in range(0, len(native), 256):  # the former data._resize, verbatim
                x = F.interpolate(native[s:s + 256].float(), size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)
                self.images[s:s + 256] = x.round_().clamp_(0, 255).to(torch.uint8)
            self.labels = ds.labels

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i].float().div_(255), int(self.labels[i])

    held = {}

    def load(name, split):
        n = None if frac is None else max(1, round(frac * FULL[name, split]))
        ds = data.load_dataset(name, split, profile=full, n=n)
        if mode == "before":
            ds = Eager(ds)
        held[f"{name}/{split}"] = (ds.images if mode == "before" else ds.native).nbytes
        return ds

    base = _rss()
    t0 = time.perf_counter()
    train_sets = {k: load(k, "train") for k in TASKS}  # noqa: F841  (held, as the chapter holds them)
    test_sets = {k: load(k, "test") for k in TASKS}  # noqa: F841
    pmnist = load("pneumoniamnist", "train")  # noqa: F841
    chapter_sets = sum(held.values())
    for k in TASKS:  # training.get_model(k): test, then train, then training batches
        test = load(k, "test")
        train = load(k, "train")
        loader = torch.utils.data.DataLoader(train, batch_size=full.batch_size, shuffle=True)
        for _, (x, y) in zip(range(3), loader):
            pass
        del test, train, loader, x, y
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "frac": frac, "baseline": base, "peak": peak, "peak_data": peak - base,
            "chapter_sets": chapter_sets, "seconds": time.perf_counter() - t0}


def run_child(mode: str, frac: float | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, __file__, "--child", mode, "full" if frac is None else repr(frac)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="CIFAR-10 training images of the larger run "
                    "(every split gets the same fraction n / 50000 of its size; default 5000)")
    ap.add_argument("--check-full", action="store_true", help="also run 'after' on the full splits")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, frac = a.child
        print(json.dumps(child(mode, None if frac == "full" else float(frac))))
        return
    if not 2 <= a.n <= FULL["cifar10", "train"]:
        raise SystemExit(f"--n must lie in 2..{FULL['cifar10', 'train']}, got {a.n}")
    if not os.environ.get("MEDADV_DATA"):
        print("note: $MEDADV_DATA is unset, so the data sets are downloaded (and JPEG timings differ)")
    f = a.n / FULL["cifar10", "train"]
    print(f"chapter 1 in the 'full' profile (224 px); every split cut to f = {f:.4f} and f/2 of its size")
    print(f"{'mode':7s} {'f':>7s} {'baseline':>9s} {'peak':>8s} {'peak-base':>10s} {'sets held':>10s} {'time':>6s}")
    result = {}
    for mode in ("before", "after"):
        runs = [run_child(mode, f / 2), run_child(mode, f)]
        for r in runs:
            print(f"{mode:7s} {r['frac']:7.4f} {r['baseline'] / GB:8.2f}G {r['peak'] / GB:7.2f}G "
                  f"{r['peak_data'] / GB:9.3f}G {r['chapter_sets'] / GB:9.3f}G {r['seconds']:5.0f}s", flush=True)
        (f1, p1), (f2, p2) = [(r["frac"], r["peak_data"]) for r in runs]
        slope = (p2 - p1) / (f2 - f1)
        result[mode] = (p2 + slope * (1 - f2), runs[1]["baseline"])
    print("\nextrapolated to the full splits (CIFAR-10 50,000 + 10,000; Kermany 5,216 + 624; "
          "RetinaMNIST 1,080 + 400; PneumoniaMNIST train 4,708):")
    for mode, (data_peak, base) in result.items():
        total = data_peak + base
        print(f"  {mode:6s}: data {data_peak / GB:6.2f} GB + process after imports {base / GB:.2f} GB "
              f"= peak {total / GB:6.2f} GB  ({'under' if total < 6 * GB else 'OVER'} the 6 GB goal)")
    if a.check_full:
        r = run_child("after", None)
        print(f"  after, measured on the full splits: data {r['peak_data'] / GB:.2f} GB, peak {r['peak'] / GB:.2f} GB "
              f"(sets held {r['chapter_sets'] / GB:.3f} GB, {r['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
