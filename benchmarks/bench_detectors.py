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
(a matrix product with the precision factor on both sides), so expect parity there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    """``(seconds, result)`` of one call of ``fn``, with a device synchronisation before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@dataclass
class Measurement:
    """Median times (seconds) of ours and of the reference, and how far their results differ."""

    t_ours: float
    t_ref: float
    max_diff: float  # max |ours - reference| over the output
    scale: float  # max |reference|: the size of the values compared

    @property
    def ratio(self) -> float:
        """Reference time / our time (higher = ours faster)."""
        return self.t_ref / self.t_ours


def measure(ours, reference, device, repeats: int, warmup: int) -> Measurement:
    """Time ``ours`` (on ``device``) and ``reference`` (CPU): ``warmup`` untimed calls of ours, then
    ``repeats`` alternating timed calls of each; medians, and the difference of the last results."""
    for _ in range(warmup):
        timed(ours, device)
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t, a = timed(ours, device)
        t_ours.append(t)
        t, b = timed(reference, torch.device("cpu"))
        t_ref.append(t)
    a = a.detach().cpu().double().numpy()
    return Measurement(statistics.median(t_ours), statistics.median(t_ref),
                       float(np.max(np.abs(a - b))), float(np.max(np.abs(b))))


def compare(name, ours, reference, device, repeats, warmup, goal):
    m = measure(ours, reference, device, repeats, warmup)
    print(f"{name:5s} ours {m.t_ours * 1e3:9.1f} ms   reference {m.t_ref * 1e3:9.1f} ms   ratio {m.ratio:7.1f}x "
          f"(goal >= {goal}x: {'met' if m.ratio >= goal else 'not met'})   max |diff| {m.max_diff:.2e} "
          f"(values up to {m.scale:.3g})")
    return m.ratio


def make_features(n_train: int, n_test: int, dim: int, seed: int = 0):
    """Random features like real penultimate ones: ``(train (n_train, dim), test (n_test, dim), labels (n_train,))``.

    float64 numpy arrays, correlated (a few large directions, a long tail of small ones);
    the test rows are shifted by 0.05; ``labels`` (0/1) split the training rows at the
    median of their first column (two classes for MAHA).
    """
    g = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(dim) / 10.0)
    basis, _ = np.linalg.qr(g.standard_normal((dim, dim)))
    mix = basis * scales
    train = g.standard_normal((n_train, dim)) @ mix.T
    test = g.standard_normal((n_test, dim)) @ mix.T + 0.05
    labels = (train[:, 0] > np.median(train[:, 0])).astype(np.int64)
    return train, test, labels


@dataclass
class KernelPair:
    """One detector's scoring: ours (torch, on the device) and its reference (CPU), both fitted already."""

    name: str
    ours: Callable[[], torch.Tensor]  # () -> (n_test,) scores
    reference: Callable[[], np.ndarray]  # () -> (n_test,) the same scores
    reference_name: str
    flops: float  # floating-point operations of one call of ours (leading term, see detector_kernels)
    goal: float  # GPU goal for reference time / our time


def detector_kernels(train: np.ndarray, test: np.ndarray, labels: np.ndarray, device: torch.device,
                     k: int = 20) -> dict[str, KernelPair]:
    """Fit MGM, MAHA, KD, LID and their references on ``train`` (n_train, d); score ``test`` (n, d).

    Features go to ``device`` as float32 (as the book's features); the references get the
    float64 values of those same float32 numbers.  Everything is fitted here, outside any
    timed region.  FLOPs of one scoring call of ours (n = n_test rows, d columns,
    m = n_train reference rows; leading terms, the O(n d) and O(n m) element-wise parts
    are left out):

    * MGM: the whitening product ``(x - c) U`` with the d x d precision factor
      ``U = R^-T`` (:mod:`medadv_tutorial.gaussian`; triangular, multiplied as a dense
      matrix): ``2 n d^2``.
    * MAHA: the same product (one tied covariance), then C class distances: ``2 n d^2``.
    * KD: squared distances to the m kernel centres by one matrix product: ``2 n m d``
      (plus the logsumexp over m, not counted).
    * LID: squared distances to the m reference rows by one matrix product: ``2 n m d``
      (plus a top-k selection, not counted).
    """
    import scipy.stats
    from sklearn.neighbors import KernelDensity, NearestNeighbors

    n, d = test.shape
    m = train.shape[0]
    train_t = torch.as_tensor(train, dtype=torch.float32, device=device)
    test_t = torch.as_tensor(test, dtype=torch.float32, device=device)
    labels_t = torch.as_tensor(labels, device=device)
    train32, test32 = train_t.cpu().double().numpy(), test_t.cpu().double().numpy()  # the same float32 values

    reg = 1e-3
    mgm = D.MGM(reg=reg).fit(train_t)
    mvn = scipy.stats.multivariate_normal(mgm.mean_.cpu().numpy(), mgm.covariance_.cpu().numpy())

    maha = D.Mahalanobis(reg=reg).fit(train_t, labels_t)
    sigma = maha.covariance_.cpu().numpy()
    mvns = [scipy.stats.multivariate_normal(mu, sigma) for mu in maha.means_.cpu().numpy()]
    const = -0.5 * (np.linalg.slogdet(sigma)[1] + d * np.log(2 * np.pi))

    def maha_reference():
        return np.min([-2.0 * (mv.logpdf(test32) - const) for mv in mvns], axis=0)

    # bandwidth of the order of the typical distance, so the density is well resolved
    half = min(200, m // 2)
    h = float(np.sqrt(np.median(np.sum((train32[:half, None] - train32[None, half:2 * half]) ** 2, -1)) / 2.0))
    kd = D.KD(bandwidth=h).fit(train_t)
    kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(train32)

    lid = D.LID(k=k).fit(train_t)
    nn = NearestNeighbors(n_neighbors=k).fit(train32)

    def lid_reference():
        r, _ = nn.kneighbors(test32)
        return -k / np.sum(np.log(r / r[:, -1:]), axis=1)

    return {
        "MGM": KernelPair("MGM", lambda: mgm.score(test_t), lambda: -mvn.logpdf(test32),
                          "scipy multivariate_normal.logpdf", 2 * n * d * d, 10),
        "MAHA": KernelPair("MAHA", lambda: maha.score(test_t), maha_reference,
                           "scipy multivariate_normal.logpdf x2", 2 * n * d * d, 10),
        "KD": KernelPair("KD", lambda: kd.score(test_t), lambda: -kde.score_samples(test32),
                         "sklearn KernelDensity.score_samples", 2 * n * m * d, 20),
        "LID": KernelPair("LID", lambda: lid.score(test_t), lid_reference,
                          "sklearn NearestNeighbors + numpy", 2 * n * m * d, 5),
    }


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

    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    device = torch.device(args.device)
    train, test, labels = make_features(args.n_train, args.n_test, args.dim, args.seed)

    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, threads torch={torch.get_num_threads()}"
          f"{', blas=' + str(args.threads) if args.threads else ''}; n_train {args.n_train}, "
          f"n_test {args.n_test}, d {args.dim}")

    # ---- fitted objects, outside the timed region ----
    kernels = detector_kernels(train, test, labels, device, args.k)
    ratios = {name: compare(name, kp.ours, kp.reference, device, args.repeats, args.warmup, kp.goal)
              for name, kp in kernels.items()}
    print("ratios (reference / ours): " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    return ratios


if __name__ == "__main__":
    main()
