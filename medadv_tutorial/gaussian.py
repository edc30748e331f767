r"""Gaussian densities and Mahalanobis distances: the one implementation, on Cholesky factors.

Every Gaussian of the package goes through this module: the class-conditional Gaussians of
chapter 3's outlier percentiles (:class:`~medadv_tutorial.outliers.ClassGaussian`), the MGM
and MAHA detectors (:mod:`~medadv_tutorial.detectors`), the EM fit of the Gaussian mixtures
(:mod:`~medadv_tutorial.gmm`) and the HFC energy (:mod:`~medadv_tutorial.hfc`).

The ridge
---------
A covariance estimated from ``n`` feature vectors of dimension ``d`` is singular when
``n <= d`` (penultimate features: d = 1280) or when features are duplicated or constant.
Before it is factorised it gets a ridge,

.. math:: \Sigma = \mathrm{cov} + \lambda I, \qquad
          \lambda = \texttt{reg} \cdot \mathrm{tr}(\mathrm{cov}) / d ,

so ``reg`` is **relative**: a multiple of the mean feature variance (floored at
``1e-12``, so that constant features still factorise).  It is scale free: features
multiplied by ``s`` multiply ``cov`` and ``lambda`` by ``s**2``, which leaves every
Mahalanobis distance unchanged and shifts every log density by ``-d log s``; one value
(``1e-3`` by default everywhere) suits layers of any scale.  :func:`relative_ridge` gives
``lambda``; :func:`regularised_cholesky` factorises ``cov + lambda I`` and, when ``reg`` is
too small, raises a ``ValueError`` that suggests a larger one.  (The Gaussian mixtures'
``reg_covar`` is scikit-learn's absolute amount; :func:`~medadv_tutorial.hfc.fit_hfc_mixtures`
converts its relative value into it.)

The kernel
----------
A Gaussian is held by its mean :math:`\mu` and the upper *precision Cholesky factor*
:math:`U` with :math:`U U^\top = \Sigma^{-1}` (scikit-learn's ``precisions_cholesky_``;
from the lower covariance factor :math:`\Sigma = L L^\top` it is :math:`U = L^{-\top}`,
:func:`precision_cholesky`).  Then

.. math:: (x - \mu)^\top \Sigma^{-1} (x - \mu) = \|(x - \mu)^\top U\|^2, \qquad
          \log \mathcal N(x \mid \mu, \Sigma) = \sum_i \log U_{ii}
          - \tfrac12 \big[ d \log 2\pi + \|(x - \mu)^\top U\|^2 \big].

For ``K`` Gaussians (the components of a mixture, or the classes of a detector) the
whitened residuals :math:`(x - \mu_k)^\top U_k` of every row and every Gaussian come from
**one** matrix product, :math:`(x - c)\,[U_1, \dots, U_K] - [(\mu_1 - c) U_1, \dots]`, with
:math:`c` the mean of the means (centring keeps the subtraction accurate when the features
sit far from the origin).  With a *tied* covariance (one :math:`U` of shape ``(d, d)`` for
all ``K`` means, as Lee et al.'s Mahalanobis detector) the product is :math:`(x - c) U`,
once.  :func:`whitening` precomputes :math:`c`, the stacked factors and the whitened means
(:class:`Whitening`), :func:`residuals` applies them and :func:`whitened_sq` takes their
squared norms; :func:`mahalanobis_sq` and :func:`gaussian_log_prob` do all of it from
``(means, precisions_cholesky)``, and :func:`log_density` is the one place where the
distances become a log density.  These kernels run inside
EM and attack loops: they check shapes only (no device synchronisation), compute in the
dtype of their inputs, and are differentiable in ``X``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import check_real, describe

__all__ = [
    "LOG_2PI",
    "Whitening",
    "class_moments",
    "gaussian_log_prob",
    "half_log_det_precision",
    "log_density",
    "mahalanobis_sq",
    "precision_cholesky",
    "regularised_cholesky",
    "relative_ridge",
    "sample_ridge",
    "residuals",
    "whitened_sq",
    "whitening",
]

LOG_2PI = math.log(2.0 * math.pi)
"""``log(2 pi)``, the constant of every Gaussian log density."""

_MIN_MEAN_VARIANCE = 1e-12  # floor of trace(cov)/d in the ridge: constant features still factorise
_MIN_PIVOT = 1e-10  # a Cholesky pivot at or below this times the largest diagonal entry counts as a failure


# =========================================================================== class-conditional moments


def class_moments(x: torch.Tensor, classes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    r"""The class-conditional fit shared by the outlier statistics and MAHA: class means and residuals.

    ``x`` ``(N, d)`` float64 rows, ``classes`` ``(N,)`` int64 class indices in ``0..num_classes-1``
    (on ``x``'s device).  Returns ``(means (K, d), counts (K,) int64, centred (N, d))`` with
    ``means[c]`` the mean of class ``c``'s rows (zero for an empty class) and ``centred = x -
    means[classes]``; the pooled (tied) maximum-likelihood covariance is ``centred.T @ centred / N``.
    """
    counts = torch.bincount(classes, minlength=num_classes)
    means = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, classes, x)
    means /= counts.clamp_min(1)[:, None].to(x.dtype)
    return means, counts, x - means[classes]


# =========================================================================== the ridge


def relative_ridge(cov: torch.Tensor, reg: float) -> float:
    r"""The ridge :math:`\lambda = \texttt{reg} \cdot \max(\mathrm{tr}(\mathrm{cov}) / d, 10^{-12})`.

    ``cov``: ``(d, d)`` covariance; ``reg >= 0``: relative ridge (a multiple of the mean
    variance, see the module docstring).  Returns a Python float (squared feature units).
    """
    reg = check_real(reg, "reg (relative ridge)", low=0.0)
    _check_square(cov, "cov")
    mean_var = float(torch.diagonal(cov).sum()) / cov.shape[0] if cov.shape[0] else 0.0
    return reg * max(mean_var, _MIN_MEAN_VARIANCE)


def sample_ridge(x: torch.Tensor, reg: float) -> float:
    r""":func:`relative_ridge` of the (biased) sample covariance of ``x`` ``(n, d)``, without forming it:
    ``reg * max(mean per-column variance, 1e-12)``.  Raises ``ValueError`` when the variance overflows."""
    reg = check_real(reg, "reg (relative ridge)", low=0.0)
    ridge = reg * max(float(x.var(0, unbiased=False).mean()), _MIN_MEAN_VARIANCE)
    if not math.isfinite(ridge):
        raise ValueError("the features are too large: their variance overflows; rescale them (a larger reg "
                         "cannot help)")
    return ridge


def regularised_cholesky(cov: torch.Tensor, reg: float, *, ridge: float | None = None, n: int | None = None,
                         name: str = "the features", who: str | None = None) -> tuple[torch.Tensor, float]:
    r"""Lower Cholesky factor of :math:`\mathrm{cov} + \lambda I` in float64, and :math:`\lambda`.

    Parameters
    ----------
    cov: ``(d, d)`` covariance (any floating dtype; factorised in float64).
    reg: relative ridge ``>= 0``: :math:`\lambda` = :func:`relative_ridge` ``(cov, reg)``.
    ridge: the absolute :math:`\lambda` to add instead (the closed-form leave-one-out scores
        of the detectors reuse the :math:`\lambda` of the full fit); ``reg`` then only
        serves the error message.
    n: number of samples behind ``cov`` (for the error message).
    name: what the covariance is of, plural (``"clean_features"``), for the messages.
    who: prefix of the messages (the class that fits, e.g. ``"MGM"``).

    Returns ``(L (d, d) float64 lower triangular, lambda float)``.

    Raises ``ValueError`` when ``cov`` holds NaN or infinite values (an overflow: features
    too large, rescale them), and when :math:`\mathrm{cov} + \lambda I` is not safely
    positive definite -- a failed factorisation, or a pivot :math:`L_{ii}^2` at or below ``1e-10``
    times the largest diagonal entry (float64 rounding can let a singular matrix through
    with meaningless tiny pivots) -- naming a larger ``reg`` to use.
    """
    reg = check_real(reg, "reg (relative ridge)", low=0.0)
    _check_square(cov, "cov")
    prefix = f"{who}: " if who else ""
    cov = cov.to(torch.float64)
    if not bool(torch.isfinite(cov).all()):  # finite features whose products overflow give inf, or inf - inf = NaN
        raise ValueError(f"{prefix}{name} are too large: their covariance overflows float64 (it holds NaN or "
                         "infinite values); rescale the features (a larger reg cannot help)")
    d = cov.shape[0]
    lam = relative_ridge(cov, reg) if ridge is None else check_real(ridge, "ridge", low=0.0)
    sigma = cov + lam * torch.eye(d, dtype=cov.dtype, device=cov.device)
    L, info = torch.linalg.cholesky_ex(sigma)
    scale = float(torch.diagonal(sigma).max()) if d else 1.0
    if d and (int(info) != 0 or not bool(torch.isfinite(L).all())
              or float((torch.diagonal(L) ** 2).min()) <= _MIN_PIVOT * max(scale, 1e-300)):
        mean_var = float(torch.diagonal(cov).sum()) / d
        spread = float(torch.diagonal(cov).max()) / max(mean_var, _MIN_MEAN_VARIANCE)
        suggest = max(10.0 * reg, 1e-3, 1e-8 * spread)
        why = (f"n={n} samples <= d={d} dimensions" if n is not None and n <= d
               else "correlated, duplicated or constant features")
        raise ValueError(
            f"{prefix}the covariance of {name} (d={d}) is singular or nearly so ({why}), and reg={reg:g} is too small "
            f"to make Sigma = cov + reg * trace(cov)/d * I positive definite (Cholesky failed). Use a larger reg, "
            f"e.g. reg={suggest:.3g} (reg is relative: a multiple of the mean variance {mean_var:.3g}).")
    return L, lam


def _check_square(cov, name: str) -> None:
    if not isinstance(cov, torch.Tensor) or not cov.is_floating_point() or cov.ndim != 2 \
            or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{name} must be a square floating matrix (d, d), got {describe(cov)}")


# =========================================================================== factors


def precision_cholesky(chol: torch.Tensor) -> torch.Tensor:
    r"""Upper precision factors :math:`U = L^{-\top}` (:math:`U U^\top = \Sigma^{-1}`) of lower
    covariance factors :math:`\Sigma = L L^\top`: ``(d, d)`` or ``(K, d, d)``, same dtype and device.

    One triangular solve against the identity (no general inverse).  ``chol`` is trusted to
    be lower triangular with a positive diagonal (e.g. from :func:`regularised_cholesky`).
    """
    if not isinstance(chol, torch.Tensor) or chol.ndim not in (2, 3) or chol.shape[-1] != chol.shape[-2]:
        raise ValueError(f"chol must have shape (d, d) or (K, d, d), got {describe(chol)}")
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).transpose(-1, -2)


def half_log_det_precision(precisions_cholesky: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_i \log U_{ii} = -\tfrac12 \log\det\Sigma`: ``(K,)`` for ``(K, d, d)`` factors, ``()`` for one."""
    return torch.log(torch.diagonal(precisions_cholesky, dim1=-2, dim2=-1)).sum(-1)


# =========================================================================== the kernel


class Whitening(NamedTuple):
    r"""What :func:`residuals` needs, precomputed once per set of Gaussians.

    Attributes
    ----------
    center: ``(d,)`` :math:`c`, the mean of the means.
    flat: ``(d, K d)`` the factors side by side, :math:`[U_1, \dots, U_K]`; or ``(d, d)``, one
        tied factor for all means.
    mu_u: ``(K, d)`` whitened means :math:`(\mu_k - c)^\top U_k`.
    """

    center: torch.Tensor
    flat: torch.Tensor
    mu_u: torch.Tensor

    def to(self, device=None, dtype=None) -> "Whitening":
        """A copy on ``device`` in ``dtype`` (computed in float64 first, then cast: no extra rounding)."""
        return Whitening(*(t.to(device=device, dtype=dtype).contiguous() for t in self))


def whitening(means: torch.Tensor, precisions_cholesky: torch.Tensor, *,
              flat_cholesky: torch.Tensor | None = None) -> Whitening:
    r""":class:`Whitening` of ``K`` Gaussians: ``means`` ``(K, d)``, ``precisions_cholesky``
    ``(K, d, d)`` upper factors :math:`U_k` (or ``(d, d)``: one tied factor).

    ``flat_cholesky`` may pass the precomputed ``(d, K d)`` matrix
    ``precisions_cholesky.permute(1, 0, 2).reshape(d, K * d)`` (saves a copy per call).
    Computed in the dtype of the inputs.
    """
    _check_gaussians(means, precisions_cholesky)
    return _whitening(means, precisions_cholesky, flat_cholesky)


def _whitening(means, precisions_cholesky, flat_cholesky=None) -> Whitening:
    c = means.mean(0)
    if precisions_cholesky.ndim == 2:  # tied: one factor for every mean
        return Whitening(c, precisions_cholesky, (means - c) @ precisions_cholesky)
    K, d = means.shape
    flat = (flat_cholesky if flat_cholesky is not None
            else precisions_cholesky.permute(1, 0, 2).reshape(d, K * d))
    mu_u = torch.matmul((means - c).unsqueeze(1), precisions_cholesky).squeeze(1)  # (K, d)
    return Whitening(c, flat, mu_u)


def residuals(X: torch.Tensor, w: Whitening) -> torch.Tensor:
    r"""Whitened residuals :math:`(x_n - \mu_k)^\top U_k`, shape ``(N, K, d)``: one matrix product.

    ``X`` ``(N, d)`` in the dtype and on the device of ``w``.  Differentiable in ``X``.
    """
    n = X.shape[0]
    K, d = w.mu_u.shape
    z = (X - w.center) @ w.flat
    if z.shape[1] == K * d:
        return z.view(n, K, d).sub_(w.mu_u)  # in place: mm's backward does not need its output
    return z.unsqueeze(1) - w.mu_u  # tied factor: (N, 1, d) - (K, d)


def whitened_sq(X: torch.Tensor, w: Whitening, *, exact_sum: bool = False) -> torch.Tensor:
    r"""Squared Mahalanobis distances ``(N, K)`` from a precomputed :class:`Whitening`: the
    squared norms of :func:`residuals`.

    ``exact_sum``: sum the squares (``(y * y).sum(-1)``) also without autograd; by default
    a computation without gradient takes the squared ``vector_norm`` instead (one pass,
    no ``(N, K, d)`` temporary), which can differ in the last bit.  The HFC energy passes
    ``True``: its component choice must not depend on whether a gradient is taken.
    """
    y = residuals(X, w)
    if exact_sum or y.requires_grad:
        return (y * y).sum(-1)
    return torch.linalg.vector_norm(y, dim=-1).square_()


def mahalanobis_sq(X: torch.Tensor, means: torch.Tensor, precisions_cholesky: torch.Tensor, *,
                   flat_cholesky: torch.Tensor | None = None) -> torch.Tensor:
    r"""Squared Mahalanobis distances :math:`\|(x_n - \mu_k)^\top U_k\|^2`, shape ``(N, K)``.

    ``X`` ``(N, d)``, ``means`` ``(K, d)``, ``precisions_cholesky`` ``(K, d, d)`` upper
    factors :math:`U_k U_k^\top = \Sigma_k^{-1}` (or ``(d, d)``: one tied factor), all in
    one dtype on one device; ``flat_cholesky`` as in :func:`whitening`.  Differentiable in
    ``X``.  (:func:`whitening` + :func:`whitened_sq`.)
    """
    _check_gaussians(means, precisions_cholesky, X)
    return whitened_sq(X, _whitening(means, precisions_cholesky, flat_cholesky))


def log_density(maha_sq: torch.Tensor, half_log_det: torch.Tensor, d: int) -> torch.Tensor:
    r""":math:`\log \mathcal N = -\tfrac12 (d \log 2\pi + m) + \sum_i \log U_{ii}` from the squared
    distances ``maha_sq`` :math:`m` (``(N, K)`` or ``(N,)``) and :func:`half_log_det_precision`
    (broadcast against them)."""
    return -0.5 * (d * LOG_2PI + maha_sq) + half_log_det


def gaussian_log_prob(X: torch.Tensor, means: torch.Tensor, precisions_cholesky: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \mathcal N(x_n \mid \mu_k, \Sigma_k)` for every row and Gaussian, ``(N, K)``.

    Arguments as :func:`mahalanobis_sq`; add :math:`\log \pi_k` for a mixture's weighted
    log probability.
    """
    _check_gaussians(means, precisions_cholesky, X)
    maha = whitened_sq(X, _whitening(means, precisions_cholesky))
    return log_density(maha, half_log_det_precision(precisions_cholesky), X.shape[1])


def _check_gaussians(means, precisions_cholesky, X=None) -> None:
    """Shapes only (no device synchronisation: these kernels run inside EM and attack loops)."""
    tensors = (means, precisions_cholesky) if X is None else (X, means, precisions_cholesky)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or means.ndim != 2:
        got = "" if X is None else f"X {describe(X)}, "
        raise TypeError("X, means and precisions_cholesky must be tensors (N, d), (K, d) and (K, d, d) or (d, d), "
                        f"got {got}means {describe(means)}, precisions_cholesky {describe(precisions_cholesky)}")
    K, d = means.shape
    if X is not None and (X.ndim != 2 or X.shape[1] != d):
        raise ValueError(f"X must have shape (N, {d}) like means (K, d) = {tuple(means.shape)}, got {tuple(X.shape)}")
    if precisions_cholesky.shape not in ((K, d, d), (d, d)):
        raise ValueError(f"precisions_cholesky must have shape ({K}, {d}, {d}) (one factor per mean) or ({d}, {d}) "
                         f"(tied), got {tuple(precisions_cholesky.shape)}")
