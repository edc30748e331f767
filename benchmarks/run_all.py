"""Every kernel benchmark in one run and one table: our time, the reference's, and our share of matmul throughput.

Usage::

    python benchmarks/run_all.py                           # CUDA if available, else CPU; default sizes
    python benchmarks/run_all.py --device cpu --threads 1  # like for like on one CPU core
    python benchmarks/run_all.py --device cpu --tiny --threads 1   # tiny sizes, well under a minute

For each kernel the table gives our time per call, the reference's, the ratio
reference / ours (higher = ours faster), and our achieved FLOP rate as a fraction of the
machine's matmul throughput in the same dtype, measured at the start of the same run
(``torch.mm`` of two square matrices on the same device with the same threads), beside
the goals of the issue:

==================  ==================================  =========================  ===========================
kernel              reference                           FLOPs per call of ours     goals
==================  ==================================  =========================  ===========================
MGM scoring         scipy ``multivariate_normal``       2 n d^2                    GPU >= 10x; CPU >= 60% of
                    ``.logpdf``                                                    matmul
MAHA scoring        the same, one per class, min        2 n d^2                    GPU >= 10x; CPU >= 60%
KD scoring          sklearn ``KernelDensity``           2 n m d                    GPU >= 20x
LID scoring         sklearn ``NearestNeighbors`` + MLE  2 n m d                    GPU >= 5x
EM K=2, EM K=8      sklearn ``GaussianMixture``         4 N K d^2 + 4/3 K d^3      GPU >= 50x
                    (per iteration)                     per iteration
EM E-step           sklearn ``GaussianMixture._e_step`` 2 N K d^2                  CPU >= 60%
PGD step            ``torchattacks.PGD`` (optional)     counted, see below         GPU: ours <= 1.05x theirs;
                                                                                   before (NCHW weights) and
                                                                                   after (channels-last)
PGD+HFC step        our plain PGD step                  counted, see below         HFC <= 1.3x PGD
==================  ==================================  =========================  ===========================

FLOP counts (leading terms; element-wise work, exponentials and selections not counted):

* MGM / MAHA: scoring n rows of d features is one product ``(x - c) U`` with the d x d
  precision factor ``U = R^-T`` of the (tied) covariance ``R R^T``
  (:mod:`medadv_tutorial.gaussian`, the kernel of the EM E step too; ``U`` is triangular
  but multiplied as a dense matrix, as scipy's ``logpdf`` does): ``2 n d^2`` FLOPs.
* KD / LID: the squared distances of n rows to m reference rows by one matrix product,
  ``2 n m d`` (then a logsumexp or a top-k over m per row).
* EM iteration on N rows, K components, d features: the E step whitens all rows for all
  components in one product, ``2 N K d^2``; the M step forms the K weighted covariances,
  ``2 N K d^2`` (plus ``2 N K d`` for the means), then a Cholesky factorisation
  (``d^3 / 3``) and a triangular inverse (a solve with d right-hand sides, ``d^3``) per
  component: ``4 N K d^2 + 4/3 K d^3`` per iteration.  The E step alone: ``2 N K d^2``.
* PGD and PGD+HFC steps: one forward pass and the gradient with respect to the input
  (weights frozen, as in the attack), counted by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products, about twice the forward FLOPs; for PGD+HFC also the
  HFC energy's whitening products), per image batch and step.

Detectors score in float64 by design (the package casts features to float64), so they
have float64 rows only.  EM and the E step also run in float32 (``GaussianMixture(dtype=
torch.float32)``); their float32 rows give the largest relative difference to the
float64 results and the tolerance accepted.  The attack steps run in the model's float32.

The EM comparison is honest: both libraries start from the *same* parameters (K random
data points as means, equal weights, the precision of all the data; see
``bench_hfc.shared_init``) on overlapping clusters, run to the same ``tol`` (1e-4, at
most 60 iterations), and the script fails (AssertionError, exit status 1) when either
ran fewer than 20 iterations or their final average log-likelihoods differ by more than
0.1%.  Times of EM are per iteration.

The goals are the issue's: on a GPU the ratios against the references; on a CPU, where
both sides of MGM / MAHA / the E step are BLAS-3 calls, 60% of matmul throughput.  Each
goal is judged only on the device it is meant for.  Times are medians of ``--repeats``
runs (references interleaved with ours), with a device synchronisation around each call,
after an untimed warm-up.  ``--threads`` sets torch's CPU threads and numpy's BLAS
threads (threadpoolctl) alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medadv_tutorial import numerics as _numerics  # noqa: E402

_numerics.pin()  # on purpose, first: the CPU numerics pin, before numpy loads
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench_detectors  # noqa: E402
import bench_hfc  # noqa: E402
import bench_pgd  # noqa: E402
from medadv_tutorial.numerics import PIN  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    matmul: int  # side of the square matrices of the throughput measurement (CPU; x4 on a GPU)
    n_train: int  # detectors: reference rows m (and fitting rows)
    n_test: int  # detectors: rows scored, n
    dim: int  # detectors: features d
    k: int  # LID neighbours
    em_n: int  # EM: rows N
    em_dim: int  # EM: features d
    batch: int  # attack steps: images per batch
    size: int  # attack steps: image side (pixels)
    steps: int  # attack steps per timed call
    fit_samples: int  # HFC mixtures: random feature vectors per fit
    max_width: int | None  # HFC: skip taps wider than this


SIZES = {
    "default": Sizes(matmul=2048, n_train=2000, n_test=2000, dim=1280, k=20, em_n=10000, em_dim=64,
                     batch=32, size=128, steps=5, fit_samples=400, max_width=None),
    "tiny": Sizes(matmul=512, n_train=200, n_test=200, dim=64, k=20, em_n=2000, em_dim=16,
                  batch=2, size=32, steps=2, fit_samples=40, max_width=320),
}

CPU_PEAK_GOAL = 0.60  # MGM / MAHA scoring and the EM E step, on a CPU: >= 60% of matmul throughput
F32_EM_RTOL = bench_hfc.F32_LL_RTOL
F32_ESTEP_TOL = bench_hfc.F32_ESTEP_TOL


@dataclass(frozen=True)
class Goal:
    """A goal for reference time / our time, and the device type it is meant for (None = any)."""

    min_ratio: float
    device: str | None
    text: str


GPU = "cuda"
GOALS = {
    "MGM": Goal(10, GPU, ">=10x on GPU"),
    "MAHA": Goal(10, GPU, ">=10x on GPU"),
    "KD": Goal(20, GPU, ">=20x on GPU"),
    "LID": Goal(5, GPU, ">=5x on GPU"),
    "EM": Goal(50, GPU, ">=50x on GPU"),
    "PGD": Goal(1 / 1.05, GPU, ">=0.95x on GPU"),  # ours <= 1.05 x torchattacks
    "HFC": Goal(1 / 1.3, None, ">=0.77x"),  # PGD+HFC <= 1.3 x PGD (bench_hfc)
}


@dataclass
class Row:
    """One line of the table; times in seconds per call (per iteration for EM, per step for attacks)."""

    kernel: str
    dtype: str
    flops: float
    t_ours: float
    reference: str
    t_ref: float | None  # None: skipped (``skip`` says why)
    goal: Goal | None = None
    peak_goal: float | None = None  # CPU goal: fraction of matmul throughput
    notes: str = ""
    skip: str = ""
    ratio: float | None = None  # reference / ours when not t_ref / t_ours (a median of paired ratios)

    def speedup(self) -> float:
        return self.ratio if self.ratio is not None else self.t_ref / self.t_ours


# ---------------------------------------------------------------------------------- helpers


def matmul_throughput(dtype: torch.dtype, device: torch.device, size: int, repeats: int) -> float:
    """FLOP/s of ``torch.mm`` of two (size, size) matrices in ``dtype``: 2 size^3 / median seconds."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g, dtype=dtype).to(device)
    b = torch.randn(size, size, generator=g, dtype=dtype).to(device)
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)  # warm-up
    t = statistics.median(bench_detectors.timed(lambda: torch.mm(a, b, out=out), device)[0] for _ in range(repeats))
    return 2.0 * size**3 / t


