"""The detectors' common API: the :class:`Detector` base class (fit / score / threshold / predict),
the :class:`Inputs` declaration, the fitted check and the input validation every detector shares."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence

import torch

from ..checks import check_features, check_labels, describe
from ..metrics import quantile_threshold


_check_features = check_features

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


def _check_labels(labels, n: int, name: str = "labels", device=None) -> torch.Tensor:
    """``labels`` must be a non-negative integer tensor (n,); returned as int64 on ``device``."""
    check_labels(labels, n, name, of="the features")
    return labels.to(device=device, dtype=torch.int64) if device is not None else labels.long()


def _check_layers(features, name: str, expected: Mapping[str, int] | None = None, *,
                  finite: bool = True) -> dict[str, torch.Tensor]:
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
        v = _check_features(v, f"{name}[{k!r}]", None if expected is None else expected[k], finite=finite)
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
    def _validate(self, x, name: str, fitting: bool, finite: bool = True):
        """Check ``x`` (shapes always; the NaN / infinity scan unless ``finite`` is False) and return it."""
        return _check_features(x, name, None if fitting else self.n_features_in_, finite=finite)

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

    def score(self, features, labels=None, *, scanned: bool = False) -> torch.Tensor:
        """Scores (N,) float64 on the features' device; higher = more adversarial.

        ``features``: what ``inputs.view`` says.  ``labels`` (N,) are the classes the
        classifier *predicts* for these rows; detectors whose ``inputs.score_labels`` is
        ``"predicted"`` read them (KD needs them), the others ignore them.
        ``scanned=True``: the caller has already scanned these values for NaN and infinity
        where they entered (a :class:`~medadv_tutorial.features.FeatureSet` does when it is
        made; :class:`~medadv_tutorial.suite.DetectorSuite` and the ensembles pass it), so the
        scan is not repeated; types and shapes are still checked.
        """
        self._check_fitted("score")
        x = self._validate(features, "features", fitting=False, finite=not scanned)
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
