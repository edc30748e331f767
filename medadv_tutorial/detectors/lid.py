"""Local intrinsic dimensionality (LID, Ma et al. 2018): the MLE over k nearest neighbours."""

from __future__ import annotations

import torch

from ..checks import check_features
from .base import Detector, _CHUNK_ELEMENTS, _compute_device, _f64, _on
from .kernel_density import _pairwise_sq_dist


def lid_mle(features: torch.Tensor, reference: torch.Tensor, k: int = 20, *, exclude_self: bool = False
            ) -> torch.Tensor:
    """Maximum-likelihood LID estimate of each row of ``features`` among ``reference``.

    With ``r_1 <= ... <= r_k`` the Euclidean distances to the ``k`` nearest reference
    points (Ma et al., ICLR 2018, after Amsaleg et al. 2015)::

        LID(y) = -( (1/k) sum_{i=1..k} log(r_i / r_k) )^-1

    in ``[0, inf)``; a duplicate of a reference point (``r_1 = 0``) gets 0, and ``k``
    neighbours all at the same distance get ``+inf``.  Computed in float64 on the features'
    device, on blocks of rows: squared distances by one matrix product (as ``torch.cdist``
    does for large inputs), ``topk``, then the square root of the k kept.

    Parameters
    ----------
    features: (N, d).  reference: (M, d) clean features (Ma et al.: the clean images of the
        same minibatch).  k: number of neighbours, ``1 <= k <= M`` (``M - 1`` with exclude_self).
    exclude_self: ``features`` *is* ``reference`` (same rows, same order) and a point is
        not its own neighbour.  (Ma et al.'s code drops the nearest neighbour of *every*
        point, also of adversarial ones; here only the point itself is excluded.)

    Returns (N,) float64.
    """
    check_features(features, "features")
    check_features(reference, "reference", features.shape[1])
    return _lid_mle(features, reference, k, exclude_self)


def _lid_mle(features, reference, k, exclude_self=False):
    """:func:`lid_mle` without the feature checks (the detectors validate their inputs)."""
    x = _f64(features)
    ref = _on(_f64(reference), x.device)
    m = ref.shape[0]
    kmax = m - 1 if exclude_self else m
    if isinstance(k, bool) or not (isinstance(k, int) and 1 <= k <= kmax):
        raise ValueError(f"k must be an int in [1, {kmax}] for a reference of {m} rows"
                         f"{' (one excluded: the point itself)' if exclude_self else ''}, got {k!r}")
    if exclude_self and x.shape != ref.shape:
        raise ValueError("exclude_self=True needs features to be the reference set itself")
    rows = max(1, _CHUNK_ELEMENTS // m)
    ref_sq = (ref * ref).sum(1)
    out = []
    for i in range(0, x.shape[0], rows):
        # squared distances by one matrix product (what torch.cdist does for large inputs);
        # k smallest of them, square root of those k only
        d2 = _pairwise_sq_dist(x[i : i + rows], ref, ref_sq)
        if exclude_self:
            b = d2.shape[0]
            mask = torch.zeros_like(d2, dtype=torch.bool)
            mask[torch.arange(b, device=d2.device), torch.arange(i, i + b, device=d2.device)] = True
            d2 = d2.masked_fill(mask, float("inf"))
        r = torch.topk(d2, k, dim=1, largest=False, sorted=True).values.sqrt()  # (b, k) ascending
        rk = r[:, -1:]
        ratio = r / rk.clamp_min(torch.finfo(torch.float64).tiny)
        out.append(1.0 / (-torch.log(ratio)).mean(1).abs())
    return torch.cat(out)


class LID(Detector):
    """Local intrinsic dimensionality of one layer (Ma et al., ICLR 2018), unsupervised.

    Fit stores a *reference batch* of clean features; ``score(y) = lid_mle(y, reference, k)``
    (see :func:`lid_mle`): adversarial features lie off the clean manifold, where the
    k nearest clean neighbours are at similar distances and the estimate is large.
    Training scores (threshold) are leave-one-out LIDs of the reference points.

    The estimate depends on the size of the reference batch: compare scores computed
    against the same reference.  ``labels`` are ignored.

    Parameters
    ----------
    k: neighbours (Ma et al.: 20 for CIFAR-10 with minibatches of 100); the reference
        batch needs at least ``k + 1`` rows.
    """

    name = "LID"

    def __init__(self, k: int = 20):
        if isinstance(k, bool) or not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.k = k

    def _params(self):
        return {"k": self.k}

    def _fit(self, x, labels):
        if x.shape[0] < self.k + 1:
            raise ValueError(f"LID with k={self.k} needs at least k+1={self.k + 1} clean reference "
                             f"features, got {x.shape[0]}")
        self.reference_ = _f64(x.detach())

    def _score(self, x, labels):
        return _lid_mle(x, _on(self.reference_, _compute_device(x.device)), self.k)

    def _training_scores(self, x, labels):
        return _lid_mle(self.reference_, self.reference_, self.k, exclude_self=True)
