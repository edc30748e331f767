"""Cost of HFC: torch EM vs scikit-learn, and one PGD+HFC step vs one PGD step.

Usage::

    python benchmarks/bench_hfc.py                     # CUDA if available, else CPU
    python benchmarks/bench_hfc.py --device cpu --threads 2 --repeats 3

Part 1 -- EM.  ``medadv_tutorial.gmm.GaussianMixture`` and scikit-learn's
``GaussianMixture(covariance_type="full")`` fit the same features (``--n`` x ``--dim``,
default 2000 x 256, drawn from an overlapping mixture with a decaying spectrum, like
pooled CNN features) from the same initial parameters (scikit-learn's own k-means
initialisation, passed to both as ``weights_init`` / ``means_init`` /
``precisions_init``), with the same ``tol`` and ``max_iter``, for K = 2 and K = 8.  The
script prints the number of EM iterations and the final average log-likelihood of
both (they must agree), the median fit times and the median ratio scikit-learn / ours
over interleaved runs (goal: >= 5).  Both libraries use the same number of CPU threads (``--threads``; numpy's BLAS
is limited with threadpoolctl).  Ours runs in float64 (the default) and in float32.

Part 2 -- attack step.  ``build_model("efficientnet_lite0", 2, 1, 128)`` (random
weights: timing does not depend on them), HFC mixtures (K = 2) fitted on random pooled
features of *all* 18 taps (stem ... penultimate, up to 1280 channels), a batch of
``--batch`` images with targets 0 and 1.  Targeted ``PGD`` and ``PGD_HFC`` run the same
number of steps, back to back, ``--repeats`` times (the order alternates); the script
prints the median time per step of each and the median of the per-pair ratios
HFC / PGD (goal: <= 1.3), which is robust to other work on a shared machine.

One warm-up call of everything runs outside the timed region; times are medians of
``--repeats`` runs, with a device synchronisation around each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medadv_tutorial.attacks import PGD  # noqa: E402
from medadv_tutorial.features import FeatureSet  # noqa: E402
from medadv_tutorial.gmm import GaussianMixture  # noqa: E402
from medadv_tutorial.hfc import PGD_HFC, fit_hfc_mixtures  # noqa: E402


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


def synthetic_features(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) float64: 4 overlapping clusters, covariance spectrum ~ 1/i (like pooled CNN features)."""
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.arange(1, d + 1)
    parts = []
    for k in range(4):
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        offset = 2.4 * rng.normal(size=d) / np.sqrt(d)
        parts.append((rng.normal(size=(n // 4, d)) * np.sqrt(spectrum)) @ Q.T + offset)
    return np.abs(np.concatenate(parts))  # non-negative, skewed: like pooled post-activation features


def sklearn_kmeans_init(X: np.ndarray, K: int, reg_covar: float, seed: int = 0) -> dict:
    from sklearn.cluster import KMeans

    labels = KMeans(K, n_init=1, random_state=seed).fit(X).labels_
    resp = np.eye(K)[labels]
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    means = resp.T @ X / nk[:, None]
    covs = np.stack([(resp[:, k] * (X - means[k]).T) @ (X - means[k]) / nk[k] for k in range(K)])
    covs += reg_covar * np.eye(X.shape[1])
    return {"weights_init": nk / len(X), "means_init": means, "precisions_init": np.linalg.inv(covs)}


def bench_em(args, device: torch.device) -> dict:
    from sklearn.mixture import GaussianMixture as SkGMM
    from threadpoolctl import threadpool_limits

    X = synthetic_features(args.n, args.dim)
    Xt = torch.from_numpy(X).to(device)
    reg, tol, max_iter = 1e-6, 1e-3, 100
    ratios = {}
    print(f"\n== EM: {args.n} x {args.dim} features, tol={tol:g}, max_iter={max_iter}, reg_covar={reg:g}; "
          f"torch on {device}, scikit-learn on cpu, {args.threads} thread(s) each ==")
    for K in (2, 8):
        init = sklearn_kmeans_init(X, K, reg)
        sk_kw = dict(covariance_type="full", tol=tol, max_iter=max_iter, reg_covar=reg, **init)
        ours_kw = dict(tol=tol, max_iter=max_iter, reg_covar=reg, warn=False, **init)
        f32_kw = dict(ours_kw, dtype=torch.float32)
        Xf = Xt.float()
        runs = {"sklearn": (lambda: SkGMM(K, **sk_kw).fit(X), torch.device("cpu")),
                "float64": (lambda: GaussianMixture(K, **ours_kw).fit(Xt), device),
                "float32": (lambda: GaussianMixture(K, **f32_kw).fit(Xf), device)}
        with threadpool_limits(args.threads):
            sk, ours, f32 = (fn() for fn, _ in runs.values())  # warm-up
            times = {name: [] for name in runs}
            for r in range(args.repeats):  # interleaved, order rotating: robust to a drifting machine load
                names = list(runs)[r % 3:] + list(runs)[:r % 3]
                for name in names:
                    times[name].append(median_time(runs[name][0], runs[name][1], 1))
        r64 = statistics.median(a / b for a, b in zip(times["sklearn"], times["float64"]))
        r32 = statistics.median(a / b for a, b in zip(times["sklearn"], times["float32"]))
        t_sk, t_ours, t_f32 = (statistics.median(times[k]) for k in runs)
        ll_sk, ll_ours, ll_f32 = sk.score(X), ours.score(Xt), f32.score(Xt)
        print(f"K={K}: iterations sklearn {sk.n_iter_}, ours {ours.n_iter_} (float32: {f32.n_iter_})")
        print(f"  avg log-likelihood  sklearn {ll_sk:.10g}  ours float64 {ll_ours:.10g}  ours float32 {ll_f32:.8g}")
        print(f"  fit time  sklearn {t_sk:.3f} s  ours float64 {t_ours:.3f} s  ours float32 {t_f32:.3f} s")
        print(f"  speed-up sklearn / ours (median of interleaved runs): float64 {r64:.2f}x, float32 {r32:.2f}x  "
              "(goal >= 5x)")
        if ours.n_iter_ != sk.n_iter_ or abs(ll_ours - ll_sk) > 1e-6 * abs(ll_sk):
            print("  WARNING: the two fits differ (iterations or log-likelihood)")
        ratios[K] = (r64, r32)
    return ratios


def bench_step(args, device: torch.device) -> float:
    from medadv_tutorial.models import build_model

    model = build_model("efficientnet_lite0", 2, 1, args.size, pretrained=False).to(device).eval()
    with torch.no_grad():
        _, taps = model.forward_features(torch.rand(1, 1, args.size, args.size, device=device))
    widths = OrderedDict((k, v.shape[1]) for k, v in taps.items())
    g = torch.Generator().manual_seed(0)
    n_fit = args.fit_samples
    feats = OrderedDict((k, torch.randn(n_fit, c, generator=g).abs()) for k, c in widths.items())
    labels = torch.arange(n_fit) % 2
    clean = FeatureSet(feats, labels, torch.zeros(n_fit, 2))
    t0 = time.perf_counter()
    hfc = fit_hfc_mixtures(clean, n_components=2, max_iter=20, device=device)
    print(f"\n== attack step: efficientnet_lite0, {args.size} px, batch {args.batch}, {args.steps} steps, "
          f"on {device} ==")
    print(f"HFC mixtures: {len(hfc.layers)} layers x 2 classes, widths {min(widths.values())}..{max(widths.values())}, "
          f"fitted on {n_fit} random feature vectors in {time.perf_counter() - t0:.1f} s")

    x = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    t = (torch.arange(args.batch) % 2).to(device)
    pgd = PGD(4 / 255, steps=args.steps, targeted=True, seed=0)
    hfc_attack = PGD_HFC(hfc, 4 / 255, steps=args.steps, seed=0)
    pgd(model, x, t), hfc_attack(model, x, t)  # warm-up (also casts the mixtures once)
    t_pgd, t_hfc, ratios = [], [], []
    for r in range(args.repeats):  # back-to-back pairs, order alternating: robust to a drifting machine load
        pair = {}
        for name in (("pgd", "hfc") if r % 2 == 0 else ("hfc", "pgd")):
            attack = pgd if name == "pgd" else hfc_attack
            pair[name] = median_time(lambda: attack(model, x, t), device, 1) / args.steps
        t_pgd.append(pair["pgd"])
        t_hfc.append(pair["hfc"])
        ratios.append(pair["hfc"] / pair["pgd"])
    s_pgd, s_hfc, ratio = statistics.median(t_pgd), statistics.median(t_hfc), statistics.median(ratios)
    print(f"time per step (median of {args.repeats})  PGD {s_pgd * 1e3:.1f} ms  PGD+HFC {s_hfc * 1e3:.1f} ms")
    print(f"ratio PGD+HFC / PGD (median of back-to-back pairs) {ratio:.3f}x  (goal <= 1.3x); "
          f"pairs: {', '.join(f'{q:.2f}' for q in ratios)}")
    # the HFC term alone (forward + backward on the taps of one pass), for a low-noise view of its cost
    from medadv_tutorial.hfc import HFCLoss, LayerForward

    with torch.no_grad():
        logits, aux = LayerForward(hfc.layers)(model, x)
    aux = {k: v.detach() for k, v in aux.items()}
    term = HFCLoss(hfc).bind(x, t)

    def hfc_only():
        req = {k: v.clone().requires_grad_(True) for k, v in aux.items()}
        torch.autograd.grad(term(x, logits, req).sum(), list(req.values()))

    hfc_only()
    t_term = median_time(hfc_only, device, max(args.repeats, 5))
    print(f"HFC term alone (energy + its gradient w.r.t. the {len(hfc.layers)} taps): {t_term * 1e3:.1f} ms "
          f"= {100 * t_term / s_pgd:.1f}% of a PGD step")
    return ratio


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch and numpy")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=2000, help="EM: number of feature vectors")
    p.add_argument("--dim", type=int, default=256, help="EM: feature dimension")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--fit-samples", type=int, default=400, help="random feature vectors per mixture fit (both classes)")
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
            print(f"EM speed-up over scikit-learn, K={K}: {r64:.2f}x (float64), {r32:.2f}x (float32)   goal >= 5x")
    if step is not None:
        print(f"PGD+HFC step / PGD step: {step:.3f}x   goal <= 1.3x")


if __name__ == "__main__":
    main()
