"""Cost of HFC: torch EM vs scikit-learn, and one PGD+HFC step vs one PGD step.

Usage::

    python benchmarks/bench_hfc.py                     # CUDA if available, else CPU
    python benchmarks/bench_hfc.py --device cpu --threads 2 --repeats 3

Part 1 -- EM.  ``medadv_tutorial.gmm.GaussianMixture`` and scikit-learn's
``GaussianMixture(covariance_type="full")`` fit the same features (``--n`` x ``--dim``,
default 10000 x 64) for K = 2 and K = 8, from the same initial parameters, with the same
``tol`` (1e-4) and ``max_iter`` (60).  The problem is built so that EM has work to do
(:func:`em_problem`, :func:`shared_init`): four Gaussian clusters with a shared covariance
(spectrum ~ 1/i) whose means are only 3 standard deviations apart, and a start from K
random data points, equal weights and the covariance of all the data for every
component -- EM then needs dozens of iterations.  (Starting from scikit-learn's own k-means
solution, as this benchmark used to, converges in about 2 iterations and times almost no
EM.  With far fewer rows than ``K * dim``, e.g. 2000 x 256, full-covariance components
fit their own noise and EM stops after ~5 iterations whatever the start: hence n >> K d.)
The script prints the number of EM iterations of both and the final average
log-likelihoods, and stops with an AssertionError when fewer than 20 iterations ran or
the log-likelihoods differ by more than 0.1% (relative).  Times are per fit, the speed-up
is per EM iteration (median of interleaved runs; goal: >= 5).  Both libraries use the
same number of CPU threads (``--threads``; numpy's BLAS is limited with threadpoolctl).
Ours runs in float64 (the default) and in float32; the E step alone (our batched kernel
against scikit-learn's ``_e_step``) is timed on the fitted mixture.

Part 2 -- attack step.  ``build_model("efficientnet_lite0", 2, 1, 128)`` (random
weights: timing does not depend on them), HFC mixtures (K = 2) fitted on random pooled
features of *all* 18 taps (stem ... penultimate, up to 1280 channels; ``--max-width``
drops wider ones), a batch of ``--batch`` images with targets 0 and 1.  Targeted ``PGD``
and ``PGD_HFC`` run the same number of steps, back to back, ``--repeats`` times (the order
alternates); the script prints the median time per step of each and the median of the
per-pair ratios HFC / PGD (goal: <= 1.3), which is robust to other work on a shared
machine.

One warm-up call of everything runs outside the timed region; times are medians of
``--repeats`` runs, with a device synchronisation around each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medadv_tutorial.attacks import PGD  # noqa: E402
from medadv_tutorial.features import FeatureSet  # noqa: E402
from medadv_tutorial.gmm import GaussianMixture  # noqa: E402
from medadv_tutorial.hfc import PGD_HFC, HFCLoss, LayerForward, fit_hfc_mixtures  # noqa: E402

EM_TOL = 1e-4  # both libraries stop when the average log-likelihood changes by less than this ...
EM_MAX_ITER = 60  # ... or after this many iterations
MIN_EM_ITER = 20  # fewer iterations would time set-up rather than EM: the check fails
LL_RTOL = 1e-3  # ours (float64) vs scikit-learn: final average log-likelihoods within 0.1%
F32_LL_RTOL = 1e-3  # float32 fit vs float64 fit, final average log-likelihood (run_all reports it;
#                      tests/test_benchmarks.py fails on a float32 row outside it)
F32_ESTEP_TOL = 1e-4  # float32 E step vs float64 E step: relative log-likelihood, absolute responsibilities


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``runs`` (``{name: (fn, device)}``), ``repeats`` rounds, the order rotating.

    Interleaving makes the comparison robust to a machine whose load drifts.
    """
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, device = runs[name]
            times[name].append(median_time(fn, device, 1))
    return times


# ------------------------------------------------------------------------------------- EM


