"""Scoring speed of the torch detectors against their scipy / scikit-learn references.

Usage::

    python benchmarks/bench_detectors.py                    # CUDA if available, else CPU
    python benchmarks/bench_detectors.py --device cpu --threads 1 --repeats 3

On the same random features (``--n-train`` clean training rows, ``--n-test`` rows to
score, ``--dim`` columns; defaults 2000, 2000, 1280 = EfficientNet-Lite0 penultimate
width) it times *scoring only*; every fitted object -- ours and the reference -- is built
before the timed region:

=====  ==========================================  ==============================================  ====
name   ours                                        reference                                       goal
=====  ==========================================  ==============================================  ====
MGM    ``MGM.score``                               frozen ``scipy.stats.multivariate_normal``      10x
                                                   ``.logpdf``
MAHA   ``Mahalanobis.score`` (2 classes)           one frozen ``multivariate_normal`` per class,   10x
                                                   ``.logpdf``, min over classes
KD     ``KD.score`` (one class)                    ``sklearn KernelDensity.score_samples``         20x
LID    ``LID.score`` (k = 20)                      ``sklearn NearestNeighbors.kneighbors`` + the   5x
                                                   MLE formula in numpy
=====  ==========================================  ==============================================  ====

Ours run on ``--device`` (with a synchronisation before and after each call), the
references on the CPU.  Each of ours gets ``--warmup`` untimed calls (CUDA context and
kernels); then ``--repeats`` timed calls of each alternate, and the script prints the
median times, the ratio reference / ours (higher = ours faster) and the largest
difference between the two results (a check that both compute the same thing).
``--threads`` sets the CPU threads of torch *and* of numpy's BLAS (through threadpoolctl,
a scikit-learn dependency), so a CPU comparison is like for like.

The goals are for a GPU.  On a CPU both sides of MGM / MAHA are one float64 BLAS-3 call
(a triangular solve against scipy's matrix product), so expect parity there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medadv_tutorial import detectors as D  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def compare(name, ours, reference, device, repeats, warmup, goal):
    for _ in range(warmup):
        timed(ours, device)
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t, a = timed(ours, device)
        t_ours.append(t)
        t, b = timed(reference, torch.device("cpu"))
        t_ref.append(t)
    a = a.detach().cpu().double().numpy()
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    ratio = mr / mo
    print(f"{name:5s} ours {mo * 1e3:9.1f} ms   reference {mr * 1e3:9.1f} ms   ratio {ratio:7.1f}x "
          f"(goal >= {goal}x: {'met' if ratio >= goal else 'not met'})   max |diff| {diff:.2e} "
          f"(values up to {scale:.3g})")
    return ratio


def main(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--k", type=int, default=20, help="LID neighbours")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS (default: libraries')")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import scipy.stats
    from sklearn.neighbors import KernelDensity, NearestNeighbors
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    device = torch.device(args.device)

    # correlated features with a spectrum like real ones: a few large directions, a long tail
    g = np.random.default_rng(args.seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(args.dim) / 10.0)
    basis, _ = np.linalg.qr(g.standard_normal((args.dim, args.dim)))
    mix = basis * scales
    train = g.standard_normal((args.n_train, args.dim)) @ mix.T
    test = g.standard_normal((args.n_test, args.dim)) @ mix.T + 0.05
    labels = (train[:, 0] > np.median(train[:, 0])).astype(np.int64)
    train_t = torch.as_tensor(train, dtype=torch.float32, device=device)
    test_t = torch.as_tensor(test, dtype=torch.float32, device=device)
    labels_t = torch.as_tensor(labels, device=device)
    train32, test32 = train_t.cpu().double().numpy(), test_t.cpu().double().numpy()  # the same float32 values

    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, threads torch={torch.get_num_threads()}"
          f"{', blas=' + str(args.threads) if args.threads else ''}; n_train {args.n_train}, "
          f"n_test {args.n_test}, d {args.dim}")

    # ---- fitted objects, outside the timed region ----
    reg = 1e-3
    mgm = D.MGM(reg=reg).fit(train_t)
    mvn = scipy.stats.multivariate_normal(mgm.mean_.cpu().numpy(), mgm.covariance_.cpu().numpy())

    maha = D.Mahalanobis(reg=reg).fit(train_t, labels_t)
    sigma = maha.covariance_.cpu().numpy()
    mvns = [scipy.stats.multivariate_normal(m, sigma) for m in maha.means_.cpu().numpy()]
    const = -0.5 * (np.linalg.slogdet(sigma)[1] + args.dim * np.log(2 * np.pi))

    def maha_reference():
        return np.min([-2.0 * (m.logpdf(test32) - const) for m in mvns], axis=0)

    # bandwidth of the order of the typical distance, so the density is well resolved
    h = float(np.sqrt(np.median(np.sum((train32[:200, None] - train32[None, 200:400]) ** 2, -1)) / 2.0))
    kd = D.KD(bandwidth=h).fit(train_t)
    kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(train32)

    lid = D.LID(k=args.k).fit(train_t)
    nn = NearestNeighbors(n_neighbors=args.k).fit(train32)

    def lid_reference():
        r, _ = nn.kneighbors(test32)
        return -args.k / np.sum(np.log(r / r[:, -1:]), axis=1)

    ratios = {
        "MGM": compare("MGM", lambda: mgm.score(test_t), lambda: -mvn.logpdf(test32), device,
                       args.repeats, args.warmup, 10),
        "MAHA": compare("MAHA", lambda: maha.score(test_t), maha_reference, device, args.repeats, args.warmup, 10),
        "KD": compare("KD", lambda: kd.score(test_t), lambda: -kde.score_samples(test32), device,
                      args.repeats, args.warmup, 20),
        "LID": compare("LID", lambda: lid.score(test_t), lid_reference, device, args.repeats, args.warmup, 5),
    }
    print("ratios (reference / ours): " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    return ratios


if __name__ == "__main__":
    main()
