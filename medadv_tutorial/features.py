r"""Feature-space analysis: hierarchical features, Mahalanobis outliers and the fixed direction.

Three tools for chapters 3-5 (why adversarial examples are easy to detect, and what HFC
changes about it):

1. **Hierarchical feature extraction.** :func:`extract_features` runs a model once per
   batch over a whole data set and keeps the pooled features of every tap (see
   :meth:`medadv_tutorial.models.Classifier.forward_features`), the logits and the labels
   in a :class:`FeatureSet`; with ``cache=True`` the set goes to the result store
   (:mod:`~medadv_tutorial.cache`), keyed by the model's weights, the images, the layers and
   the version of this module's code, and is read back on the next call::

       clean = extract_features(model, test_set, cache=True)
       clean["block5"].shape, clean.penultimate.shape   # (N, 40), (N, 1280)

2. **Outlier statistics.** Per layer and per class, a Gaussian fitted to clean training
   features (:class:`ClassGaussian`: class means, a shared -- "tied", as in Lee et al.'s
   Mahalanobis detector -- or per-class covariance with a ridge, Cholesky in float64)
   gives every sample a Mahalanobis distance (:func:`mahalanobis`).
   :class:`MahalanobisOutliers` turns distances into *percentiles among held-out clean
   distances*: a clean test image gets a percentile that is uniform on [0, 100], an
   outlier one near 100.  This is the HFC paper's observation, layer by layer: the
   features of adversarial medical images are outliers of the clean feature distribution
   (the features are *vulnerable*: a tiny perturbation moves them far).

3. **The fixed-direction theorem** (Yao et al., MICCAI 2021, Sec. 2.2).  With a linear
   head :math:`z = W h + b` on the penultimate features :math:`h` and the cross-entropy
   :math:`L = -\log \mathrm{softmax}(z)_y`,

   .. math:: \nabla_h L = (p - e_y)^\top W, \qquad p = \mathrm{softmax}(z)

   (:func:`logit_gradient_wrt_features`).  With two classes this is
   :math:`(1 - p_y)\,(w_{y'} - w_y)`: whatever the image, the gradient in feature space
   points along the same direction :math:`\Delta w = w_{\mathrm{target}} - w_{\mathrm{source}}`
   (:func:`delta_w`), scaled by a positive number.  An attack that follows it keeps
   pushing the features along :math:`\Delta w`, step after step, far beyond the clean
   distribution -- the reason adversarial features are outliers.  (In input space the
   attack can only move :math:`h` within the reach of an :math:`L_\infty` step, so the
   feature displacement is :math:`\Delta w` *filtered* by the network: for a linear feature
   map :math:`h = A x` a sign step moves :math:`h` by :math:`\alpha A\,\mathrm{sign}(A^\top
   \Delta w)`, whose projection on :math:`\Delta w`, :math:`\alpha \|A^\top \Delta w\|_1`,
   is always positive.)  :func:`pgd_feature_trajectory` records :math:`h` at every PGD
   iterate and :func:`direction_stats` measures how well the trajectory follows
   :math:`\Delta w`, against random directions as a baseline.

Conventions: feature tensors are ``(N, C_l)`` floats (``C_l`` channels of layer ``l``);
a :class:`FeatureSet` lives on the CPU in float32; statistics are computed in float64 on
the device of their inputs.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import gaussian
from .io import atomic_torch_save
from .attacks import PGD, Attack
from .batching import iter_batches, model_device, resolve_forward
from .progress import progress as progress_bar
from .checks import (CorruptFileError, as_labels, check_features, check_finite, check_images, check_input_dtype,
                     check_device, check_int, check_labels, check_model, check_real, check_seed, describe, eval_mode)

__all__ = [
    "FeatureSet",
    "extract_features",
    "ClassGaussian",
    "mahalanobis",
    "MahalanobisOutliers",
    "outlier_percentiles",
    "outlier_rate",
    "logit_gradient_wrt_features",
    "delta_w",
    "attack_direction",
    "pgd_feature_trajectory",
    "direction_stats",
]

FEATURES_FORMAT = 1
"""Version of the feature files :meth:`FeatureSet.save` writes."""

CLASS_RULES = ("predicted", "true", "nearest")


# ============================================================================ feature sets


@dataclasses.dataclass
class FeatureSet:
    """Pooled features of every tapped layer for a whole data set.

    Attributes
    ----------
    feats: ordered ``{layer: (N, C_l) float32}``, shallow to deep (CPU by default).
    labels: ``(N,)`` int64 true labels (for an adversarial set: the *true* labels of the
        clean images, not the attack's targets).
    logits: ``(N, K)`` float32 logits of the model on the same images.
    layers: the layer names, in the order of ``feats``.

    ``fs["block5"]`` is ``fs.feats["block5"]``; ``fs.penultimate`` the input of the
    linear head; ``fs.predictions`` the predicted classes ``(N,)``; ``fs.subset(idx)`` a
    new set with the rows ``idx`` (indices or a boolean mask).
    """

    feats: "OrderedDict[str, torch.Tensor]"
    labels: torch.Tensor
    logits: torch.Tensor
    layers: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.feats, Mapping) or not all(isinstance(v, torch.Tensor) for v in self.feats.values()):
            raise TypeError(f"feats must be a mapping {{layer: (N, C_l) tensor}}, got {describe(self.feats)}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.is_floating_point():
            raise TypeError(f"labels must be an integer tensor (N,) of class indices, got {describe(self.labels)}")
        if not isinstance(self.logits, torch.Tensor) or not self.logits.is_floating_point():
            raise TypeError(f"logits must be a floating tensor (N, K), got {describe(self.logits)}")
        self.feats = OrderedDict(self.feats)
        if not self.layers:
            self.layers = list(self.feats)
        if list(self.layers) != list(self.feats):
            raise ValueError(f"layers {self.layers} must name the keys of feats {list(self.feats)} in order")
        n = self.labels.shape[0]
        if self.labels.ndim != 1:
            raise ValueError(f"labels must have shape (N,), got {tuple(self.labels.shape)}")
        if self.logits.ndim != 2 or self.logits.shape[0] != n:
            raise ValueError(f"logits must have shape ({n}, K), got {tuple(self.logits.shape)}")
        for k, v in self.feats.items():
            if v.ndim != 2 or v.shape[0] != n:
                raise ValueError(f"feats[{k!r}] must have shape ({n}, C), got {tuple(v.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, layer: str) -> torch.Tensor:
        """``(N, C_l)`` features of ``layer``."""
        if layer not in self.feats:
            raise KeyError(f"no layer {layer!r} in this FeatureSet; it has {self.layers}")
        return self.feats[layer]

    @property
    def penultimate(self) -> torch.Tensor:
        """``(N, d)`` penultimate features (the input of the linear head)."""
        return self["penultimate"]

    @property
    def predictions(self) -> torch.Tensor:
        """``(N,)`` predicted classes, ``logits.argmax(1)``."""
        return self.logits.argmax(dim=1)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def subset(self, idx) -> "FeatureSet":
        """Rows ``idx`` (an index tensor/list or an ``(N,)`` boolean mask) of every tensor."""
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool and idx.shape != (len(self),):
            raise ValueError(f"a boolean mask must have shape ({len(self)},), got {tuple(idx.shape)}")
        if idx.numel() and idx.dtype != torch.bool:
            if idx.is_floating_point():
                raise TypeError(f"idx must hold row indices (ints) or be a boolean mask, got dtype {idx.dtype}")
            if not (-len(self) <= int(idx.min()) and int(idx.max()) < len(self)):
                raise IndexError(f"idx holds row {int(idx.max())} or {int(idx.min())}; the set has {len(self)} rows")
        idx = idx.to(self.labels.device)
        return FeatureSet(OrderedDict((k, v[idx]) for k, v in self.feats.items()),
                          self.labels[idx], self.logits[idx], list(self.layers))

    def select(self, layers: Sequence[str]) -> "FeatureSet":
        """The same rows with only ``layers`` (in that order)."""
        return FeatureSet(OrderedDict((k, self[k]) for k in layers), self.labels, self.logits, list(layers))

    def to(self, device) -> "FeatureSet":
        """A copy on ``device``."""
        return FeatureSet(OrderedDict((k, v.to(device)) for k, v in self.feats.items()),
                          self.labels.to(device), self.logits.to(device), list(self.layers))

    # -------------------------------------------------------------------- persistence

    def state(self) -> dict:
        """The set as plain tensors, strings and numbers (what :meth:`save` and the result store write)."""
        return {"format": FEATURES_FORMAT, "layers": list(self.layers),
                "feats": {k: v.detach().cpu().contiguous() for k, v in self.feats.items()},
                "labels": self.labels.cpu(), "logits": self.logits.detach().cpu()}

    @classmethod
    def from_state(cls, blob) -> "FeatureSet":
        """The set of :meth:`state`."""
        if not isinstance(blob, dict) or blob.get("format") != FEATURES_FORMAT:
            raise ValueError(f"not a feature set of format {FEATURES_FORMAT}")
        feats = OrderedDict((k, blob["feats"][k]) for k in blob["layers"])
        return cls(feats, blob["labels"], blob["logits"], list(blob["layers"]))

    def save(self, path) -> None:
        """Write the set to ``path`` atomically (temporary file in the same folder + rename)."""
        atomic_torch_save(self.state(), Path(path))

    @classmethod
    def load(cls, path) -> "FeatureSet":
        """Read a set written by :meth:`save` (``torch.load(weights_only=True)``).

        Raises :class:`~medadv_tutorial.checks.CorruptFileError` naming the file when it cannot be read.
        """
        try:
            return cls.from_state(torch.load(path, map_location="cpu", weights_only=True))
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoding error means the file is unusable
            raise CorruptFileError.of("feature file", path, err, "it is corrupt, truncated or not a feature set; "
                                      "delete it and save the features again") from err


def extract_features(
    model,
    data,
    layers: Sequence[str] | None = None,
    batch_size: int = 100,
    device=None,
    progress: bool = True,
    cache: bool = False,
) -> FeatureSet:
    """Pooled features of every tap, logits and labels for a whole data set.

    One ``model.forward_features`` pass per batch, in eval mode (restored afterwards),
    without gradients.

    Parameters
    ----------
    model: a :class:`~medadv_tutorial.models.Classifier` (or any module with
        ``forward_features(x, layers=...) -> (logits (N, K), {layer: (N, C_l)})``).
    data: a torch ``Dataset`` yielding ``(image (C, H, W) float in [0, 1], label)``, a
        ``DataLoader`` of such batches, or a pair ``(x (N, C, H, W) in [0, 1], y (N,))``.
        MedMNIST-style labels of shape ``(1,)`` are accepted.
    layers: taps to keep (default: all of ``model.feature_names``).  The result keeps the
        model's shallow-to-deep order.
    batch_size: images per forward pass (ignored for a ``DataLoader``).
    device: where to compute; default (and required to match): the model's device.
    progress: show a tqdm bar.
    cache: read the set from the result store (:mod:`~medadv_tutorial.cache`) when the same
        model weights, images, layers and batch size were extracted before by the same code,
        else extract it and store it.  Data that has no content key (a ``DataLoader``) is
        extracted without the store.

    Returns
    -------
    :class:`FeatureSet` on the CPU, float32 features and logits, int64 labels, in data
    order.
    """
    check_model(model, "model", "forward_features")
    names = getattr(model, "feature_names", None)
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of tap names such as [{layers!r}], got str {layers!r}")
    if layers is not None:
        layers = list(dict.fromkeys(layers))
        if not layers:
            raise ValueError("layers is empty: name at least one tap, or pass None for all of them")
        if names is not None:
            unknown = [k for k in layers if k not in names]
            if unknown:
                raise KeyError(f"unknown feature layers {unknown}; available: {list(names)}")
            layers = [k for k in names if k in layers]  # shallow to deep
    elif names is not None:
        layers = list(names)

    on = model_device(model) or torch.device("cpu")
    device = on if device is None else check_device(device)
    if device != on:
        raise ValueError(f"device={device} but the model's parameters are on {on}; move the model")

    if cache:
        from . import cache as result_cache

        key = dict(model=model, data=data, layers=layers, batch_size=batch_size, device=device.type)
        state, _ = result_cache.cached_tensors(
            "features", key, lambda: _extract(model, data, layers, batch_size, device, progress).state(), code="features")
        return FeatureSet.from_state(state)
    return _extract(model, data, layers, batch_size, device, progress)


def _extract(model, data, layers, batch_size, device, progress) -> FeatureSet:
    it, total = iter_batches(data, batch_size)
    out: OrderedDict[str, list[torch.Tensor]] | None = None
    labels, logits_all = [], []
    with eval_mode(model), torch.no_grad():
        for xb, yb in progress_bar(it, total=total, enabled=progress, desc="features"):
            xb = check_images(xb.to(device), "the images of data")
            check_input_dtype(model, xb, "the images of data")
            logits, feats = model.forward_features(xb, layers=layers)
            check_labels(yb, len(xb), "the labels of data", logits.shape[1])
            if out is None:
                out = OrderedDict((k, []) for k in (layers if layers is not None else feats))
            for k in out:
                out[k].append(feats[k].detach().float().cpu())
            logits_all.append(logits.detach().float().cpu())
            labels.append(yb.cpu().long())
    if out is None:
        raise ValueError("data is empty")
    return FeatureSet(OrderedDict((k, torch.cat(v)) for k, v in out.items()), torch.cat(labels), torch.cat(logits_all))


# ======================================================================= outlier statistics


def mahalanobis(feats: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor, squared: bool = False) -> torch.Tensor:
    r"""Mahalanobis distance :math:`\sqrt{(h - \mu)^\top \Sigma^{-1} (h - \mu)}` of every row.

    Computed in float64 by the package's Gaussian kernel
    (:func:`medadv_tutorial.gaussian.mahalanobis_sq`): with the lower Cholesky factor
    :math:`\Sigma = L L^\top`, the distance is :math:`\|(h - \mu)^\top U\|_2` with
    :math:`U = L^{-\top}` (one triangular solve, no general inverse).

    Parameters
    ----------
    feats: ``(N, d)`` features.
    mean: ``(d,)`` one mean for all rows, or ``(N, d)`` one mean per row.
    chol: ``(d, d)`` lower-triangular Cholesky factor of the covariance.
    squared: return the squared distance.

    Returns ``(N,)`` float64 distances on ``feats.device``.
    """
    check_features(feats, "feats")
    n, d = feats.shape
    if not isinstance(mean, torch.Tensor) or mean.shape not in ((d,), (n, d)):
        raise ValueError(f"mean must have shape ({d},) or ({n}, {d}), got {describe(mean)}")
    if not isinstance(chol, torch.Tensor) or chol.shape != (d, d):
        raise ValueError(f"chol must have shape ({d}, {d}), got {describe(chol)}")
    check_finite(mean, "mean")
    if not (bool((torch.diagonal(chol) > 0).all()) and bool(torch.isfinite(chol).all())
            and torch.equal(chol, chol.tril())):
        raise ValueError("chol must be a lower Cholesky factor: lower-triangular and finite, with a positive diagonal")
    x = feats.to(torch.float64)
    U = gaussian.precision_cholesky(chol.to(device=x.device, dtype=torch.float64))
    m = mean.to(device=x.device, dtype=torch.float64)
    if m.ndim == 1:
        sq = gaussian.mahalanobis_sq(x, m[None], U)[:, 0]
    else:  # one mean per row: the distance of h - mu to 0
        sq = gaussian.mahalanobis_sq(x - m, torch.zeros_like(m[:1]), U)[:, 0]
    return sq if squared else sq.sqrt()


def _as_classes(labels, n: int, name: str, num_classes: int | None = None) -> torch.Tensor:
    labels = as_labels(labels)
    if labels.is_floating_point() or labels.shape != (n,):
        raise ValueError(f"{name} must be integer class indices of shape ({n},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    return check_labels(labels, n, name, num_classes).long()


@dataclasses.dataclass
class ClassGaussian:
    r"""Class-conditional Gaussians of one layer's features: means and a (shared) covariance.

    Fit with :meth:`fit`.  The covariance is the maximum-likelihood estimate (pooled
    within-class scatter over ``N`` when ``shared``, per class over ``n_c`` otherwise)
    plus a ridge :math:`\texttt{reg}\,\bar\sigma^2 I`, where :math:`\bar\sigma^2 =
    \mathrm{tr}(\Sigma)/d` is the average variance: ``reg`` is *relative* (the ridge of
    every Gaussian of the package, :func:`medadv_tutorial.gaussian.regularised_cholesky`),
    so the same value suits layers whose features have very different scales, and makes
    the covariance invertible when ``d`` exceeds the number of samples (penultimate
    features).  Distances come from :func:`medadv_tutorial.gaussian.mahalanobis_sq` in
    float64.

    Attributes
    ----------
    means: ``(K, d)`` float64 class means.
    chol: ``(d, d)`` (shared) or ``(K, d, d)`` (per class) float64 lower Cholesky factors.
    counts: ``(K,)`` training samples per class.
    shared, reg: the settings used.
    precision_cholesky: the upper precision factors :math:`L^{-\top}` of ``chol`` (derived).
    """

    means: torch.Tensor
    chol: torch.Tensor
    counts: torch.Tensor
    shared: bool = True
    reg: float = 1e-3
    precision_cholesky: torch.Tensor = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.precision_cholesky = gaussian.precision_cholesky(self.chol)

    @classmethod
    def fit(cls, feats: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, *,
            shared: bool = True, reg: float = 1e-3) -> "ClassGaussian":
        """Fit to ``feats`` ``(N, d)`` with integer ``labels`` ``(N,)`` in ``0..K-1``.

        ``num_classes`` defaults to ``labels.max() + 1``; every class needs at least one
        sample (two for a per-class covariance).  ``reg >= 0`` is the relative ridge.
        """
        check_features(feats, "feats")
        n, d = feats.shape
        num_classes = None if num_classes is None else check_int(num_classes, "num_classes")
        labels = _as_classes(labels, n, "labels", num_classes).to(feats.device)
        k = int(labels.max()) + 1 if num_classes is None else num_classes
        reg = check_real(reg, "reg (relative ridge)", low=0.0)
        x = feats.to(torch.float64)
        counts = torch.bincount(labels, minlength=k)
        need = 1 if shared else 2
        if int(counts.min()) < need:
            missing = [c for c in range(k) if int(counts[c]) < need]
            raise ValueError(f"classes {missing} have fewer than {need} training samples; "
                             "cannot fit their Gaussian")
        means = torch.zeros(k, d, dtype=torch.float64, device=feats.device).index_add_(0, labels, x)
        means /= counts[:, None].to(torch.float64)
        centred = x - means[labels]
        if shared:
            chol = gaussian.regularised_cholesky(centred.T @ centred / n, reg, n=n, name="feats")[0]
        else:
            chol = torch.stack([gaussian.regularised_cholesky(
                centred[labels == c].T @ centred[labels == c] / int(counts[c]), reg, n=int(counts[c]),
                name=f"class {c}'s feats")[0] for c in range(k)])
        return cls(means, chol, counts.cpu(), shared, float(reg))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def distance(self, feats: torch.Tensor, classes: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """``(N,)`` float64 distance of each row of ``feats`` ``(N, d)`` to the Gaussian of its
        class ``classes`` ``(N,)``."""
        self._check(feats)
        classes = _as_classes(classes, feats.shape[0], "classes", self.num_classes).to(feats.device)
        x = feats.to(torch.float64)
        if self.shared:  # one tied factor: the distances to every class cost one product
            sq = self._squared(x).gather(1, classes[:, None])[:, 0]
        else:
            means, U = self.means.to(x.device), self.precision_cholesky.to(x.device)
            sq = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
            for c in classes.unique().tolist():
                m = classes == c
                sq[m] = gaussian.mahalanobis_sq(x[m], means[c : c + 1], U[c : c + 1])[:, 0]
        return sq if squared else sq.sqrt()

    def distances(self, feats: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """``(N, K)`` float64 distances of every row to every class."""
        self._check(feats)
        sq = self._squared(feats.to(torch.float64))
        return sq if squared else sq.sqrt()

    def _squared(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` squared distances of float64 rows ``x`` to every class: one kernel call."""
        return gaussian.mahalanobis_sq(x, self.means.to(x.device), self.precision_cholesky.to(x.device))

    def _check(self, feats):
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"feats must have shape (N, {self.dim}), got {describe(feats)}")
        check_finite(feats, "feats")


