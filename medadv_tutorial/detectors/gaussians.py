"""Gaussian detectors: MGM (one Gaussian over clean features, Li & Zhu 2020) and MAHA
(class-conditional Mahalanobis distance with a tied covariance, Lee et al. 2018)."""

from __future__ import annotations

import torch

from ..checks import check_real
from ..gaussian import (class_moments, gaussian_log_prob, half_log_det_precision, log_density, mahalanobis_sq,
                        precision_cholesky, regularised_cholesky, residuals, whitening)
from .base import Detector, Inputs, _compute_device, _f64, _on


class _GaussianBase(Detector):
    """MGM and MAHA: one Gaussian covariance, regularised and factorised once at fit (float64).

    ``reg`` is the relative ridge of :mod:`medadv_tutorial.gaussian`:
    ``Sigma = cov + ridge_ I`` with ``ridge_ = reg * trace(cov) / d`` (``reg`` times the mean
    feature variance), so one value suits features of any scale.
    """

    def __init__(self, reg: float = 1e-3):
        self.reg = check_real(reg, "reg", low=0.0)
        self.reference_scores_ = None

    def _params(self):
        return {"reg": self.reg}

    def _factorise(self, cov: torch.Tensor, n: int) -> None:
        """Set ``ridge_``, ``covariance_``, ``cholesky_`` and ``precision_cholesky_`` from ``cov`` (d, d)."""
        L, self.ridge_ = regularised_cholesky(cov, self.reg, n=n, name="clean_features", who=type(self).__name__)
        self.cholesky_ = L
        self.precision_cholesky_ = precision_cholesky(L)
        self.covariance_ = cov + self.ridge_ * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)

    def _loo_precision(self, factor: float, n: int) -> torch.Tensor:
        """Upper precision factor of ``A = factor * cov + ridge_ I``: the leave-one-out fits keep the ridge."""
        cov = self.covariance_ - self.ridge_ * torch.eye(self.covariance_.shape[0], dtype=self.covariance_.dtype,
                                                         device=self.covariance_.device)
        L, _ = regularised_cholesky(factor * cov, self.reg, ridge=self.ridge_, n=n, name="clean_features",
                                    who=type(self).__name__)
        return precision_cholesky(L)


class MGM(_GaussianBase):
    """Multivariate Gaussian model of clean features (Li & Zhu, ISBI 2020).

    Fit: ``mu`` = mean of the clean features, ``Sigma = cov + lambda I`` with ``cov`` the
    unbiased sample covariance (divisor N - 1, as ``numpy.cov``) and the ridge
    ``lambda = reg * trace(cov) / d``: ``reg`` is *relative* (a multiple of the mean feature
    variance, scale free; see :mod:`medadv_tutorial.gaussian`).  With the upper precision
    factor ``U = L^-T`` of ``Sigma = L L^T``::

        log p(y) = sum_i log U_ii - 1/2 [ ||(y - mu)^T U||^2 + d log(2 pi) ]

    and the score is ``-log p(y)`` (a real number, unbounded; larger = less typical),
    computed by :func:`medadv_tutorial.gaussian.gaussian_log_prob` in float64 (one matrix
    product).  Training scores (for the threshold) are exact leave-one-out scores with
    the same ``lambda`` (the ridge of the full fit).

    ``labels`` are accepted and ignored (one Gaussian for all classes, as in the paper).

    Raises ``ValueError`` at fit when ``reg`` is too small for a singular covariance
    (``d >= N``, duplicated or constant features), suggesting a value.

    Attributes: ``mean_`` (d,), ``covariance_`` (d, d) = cov + ``ridge_`` I, ``cholesky_`` (d, d)
    lower factor L, ``precision_cholesky_`` (d, d) upper factor U, ``ridge_`` the lambda
    used (absolute, squared feature units); all float64.
    """

    name = "MGM"

    def _fit(self, x, labels):
        n, d = x.shape
        if n < 2:
            raise ValueError(f"clean_features must have at least 2 rows to estimate a covariance, got {n}")
        x64 = _f64(x.detach())
        mu = x64.mean(0)
        xc = x64 - mu
        self._factorise(xc.T @ xc / (n - 1), n)
        self.mean_ = mu

    def log_density(self, features) -> torch.Tensor:
        """log p(features) under the fitted Gaussian: (N,) float64 on the features' device."""
        return self._features_method("log_density", features, self._log_density)

    def _log_density(self, x):
        dev = _compute_device(x.device)
        return gaussian_log_prob(_f64(x), _on(self.mean_, dev)[None], _on(self.precision_cholesky_, dev))[:, 0]

    def _score(self, x, labels):
        return -self._log_density(x)

    def _training_scores(self, x, labels):
        """Leave-one-out -log p of each training point, exact and in closed form.

        Without point i (u = x_i - mu): mu_(i) = mu - u/(n-1) and
        ``Sigma_(i) = cov_(i) + lambda I = A - c u u^T`` with ``A = (n-1)/(n-2) cov + lambda I``
        and ``c = n / ((n-1)(n-2))``; Sherman-Morrison and the determinant lemma give
        ``||x_i - mu_(i)||^2_Sigma_(i) = (n/(n-1))^2 a / (1 - c a)`` and
        ``log det Sigma_(i) = log det A + log(1 - c a)`` with ``a = u^T A^-1 u``.
        """
        n, d = x.shape
        if n < 3:
            return self._score(x, labels)
        U_A = self._loo_precision((n - 1) / (n - 2), n)
        a = mahalanobis_sq(_f64(x), self.mean_[None], U_A)[:, 0]
        one_minus = (1.0 - n / ((n - 1) * (n - 2)) * a).clamp_min(torch.finfo(torch.float64).tiny)
        maha = (n / (n - 1)) ** 2 * a / one_minus
        half_log_det = half_log_det_precision(U_A) - 0.5 * torch.log(one_minus)  # -1/2 log det Sigma_(i)
        return -log_density(maha, half_log_det, d)