def attack_step_flops(model, x: torch.Tensor, y: torch.Tensor, forward=None, extra_loss=None) -> float:
    """FLOPs of one attack step on the batch ``x`` (N, C, H, W): forward + gradient w.r.t. ``x``.

    Counted by ``FlopCounterMode`` (convolutions and matrix products) on the computation one
    step of the attack loop performs: the weights frozen (``attack_mode``), the
    cross-entropy of the logits minus the optional ``extra_loss(x, logits, aux)``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from medadv_tutorial.attacks import attack_mode

    run = forward if forward is not None else (lambda m, inputs: (m(inputs), None))
    with attack_mode(model), torch.enable_grad(), FlopCounterMode(display=False) as counter:
        xa = x.detach().clone().requires_grad_(True)
        logits, aux = run(model, xa)
        objective = F.cross_entropy(logits, y, reduction="sum")
        if extra_loss is not None:
            objective = objective - extra_loss(xa, logits, aux).sum()
        objective.backward()
    return float(counter.get_total_flops())


def em_iteration_flops(n: int, d: int, K: int) -> float:
    """FLOPs of one EM iteration (module docstring): ``4 N K d^2 + 4/3 K d^3``."""
    return 4.0 * n * K * d * d + 4.0 / 3.0 * K * d**3


# ---------------------------------------------------------------------------------- kernels


def detector_rows(s: Sizes, device: torch.device, repeats: int) -> list[Row]:
    """MGM, MAHA, KD and LID scoring (``bench_detectors``), float64."""
    train, test, labels = bench_detectors.make_features(s.n_train, s.n_test, s.dim)
    rows = []
    for name, kp in bench_detectors.detector_kernels(train, test, labels, device, s.k).items():
        m = bench_detectors.measure(kp.ours, kp.reference, device, repeats, warmup=1)
        rows.append(Row(f"{name} scoring", "float64", kp.flops, m.t_ours, kp.reference_name, m.t_ref,
                        GOALS[name], CPU_PEAK_GOAL if name in ("MGM", "MAHA") else None,
                        f"max|ours-ref| {m.max_diff:.1e} of {m.scale:.2g}"))
    return rows


def em_rows(s: Sizes, device: torch.device, repeats: int, failures: list[str]) -> list[Row]:
    """EM K=2 and K=8 and the E step alone (K=8) (``bench_hfc``), float64 and float32.

    EM times are per iteration.  A failed honesty check (iterations, log-likelihoods) is
    appended to ``failures``.
    """
    X = bench_hfc.em_problem(s.em_n, s.em_dim)
    rows = []
    for K in (2, 8):
        em = bench_hfc.compare_em(X, K, device, repeats=repeats)  # the last one (K=8) also serves the E step
        try:
            em.check()
            verdict = "OK"
        except AssertionError as err:
            failures.append(str(err))
            verdict = "FAILED"
        flops = em_iteration_flops(s.em_n, s.em_dim, K)
        it, conv = em.n_iter, em.converged
        ref = f"sklearn GaussianMixture ({it['sklearn']} it)"
        rows.append(Row(
            f"EM K={K}", "float64", flops, em.time_per_iter("float64"), ref, em.time_per_iter("sklearn"),
            GOALS["EM"], None, ratio=em.ratio("float64"), notes=
            f"iterations ours {it['float64']}, sklearn {it['sklearn']} (converged {conv['float64']}, "
            f"{conv['sklearn']}); avg loglik {em.loglik['float64']:.8g} vs {em.loglik['sklearn']:.8g}: "
            f"agree to {em.rel_diff('float64', 'sklearn'):.1e} (tol {bench_hfc.LL_RTOL:g}) {verdict}"))
        d32 = em.rel_diff("float32", "float64")
        rows.append(Row(
            f"EM K={K}", "float32", flops, em.time_per_iter("float32"), ref, em.time_per_iter("sklearn"),
            GOALS["EM"], None, ratio=em.ratio("float32"), notes=
            f"iterations {it['float32']}; avg loglik vs float64: rel diff {d32:.1e} "
            f"(tol {F32_EM_RTOL:g}) {'OK' if d32 <= F32_EM_RTOL else 'EXCEEDED'}"))
    es = bench_hfc.compare_estep(X, em, device, repeats=max(repeats, 5))
    flops = 2.0 * s.em_n * 8 * s.em_dim**2
    rows.append(Row(
        "EM E-step", "float64", flops, es.time("float64"), "sklearn GaussianMixture._e_step", es.time("sklearn"),
        None, CPU_PEAK_GOAL, ratio=es.ratio("float64"), notes=
        f"K=8; vs sklearn: loglik rel diff {es.loglik_rel_diff['sklearn']:.1e}, "
        f"max|resp diff| {es.resp_max_diff['sklearn']:.1e}"))
    worst = max(es.loglik_rel_diff["float32"], es.resp_max_diff["float32"])
    rows.append(Row(
        "EM E-step", "float32", flops, es.time("float32"), "sklearn GaussianMixture._e_step", es.time("sklearn"),
        None, CPU_PEAK_GOAL, ratio=es.ratio("float32"), notes=
        f"K=8; vs float64: loglik rel diff {es.loglik_rel_diff['float32']:.1e}, max|resp diff| "
        f"{es.resp_max_diff['float32']:.1e} (tol {F32_ESTEP_TOL:g}) {'OK' if worst <= F32_ESTEP_TOL else 'EXCEEDED'}"))
    return rows


def pgd_row(s: Sizes, device: torch.device, repeats: int, before: bool = False) -> Row:
    """Our PGD step vs torchattacks' (``bench_pgd``), EfficientNet-Lite0, 3 channels, float32.

    ``before``: the model's weights in the contiguous (NCHW) format the package used before it
    switched to channels-last (``models.build_model``), for the before/after pair of rows.
    """
    torch.manual_seed(0)
    model, _ = bench_pgd.build("efficientnet_lite0", 2, s.size)
    model = model.to(device).eval()
    if before:
        model = model.to(memory_format=torch.contiguous_format)
    x = torch.rand(s.batch, 3, s.size, s.size, device=device)
    y = torch.randint(0, 2, (s.batch,), device=device)
    r = bench_pgd.time_steps(model, x, y, eps=4 / 255, steps=s.steps, repeats=repeats, warmup=1, device=device)
    flops = attack_step_flops(model, x, y)
    t_theirs = statistics.median(r["theirs"]) if r["theirs"] is not None else None
    ta = r["torchattacks"]
    return Row("PGD step (NCHW, before)" if before else "PGD step", "float32", flops, statistics.median(r["ours"]),
               f"torchattacks {ta.__version__} PGD" if ta is not None else "torchattacks PGD", t_theirs,
               GOALS["PGD"], None, f"batch {s.batch}x3x{s.size}x{s.size}",
               skip="" if ta is not None else "skipped: torchattacks not installed")


def hfc_step_row(s: Sizes, device: torch.device, repeats: int) -> Row:
    """PGD+HFC step vs our plain PGD step (``bench_hfc``), EfficientNet-Lite0, 1 channel, float32."""
    from medadv_tutorial.hfc import HFCLoss, LayerForward

    st = bench_hfc.step_setup(s.size, s.batch, s.fit_samples, device, s.max_width)
    t_pgd, t_hfc, ratios = bench_hfc.time_step_pairs(st, s.steps, repeats, device)
    flops = attack_step_flops(st.model, st.x, st.targets, LayerForward(st.hfc.layers),
                              HFCLoss(st.hfc).bind(st.x, st.targets))
    paired = statistics.median(ratios)  # HFC / PGD of back-to-back pairs: robust to a drifting load
    return Row("PGD+HFC step", "float32", flops, statistics.median(t_hfc), "our PGD step (same model)",
               statistics.median(t_pgd), GOALS["HFC"], None, ratio=1.0 / paired,
               notes=f"{len(st.hfc.layers)} HFC layers; batch {s.batch}x1x{s.size}x{s.size}; "
                     f"ratio = 1 / median of paired HFC/PGD times ({paired:.3f})")


# ---------------------------------------------------------------------------------- table


def verdict(ok: bool) -> str:
    """How a goal fared; a goal meant for another device prints "-"."""
    return "met" if ok else "MISSED"


def format_table(rows: list[Row], peaks: dict[str, float], device: torch.device) -> str:
    """The table: one line per row, columns aligned."""
    header = ("kernel", "dtype", "GFLOP", "ours ms", "reference", "ref ms", "ref/ours", "goal ref/ours",
              "% matmul", "goal % matmul", "notes")
    lines = []
    for r in rows:
        frac = r.flops / r.t_ours / peaks[r.dtype]
        if r.t_ref is None:
            ref_ms, ratio, goal = r.skip, "-", "-"
        else:
            q = r.speedup()
            ref_ms, ratio = f"{r.t_ref * 1e3:.3f}", f"{q:.2f}x"
            goal = "-"
            if r.goal is not None:
                applies = r.goal.device is None or r.goal.device == device.type
                goal = f"{r.goal.text}: {verdict(q >= r.goal.min_ratio) if applies else '-'}"
        peak_goal = "-"
        if r.peak_goal is not None:
            peak_goal = (f">={r.peak_goal:.0%} on CPU: "
                         + (verdict(frac >= r.peak_goal) if device.type == "cpu" else "-"))
        lines.append((r.kernel, r.dtype, f"{r.flops / 1e9:.3g}", f"{r.t_ours * 1e3:.3f}", r.reference, ref_ms,
                      ratio, goal, f"{frac:.1%}", peak_goal, r.notes))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header) - 1)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, 4, 7, 9) else '>'}{w}}}" for i, w in enumerate(widths)) + "  {}"
    out = [fmt.format(*header), "-" * (sum(widths) + 2 * len(widths) + 5)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


# ---------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="CPU threads of torch and of numpy's BLAS (default: torch's)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the whole run in well under a minute on one core")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per kernel (median)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    device = torch.device(args.device)
    s = SIZES["tiny" if args.tiny else "default"]
    t_start = time.perf_counter()

    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    print(f"device {device} ({where}); torch {torch.__version__}, numpy {np.__version__}; "
          f"{args.threads} CPU thread(s) for torch and BLAS; sizes: {'tiny' if args.tiny else 'default'}; "
          f"{args.repeats} timed repeats")
    print("CPU numerics pin: " + ", ".join(f"{k}={os.environ.get(k, '')}" for k in PIN))
    if device.type == "cuda":
        print(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
    size = s.matmul * (4 if device.type == "cuda" else 1)
    peaks = {name: matmul_throughput(dt, device, size, args.repeats)
             for name, dt in (("float64", torch.float64), ("float32", torch.float32))}
    print(f"matmul throughput (torch.mm {size}x{size}, median of {args.repeats}): "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"detectors: n_train (m) {s.n_train}, n_test (n) {s.n_test}, d {s.dim}, LID k {s.k}; float32: n/a "
          "(the detectors compute in float64 by design)")
    print(f"EM: N {s.em_n}, d {s.em_dim}, tol {bench_hfc.EM_TOL:g}, max_iter {bench_hfc.EM_MAX_ITER}, shared start; "
          f"attack steps: batch {s.batch}, {s.size} px, {s.steps} steps per call")
    print(f"float32 vs float64 (accepted): a fitted mixture's average log-likelihood within {F32_EM_RTOL:g} relative "
          f"(the tolerance of the EM check against scikit-learn: {bench_hfc.EM_MAX_ITER} iterations may amplify "
          f"rounding); one E step within {F32_ESTEP_TOL:g} (relative log-likelihood, absolute responsibilities): "
          "float32 keeps ~7 digits, the whitening loses 1-2 of them", flush=True)

    failures: list[str] = []
    rows = detector_rows(s, device, args.repeats)
    rows += em_rows(s, device, args.repeats, failures)
    rows.append(pgd_row(s, device, args.repeats, before=True))
    rows.append(pgd_row(s, device, args.repeats))
    rows.append(hfc_step_row(s, device, args.repeats))

    print()
    print(format_table(rows, peaks, device))
    print(f"\nratio = reference time / our time (higher = ours faster); % matmul = our FLOP/s / the matmul "
          f"throughput above in the same dtype; EM times per iteration, attack times per step.  "
          f"Total {time.perf_counter() - t_start:.0f} s.")
    if failures:
        raise AssertionError("EM comparison failed:\n" + "\n".join(failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
