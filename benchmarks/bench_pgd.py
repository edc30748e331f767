"""Time per PGD step: medadv_tutorial.attacks.PGD vs torchattacks.PGD on the same model and batch.

Usage::

    python benchmarks/bench_pgd.py                       # CUDA if available, else CPU
    python benchmarks/bench_pgd.py --device cpu --batch 32 --size 128 --steps 10 --repeats 5

Both attacks run with the same eps, alpha, steps and random start on the same batch; one
warm-up call each happens outside the timed region, then the calls alternate (ours,
theirs, ours, ...) ``--repeats`` times, with a device synchronisation before and after
each call.  The script prints the median time per step of each and the ratio
ours / torchattacks (goal: <= 1.05).  The model is the book's EfficientNet-Lite0
(``medadv_tutorial.models.build_model``, random weights: timing does not depend on them),
or torchvision's MobileNetV3-Small with ``--model mobilenet_v3_small``.  torchattacks is
optional (``pip install --no-deps -r benchmarks/requirements.txt``); without it the script
times ours only and prints ``skipped: torchattacks not installed``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medadv_tutorial.attacks import PGD  # noqa: E402


def build(name: str, num_classes: int, size: int) -> tuple[torch.nn.Module, str]:
    if name in ("auto", "efficientnet_lite0"):
        try:
            from medadv_tutorial.models import build_model

            return build_model("efficientnet_lite0", num_classes=num_classes, image_size=size, pretrained=False), \
                "medadv_tutorial.models.build_model('efficientnet_lite0')"
        except ImportError as err:
            if name != "auto":
                raise
            print(f"(medadv_tutorial.models unavailable: {err}; using mobilenet_v3_small)")
    import torchvision

    net = torchvision.models.mobilenet_v3_small(weights=None)
    net.classifier[-1] = torch.nn.Linear(net.classifier[-1].in_features, num_classes)
    return net, "torchvision mobilenet_v3_small + linear head"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, device) -> float:
    """Seconds of one call of ``fn``, with a device synchronisation before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def load_torchattacks():
    """The ``torchattacks`` module, or ``None`` when it is not installed (it is optional: see requirements.txt)."""
    try:
        import torchattacks
    except ImportError:
        return None
    return torchattacks


def time_steps(model, x, y, *, eps: float, steps: int, repeats: int, warmup: int, device) -> dict:
    """Seconds per PGD step of ours and of torchattacks on the same ``model``, batch ``x`` (N, C, H, W), ``y`` (N,).

    Same eps, ``alpha = eps / 4``, steps and random start for both; ``warmup`` untimed calls
    of each, then ``repeats`` alternating timed calls (ours, theirs, ours, ...).
    Returns ``{"ours": [s, ...], "theirs": [s, ...] or None, "torchattacks": module or None,
    "x_adv": ours' last output}``; ``"theirs"`` is ``None`` when torchattacks is not installed.
    """
    alpha = eps / 4
    ta = load_torchattacks()
    ours = PGD(eps, alpha=alpha, steps=steps, random_start=True)
    runs = {"ours": lambda: ours(model, x, y)}
    if ta is not None:
        theirs = ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        runs["theirs"] = lambda: theirs(x, y)
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timed(run, device) / steps)
    return {"ours": times["ours"], "theirs": times.get("theirs"), "torchattacks": ta, "x_adv": runs["ours"]()}


def main(argv=None) -> float | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128, help="image side length")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each attack first")
    p.add_argument("--eps", type=float, default=4 / 255)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--model", default="auto", choices=["auto", "efficientnet_lite0", "mobilenet_v3_small"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, model_name = build(args.model, args.classes, args.size)
    model = model.to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)

    r = time_steps(model, x, y, eps=args.eps, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                   device=device)
    check = r["x_adv"]
    assert (check - x).abs().max().item() <= args.eps and 0 <= check.min() and check.max() <= 1

    t_ours, t_theirs, ta = r["ours"], r["theirs"], r["torchattacks"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} ({torch.get_num_threads()} threads)"
    print(f"model: {model_name}; device: {name}; torch {torch.__version__}, "
          f"torchattacks {ta.__version__ if ta is not None else 'not installed'}")
    print(f"batch {args.batch}x3x{args.size}x{args.size}, {args.steps} steps, eps={args.eps:.5f}, "
          f"{args.repeats} repeats after {args.warmup} warm-up call(s); median time per step:")
    print(f"  medadv_tutorial PGD : {1e3 * statistics.median(t_ours):8.2f} ms   "
          f"(all: {', '.join(f'{1e3 * t:.1f}' for t in t_ours)})")
    if t_theirs is None:
        print("  torchattacks PGD    : skipped: torchattacks not installed "
              "(pip install --no-deps -r benchmarks/requirements.txt)")
        return None
    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    ratio = med_ours / med_theirs
    print(f"  torchattacks PGD    : {1e3 * med_theirs:8.2f} ms   "
          f"(all: {', '.join(f'{1e3 * t:.1f}' for t in t_theirs)})")
    print(f"  ratio ours/torchattacks = {ratio:.3f}  ({'OK' if ratio <= 1.05 else 'ABOVE'} goal <= 1.05); "
          f"ratio of minima (robust to a busy machine) = {min(t_ours) / min(t_theirs):.3f}")
    return ratio


if __name__ == "__main__":
    main()