class Mahalanobis(_GaussianBase):
    """Mahalanobis-distance detector of one layer (Lee et al., NeurIPS 2018), alias ``MAHA``.

    Fit: one mean ``mu_c`` per class and a *tied* covariance shared by all classes,
    ``cov = 1/N sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T`` (the maximum-likelihood
    pooled covariance, as Lee et al.'s code with ``sklearn.covariance.EmpiricalCovariance``),
    regularised to ``Sigma = cov + lambda I`` with the relative ridge
    ``lambda = reg * trace(cov) / d`` (as :class:`MGM`).  Score::

        M(y) = min_c (y - mu_c)^T Sigma^-1 (y - mu_c)

    the *squared* Mahalanobis distance to the closest class mean (Lee et al.'s confidence
    score with the sign flipped), in ``[0, inf)``, by
    :func:`medadv_tutorial.gaussian.mahalanobis_sq` (one matrix product for all classes).
    ``labels`` at fit are the true classes of the clean features; ``labels=None`` treats
    them as one class (then MAHA is MGM without the log-determinant, with the 1/N
    covariance); with labels every class needs >= 2 points.  Training scores (for the
    threshold) are exact leave-one-out scores with the same ``lambda``.  Lee et al.'s
    input pre-processing (a small gradient step on the image) is not part of this detector.

    Attributes: ``classes_`` (C,) int64, ``means_`` (C, d), ``covariance_`` (d, d) = cov + ``ridge_`` I,
    ``cholesky_`` (d, d), ``precision_cholesky_`` (d, d), ``ridge_``; float64.
    """

    name = "MAHA"
    inputs = Inputs(fit_labels=True)

    def _fit(self, x, labels):
        n, d = x.shape
        if n < 2:
            raise ValueError(f"clean_features must have at least 2 rows to estimate a covariance, got {n}")
        x64 = _f64(x.detach())
        if labels is None:
            labels = torch.zeros(n, dtype=torch.int64, device=x64.device)
        labels = labels.to(x64.device)
        classes, inverse = torch.unique(labels, return_inverse=True)
        C = len(classes)
        means, counts, xc = class_moments(x64, inverse, C)  # the class-conditional fit of the outlier statistics
        if C > 1 and int(counts.min()) < 2:
            raise ValueError(f"Mahalanobis needs at least 2 clean training features per class, got class counts "
                             f"{dict(zip(classes.tolist(), counts.tolist()))}")
        self._factorise(xc.T @ xc / n, n)
        self.classes_ = classes
        self.means_ = means
        self._counts = counts.to(x64.dtype)

    def class_distances(self, features) -> torch.Tensor:
        """Squared Mahalanobis distances to every class mean: (N, C) float64 (columns follow ``classes_``)."""
        return self._features_method("class_distances", features, self._distances)

    def _distances(self, x):
        dev = _compute_device(x.device)
        return mahalanobis_sq(_f64(x), _on(self.means_, dev), _on(self.precision_cholesky_, dev))

    def _score(self, x, labels):
        return self._distances(x).min(dim=1).values

    def _training_scores(self, x, labels):
        """Leave-one-out score of each training point, exact and in closed form.

        Without point i of class k (u = x_i - mu_k, n_k points, N in all): the other
        class means stay, mu_k(i) = mu_k - u/(n_k-1), and
        ``Sigma_(i) = A - c_i u u^T`` with ``A = N/(N-1) cov + lambda I`` and
        ``c_i = n_k / ((n_k-1)(N-1))``; Sherman-Morrison gives every class distance,
        ``||v||^2_A + c_i (v^T A^-1 u)^2 / (1 - c_i a)`` for ``v = x_i - mu_j``, ``a = u^T A^-1 u``
        (and ``(n_k/(n_k-1))^2 a / (1 - c_i a)`` for the own class).
        """
        n, d = x.shape
        if n < 3:
            return self._score(x, labels)
        x64 = _f64(x)
        inv = (torch.zeros(n, dtype=torch.int64, device=x64.device) if labels is None
               else torch.searchsorted(self.classes_, labels.to(x64.device)))
        U_A = self._loo_precision(n / (n - 1), n)
        y = residuals(x64, whitening(self.means_, U_A))  # (N, C, d): (x_i - mu_j)^T U_A
        zu = y[torch.arange(n, device=x64.device), inv]  # (N, d): (x_i - mu_k)^T U_A
        a = (zu * zu).sum(-1)
        nk = self._counts[inv]
        c = nk / ((nk - 1.0) * (n - 1))
        one_minus = (1.0 - c * a).clamp_min(torch.finfo(torch.float64).tiny)
        cross = (y * zu[:, None, :]).sum(-1)  # (N, C)
        dist = (y * y).sum(-1) + c[:, None] * cross ** 2 / one_minus[:, None]
        own = (nk / (nk - 1.0)) ** 2 * a / one_minus
        dist = dist.scatter(1, inv[:, None], own[:, None])
        return dist.min(dim=1).values


MAHA = Mahalanobis