def em_problem(n: int, d: int, *, clusters: int = 4, separation: float = 3.0, seed: int = 0) -> np.ndarray:
    """(n, d) float64 features on which EM converges slowly.

    ``clusters`` equal-sized Gaussian clusters (needs ``d >= clusters``) with one shared
    covariance, spectrum ``1/i`` in a random rotation (like pooled CNN features); the
    cluster means are ``separation`` apart, pairwise, in Mahalanobis distance: the
    clusters overlap, so responsibilities stay soft for many iterations.
    """
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.arange(1, d + 1)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    directions, _ = np.linalg.qr(rng.normal(size=(d, clusters)))  # orthonormal columns
    centres = separation / np.sqrt(2.0) * directions.T  # (clusters, d), pairwise distance = separation
    z = rng.normal(size=(n, d)) + centres[np.arange(n) % clusters]
    return (z * np.sqrt(spectrum)) @ rotation.T


def shared_init(X: np.ndarray, K: int, reg_covar: float, seed: int = 0) -> dict:
    """One starting point for both libraries: scikit-learn's ``weights_init`` / ``means_init`` / ``precisions_init``.

    Equal weights (K,), means = K distinct random rows of ``X`` (K, d), and for every
    component the precision (inverse) of the covariance of all of ``X`` plus
    ``reg_covar * I`` (K, d, d): overlapping components that EM must pull apart.
    """
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(X.shape[0], K, replace=False)]
    precision = np.linalg.inv(np.cov(X.T, bias=True) + reg_covar * np.eye(d))
    return {"weights_init": np.full(K, 1.0 / K), "means_init": means,
            "precisions_init": np.repeat(precision[None], K, axis=0)}


@dataclass
class EMComparison:
    """EM of scikit-learn and ours (float64, float32) on one problem; keys "sklearn", "float64", "float32"."""

    K: int
    n: int
    d: int
    tol: float
    max_iter: int
    models: dict  # the fitted mixtures (the warm-up fits)
    n_iter: dict[str, int]
    converged: dict[str, bool]
    loglik: dict[str, float]  # final average log-likelihood of X under each fit
    times: dict[str, list[float]] = field(default_factory=dict)  # seconds per fit, one per round

    def time_per_iter(self, name: str) -> float:
        """Median seconds per EM iteration (fit time / iterations of that fit)."""
        return statistics.median(self.times[name]) / self.n_iter[name]

    def ratio(self, name: str) -> float:
        """scikit-learn's time per iteration / ``name``'s (median over the interleaved rounds)."""
        return statistics.median((s / self.n_iter["sklearn"]) / (t / self.n_iter[name])
                                 for s, t in zip(self.times["sklearn"], self.times[name]))

    def rel_diff(self, name: str, reference: str) -> float:
        """|loglik[name] - loglik[reference]| / |loglik[reference]|."""
        return abs(self.loglik[name] - self.loglik[reference]) / abs(self.loglik[reference])

    def check(self, min_iter: int = MIN_EM_ITER, rtol: float = LL_RTOL) -> None:
        """AssertionError unless both libraries ran >= ``min_iter`` iterations and their log-likelihoods agree."""
        it_sk, it_ours = self.n_iter["sklearn"], self.n_iter["float64"]
        assert min(it_sk, it_ours) >= min_iter, (
            f"EM K={self.K}: only {it_sk} (scikit-learn) / {it_ours} (ours) iterations ran, fewer than "
            f"{min_iter}: the benchmark would time set-up, not EM (n={self.n}, d={self.d}, tol={self.tol:g}; "
            f"use more rows than K * d)")
        diff = self.rel_diff("float64", "sklearn")
        assert diff <= rtol, (
            f"EM K={self.K}: final average log-likelihoods disagree: scikit-learn {self.loglik['sklearn']:.10g}, "
            f"ours {self.loglik['float64']:.10g} (relative difference {diff:.2e} > {rtol:g})")


