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
    input pre-processing (a small gradient step on the image before the features are read)
    needs the model: :func:`input_preprocessing` gives the features of the moved images.

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


def input_preprocessing(model, images, layer_detectors, magnitude: float, *, batch_size: int | None = None) -> dict:
    """Lee et al.'s input pre-processing for the Mahalanobis scores: per layer, the features of the images moved
    one small step towards their closest class mean.

    For each layer ``l`` of ``layer_detectors`` (``{layer: fitted Mahalanobis}``, layers of
    ``model.forward_features``), every image ``x`` becomes ``x - magnitude * sign(grad_x M_l(x))``, where ``M_l`` is
    the detector's score (the squared distance to the closest class mean), and the layer-``l`` features of the
    moved image are returned: ``{layer: (N, d_l) float32}`` on the CPU, the input of ``score`` (of the per-layer
    detector, or of a :class:`~medadv_tutorial.detectors.MahaEnsemble` fitted on the same clean features).  Lee et
    al. take the step in the normalised input space divided by the channel's standard deviation, which is the same
    step ``magnitude`` in pixel units; unlike their code, the moved image is clipped to [0, 1], the range of the
    package's models.  One forward and backward pass per layer and batch; the model's modes and gradients are left
    as they were.
    """
    from collections.abc import Mapping

    from ..batching import iter_batches, model_device, resolve_batch_size
    from ..checks import check_images, check_model, describe, eval_mode

    check_model(model, "model", "forward_features")
    check_images(images, "images")
    magnitude = check_real(magnitude, "magnitude", low=0.0)
    if not isinstance(layer_detectors, Mapping) or not layer_detectors or not all(
            isinstance(d, Mahalanobis) for d in layer_detectors.values()):
        raise TypeError(f"layer_detectors must be a non-empty mapping {{layer: fitted Mahalanobis}}, "
                        f"got {describe(layer_detectors)}")
    unknown = set(layer_detectors) - set(getattr(model, "feature_names", ()))
    if unknown:
        raise KeyError(f"layer_detectors name layers the model does not tap: {sorted(unknown)}")
    for layer, det in layer_detectors.items():
        det._check_fitted(f"input_preprocessing (layer {layer!r})")
    device = model_device(model) or torch.device("cpu")
    size = resolve_batch_size(batch_size, device)
    out = {layer: [] for layer in layer_detectors}
    with eval_mode(model):
        batches, _ = iter_batches((images, torch.zeros(len(images), dtype=torch.int64)), size)
        for x, _ in batches:
            x = x.to(device)
            for layer, det in layer_detectors.items():
                means, factor = _on(det.means_, device), _on(det.precision_cholesky_, device)
                x_in = x.detach().clone().requires_grad_(True)
                _, feats = model.forward_features(x_in, [layer], logits=False)
                score = mahalanobis_sq(_f64(feats[layer]), means, factor).min(dim=1).values
                (grad,) = torch.autograd.grad(score.sum(), x_in)
                moved = (x - magnitude * grad.sign()).clamp(0, 1)
                with torch.no_grad():
                    _, feats = model.forward_features(moved, [layer], logits=False)
                out[layer].append(feats[layer].detach().float().cpu())
    return {layer: torch.cat(v) for layer, v in out.items()}
