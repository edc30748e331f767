r"""Outlier statistics: where features lie in the clean feature distribution, layer by layer.

**Outlier statistics.** Per layer and per class, a Gaussian fitted to clean training
features (:class:`ClassGaussian`: class means, a shared -- "tied", as in Lee et al.'s
Mahalanobis detector -- or per-class covariance with a ridge, Cholesky in float64)
gives every sample a Mahalanobis distance (:func:`mahalanobis`).
:class:`MahalanobisOutliers` turns distances into *percentiles among held-out clean
distances*: a clean test image gets a percentile that is uniform on [0, 100], an
outlier one near 100.  This is the HFC paper's observation, layer by layer: the
features of adversarial medical images are outliers of the clean feature distribution
(the features are *vulnerable*: a tiny perturbation moves them far).

Conventions: feature tensors are ``(N, C_l)`` floats (``C_l`` channels of layer ``l``);
a :class:`FeatureSet` lives on the CPU in float32; statistics are computed in float64 on
the device of their inputs.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from . import gaussian
from .checks import as_labels, check_features, check_finite, check_int, check_labels, check_real, check_seed, describe
from .features import FeatureSet

__all__ = ["CLASS_RULES", "ClassGaussian", "mahalanobis", "MahalanobisOutliers", "outlier_percentiles",
           "outlier_rate"]

CLASS_RULES = ("predicted", "true", "nearest")


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
        need = 1 if shared else 2
        means, counts, centred = gaussian.class_moments(x, labels, k)
        if int(counts.min()) < need:
            missing = [c for c in range(k) if int(counts[c]) < need]
            raise ValueError(f"classes {missing} have fewer than {need} training samples; "
                             "cannot fit their Gaussian")
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