def compare_em(X: np.ndarray, K: int, device: torch.device, *, repeats: int, tol: float = EM_TOL,
               max_iter: int = EM_MAX_ITER, seed: int = 0) -> EMComparison:
    """Fit X (n, d) with K components by scikit-learn (CPU) and ours (``device``, float64 and float32).

    Same start (:func:`shared_init`), ``tol``, ``max_iter`` and ``reg_covar`` (1e-3 x the mean
    feature variance, as ``fit_hfc_mixtures``) for all three.  One untimed fit each (the
    fits that are checked), then ``repeats`` interleaved timed rounds.  The caller sets
    the CPU threads.
    """
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    reg = 1e-3 * float(X.var(0).mean())
    common = dict(tol=tol, max_iter=max_iter, reg_covar=reg, **shared_init(X, K, reg, seed=seed + K))
    Xt = torch.from_numpy(X).to(device)
    X32 = Xt.float()
    runs = {"sklearn": (lambda: SkGMM(K, covariance_type="full", **common).fit(X), torch.device("cpu")),
            "float64": (lambda: GaussianMixture(K, warn=False, **common).fit(Xt), device),
            "float32": (lambda: GaussianMixture(K, warn=False, dtype=torch.float32, **common).fit(X32), device)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)  # max_iter reached: reported by converged
        models = {name: fn() for name, (fn, _) in runs.items()}  # warm-up
        times = interleaved_times(runs, repeats)
    return EMComparison(
        K, X.shape[0], X.shape[1], tol, max_iter, models,
        n_iter={k: int(m.n_iter_) for k, m in models.items()},
        converged={k: bool(m.converged_) for k, m in models.items()},
        loglik={"sklearn": float(models["sklearn"].score(X)), "float64": models["float64"].score(Xt),
                "float32": models["float32"].score(X32)},
        times=times)


@dataclass
class EStepComparison:
    """The E step alone on a fitted mixture: seconds per call and the differences of the results."""

    times: dict[str, list[float]]  # "sklearn", "float64", "float32"
    loglik_rel_diff: dict[str, float]  # |mean log-lik - float64's| / |float64's|
    resp_max_diff: dict[str, float]  # max |responsibility - float64's|

    def time(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str) -> float:
        return statistics.median(s / t for s, t in zip(self.times["sklearn"], self.times[name]))


def compare_estep(X: np.ndarray, em: EMComparison, device: torch.device, *, repeats: int) -> EStepComparison:
    """Time one E step -- ``(mean log p(x), log responsibilities (n, K))`` -- of the fitted mixture.

    scikit-learn's ``GaussianMixture._e_step`` (one whitening product per component, CPU)
    against ours (``GaussianMixture._e_step``: one product for all components) on
    ``device`` with our fitted float64 parameters, and with the same parameters cast to
    float32.  The results are compared with our float64 ones.
    """
    sk, ours = em.models["sklearn"], em.models["float64"]
    Xt = torch.from_numpy(X).to(device)
    p64 = (ours.weights_, ours.means_, ours.precisions_cholesky_)
    X32, p32 = Xt.float(), tuple(t.float() for t in p64)
    runs = {"sklearn": (lambda: sk._e_step(X), torch.device("cpu")),
            "float64": (lambda: GaussianMixture._e_step(Xt, *p64), device),
            "float32": (lambda: GaussianMixture._e_step(X32, *p32), device)}
    out = {name: fn() for name, (fn, _) in runs.items()}  # warm-up
    times = interleaved_times(runs, repeats)
    ll64, lr64 = float(out["float64"][0]), out["float64"][1]
    resp64 = torch.exp(lr64).cpu()
    ll_diff, resp_diff = {}, {}
    for name, (ll, lr) in out.items():
        lr = torch.as_tensor(lr).to("cpu", torch.float64)
        ll_diff[name] = abs(float(ll) - ll64) / abs(ll64)
        resp_diff[name] = float((torch.exp(lr) - resp64).abs().max())
    return EStepComparison(times, ll_diff, resp_diff)


