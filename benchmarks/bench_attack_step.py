"""The attack step's candidates on the CPU, measured in one run: memory format, batch size, compile.

Usage::

    python benchmarks/bench_attack_step.py                 # the book's setting: 128 px, 1 channel, 1 thread
    python benchmarks/bench_attack_step.py --batches 10 25 50 --steps 5 --repeats 3 --compile
    python benchmarks/bench_attack_step.py --allocator retain     # one table, freed memory retained

One PGD step of the book's EfficientNet-Lite0 (random weights; time does not depend on them) on
grayscale images, with the weights frozen as in the attack, for every combination of

* memory format: ``contiguous`` (NCHW, what the package used before) and ``channels_last``
  (NHWC: the model's weights converted, the images as they come);
* images per batch (``--batches``);
* ``torch.compile`` of the model (``--compile``; inductor's C++ back end, its compile time
  printed separately).

It prints milliseconds per image and step, the ratio to the contiguous run at the same batch
size (higher = faster), and the FLOP rate as a fraction of the machine's float32 matmul rate
measured at the start of the same run.  It also states how far each variant's adversarial
images are from the contiguous ones after the same steps (the formats round differently, so
the trajectories part; a difference of one step size ``alpha`` means a pixel took the other
sign).  By default the whole table is measured twice, each time in a child process: with glibc's
default allocator and with freed memory retained (:mod:`medadv_tutorial.allocator`), and the
ratio of each row is printed.  A last table times one training step (train mode, weight gradients, AdamW) in both
memory formats.  The CPU numerics pin applies as in the book.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_all's FLOP count

from medadv_tutorial import numerics as _numerics  # noqa: E402

_numerics.pin()  # on purpose, first: the CPU numerics pin, before numpy loads
import torch  # noqa: E402

from medadv_tutorial.allocator import retain_freed_memory  # noqa: E402
from medadv_tutorial.attacks import PGD  # noqa: E402
from medadv_tutorial.models import build_model  # noqa: E402
from run_all import attack_step_flops  # noqa: E402


def per_image_step(attack, model, x, y, steps: int, repeats: int) -> float:
    """Median seconds per image and step over ``repeats`` calls (after one untimed call)."""
    attack(model, x, y)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        attack(model, x, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (steps * len(x))


def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    """float32 FLOP/s of ``torch.mm`` on two (size, size) matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(ts)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-batches", type=int, nargs="*", default=[32], help="batch sizes of the training-step rows")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (inductor) of the model")
    p.add_argument("--allocator", choices=["both", "default", "retain"], default="both",
                   help="glibc's default allocator, freed memory retained (medadv_tutorial.allocator), or both: "
                        "each in a child process, then the ratio of every row")
    args = p.parse_args(argv)
    if args.allocator == "both":
        return compare_allocators(argv or sys.argv[1:])
    if args.allocator == "retain":
        print(retain_freed_memory())
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base = build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=args.size,
                       pretrained=False).eval().to(memory_format=torch.contiguous_format)
    nhwc = (build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=args.size,
                        pretrained=False).eval().to(memory_format=torch.channels_last))
    nhwc.load_state_dict(base.state_dict())
    variants = {"contiguous": base, "channels_last": nhwc}
    if args.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(base)
        x0 = torch.rand(2, 1, args.size, args.size, generator=g)
        PGD(1 / 255, steps=1, seed=0)(compiled, x0, torch.zeros(2, dtype=torch.long))
        print(f"torch.compile: first call (compilation) {time.perf_counter() - t0:.1f} s")
        variants["compiled"] = compiled
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size} px, 1 channel, {args.steps} PGD steps per "
          f"call, median of {args.repeats}; float32 matmul rate {rate / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<20} {'batch':>5} {'ms/img/step':>12} {'vs contiguous':>14} {'% matmul':>9} "
          f"{'max|x_adv - contiguous|':>24}")
    results = {}
    for batch in args.batches:
        x = torch.rand(batch, 1, args.size, args.size, generator=g)
        y = torch.randint(0, 2, (batch,), generator=g)
        attack = PGD(4 / 255, steps=args.steps, seed=0)
        flops = attack_step_flops(base, x, y) / batch
        ref_adv = attack(base, x, y)
        for name, model in variants.items():
            t = per_image_step(attack, model, x, y, args.steps, args.repeats)
            results[(name, batch)] = t
            diff = (attack(model, x, y) - ref_adv).abs().max().item()
            print(f"{name:<20} {batch:>5} {1e3 * t:>12.2f} {results[('contiguous', batch)] / t:>13.2f}x "
                  f"{flops / t / rate:>8.1%} {diff:>24.2e}", flush=True)
    print("training step (train mode, AdamW, cross-entropy, weight gradients):")
    for batch in args.train_batches:
        x = torch.rand(batch, 1, args.size, args.size, generator=g)
        y = torch.randint(0, 2, (batch,), generator=g)
        for name in ("contiguous", "channels_last"):
            t = per_image_train_step(variants[name], x, y, args.repeats)
            results[("train:" + name, batch)] = t
            print(f"{'train:' + name:<20} {batch:>5} {1e3 * t:>12.2f} {results[('train:contiguous', batch)] / t:>13.2f}x",
                  flush=True)
    return results


def compare_allocators(argv: list[str]) -> dict:
    """Run this script with ``--allocator default`` and ``--allocator retain`` (child processes: the
    setting is process-wide); print both tables and, per row, default time / retained time."""
    import subprocess

    base = [a for a in argv if not a.startswith("--allocator")]
    tables = {}
    for mode in ("default", "retain"):
        out = subprocess.run([sys.executable, __file__, *base, "--allocator", mode], capture_output=True, text=True,
                             check=True).stdout
        print(f"--- allocator: {mode}\n{out}", flush=True)
        tables[mode] = {tuple(line.split()[:2]): float(line.split()[2]) for line in out.splitlines()
                        if line.split()[:1] and line.split()[0].removeprefix("train:") in
                        ("contiguous", "channels_last", "compiled")}
    print("--- default / retained time per row (higher = retaining freed memory is faster)")
    ratios = {}
    for key, t in tables["default"].items():
        if key in tables["retain"]:
            ratios[key] = t / tables["retain"][key]
            print(f"{key[0]:<20} {key[1]:>5} {ratios[key]:>6.2f}x")
    return ratios


def per_image_train_step(model, x, y, repeats: int) -> float:
    """Median seconds per image of one optimiser step on the batch (after one untimed step); the weights move."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(x)


if __name__ == "__main__":
    main()
