"""Detectors of adversarial examples, all behind one fit / score API.

Every detector is fitted on *clean* data and then gives one score per image, **higher =
more adversarial**::

    det = MGM(reg=1e-3).fit(clean_train)          # (N, d) penultimate features
    s = det.score(feats)                          # (N,) float64, on feats' device
    t = det.threshold(0.95)                       # keeps 95% of the clean training scores
    flagged = det.predict(feats)                  # (N,) bool: s > t

The contract
------------
Every detector has the same two calls::

    det.fit(clean, labels=None, *, adv_features=None, clean_val_features=None)   # -> det
    det.score(x, labels=None)                                                    # -> (N,) float64

and declares what they take in its class attribute ``inputs``, an :class:`Inputs`:

* ``view``: ``"penultimate"``, features of one layer, a tensor ``(N, d)``; ``"layers"``,
  features of several layers, a dict ``{layer: (N, d_l)}`` (the format of
  ``Classifier.forward_features``); ``"images"``, model inputs ``(N, C, H, W)`` (the
  detector holds the model);
* ``fit_labels``: ``fit`` reads the *true* classes ``labels`` of the clean rows;
* ``score_labels="predicted"``: ``score`` reads the classes the classifier *predicts*;
* ``adversarial``: ``fit`` also takes ``adv_features`` (same view), features of a
  *training* attack's images -- never the images the detector is evaluated on -- and
  optionally ``clean_val_features``, held-out clean rows for the negative class.

Labels a detector does not declare are accepted and ignored; ``adv_features`` is refused
by the detectors that do not declare it.  :class:`~medadv_tutorial.suite.DetectorSuite`
feeds each detector from this declaration alone.  Scores are ``torch.float64`` tensors
of shape ``(N,)`` on the device of the input.  A detector is fitted once the attributes
its ``fit`` sets (names ending in ``_``) exist; using an unfitted one raises
:class:`NotFittedError` (:func:`check_is_fitted`).

The detectors
-------------
=========  =====================  ============================  ================================================
name       class                  inputs (view; labels; sets)   idea (paper)
=========  =====================  ============================  ================================================
MGM        :class:`MGM`           one layer                     one Gaussian over clean features, -log density
                                                                (Li & Zhu 2020)
MAHA       :class:`Mahalanobis`   one layer; true labels        min class-conditional Mahalanobis distance,
                                                                tied covariance (Lee et al. 2018)
MAHA-LR    :class:`MahaEnsemble`  layers; true labels; + adv    per-layer MAHA scores -> logistic regression
                                                                (Lee et al.)
KD         :class:`KD`            one layer; true + predicted   -log Gaussian kernel density of the predicted
                                                                class (Feinman et al. 2017)
LID        :class:`LID`           one layer                     local intrinsic dimensionality, MLE over k-NN
                                                                (Ma et al. 2018)
LID-LR     :class:`LIDDetector`   layers; + adv                 per-layer LID -> logistic regression (Ma et al.)
BU         :class:`BU`            images                        MC-dropout variance of the softmax
                                                                (Feinman et al. 2017)
OCSVM      :class:`OCSVM`         one layer                     one-class SVM on standardised features
ISO        :class:`ISO`           one layer                     Isolation Forest on standardised features
DNN        :class:`DNNDetector`   one layer; + adv              small MLP trained on clean vs adversarial
                                                                features
=========  =====================  ============================  ================================================

:class:`TwoSided` wraps any of them (same ``inputs``) and flags scores far from the clean
median on either side.  The book's line-up, with its settings and the rows each detector
is fitted on, is the table of :mod:`medadv_tutorial.suite`.

The threshold rule
------------------
:meth:`Detector.threshold` returns the ``quantile`` (default 0.95) of the clean scores
stored in ``reference_scores_`` -- by default the scores of the clean *training*
features, computed at fit time (Li & Zhu's rule: keep 95% of clean training data).

MGM, MAHA, KD and LID score each training point **leave-one-out**, i.e. with the model
fitted on the other N - 1 points (exact; in closed form for the Gaussians).  In-sample
scores would be useless for the rule: a training point is its own nearest neighbour, and
in-sample Mahalanobis distances shrink as ``d`` approaches ``N`` (at d = 256, N = 1000 an
in-sample 95% threshold keeps about 5% of new clean images, at d = 1280, N = 2000 none;
leave-one-out keeps 95%).  OCSVM, ISO, DNN and the logistic regressions use in-sample
scores, which are optimistic (the one-class SVM keeps ~93% of new clean images at d = 16
and ~80% at d = 256); :meth:`Detector.calibrate` takes the threshold from held-out clean
features instead.

GPU kernels
-----------
MGM, MAHA, KD and LID run in torch, in float64, on the features' device (on Apple MPS,
which has no float64, they compute on the CPU and return to MPS); their scores are
differentiable with respect to the features.  MGM and MAHA (and the layers of MAHA-LR)
take their Gaussian maths from :mod:`medadv_tutorial.gaussian`, as the outlier statistics
and HFC do: the covariance gets the *relative* ridge ``reg * trace(cov) / d`` (``reg``
times the mean feature variance, default ``1e-3``; scale free, so one value suits every
layer), is factorised once by Cholesky, and every distance is one matrix product.  OCSVM, ISO and the logistic regressions of
the ensembles use scikit-learn on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .checks import (check_features, check_finite, check_images, check_int, check_labels, check_real, check_seed,
                     describe, eval_mode)
from .gaussian import (LOG_2PI, gaussian_log_prob, half_log_det_precision, log_density, mahalanobis_sq,
                       precision_cholesky, regularised_cholesky, residuals, whitening)
from .models import Classifier
from .metrics import quantile_threshold

_check_features = check_features

__all__ = [
    "BU",
    "DNNDetector",
    "Detector",
    "ISO",
    "Inputs",
    "KD",
    "LID",
    "LIDDetector",
    "MAHA",
    "MGM",
    "MahaEnsemble",
    "Mahalanobis",
    "NotFittedError",
    "OCSVM",
    "TwoSided",
    "check_is_fitted",
    "gaussian_kde_log_density",
    "lid_mle",
    "mc_dropout_variance",
]

_CHUNK_ELEMENTS = 1 << 24  # pairwise-distance blocks of at most 16M entries (128 MB in float64)


class NotFittedError(RuntimeError, ValueError):
    """Raised when a detector is used (score, threshold, predict) before :meth:`Detector.fit`."""


_VIEWS = ("penultimate", "layers", "images")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a detector is fitted on and what it scores: the class attribute ``Detector.inputs``.

    Attributes
    ----------
    view: what ``fit`` and ``score`` take --
        ``"penultimate"``: features of one layer, a tensor ``(N, d)`` (the penultimate layer in
        the book's line-up); ``"layers"``: features of several layers, a dict
        ``{layer: (N, d_l)}``; ``"images"``: model inputs ``(N, C, H, W)`` in [0, 1] (the
        detector holds the model).
    fit_labels: ``fit(clean, labels)`` reads the *true* classes ``(N,)`` of the clean rows.
    score_labels: ``None`` (``score`` reads no labels) or ``"predicted"``: ``score(x, labels)``
        needs the classes the classifier *predicts* for the scored rows.
    adversarial: ``fit`` also takes ``adv_features=`` (same view): features of a *training*
        attack's images, the positive class of a supervised detector (and optionally
        ``clean_val_features=``, held-out clean rows for its negative class).
    """

    view: str = "penultimate"
    fit_labels: bool = False
    score_labels: str | None = None
    adversarial: bool = False

    def __post_init__(self):
        if self.view not in _VIEWS:
            raise ValueError(f"view must be one of {_VIEWS}, got {self.view!r}")
        if self.score_labels not in (None, "predicted"):
            raise ValueError(f"score_labels must be None or 'predicted', got {self.score_labels!r}")
        for name in ("fit_labels", "adversarial"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {describe(getattr(self, name))}")

    def fit_call(self) -> str:
        """The fit call this declaration asks for, as text (for error messages)."""
        x = "clean_images" if self.view == "images" else "clean_features"
        return (f".fit({x}{', labels' if self.fit_labels else ''}"
                f"{', adv_features=...' if self.adversarial else ''})")


def _fitted_attributes(detector, *, with_none: bool = False) -> list[str]:
    """Names of the attributes that ``fit`` sets: public names ending in ``_`` (scikit-learn's convention).

    An attribute set to ``None`` (a constructor's "not fitted yet") counts only with ``with_none``.
    """
    return [k for k, v in vars(detector).items()
            if k.endswith("_") and not k.startswith("_") and (with_none or v is not None)]


def check_is_fitted(detector, method: str) -> None:
    """Raise :class:`NotFittedError` unless ``detector`` holds fitted state (scikit-learn style).

    A detector is fitted when the attributes its ``fit`` sets -- names ending in an
    underscore, such as ``reference_scores_`` or ``mean_`` -- exist (``None`` counts as
    absent); :meth:`Detector.fit` removes them first and again when it fails, so a failed
    fit leaves no half state.
    ``method`` names the call that needed the fit (``"score"``, ``"threshold"``, ...).
    """
    if not _fitted_attributes(detector):
        inputs = getattr(detector, "inputs", Inputs())
        raise NotFittedError(f"{type(detector).__name__} is not fitted yet: call {inputs.fit_call()} "
                             f"before .{method}()")


# ---------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------


def _check_labels(labels, n: int, name: str = "labels", device=None) -> torch.Tensor:
    """``labels`` must be a non-negative integer tensor (n,); returned as int64 on ``device``."""
    check_labels(labels, n, name, of="the features")
    return labels.to(device=device, dtype=torch.int64) if device is not None else labels.long()


def _check_layers(features, name: str, expected: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Features of several layers -> ``{layer: (N, d_l)}`` with a common N.

    Accepts a mapping ``{layer: tensor}``, a list/tuple of tensors (named "0", "1", ...)
    or a single tensor (one layer, named "features").
    """
    if isinstance(features, torch.Tensor):
        layers = {"features": features}
    elif isinstance(features, Mapping):
        layers = dict(features)
    elif isinstance(features, Sequence) and not isinstance(features, str):
        layers = {str(i): f for i, f in enumerate(features)}
    else:
        raise TypeError(f"{name} must be a dict {{layer: tensor (N, d_l)}}, a list of such tensors or one "
                        f"tensor, got {type(features).__name__}")
    if not layers:
        raise ValueError(f"{name} holds no layer")
    if expected is not None and list(layers) != list(expected):
        missing = [k for k in expected if k not in layers]
        extra = [k for k in layers if k not in expected]
        if missing or extra:
            raise ValueError(f"{name} must have the layers the detector was fitted on, {list(expected)}; "
                             f"missing {missing}, unexpected {extra}")
        layers = {k: layers[k] for k in expected}
    out = {}
    n = None
    for k, v in layers.items():
        v = _check_features(v, f"{name}[{k!r}]", None if expected is None else expected[k])
        if n is None:
            n = v.shape[0]
        elif v.shape[0] != n:
            raise ValueError(f"{name}: every layer must have the same number of rows; "
                             f"{name}[{k!r}] has {v.shape[0]}, the first layer {n}")
        out[k] = v
    return out


def _compute_device(device: torch.device) -> torch.device:
    """float64 kernels run on the features' device, except MPS (no float64) -> CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(_compute_device(x.device), torch.float64)


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device)


def _out(s: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Scores back on the features' device (float32 on MPS, which has no float64)."""
    return s.to(device, torch.float32) if device.type == "mps" else s.to(device)


# ---------------------------------------------------------------------------------------
# base class
# ---------------------------------------------------------------------------------------


class Detector:
    """Base class: ``fit(clean, labels=None)`` -> ``score(x, labels=None)`` -> threshold / predict.

    Every detector has the same two calls::

        fit(clean, labels=None, *, adv_features=None, clean_val_features=None) -> self
        score(x, labels=None) -> (N,) float64, higher = more adversarial

    and declares in its class attribute ``inputs`` (:class:`Inputs`) what they take: the
    view (features of one layer, a dict of layers, or images), whether ``fit`` reads the
    true ``labels``, whether ``score`` reads *predicted* labels, and whether ``fit`` needs a
    second, adversarial set (``adv_features``, only accepted then).  Labels a detector does
    not declare are accepted and ignored.

    Subclasses set ``inputs`` and implement ``_fit(x, labels)``, ``_score(x, labels)`` and
    optionally ``_training_scores(x, labels)`` (default: ``_score`` on the training rows);
    the supervised ones override :meth:`fit` inside ``with self._fitting():``.

    Fitted state lives in attributes whose names end in ``_`` (scikit-learn's convention,
    see :func:`check_is_fitted`); every detector has the two below after fit.

    Attributes
    ----------
    reference_scores_: (N_ref,) float64 clean scores the threshold is taken from (the
        training features, or the set passed to :meth:`calibrate`).
    n_features_in_: feature dimension ``d`` seen at fit (a dict for layered detectors,
        the image shape for image detectors).
    """

    name = "detector"
    inputs = Inputs()  #: what fit and score take (one layer's features, no labels, clean only)

    # -- helpers subclasses can override ----------------------------------------------
    def _validate(self, x, name: str, fitting: bool):
        return _check_features(x, name, None if fitting else self.n_features_in_)

    @staticmethod
    def _n_rows(x) -> int:
        return next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]

    @staticmethod
    def _device(x) -> torch.device:
        return next(iter(x.values())).device if isinstance(x, dict) else x.device

    def _dim(self, x):
        return {k: v.shape[1] for k, v in x.items()} if isinstance(x, dict) else x.shape[1]

    def _training_scores(self, x, labels) -> torch.Tensor:
        return self._score(x, labels)

    def _params(self) -> dict:
        return {}

    # -- fitted state -----------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` has completed (its ``..._`` attributes exist)."""
        return bool(_fitted_attributes(self))

    def _check_fitted(self, what: str) -> None:
        check_is_fitted(self, what)

    def _features_method(self, what: str, features, kernel) -> torch.Tensor:
        """A public method of a fitted detector on ``features``: check, compute on the compute
        device (``kernel(x)``), return float64 on the features' device."""
        self._check_fitted(what)
        x = self._validate(features, "features", fitting=False)
        return _out(kernel(x), x.device)

    @contextlib.contextmanager
    def _fitting(self):
        """Remove the fitted state, run the body (a fit), and remove it again if the body fails."""
        self._forget()
        try:
            yield
        except BaseException:
            self._forget()
            raise

    def _forget(self) -> None:
        for k in _fitted_attributes(self, with_none=True):
            delattr(self, k)

    def _check_fit_sets(self, adv_features, clean_val_features) -> None:
        """``adv_features`` is required by adversarial detectors and refused by the others."""
        who = type(self).__name__
        if self.inputs.adversarial:
            if adv_features is None:
                raise TypeError(f"{who} is trained on clean against adversarial features: fit needs "
                                "adv_features=... (features of a training attack, never the evaluated images)")
        elif adv_features is not None or clean_val_features is not None:
            raise TypeError(f"{who} is fitted on clean rows only (inputs.adversarial is False): it takes no "
                            "adv_features or clean_val_features")

    # -- public API -----------------------------------------------------------------------
    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None):
        """Fit on clean rows (the view of ``inputs``); ``labels`` (N,) their true classes. Returns self.

        ``adv_features`` / ``clean_val_features``: only for detectors whose ``inputs`` are
        ``adversarial`` (see their ``fit``).
        """
        self._check_fit_sets(adv_features, clean_val_features)
        with self._fitting():
            x = self._validate(clean_features, "clean_features", fitting=True)
            y = None if labels is None else _check_labels(labels, self._n_rows(x), "labels", self._device(x))
            self._fit(x, y)
            self._finish_fit(x, y)
        return self

    def _finish_fit(self, x, y):
        """Record ``n_features_in_`` and the clean reference scores (scores of the training rows)."""
        self.n_features_in_ = self._dim(x)
        with torch.no_grad():
            self.reference_scores_ = self._training_scores(x, y).detach().to(torch.float64)
        return self

    def score(self, features, labels=None) -> torch.Tensor:
        """Scores (N,) float64 on the features' device; higher = more adversarial.

        ``features``: what ``inputs.view`` says.  ``labels`` (N,) are the classes the
        classifier *predicts* for these rows; detectors whose ``inputs.score_labels`` is
        ``"predicted"`` read them (KD needs them), the others ignore them.
        """
        self._check_fitted("score")
        x = self._validate(features, "features", fitting=False)
        y = None if labels is None else _check_labels(labels, self._n_rows(x), "labels", self._device(x))
        return _out(self._score(x, y), self._device(x))

    def calibrate(self, clean_features, labels=None):
        """Take the threshold from held-out clean features instead of the training ones. Returns self.

        ``clean_features`` must be clean images that were neither used to fit the detector
        nor are going to be evaluated.  Useful for the detectors whose training scores are
        in-sample (OCSVM, ISO, DNN, the ensembles).
        """
        self._check_fitted("calibrate")
        with torch.no_grad():
            self.reference_scores_ = self.score(clean_features, labels).detach().to(torch.float64)
        return self

    def threshold(self, quantile: float = 0.95) -> float:
        """Score threshold that keeps a fraction ``quantile`` of the clean reference scores.

        The smallest reference score ``t`` with at least ``quantile`` of the reference
        scores ``<= t`` (see :func:`medadv_tutorial.metrics.quantile_threshold`); images
        with ``score > t`` are flagged.
        """
        self._check_fitted("threshold")
        return quantile_threshold(self.reference_scores_, quantile)

    def predict(self, features, labels=None, quantile: float = 0.95) -> torch.Tensor:
        """(N,) bool on the features' device: True = flagged as adversarial (score > threshold)."""
        self._check_fitted("predict")
        return self.score(features, labels) > self.threshold(quantile)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------