def bench_em(args, device: torch.device) -> dict:
    from threadpoolctl import threadpool_limits

    X = em_problem(args.n, args.dim)
    ratios = {}
    print(f"\n== EM: {args.n} x {args.dim} features (4 overlapping clusters), shared start from K random rows, "
          f"tol={EM_TOL:g}, max_iter={EM_MAX_ITER}, reg_covar=1e-3 x mean variance; torch on {device}, "
          f"scikit-learn on cpu, {args.threads} thread(s) each ==")
    for K in (2, 8):
        with threadpool_limits(args.threads):
            em = compare_em(X, K, device, repeats=args.repeats)
            estep = compare_estep(X, em, device, repeats=args.repeats)
        it, ll = em.n_iter, em.loglik
        print(f"K={K}: iterations sklearn {it['sklearn']}, ours {it['float64']} (float32: {it['float32']}); "
              f"converged sklearn {em.converged['sklearn']}, ours {em.converged['float64']}")
        print(f"  avg log-likelihood  sklearn {ll['sklearn']:.10g}  ours float64 {ll['float64']:.10g}  "
              f"ours float32 {ll['float32']:.8g}  (relative difference ours/sklearn "
              f"{em.rel_diff('float64', 'sklearn'):.1e}, float32/float64 {em.rel_diff('float32', 'float64'):.1e})")
        t = {k: statistics.median(v) for k, v in em.times.items()}
        print(f"  fit time  sklearn {t['sklearn']:.3f} s  ours float64 {t['float64']:.3f} s  "
              f"ours float32 {t['float32']:.3f} s")
        r64, r32 = em.ratio("float64"), em.ratio("float32")
        print(f"  speed-up per iteration sklearn / ours (median of interleaved runs): float64 {r64:.2f}x, "
              f"float32 {r32:.2f}x  (goal >= 5x)")
        print(f"  E step alone  sklearn {estep.time('sklearn') * 1e3:.2f} ms  ours float64 "
              f"{estep.time('float64') * 1e3:.2f} ms ({estep.ratio('float64'):.2f}x)  float32 "
              f"{estep.time('float32') * 1e3:.2f} ms ({estep.ratio('float32'):.2f}x)")
        em.check()
        ratios[K] = (r64, r32)
    return ratios


# ------------------------------------------------------------------------------ attack step


@dataclass
class StepSetup:
    """What one PGD / PGD+HFC step needs: model, batch x (B, 1, S, S), targets (B,), fitted HFC mixtures."""

    model: torch.nn.Module
    x: torch.Tensor
    targets: torch.Tensor
    hfc: object  # medadv_tutorial.hfc.HFCModel
    widths: "OrderedDict[str, int]"  # channels of every tap of the model
    n_fit: int
    fit_seconds: float


def step_setup(size: int, batch: int, fit_samples: int, device: torch.device,
               max_width: int | None = None) -> StepSetup:
    """EfficientNet-Lite0 (random weights, 1 channel, ``size`` px) and HFC mixtures (K = 2, classes 0 and 1).

    The mixtures are fitted (``max_iter=20``) on ``fit_samples`` random non-negative
    feature vectors of every tap with at most ``max_width`` channels (all taps if None).
    """
    from medadv_tutorial.models import build_model

    model = build_model("efficientnet_lite0", 2, 1, size, pretrained=False).to(device).eval()
    with torch.no_grad():
        _, taps = model.forward_features(torch.rand(1, 1, size, size, device=device))
    widths = OrderedDict((k, v.shape[1]) for k, v in taps.items())
    g = torch.Generator().manual_seed(0)
    feats = OrderedDict((k, torch.randn(fit_samples, c, generator=g).abs()) for k, c in widths.items())
    labels = torch.arange(fit_samples) % 2
    clean = FeatureSet(feats, labels, torch.zeros(fit_samples, 2))
    t0 = time.perf_counter()
    hfc = fit_hfc_mixtures(clean, n_components=2, max_iter=20, device=device, exclude_wider_than=max_width)
    fit_seconds = time.perf_counter() - t0
    x = torch.rand(batch, 1, size, size, generator=g).to(device)
    targets = (torch.arange(batch) % 2).to(device)
    return StepSetup(model, x, targets, hfc, widths, fit_samples, fit_seconds)


