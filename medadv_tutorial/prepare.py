"""Train (or find in the cache) every model the book uses, several at a time.

Usage::

    python -m medadv_tutorial.prepare                 # the book's models, 2 processes
    python -m medadv_tutorial.prepare --jobs 1 chest_xray

Each chapter trains the models it needs when they are missing, so this step is optional;
it only makes the first run of the book faster on a multi-core machine (each process
uses the profile's thread count, so ``--jobs`` should not exceed cores / threads).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import time

# (data set, seed, backbone); None = the profile's backbone.  Chest X-ray's seed-1 model and its
# EfficientNet-Lite2 model are Chapter 4's black-box substitutes (same architecture, another one),
# PneumoniaMNIST is Chapter 2's resolution-matched control; the other seed-1 models give Chapter 7
# its transferred directions.  Longest first.
BOOK_MODELS = (("cifar10", 0, None), ("cifar10", 1, None), ("chest_xray", 0, "efficientnet_lite2"),
               ("chest_xray", 0, None), ("chest_xray", 1, None), ("pneumoniamnist", 0, None),
               ("pneumoniamnist", 1, None), ("retinamnist", 0, None), ("retinamnist", 1, None))

# Chapter 7's capacity sweep (medadv_tutorial/capacity.py): (data set, sweep model), longest first.
SWEEP_MODELS = tuple((d, n) for n in ("efficientnet_lite2", "efficientnet_lite0", "cnn32", "cnn16", "cnn8", "cnn4")
                     for d in ("cifar10", "pneumoniamnist"))


def _set_process_state() -> str:
    """What prepare sets on purpose, in its own process and in each (spawned) worker, before numpy
    loads: the CPU numerics pin and the retained allocator; returns the line saying so."""
    from . import numerics
    from .allocator import retain_freed_memory

    numerics.pin()
    return f"{numerics.report()}; {retain_freed_memory()}"


def _one(dataset: str, profile_name: str | None, seed: int, backbone: str | None = None) -> tuple[str, dict]:
    """Train or load one model in a worker process; returns its name and a short summary."""
    _set_process_state()  # workers are spawned: nothing is inherited
    from .profiles import get_profile
    from .training import get_model

    t0 = time.perf_counter()
    _, rec = get_model(dataset, profile=get_profile(profile_name), seed=seed, backbone=backbone, progress=False)
    name = f"{dataset} (seed {seed}" + (f", {backbone})" if backbone else ")")
    return name, {"accuracy": rec["test"]["accuracy"], "cached": rec["cached"], "seconds": time.perf_counter() - t0}


def _one_sweep(dataset: str, profile_name: str | None, name: str) -> tuple[str, dict]:
    """Train and measure one capacity-sweep model in a worker process (or find it in the cache)."""
    _set_process_state()
    from .capacity import sweep_model

    t0 = time.perf_counter()
    row = sweep_model(dataset, name, profile=profile_name)
    return f"{dataset} at 28 px ({name}, capacity sweep)", {"accuracy": row["accuracy"], "cached": row["cached"],
                                                            "seconds": time.perf_counter() - t0}


def prepare(models=BOOK_MODELS, jobs: int = 2, profile: str | None = None, sweep=SWEEP_MODELS) -> dict[str, dict]:
    """Make sure a checkpoint exists for each ``(data set, seed, backbone)`` of ``models`` (backbone
    ``None``: the profile's) and each ``(data set, sweep model)`` of ``sweep``; returns ``{name: summary}``."""
    print(f"prepare sets (on purpose), here and in each worker: {_set_process_state()}; "
          "each model is trained with its own seed and the profile's thread count", flush=True)
    out = {}
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_one, d, profile, s, b) for d, s, b in models]
        futures += [pool.submit(_one_sweep, d, profile, n) for d, n in sweep]
        for fut in cf.as_completed(futures):
            name, summary = fut.result()
            out[name] = summary
            state = "cached" if summary["cached"] else "trained"
            print(f"{name}: {state}, test accuracy {summary['accuracy']:.3f} ({summary['seconds']:.0f} s)", flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", help="data sets (default: every model the book uses)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--profile", default=None, help="ci, full or smoke (default: $MEDADV_PROFILE, else ci)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data sets named on the command line")
    parser.add_argument("--backbone", default=None, help="backbone for the data sets named on the command line "
                                                         "(default: the profile's)")
    args = parser.parse_args(argv)
    models = [(d, args.seed, args.backbone) for d in args.datasets] if args.datasets else list(BOOK_MODELS)
    prepare(models, args.jobs, args.profile, sweep=() if args.datasets else SWEEP_MODELS)


if __name__ == "__main__":
    main()
