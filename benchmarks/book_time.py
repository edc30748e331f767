"""Wall time of the book from a clean cache: training the models, then each chapter.

Usage::

    python benchmarks/book_time.py                          # ci profile, all chapters, 2 at a time
    python benchmarks/book_time.py --profile smoke --chapters 01 03 --jobs 1

What it does, in one run:

1. points ``MEDADV_CACHE`` at a new empty folder (models, features: nothing is reused; removed
   afterwards unless ``--keep-cache``);
2. times ``python -m medadv_tutorial.prepare --jobs <jobs>`` (training the profile's models);
3. executes each chapter with ``jupyter nbconvert --execute`` into a temporary folder (the
   stored notebooks are not touched), ``--jobs`` chapters at a time, longest first, and times
   each.

It prints one line per phase and chapter, and the total.  ``bash .ci/run`` prints the same
per-file times for its nbval run (``tests/conftest.py``); this script measures them outside
pytest, e.g. before and after a change to the chapters.  The CPU numerics pin and the data
folder come from the environment as in CI (``MEDADV_DATA`` defaults to ``../shared/data``
beside the checkout).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
# Execution order when two chapters run at once: the longest first (measured, ci profile).
LONGEST_FIRST = ("05", "02", "04", "03", "01")


def run_timed(cmd: list[str], env: dict, log: Path) -> tuple[float, int]:
    """Run ``cmd``, its output into ``log``; return (seconds, exit status)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t0, rc


def main(argv=None) -> int:
    chapters = sorted(p.name for p in BOOK.glob("[0-9][0-9]_*.ipynb"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="ci", help="MEDADV_PROFILE for the run (default: ci)")
    p.add_argument("--chapters", nargs="*", default=None, help="chapter numbers, e.g. 01 05 (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="chapters (and trainings) at a time")
    p.add_argument("--keep-cache", action="store_true", help="keep the temporary model cache")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    wanted = chapters if not args.chapters else [c for c in chapters if c[:2] in set(args.chapters)]
    unknown = set(args.chapters or ()) - {c[:2] for c in chapters}
    if unknown or not wanted:
        p.error(f"unknown chapters {sorted(unknown)}; the book has {[c[:2] for c in chapters]}")
    rank = {n: i for i, n in enumerate(LONGEST_FIRST)}
    wanted.sort(key=lambda c: rank.get(c[:2], len(rank)))

    work = Path(tempfile.mkdtemp(prefix="medadv-book-time."))
    env = dict(os.environ, MEDADV_PROFILE=args.profile, MEDADV_CACHE=str(work / "cache"), PYTHONHASHSEED="0")
    env.setdefault("MEDADV_DATA", str(REPO.parent / "shared" / "data"))
    rows, failed = [], []
    try:
        s, rc = run_timed([sys.executable, "-m", "medadv_tutorial.prepare", "--jobs", str(args.jobs)], env,
                          work / "prepare.log")
        rows.append(("prepare (train the models)", s, rc))
        print(f"{s:8.1f} s  prepare (exit {rc})", flush=True)

        def one(chapter: str):
            cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                   "--ExecutePreprocessor.timeout=7200", "--output-dir", str(work / "out"), str(BOOK / chapter)]
            s, rc = run_timed(cmd, env, work / f"{chapter}.log")
            print(f"{s:8.1f} s  {chapter} (exit {rc})", flush=True)
            return chapter, s, rc

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            rows += list(pool.map(one, wanted))
        chapters_wall = time.perf_counter() - t0
        failed = [name for name, _, rc in rows if rc != 0]
        print(f"\nbook time, profile {args.profile!r}, {args.jobs} at a time, clean cache:")
        for name, s, rc in rows:
            print(f"{s:8.1f} s  {name}" + ("" if rc == 0 else f"  FAILED (log: {work / (name + '.log')})"))
        print(f"{chapters_wall:8.1f} s  chapters, wall time")
        print(f"{rows[0][1] + chapters_wall:8.1f} s  in all")
    finally:
        if args.keep_cache or failed:
            print(f"(cache and logs kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