# Gaussian models: MGM and Mahalanobis (tied covariance)
# ---------------------------------------------------------------------------------------


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
        counts = torch.bincount(inverse, minlength=C).to(x64.dtype)
        if C > 1 and float(counts.min()) < 2:
            raise ValueError(f"Mahalanobis needs at least 2 clean training features per class, got class counts "
                             f"{dict(zip(classes.tolist(), counts.long().tolist()))}")
        means = torch.zeros(C, d, dtype=x64.dtype, device=x64.device).index_add_(0, inverse, x64) / counts[:, None]
        xc = x64 - means[inverse]
        self._factorise(xc.T @ xc / n, n)
        self.classes_ = classes
        self.means_ = means
        self._counts = counts

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


# ---------------------------------------------------------------------------------------
# kernel density (KD)
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# local intrinsic dimensionality (LID)
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# supervised layer ensembles: per-layer scores -> logistic regression
# ---------------------------------------------------------------------------------------


class _LayerLR(Detector):
    """Per-layer unsupervised scores combined by a logistic regression (scikit-learn).

    Fit: one base detector per layer on ``clean_features`` (with ``labels``); then a
    ``StandardScaler + LogisticRegression`` on the per-layer scores of clean features
    (label 0) against ``adv_features`` (label 1).  Score: the regression's log-odds.
    """

    inputs = Inputs(view="layers", adversarial=True)

    def __init__(self, C: float = 1.0, seed: int = 0):
        self.C = check_real(C, "C (inverse regularisation of the logistic regression)", low=0.0, low_open=True)
        self.seed = check_seed(seed)

    def _validate(self, x, name, fitting):
        return _check_layers(x, name, None if fitting else self.n_features_in_)

    def _make_base(self) -> Detector:
        raise NotImplementedError

    def _check_clean(self, x: dict) -> None:
        """Hook: refuse clean training features the per-layer detectors cannot be fitted on."""

    def _layer_scores(self, x: dict, labels, training: bool) -> np.ndarray:
        cols = []
        for k, det in self.layer_detectors_.items():
            s = det._training_scores(x[k], labels) if training else det._score(x[k], labels)
            cols.append(s.detach().cpu().numpy())
        return np.stack(cols, axis=1)

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None):
        """Fit the per-layer detectors and the logistic regression. Returns self.

        Parameters
        ----------
        clean_features: {layer: (N, d_l)} clean *training* features (fit the per-layer
            detectors; label 0 of the regression unless ``clean_val_features`` is given).
        labels: (N,) int true classes of ``clean_features`` (MAHA class means); optional.
        adv_features: {layer: (N_adv, d_l)} label-1 features: adversarial images of a
            *training* attack, or noisy images (Lee et al.'s attack-free variant).  Never
            the images the detector is evaluated on.
        clean_val_features: {layer: (N_val, d_l)} held-out clean features (optionally
            with noisy ones, as Ma et al. do) for label 0 of the regression; default: the
            training features' own scores (leave-one-out for LID, in-sample for MAHA).

        The threshold's reference scores are those of ``clean_features``.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._check_fit_sets(adv_features, clean_val_features)
        with self._fitting():
            x = self._validate(clean_features, "clean_features", fitting=True)
            self._check_clean(x)
            dims = self._dim(x)
            y = None if labels is None else _check_labels(labels, self._n_rows(x), "labels", self._device(x))
            adv = _check_layers(adv_features, "adv_features", dims)
            self.layer_detectors_ = {}
            for k, v in x.items():
                det = self._make_base()
                det._fit(v, y)
                det.n_features_in_ = v.shape[1]
                self.layer_detectors_[k] = det
            with torch.no_grad():
                s_clean = self._layer_scores(x, y, training=True)
                if clean_val_features is not None:
                    s_neg = self._layer_scores(_check_layers(clean_val_features, "clean_val_features", dims), None,
                                               False)
                else:
                    s_neg = s_clean
                s_adv = self._layer_scores(adv, None, training=False)
            for j, det in enumerate(self.layer_detectors_.values()):
                det.reference_scores_ = torch.from_numpy(s_clean[:, j].copy())  # its own clean training scores
            self.regression_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=1000,
                                                                                   random_state=self.seed))
            target = np.r_[np.zeros(len(s_neg)), np.ones(len(s_adv))]
            self.regression_.fit(np.concatenate([s_neg, s_adv]), target)
            self.n_features_in_ = dims
            self.reference_scores_ = torch.as_tensor(self.regression_.decision_function(s_clean),
                                                     dtype=torch.float64)
        return self

    def _score(self, x, labels):
        with torch.no_grad():
            s = self._layer_scores(x, None, training=False)
        return torch.as_tensor(self.regression_.decision_function(s), dtype=torch.float64)

    def layer_scores(self, features) -> dict[str, torch.Tensor]:
        """The unsupervised per-layer scores {layer: (N,) float64} that the regression combines."""
        self._check_fitted("layer_scores")
        x = self._validate(features, "features", fitting=False)
        return {k: _out(det._score(x[k], None), x[k].device) for k, det in self.layer_detectors_.items()}


class MahaEnsemble(_LayerLR):
    """Layer ensemble of Mahalanobis scores (Lee et al., NeurIPS 2018), supervised.

    Per layer, a :class:`Mahalanobis` detector (class means, tied covariance) on clean
    training features; a logistic regression on the per-layer scores separates clean
    features from ``adv_features`` (see :meth:`fit`).  The regression must be trained on
    features of a *training* attack (or of noisy images), never on the images it is
    evaluated on.  Score: the regression's log-odds (real, higher = more adversarial).

    Parameters
    ----------
    reg: relative ridge of every layer's covariance (``reg`` times the layer's mean feature
        variance, as :class:`Mahalanobis`; one value suits layers of different scales).
    C: inverse L2 strength of the logistic regression.  seed: its random_state.
    """

    name = "MAHA-LR"
    inputs = Inputs(view="layers", fit_labels=True, adversarial=True)

    def __init__(self, reg: float = 1e-3, C: float = 1.0, seed: int = 0):
        super().__init__(C=C, seed=seed)
        Mahalanobis(reg)  # validate now
        self.reg = float(reg)

    def _params(self):
        return {"reg": self.reg, "C": self.C, "seed": self.seed}

    def _make_base(self):
        return Mahalanobis(self.reg)


class LIDDetector(_LayerLR):
    """Layer ensemble of LID estimates (Ma et al., ICLR 2018), supervised.

    Per layer, :class:`LID` with the clean training features as reference batch; a
    logistic regression on the per-layer LIDs separates clean features from
    ``adv_features`` (see :meth:`fit`; Ma et al. train it on clean + noisy images against
    adversarial ones of the same attack on *training* images).  ``labels`` are not used.
    Score: the regression's log-odds.

    Parameters
    ----------
    k: neighbours of the LID estimate.  C, seed: logistic regression.
    """

    name = "LID-LR"

    def __init__(self, k: int = 20, C: float = 1.0, seed: int = 0):
        super().__init__(C=C, seed=seed)
        LID(k)  # validate now
        self.k = k

    def _params(self):
        return {"k": self.k, "C": self.C, "seed": self.seed}

    def _make_base(self):
        return LID(self.k)

    def _check_clean(self, x):
        n = self._n_rows(x)
        if n < self.k + 1:
            raise ValueError(f"LIDDetector with k={self.k} needs at least k+1={self.k + 1} clean reference "
                             f"features, got {n}")


# ---------------------------------------------------------------------------------------
# scikit-learn one-class models
# ---------------------------------------------------------------------------------------


class _SklearnOneClass(Detector):
    def __init__(self, seed: int = 0):
        self.seed = check_seed(seed)

    def _estimator(self):
        raise NotImplementedError

    def _fit(self, x, labels):
        if x.shape[0] < 2:
            raise ValueError(f"clean_features must have at least 2 rows to fit {type(self).__name__} (the features "
                             f"are standardised), got {x.shape[0]}")
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model_ = make_pipeline(StandardScaler(), self._estimator())
        self.model_.fit(x.detach().to("cpu", torch.float64).numpy())

    def _score(self, x, labels):
        s = -self.model_.decision_function(x.detach().to("cpu", torch.float64).numpy())
        return torch.as_tensor(s, dtype=torch.float64)


class OCSVM(_SklearnOneClass):
    """One-class SVM on standardised clean features (scikit-learn ``OneClassSVM``).

    Score = ``-decision_function`` (positive outside the learned support, higher = more
    adversarial).  Fit on clean features only; ``labels`` are ignored.  A competitor of
    MGM in Li & Zhu (2020).  Its training scores are in-sample and optimistic: calibrate
    the threshold on held-out clean features (:meth:`calibrate`).
    Parameters: ``nu`` (fraction of training outliers allowed),
    ``kernel``, ``gamma`` as in scikit-learn; ``seed`` is kept for a uniform API (the SVM
    is deterministic).
    """

    name = "OCSVM"

    def __init__(self, nu: float = 0.1, kernel: str = "rbf", gamma="scale", seed: int = 0):
        super().__init__(seed)
        nu = check_real(nu, "nu (the fraction of training outliers allowed)", low=0.0, low_open=True, high=1.0)
        self.nu, self.kernel, self.gamma = nu, kernel, gamma

    def _params(self):
        return {"nu": self.nu, "kernel": self.kernel, "gamma": self.gamma}

    def _estimator(self):
        from sklearn.svm import OneClassSVM

        return OneClassSVM(nu=self.nu, kernel=self.kernel, gamma=self.gamma)


class ISO(_SklearnOneClass):
    """Isolation Forest on standardised clean features (scikit-learn ``IsolationForest``).

    Score = ``-decision_function`` (higher = isolated faster = more anomalous).  Fit on
    clean features only; ``labels`` are ignored.  ``seed`` is the forest's random_state.
    A competitor of MGM in Li & Zhu (2020).
    """

    name = "ISO"

    def __init__(self, n_estimators: int = 100, seed: int = 0):
        super().__init__(seed)
        self.n_estimators = check_int(n_estimators, "n_estimators")

    def _params(self):
        return {"n_estimators": self.n_estimators, "seed": self.seed}

    def _estimator(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)


# ---------------------------------------------------------------------------------------
# DNN detector
# ---------------------------------------------------------------------------------------


class DNNDetector(Detector):
    """A small MLP that classifies features as clean (0) or adversarial (1), supervised.

    ``d -> hidden -> hidden -> 1`` with ReLU, on features standardised with the mean and
    standard deviation of the training set, trained with class-balanced binary
    cross-entropy and Adam for a few epochs on clean features against ``adv_features`` of
    a *training* attack (never the evaluation images).  Features may be one tensor (N, d)
    or a dict of layers, which is concatenated in its key order (for example pooled
    features of several blocks, the deep-feature detector of Ma et al. 2021).
    Score: the logit (real, higher = more adversarial).  Seeded: the same seed and data
    give the same network on the same device.  ``labels`` are ignored.
    """

    name = "DNN"
    inputs = Inputs(adversarial=True)

    def __init__(self, hidden: int = 128, epochs: int = 20, lr: float = 1e-3, batch_size: int = 128,
                 weight_decay: float = 1e-4, seed: int = 0):
        self.hidden, self.epochs = check_int(hidden, "hidden (units per layer)"), check_int(epochs, "epochs")
        self.lr = check_real(lr, "lr", low=0.0, low_open=True)
        self.batch_size = check_int(batch_size, "batch_size")
        self.weight_decay, self.seed = check_real(weight_decay, "weight_decay", low=0.0), check_seed(seed)

    def _params(self):
        return {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr, "seed": self.seed}

    def _validate(self, x, name, fitting):
        if isinstance(x, torch.Tensor):
            return _check_features(x, name, None if fitting else self.n_features_in_)
        if not fitting and self._layer_dims is None:
            raise TypeError(f"{name}: the detector was fitted on one tensor (N, {self.n_features_in_}); "
                            "pass a tensor of that shape, not a dict of layers")
        layers = _check_layers(x, name, None if fitting else self._layer_dims)
        if fitting:
            self._layer_dims = {k: v.shape[1] for k, v in layers.items()}
        return torch.cat(list(layers.values()), dim=1)

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None):
        """Train on clean (label 0) vs ``adv_features`` (label 1), same layout (N, d) or {layer: ...}.

        ``clean_val_features``: other clean rows to use as label 0 instead of
        ``clean_features`` (whose scores stay the threshold's reference).  Returns self.
        """
        self._check_fit_sets(adv_features, clean_val_features)
        with self._fitting():
            self._layer_dims = None
            x = self._validate(clean_features, "clean_features", fitting=True)
            self.n_features_in_ = x.shape[1]
            a = self._validate(adv_features, "adv_features", fitting=False)
            neg = x if clean_val_features is None else self._validate(clean_val_features, "clean_val_features",
                                                                      fitting=False)
            dev = x.device
            x, a, neg = x.detach().float(), a.detach().to(dev).float(), neg.detach().to(dev).float()
            data = torch.cat([neg, a])
            target = torch.cat([torch.zeros(len(neg), device=dev), torch.ones(len(a), device=dev)])
            self.mean_ = data.mean(0)
            self.std_ = data.std(0).clamp_min(1e-6)
            data = (data - self.mean_) / self.std_
            devices = [dev] if dev.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                net = nn.Sequential(nn.Linear(data.shape[1], self.hidden), nn.ReLU(),
                                    nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)).to(dev)
            gen = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(len(neg) / len(a), device=dev))
            net.train()
            with torch.enable_grad():
                for _ in range(self.epochs):
                    perm = torch.randperm(len(data), generator=gen).to(dev)
                    for i in range(0, len(data), self.batch_size):
                        idx = perm[i : i + self.batch_size]
                        opt.zero_grad(set_to_none=True)
                        loss_fn(net(data[idx]).squeeze(1), target[idx]).backward()
                        opt.step()
            net.eval().requires_grad_(False)
            self.net_ = net
            self._finish_fit(x, None)
        return self

    def _score(self, x, labels):
        dev = self.mean_.device
        z = (x.to(dev, torch.float32) - self.mean_) / self.std_
        return self.net_(z).squeeze(1).to(torch.float64)


# ---------------------------------------------------------------------------------------
# Bayesian uncertainty (MC dropout)
# ---------------------------------------------------------------------------------------


def mc_dropout_variance(model: nn.Module, x: torch.Tensor, n_samples: int = 20, *, batch_size: int = 256,
                        seed: int | None = 0) -> torch.Tensor:
    """Bayesian-uncertainty score of Feinman et al. (2017) by Monte-Carlo dropout.

    Runs the model ``T = n_samples`` times with only its dropout layers active (every
    other module, BatchNorm included, in eval mode) and returns, per input, the summed
    variance of the softmax outputs::

        U(x) = sum_c ( 1/T sum_t p_tc(x)^2 - (1/T sum_t p_tc(x))^2 )   in [0, 1)

    Parameters
    ----------
    model: maps ``x`` to logits (N, C); must contain ``nn.Dropout``-type layers with p > 0.
    x: (N, ...) model inputs (images in [0, 1] for the book's classifiers).
    n_samples: T >= 2.  batch_size: inputs per forward pass.
    seed: seeds the dropout masks (the global RNG is left untouched); None = global RNG.

    Returns (N,) float64 on ``x``'s device.  The model's train/eval flags are restored.
    """
    from torch.nn.modules.dropout import _DropoutNd

    _check_inputs(x, "x", model)
    n_samples, batch_size = check_int(n_samples, "n_samples", 2), check_int(batch_size, "batch_size")
    seed = None if seed is None else check_seed(seed)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module with dropout, got {type(model).__name__}")
    drops = [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]
    if not drops:
        raise ValueError("model has no dropout layer with p > 0: the MC-dropout variance would be 0 for "
                         "every input (BU needs a model with dropout)")
    devices = [x.device] if x.device.type == "cuda" else []
    with eval_mode(model):  # every submodule's flag is restored afterwards, the dropout layers' too
        for m in drops:
            m.train()
        with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = []
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size]
                s1 = s2 = 0.0
                for _ in range(n_samples):
                    p = torch.softmax(model(xb).double(), dim=1)
                    s1, s2 = s1 + p, s2 + p * p
                mean = s1 / n_samples
                out.append((s2 / n_samples - mean * mean).sum(1).clamp_min(0.0))
    return torch.cat(out)


def _check_inputs(x, name: str, model=None) -> torch.Tensor:
    """Model inputs for BU: a non-empty, finite floating tensor (N, ...); images in [0, 1] for a Classifier."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty floating tensor of model inputs (N, C, H, W), got {describe(x)}")
    if isinstance(model, Classifier):
        check_images(x, name, ndim=(4,))
    return check_finite(x, name)


class BU(Detector):
    """Bayesian-uncertainty detector (Feinman et al., 2017): MC-dropout variance of a model.

    Unlike the feature detectors, BU scores *model inputs* (images), through ``model``:
    ``score(x) = mc_dropout_variance(model, x, n_samples)`` (see there), higher = more
    uncertain = more adversarial.  ``fit(clean_images)`` only records the clean scores
    for the threshold.  Needs a model with dropout (the book's EfficientNet-Lite0 has
    dropout before its linear head; ResNet-50 has none).
    """

    name = "BU"
    inputs = Inputs(view="images")

    def __init__(self, model: nn.Module, n_samples: int = 20, batch_size: int = 256, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module with dropout, got {type(model).__name__}")
        self.model, self.n_samples = model, check_int(n_samples, "n_samples", 2)
        self.batch_size, self.seed = check_int(batch_size, "batch_size"), None if seed is None else check_seed(seed)

    def _params(self):
        return {"n_samples": self.n_samples, "seed": self.seed}

    def _validate(self, x, name, fitting):
        _check_inputs(x, name, self.model)
        if not fitting and tuple(x.shape[1:]) != self.n_features_in_:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.n_features_in_))}) as at fit, "
                             f"got {tuple(x.shape)}")
        return x

    def _dim(self, x):
        return tuple(x.shape[1:])

    def _fit(self, x, labels):
        pass

    def _score(self, x, labels):
        return mc_dropout_variance(self.model, x, self.n_samples, batch_size=self.batch_size, seed=self.seed)