def time_step_pairs(s: StepSetup, steps: int, repeats: int, device: torch.device):
    """Seconds per step of targeted PGD and PGD_HFC, ``repeats`` back-to-back pairs (order alternating).

    Returns ``(pgd [s, ...], hfc [s, ...], hfc / pgd per pair [...])``.
    """
    pgd = PGD(4 / 255, steps=steps, targeted=True, seed=0)
    hfc_attack = PGD_HFC(s.hfc, 4 / 255, steps=steps, seed=0)
    attacks = {"pgd": pgd, "hfc": hfc_attack}
    for attack in attacks.values():  # warm-up (also casts the mixtures once)
        attack(s.model, s.x, s.targets)
    t_pgd, t_hfc, ratios = [], [], []
    for r in range(repeats):  # back-to-back pairs, order alternating: robust to a drifting machine load
        pair = {}
        for name in (("pgd", "hfc") if r % 2 == 0 else ("hfc", "pgd")):
            attack = attacks[name]
            pair[name] = median_time(lambda: attack(s.model, s.x, s.targets), device, 1) / steps
        t_pgd.append(pair["pgd"])
        t_hfc.append(pair["hfc"])
        ratios.append(pair["hfc"] / pair["pgd"])
    return t_pgd, t_hfc, ratios


def hfc_term_seconds(s: StepSetup, repeats: int, device: torch.device) -> float:
    """Median seconds of the HFC term alone: energy + its gradient w.r.t. the taps of one forward pass."""
    with torch.no_grad():
        logits, aux = LayerForward(s.hfc.layers)(s.model, s.x)
    aux = {k: aux[k].detach() for k in s.hfc.layers}  # the constrained taps (the pass also returns others)
    term = HFCLoss(s.hfc).bind(s.x, s.targets)

    def hfc_only():
        req = {k: v.clone().requires_grad_(True) for k, v in aux.items()}
        torch.autograd.grad(term(s.x, logits, req).sum(), list(req.values()))

    hfc_only()
    return median_time(hfc_only, device, repeats)


def bench_step(args, device: torch.device) -> float:
    s = step_setup(args.size, args.batch, args.fit_samples, device, args.max_width)
    used = [s.widths[layer] for layer in s.hfc.layers]
    print(f"\n== attack step: efficientnet_lite0, {args.size} px, batch {args.batch}, {args.steps} steps, "
          f"on {device} ==")
    print(f"HFC mixtures: {len(s.hfc.layers)} layers x 2 classes, widths {min(used)}..{max(used)}, "
          f"fitted on {s.n_fit} random feature vectors in {s.fit_seconds:.1f} s")
    t_pgd, t_hfc, ratios = time_step_pairs(s, args.steps, args.repeats, device)
    s_pgd, s_hfc, ratio = statistics.median(t_pgd), statistics.median(t_hfc), statistics.median(ratios)
    print(f"time per step (median of {args.repeats})  PGD {s_pgd * 1e3:.1f} ms  PGD+HFC {s_hfc * 1e3:.1f} ms")
    print(f"ratio PGD+HFC / PGD (median of back-to-back pairs) {ratio:.3f}x  (goal <= 1.3x); "
          f"pairs: {', '.join(f'{q:.2f}' for q in ratios)}")
    # the HFC term alone (forward + backward on the taps of one pass), for a low-noise view of its cost
    t_term = hfc_term_seconds(s, max(args.repeats, 5), device)
    print(f"HFC term alone (energy + its gradient w.r.t. the {len(s.hfc.layers)} taps): {t_term * 1e3:.1f} ms "
          f"= {100 * t_term / s_pgd:.1f}% of a PGD step")
    return ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch and numpy")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=10000, help="EM: number of feature vectors (>> 8 x dim)")
    p.add_argument("--dim", type=int, default=64, help="EM: feature dimension")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--fit-samples", type=int, default=400, help="random feature vectors per mixture fit (both classes)")
    p.add_argument("--max-width", type=int, default=None, help="HFC: skip taps wider than this (default: none)")
    p.add_argument("--skip-em", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {args.threads} thread(s)"))
    em = bench_em(args, device) if not args.skip_em else None
    step = bench_step(args, device) if not args.skip_step else None
    print("\n== summary ==")
    if em is not None:
        for K, (r64, r32) in em.items():
            print(f"EM speed-up per iteration over scikit-learn, K={K}: {r64:.2f}x (float64), {r32:.2f}x (float32)"
                  "   goal >= 5x")
    if step is not None:
        print(f"PGD+HFC step / PGD step: {step:.3f}x   goal <= 1.3x")


if __name__ == "__main__":
    main()
