"""Kernel density (KD, Feinman et al. 2017): -log Gaussian kernel density of the predicted class."""

from __future__ import annotations

import math

import torch

from ..checks import check_features, check_real
from ..gaussian import LOG_2PI
from .base import Detector, Inputs, _CHUNK_ELEMENTS, _compute_device, _f64, _on


def _pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||a_i - b_j||^2 for a (m, d), b (n, d) -> (m, n), via one matrix product, clamped at 0."""
    b_sq = (b * b).sum(1) if b_sq is None else b_sq
    d2 = torch.addmm(b_sq[None, :], a, b.T, beta=1.0, alpha=-2.0)  # ||b||^2 - 2 a.b in one BLAS call
    d2 = d2.add_((a * a).sum(1)[:, None])  # in place: addmm's backward does not need its output
    return d2.clamp_min(0.0)


def gaussian_kde_log_density(features: torch.Tensor, train: torch.Tensor, bandwidth: float,
                             *, exclude_self: bool = False) -> torch.Tensor:
    """Log of the Gaussian kernel density estimate at ``features``, normalised.

    ``log p(y) = logsumexp_i(-||y - x_i||^2 / (2 h^2)) - log n - d/2 log(2 pi) - d log h``,

    the quantity ``sklearn.neighbors.KernelDensity(kernel="gaussian", bandwidth=h)
    .fit(train).score_samples(features)`` returns (normalisation included), computed
    exactly in float64 on the features' device in blocks of rows (distances by one matrix
    product per block).

    Parameters
    ----------
    features: (N, d).  train: (n, d) kernel centres.  bandwidth: h > 0.
    exclude_self: ``features`` *is* ``train`` (same rows, same order) and each row's own
        kernel is left out (leave-one-out density with ``n - 1`` centres).

    Returns (N,) float64.
    """
    check_features(features, "features")
    check_features(train, "train", features.shape[1])
    bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True)
    return _kde_log_density(features, train, bandwidth, exclude_self)


def _kde_log_density(features, train, bandwidth, exclude_self=False):
    """:func:`gaussian_kde_log_density` without the checks (the detectors validate their inputs)."""
    x, t = _f64(features), _on(_f64(train), _compute_device(features.device))
    n, d = t.shape
    if exclude_self and (x.shape != t.shape or n < 2):
        raise ValueError("exclude_self=True needs features to be the training set itself, with n >= 2")
    t_sq = (t * t).sum(1)
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = []
    for i in range(0, x.shape[0], rows):
        d2 = _pairwise_sq_dist(x[i : i + rows], t, t_sq)
        if exclude_self:
            idx = torch.arange(i, i + d2.shape[0], device=d2.device)
            d2 = d2.index_put((idx - i, idx), torch.tensor(float("inf"), dtype=d2.dtype, device=d2.device))
        out.append(torch.logsumexp(-d2 / (2.0 * bandwidth**2), dim=1))
    n_eff = n - 1 if exclude_self else n
    return torch.cat(out) - (math.log(n_eff) + 0.5 * d * LOG_2PI + d * math.log(bandwidth))


class KD(Detector):
    """Kernel density detector (Feinman et al., 2017).

    A Gaussian kernel density estimate over the clean training features *of the class the
    classifier predicts*: for features ``y`` with predicted class ``c``::

        score(y) = -log p_c(y),   p_c = KDE over {x_i : label_i = c}, bandwidth h

    ``log p_c`` is the normalised log density of
    ``sklearn.neighbors.KernelDensity(kernel="gaussian", bandwidth=h)`` fitted on that
    class (see :func:`gaussian_kde_log_density`), computed by brute force with a torch
    ``logsumexp``.  (Far from the data, below a log density of about -50, scikit-learn's
    tree-based evaluation is off by up to tens of nats even with ``rtol=atol=0``,
    scikit-learn issue #7492; the logsumexp is exact there, which matters because
    adversarial features live there.)
    Adversarial features sit in low-density regions of the predicted (wrong) class.

    Fit with ``labels`` (the true classes of the clean training features) and score with
    ``labels`` = the *predicted* classes; fitted without labels, one KDE over all features
    is used and score-time labels are ignored.  Training scores for the threshold are
    leave-one-out (each point's own kernel removed), so each class needs >= 2 points.

    Parameters
    ----------
    bandwidth: h > 0, in feature units (Feinman et al. tuned it per data set: 1.20 MNIST,
        0.26 CIFAR-10); choose it on clean validation features, not on the attack.
    """

    name = "KD"
    inputs = Inputs(fit_labels=True, score_labels="predicted")

    def __init__(self, bandwidth: float = 1.0):
        self.bandwidth = check_real(bandwidth, "bandwidth", low=0.0, low_open=True)

    def _params(self):
        return {"bandwidth": self.bandwidth}

    def _fit(self, x, labels):
        x = x.detach()
        if labels is None:
            self.classes_ = None
            groups = {None: x}
        else:
            self.classes_ = torch.unique(labels)
            groups = {int(c): x[labels == c] for c in self.classes_}
        for c, g in groups.items():
            if g.shape[0] < 2:
                raise ValueError(f"KD needs at least 2 clean training features per class "
                                 f"(leave-one-out threshold); class {c} has {g.shape[0]}")
        self.class_features_ = {c: _f64(g) for c, g in groups.items()}

    def _groups(self, labels, n, device):
        if self.classes_ is None:
            return [(None, torch.arange(n, device=device))]
        if labels is None:
            raise ValueError("KD was fitted with class labels: score(features, labels) needs labels (N,), "
                             "the classes the classifier predicts for these features")
        known = set(self.class_features_)
        present = [int(c) for c in torch.unique(labels)]
        unknown = [c for c in present if c not in known]
        if unknown:
            raise ValueError(f"labels contain classes {unknown} with no clean training features; "
                             f"fitted classes: {sorted(known)}")
        return [(c, torch.nonzero(labels == c).squeeze(1)) for c in present]

    def _score(self, x, labels):
        dev = _compute_device(x.device)
        out = torch.empty(x.shape[0], dtype=torch.float64, device=dev)
        pieces = []
        for c, idx in self._groups(labels, x.shape[0], x.device):
            train = _on(self.class_features_[c], dev)
            pieces.append((idx.to(dev), -_kde_log_density(x[idx], train, self.bandwidth)))
        if len(pieces) == 1 and len(pieces[0][0]) == x.shape[0]:
            return pieces[0][1]
        for idx, s in pieces:  # out-of-place scatter keeps the graph when features require grad
            out = out.index_put((idx,), s)
        return out

    def _training_scores(self, x, labels):
        dev = _compute_device(x.device)
        out = torch.empty(x.shape[0], dtype=torch.float64, device=dev)
        for c, idx in self._groups(labels, x.shape[0], x.device):
            train = _on(self.class_features_[c], dev)
            out[idx.to(dev)] = -_kde_log_density(train, train, self.bandwidth, exclude_self=True)
        return out