def _split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified random split of ``range(N)``: (fit indices, reference indices)."""
    g = torch.Generator().manual_seed(seed)
    fit, ref = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_ref = int(round(fraction * len(idx)))
        n_ref = min(n_ref, len(idx) - 1)  # keep at least one sample of every class to fit
        ref.append(idx[:n_ref])
        fit.append(idx[n_ref:])
    return torch.cat(fit).sort().values, torch.cat(ref).sort().values


class MahalanobisOutliers:
    r"""Per-layer Mahalanobis distances and their percentiles among held-out clean data.

    ``fit(clean_train, reference=None)`` fits one :class:`ClassGaussian` per layer on
    clean training features (with their *true* labels) and computes the distances of a
    clean **reference** set that was *not* used for the fit -- by default a stratified
    ``ref_fraction`` of ``clean_train`` held out from the fit.  Held out matters: in-sample
    distances are smaller (the Gaussian has adapted to those very points, markedly so
    when ``d`` is close to the sample count), which would make every new clean image look
    like an outlier.  Because the reference and a clean test image are then exchangeable,
    :meth:`percentiles` of clean test data are uniform on [0, 100].

    Which class's Gaussian measures a sample (``classes``):

    * ``"predicted"`` (default): the class the model predicts -- all a detector can see
      at test time, and what a successful attack controls.  An adversarial image is
      measured against the class it now claims to be.
    * ``"true"``: the true label (for analysis only; a detector does not know it).
    * ``"nearest"``: the smallest distance over classes (Lee et al.'s Mahalanobis score).

    The same rule is applied to the reference set, so the percentiles stay calibrated.

    Parameters
    ----------
    layers: layers to analyse (default: all of the training set's).
    shared: one covariance for all classes (default) or one per class.
    reg: relative ridge of the covariance (see :class:`ClassGaussian`).
    classes: default class rule (above).
    ref_fraction: share of ``clean_train`` held out as reference when ``reference`` is
        not given (stratified, seeded by ``seed``).
    """

    def __init__(self, layers: Sequence[str] | None = None, *, shared: bool = True, reg: float = 1e-3,
                 classes: str = "predicted", ref_fraction: float = 0.3, seed: int = 0):
        _check_rule(classes)
        ref_fraction = check_real(ref_fraction, "ref_fraction", low=0.0, low_open=True, high=1.0)
        if ref_fraction == 1:
            raise ValueError("ref_fraction must be < 1: some clean images must be left to fit on")
        seed = check_seed(seed)
        self.layers = None if layers is None else list(layers)
        self.shared, self.reg, self.classes = shared, reg, classes
        self.ref_fraction, self.seed = ref_fraction, seed
        self.gaussians_: dict[str, ClassGaussian] | None = None

    def fit(self, clean_train: FeatureSet, reference: FeatureSet | None = None) -> "MahalanobisOutliers":
        """Fit the per-layer Gaussians and store the reference set (returns ``self``)."""
        _check_feature_set(clean_train, "clean_train")
        if reference is not None:
            _check_feature_set(reference, "reference")
        layers = self.layers if self.layers is not None else list(clean_train.layers)
        if reference is None:
            fit_idx, ref_idx = _split(clean_train.labels, self.ref_fraction, self.seed)
            train, reference = clean_train.subset(fit_idx), clean_train.subset(ref_idx)
        else:
            train = clean_train
        if len(reference) == 0:
            raise ValueError("the clean reference set is empty")
        k = max(train.num_classes, int(train.labels.max()) + 1)
        self.gaussians_ = {l: ClassGaussian.fit(train[l], train.labels, k, shared=self.shared, reg=self.reg)
                           for l in layers}
        self.layers_ = layers
        self.reference_ = reference.select(layers)
        self._ref_sorted: dict[str, dict[str, torch.Tensor]] = {}
        return self

    def _fitted(self):
        if self.gaussians_ is None:
            raise RuntimeError("MahalanobisOutliers is not fitted yet; call fit(clean_train) first")

    def distances(self, fs: FeatureSet, classes: str | None = None) -> "OrderedDict[str, torch.Tensor]":
        """``{layer: (N,) float64}`` Mahalanobis distances of the samples of ``fs``."""
        self._fitted()
        _check_feature_set(fs, "fs")
        rule = _check_rule(classes or self.classes)
        out = OrderedDict()
        for l in self.layers_:
            g, h = self.gaussians_[l], fs[l]
            if rule == "nearest":
                out[l] = g.distances(h).amin(dim=1)
            else:
                cls = fs.predictions if rule == "predicted" else fs.labels
                out[l] = g.distance(h, cls)
        return out

    def reference_distances(self, classes: str | None = None) -> "OrderedDict[str, torch.Tensor]":
        """``{layer: (M,) float64}`` sorted distances of the clean reference set."""
        self._fitted()
        rule = _check_rule(classes or self.classes)
        if rule not in self._ref_sorted:
            self._ref_sorted[rule] = OrderedDict(
                (l, d.sort().values) for l, d in self.distances(self.reference_, rule).items())
        return self._ref_sorted[rule]

    def percentiles(self, fs: FeatureSet, classes: str | None = None) -> "OrderedDict[str, torch.Tensor]":
        r"""``{layer: (N,) float64 in [0, 100]}``: where each sample's distance falls among the
        clean reference distances (mid-rank: ``100 (#{ref < d} + #{ref == d} / 2) / M``).

        Clean held-out samples give uniform percentiles; 100 means farther than every
        clean reference sample.
        """
        ref = self.reference_distances(classes)
        out = OrderedDict()
        for l, d in self.distances(fs, classes).items():
            r = ref[l].to(d.device)
            lo = torch.searchsorted(r, d, right=False)
            hi = torch.searchsorted(r, d, right=True)
            out[l] = 100.0 * (lo + hi).to(torch.float64) / (2 * len(r))
        return out


def _check_feature_set(fs, name: str) -> None:
    if not isinstance(fs, FeatureSet):
        raise TypeError(f"{name} must be a FeatureSet (from extract_features), got {type(fs).__name__}")


def _check_rule(rule) -> str:
    if rule not in CLASS_RULES:
        raise ValueError(f"classes must be one of {CLASS_RULES}, got {rule!r}")
    return rule


def outlier_percentiles(
    clean_train: FeatureSet,
    queries: Mapping[str, FeatureSet],
    *,
    reference: FeatureSet | None = None,
    layers: Sequence[str] | None = None,
    classes: str = "predicted",
    shared: bool = True,
    reg: float = 1e-3,
    ref_fraction: float = 0.3,
    seed: int = 0,
) -> "OrderedDict[str, OrderedDict[str, torch.Tensor]]":
    """Percentiles of Mahalanobis distances among clean held-out distances, per layer.

    Shortcut for ``MahalanobisOutliers(...).fit(clean_train, reference).percentiles(q)``
    for every query set, e.g.
    ``outlier_percentiles(train_fs, {"clean": test_fs, "PGD": adv_fs})``.

    Returns ``{query name: {layer: (N_q,) float64 in [0, 100]}}``.  For adversarial sets
    the default ``classes="predicted"`` measures each image against the class the model
    now predicts (see :class:`MahalanobisOutliers` for the rules and the reference set).
    """
    if isinstance(queries, FeatureSet) or not isinstance(queries, Mapping):
        raise TypeError("queries must be a mapping {name: FeatureSet}, e.g. {'clean': test_fs, 'PGD': adv_fs}")
    model = MahalanobisOutliers(layers, shared=shared, reg=reg, classes=classes,
                                ref_fraction=ref_fraction, seed=seed).fit(clean_train, reference)
    return OrderedDict((name, model.percentiles(fs)) for name, fs in queries.items())


def outlier_rate(percentiles: Mapping[str, torch.Tensor], level: float = 95.0) -> "OrderedDict[str, float]":
    """``{layer: fraction of samples with percentile > level}`` (clean data: about ``1 - level/100``)."""
    level = check_real(level, "level (a percentile)", low=0.0, high=100.0)
    if 0 < level < 1:
        warnings.warn(f"level={level:g} is a percentile in [0, 100], not a fraction: did you mean "
                      f"level={100 * level:g}?", UserWarning, stacklevel=2)
    if not isinstance(percentiles, Mapping):
        raise TypeError(f"percentiles must be a mapping {{layer: (N,) percentiles}}, got {describe(percentiles)}")
    return OrderedDict((l, float((p > level).to(torch.float64).mean())) for l, p in percentiles.items())


# ======================================================================= fixed direction


def logit_gradient_wrt_features(W: torch.Tensor, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Analytic gradient of the cross-entropy w.r.t. the penultimate features.

    For logits :math:`z = W h + b` and :math:`L = -\log p_y`, :math:`p = \mathrm{softmax}(z)`:
    :math:`\nabla_h L = (p - e_y)^\top W`.

    Parameters
    ----------
    W: ``(K, d)`` weight of the linear head (``model.fc.weight``).
    p: ``(N, K)`` softmax probabilities.
    y: ``(N,)`` the class of the loss (true label for an untargeted attack, which ascends
        this gradient; the target for a targeted attack, which descends it).

    Returns ``(N, d)``.  For ``K = 2`` it equals :math:`(1 - p_y)(w_{1-y} - w_y)`.
    """
    _check_head(W)
    k = W.shape[0]
    if not isinstance(p, torch.Tensor) or p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"p must have shape (N, {k}), got {describe(p)}")
    check_finite(p, "p")
    y = _as_classes(y, p.shape[0], "y", k).to(p.device)
    return (p - F.one_hot(y, k).to(p.dtype)) @ W.to(p.dtype)


def delta_w(W: torch.Tensor, source, target) -> torch.Tensor:
    r""":math:`\Delta w = w_{\mathrm{target}} - w_{\mathrm{source}}`, the fixed direction.

    ``W`` ``(K, d)``; ``source``, ``target``: ints (returns ``(d,)``) or ``(N,)`` tensors
    (returns ``(N, d)``).
    """
    _check_head(W)
    s, t = (_class_index(v, name, W.shape[0]).to(W.device) for v, name in ((source, "source"), (target, "target")))
    return W[t] - W[s]


def _check_head(W) -> None:
    if not isinstance(W, torch.Tensor) or not W.is_floating_point() or W.ndim != 2:
        raise ValueError(f"W must be the (K, d) weight of the linear head (model.fc.weight), got {describe(W)}")
    check_finite(W, "W")


def _class_index(v, name: str, k: int) -> torch.Tensor:
    """An int or an integer tensor of class indices in ``[0, k)``, as an int64 tensor."""
    t = torch.as_tensor(v)
    if t.is_floating_point() or t.dtype == torch.bool or t.ndim > 1:
        raise TypeError(f"{name} must be a class index (int) or an (N,) integer tensor, got {describe(v)}")
    return check_labels(t.reshape(-1), t.numel(), name, k).long().reshape(t.shape)


def attack_direction(W: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    r"""Per-image fixed direction of a binary attack, ``(N, d)``.

    Untargeted (``y`` = true labels): :math:`w_{1-y} - w_y`; targeted (``y`` = targets):
    :math:`w_y - w_{1-y}`.  Only defined for two classes (``W`` of shape ``(2, d)``).
    """
    _check_head(W)
    if W.shape[0] != 2:
        raise ValueError(f"the fixed direction is defined for binary heads: W must be (2, d), got {tuple(W.shape)}")
    y = _class_index(y, "y", 2).to(W.device)
    return delta_w(W, 1 - y, y) if targeted else delta_w(W, y, 1 - y)


def _penultimate(aux) -> torch.Tensor:
    if isinstance(aux, Mapping) and "penultimate" in aux:
        return aux["penultimate"]
    raise ValueError("the attack's forward must return (logits, aux) with aux['penultimate'] "
                     "(use forward='forward_features' or leave forward unset)")


def _forward_penultimate(model, x):
    return model.forward_features(x, layers=["penultimate"])


class _Recorder:
    """Extra loss that records ``aux['penultimate']`` at every step and adds the wrapped term (if any)."""

    def __init__(self, inner):
        self.inner = inner
        self.steps: list[torch.Tensor] = []

    def bind(self, x, y):
        inner = self.inner
        if inner is not None and callable(getattr(inner, "bind", None)):
            inner = inner.bind(x, y)

        def term(xa, logits, aux):
            self.steps.append(_penultimate(aux).detach().clone())
            return logits.new_zeros(xa.shape[0]) if inner is None else inner(xa, logits, aux)

        return term


def pgd_feature_trajectory(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    attack_kwargs: Mapping[str, Any] | Attack | None = None,
    *,
    return_adv: bool = False,
):
    r"""Penultimate features at every iterate of a PGD attack: ``(T + 1, N, d)``.

    The attack runs once, on the package's loop (:func:`~medadv_tutorial.attacks.iterative_attack`):
    a recording extra term stores ``aux["penultimate"]`` of each forward pass, and the
    final iterate's features are computed after the attack.

    Parameters
    ----------
    model: a :class:`~medadv_tutorial.models.Classifier` (``forward_features``), on ``x.device``.
    x: ``(N, C, H, W)`` images in [0, 1].
    y: ``(N,)`` true labels, or targets if the attack is targeted.
    attack_kwargs: keyword arguments of :class:`~medadv_tutorial.attacks.PGD` (e.g.
        ``{"eps": 4/255, "steps": 20, "targeted": True}``; ``random_start`` defaults to
        ``False`` here so that step 0 is the clean image), or a configured
        :class:`~medadv_tutorial.attacks.Attack` (BIM, MIM, an HFC attack, ...).  An
        attack's own ``extra_loss`` is kept (and still acts); its ``forward``, if set,
        must provide ``aux["penultimate"]``.  ``early_stop`` is not supported.
    return_adv: also return the adversarial images.

    Returns
    -------
    ``traj`` ``(T + 1, N, d)`` detached, on ``x.device``: ``traj[0]`` the clean features,
    ``traj[t]`` the features after ``t`` steps (with a random start, ``traj[1]`` includes
    the random offset).  With ``return_adv``: ``(traj, x_adv)``.
    """
    if isinstance(attack_kwargs, Attack):
        attack = attack_kwargs
    elif attack_kwargs is not None and not isinstance(attack_kwargs, Mapping):
        raise TypeError(f"attack_kwargs must be a dict of PGD settings such as {{'eps': 4/255, 'steps': 10}} or an "
                        f"Attack, got {describe(attack_kwargs)}")
    else:
        kw = dict(random_start=False)
        kw.update(attack_kwargs or {})
        if "eps" not in kw:
            raise ValueError("attack_kwargs must give eps, e.g. {'eps': 4/255, 'steps': 10}")
        attack = PGD(**kw)
    if attack.early_stop:
        raise ValueError("early_stop drops finished samples from the batch; use early_stop=False for a trajectory")
    forward = attack.forward if attack.forward is not None else _forward_penultimate
    recorder = _Recorder(attack.extra_loss)
    x_adv = attack.replace(extra_loss=recorder, forward=forward)(model, x, y)
    run = resolve_forward(model, forward)
    with eval_mode(model), torch.no_grad():
        h_last = _penultimate(run(x_adv)[1]).detach()
        h_clean = _penultimate(run(x)[1]).detach() if attack.random_start else recorder.steps[0]
    if len(recorder.steps) != attack.steps:
        raise RuntimeError(f"recorded {len(recorder.steps)} steps, expected {attack.steps}")
    traj = torch.stack([h_clean] + recorder.steps[1:] + [h_last])
    return (traj, x_adv) if return_adv else traj


def direction_stats(traj: torch.Tensor, direction: torch.Tensor, n_random: int = 100, seed: int = 0) -> dict:
    r"""How closely a feature trajectory follows a direction (the fixed-direction test).

    Parameters
    ----------
    traj: ``(T + 1, N, d)`` features along an attack (``traj[0]`` clean), e.g. from
        :func:`pgd_feature_trajectory`.
    direction: ``(d,)`` one direction, or ``(N, d)`` one per image (e.g.
        :func:`attack_direction`); normalised here.
    n_random: number of random Gaussian directions for the baseline (seeded by ``seed``).

    Returns
    -------
    dict with

    * ``"projection"``: ``(T + 1,)`` mean over images of :math:`(h_t - h_0)\cdot u`
      (``u`` the unit direction);
    * ``"frac_increasing"``: fraction of (image, step) pairs whose projection grows;
    * ``"frac_increasing_per_step"``: ``(T,)`` the same fraction for each step ``t -> t+1``;
    * ``"cos_total_per_image"``: ``(N,)`` cosine between :math:`h_T - h_0` and ``u``;
    * ``"cos_total"``: its mean;
    * ``"cos_random"``: mean :math:`|\cos|` between :math:`h_T - h_0` and ``n_random``
      random directions (chance level, about :math:`\sqrt{2/(\pi d)}`);
    * ``"cos_random_expected"``: :math:`\sqrt{2/(\pi d)}`;
    * ``"cos_successive"``: ``(T - 1,)`` mean cosine between consecutive step
      displacements :math:`h_{t+1} - h_t` and :math:`h_t - h_{t-1}` (1 = a straight path).
    """
    if not isinstance(traj, torch.Tensor) or traj.ndim != 3 or traj.shape[0] < 2 or traj.shape[1] < 1:
        raise ValueError(f"traj must have shape (T + 1, N, d) with T >= 1, got {describe(traj)}")
    _, n, d = traj.shape
    if not isinstance(direction, torch.Tensor) or direction.shape not in ((d,), (n, d)):
        raise ValueError(f"direction must have shape ({d},) or ({n}, {d}), got {describe(direction)}")
    check_finite(traj, "traj")
    check_finite(direction, "direction")
    n_random, seed = check_int(n_random, "n_random", 0), check_seed(seed)
    traj = traj.to(torch.float64)
    u = direction.to(device=traj.device, dtype=torch.float64)
    norm = u.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("direction has zero length")
    u = (u / norm).expand(n, d)
    disp = traj - traj[0]
    proj = (disp * u).sum(dim=-1)  # (T+1, N)
    total = disp[-1]
    cos_total = F.cosine_similarity(total, u, dim=1, eps=1e-12)
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(n_random, d, generator=g, dtype=torch.float64).to(traj.device)
    rand = rand / rand.norm(dim=1, keepdim=True)
    tn = total / total.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos_random = (tn @ rand.T).abs().mean() if n_random > 0 else torch.tensor(float("nan"))
    steps = traj[1:] - traj[:-1]  # (T, N, d)
    cos_succ = F.cosine_similarity(steps[1:], steps[:-1], dim=-1, eps=1e-12).mean(dim=1)
    return {
        "projection": proj.mean(dim=1),
        "frac_increasing": float(((proj[1:] - proj[:-1]) > 0).to(torch.float64).mean()),
        "frac_increasing_per_step": ((proj[1:] - proj[:-1]) > 0).to(torch.float64).mean(dim=1).cpu(),
        "cos_total_per_image": cos_total,
        "cos_total": float(cos_total.mean()),
        "cos_random": float(cos_random),
        "cos_random_expected": math.sqrt(2 / (math.pi * d)),
        "cos_successive": cos_succ,
    }