# ---------------------------------------------------------------------------------------
# two-sided detection
# ---------------------------------------------------------------------------------------


class TwoSided(Detector):
    r"""Two-sided version of any detector: flags scores far from the clean median, on either side.

    .. math:: s_2(x) = |s(x) - m|, \qquad m = \mathrm{median}\{s(x_i) : x_i \text{ clean reference}\}

    An attack that *over-hides* (HFC with a large :math:`\lambda`) can make its
    features more typical than clean ones -- scores *below* the clean range -- which a
    one-sided threshold never flags.  The median and the threshold come from clean
    scores only: the wrapped detector's ``reference_scores_`` (its clean training
    scores), or the held-out clean set given to :meth:`calibrate`.

    ``TwoSided(fitted_detector)`` is ready to use; ``TwoSided(detector).fit(...)`` fits
    the wrapped detector first (same arguments).  Its ``inputs`` are the wrapped
    detector's: it is fitted on and scores what that detector is.  Scores are float64
    ``(N,)`` >= 0; ``threshold``, ``predict`` as for every detector.

    Attributes after fit: ``center_`` the clean median :math:`m`, ``reference_scores_``
    the clean :math:`|s - m|`, ``n_features_in_`` the wrapped detector's.
    """

    def __init__(self, detector: Detector):
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be a Detector, got {type(detector).__name__}")
        self.detector = detector
        self.name = f"{detector.name} (two-sided)"
        self.inputs = detector.inputs
        if detector.is_fitted:
            self._set_reference(detector.reference_scores_)

    def __repr__(self) -> str:
        return f"TwoSided({self.detector!r})"

    def _set_reference(self, clean_scores: torch.Tensor) -> None:
        s = clean_scores.detach().to(torch.float64)
        self.center_ = float(torch.quantile(s.cpu(), 0.5))
        self.reference_scores_ = (s - self.center_).abs()
        self.n_features_in_ = self.detector.n_features_in_

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None) -> "TwoSided":
        """Fit the wrapped detector (same arguments), then take the median of its clean scores."""
        with self._fitting():
            self.detector.fit(clean_features, labels, adv_features=adv_features,
                              clean_val_features=clean_val_features)
            self._set_reference(self.detector.reference_scores_)
        return self

    def score(self, features, labels=None) -> torch.Tensor:
        """``|s(features) - median|``, ``(N,)`` float64 on the features' device."""
        self._check_fitted("score")
        return (self.detector.score(features, labels) - self.center_).abs()

    def calibrate(self, clean_features, labels=None) -> "TwoSided":
        """Median and threshold from held-out clean features instead of the training scores."""
        self._check_fitted("calibrate")
        with torch.no_grad():
            self._set_reference(self.detector.score(clean_features, labels))
        return self
