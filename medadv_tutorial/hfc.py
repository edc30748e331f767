r"""The Hierarchical Feature Constraint (HFC): adversarial features that look clean, layer by layer.

Yao et al. (MICCAI 2021; extended in arXiv 2312.01679) observe that the features of
adversarial medical images are outliers of the clean feature distribution at many layers
(chapter 3), which is why feature-space detectors catch them (chapter 4).  HFC adds a
term to the attack that pulls the features of the adversarial image, at every
constrained layer, into a high-density region of the clean features of the *target*
class -- so the attack reaches the target class *and* its features look like those of a
clean image of that class.

Step 1: model the clean features
--------------------------------
For every constrained layer :math:`l` and class :math:`c`, a Gaussian mixture with
:math:`K` components and full covariances is fitted by EM
(:class:`~medadv_tutorial.gmm.GaussianMixture`) to the pooled features
:math:`h_l(x) \in \mathbb R^{C_l}` of the clean training images of class :math:`c`
(:func:`fit_hfc_mixtures`)::

    hfc = fit_hfc_mixtures(clean_train, n_components=2)    # clean_train: a FeatureSet
    hfc.layers, hfc.widths                                  # constrained layers, C_l

Step 2: the constraint
----------------------
For an adversarial image with features :math:`h_l` and target class :math:`t`, the
component that best explains :math:`h_l` is chosen *without gradient*,

.. math:: k^* = \arg\max_k \big[\log \pi_k + \log \mathcal N(h_l \mid \mu_k, \Sigma_k)\big],

and the layer's energy is the Mahalanobis energy to that component,

.. math:: E_l(h_l) = \tfrac12 (h_l - \mu_{k^*})^\top \Sigma_{k^*}^{-1} (h_l - \mu_{k^*})
          = -\log\big[\pi_{k^*} \mathcal N(h_l \mid \mu_{k^*}, \Sigma_{k^*})\big]
            - \big[\tfrac12 \log\det\Sigma_{k^*} + \tfrac{C_l}{2}\log 2\pi - \log\pi_{k^*}\big],

the negative log-likelihood of the chosen component up to a constant.  The HFC term
sums the layers, each divided by its width :math:`C_l` (so that wide layers do not
dominate; the authors' code averages over channels in the same way):

.. math:: J_{\mathrm{HFC}}(x) = \lambda \sum_{l} \frac{E_l(h_l(x))}{C_l}
          \qquad (:func:`hfc_energy`).

Step 3: the attack
------------------
The attack loop of :mod:`medadv_tutorial.attacks` ascends
:math:`J = s\,L(f(x'), y) - E(x')` and *subtracts* its extra term, so with
``extra_loss=HFCLoss(hfc, lam)`` each step lowers the cross-entropy to the target
class **and** the HFC energy.  :func:`PGD_HFC`, :func:`BIM_HFC` and :func:`MIM_HFC`
return the package's own :class:`~medadv_tutorial.attacks.PGD` / ``BIM`` / ``MIM``,
targeted, with a forward pass that exposes the constrained layers and this extra term
(one loop for every attack of the book)::

    attack = PGD_HFC(hfc, eps=2/255, steps=20, lam=1.0)
    result = run_attack(attack, model, test_set, targets=other_class)   # binary: 1 - y

The rival adaptive attacks of chapter 5 (detector-aware, feature matching) run on the same
loop and :class:`LayerForward`; they live in :mod:`medadv_tutorial.adaptive`.  The
two-sided detectors of its *over-hiding* analysis are
:class:`medadv_tutorial.detectors.TwoSided`.

Conventions: features are ``(N, C_l)`` float tensors (the pooled taps of
:meth:`~medadv_tutorial.models.Classifier.forward_features`); energies are computed in
the features' dtype (float32 inside attacks) on their device; the mixtures are fitted
and stored in float64 and cast (once, cached) to the device and dtype they meet.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from . import cache as result_cache
from .io import atomic_torch_save
from .persistence import load_state
from .progress import progress as progress_bar
from .attacks import BIM, MIM, PGD
from .checks import check_device, check_features, check_finite, check_int, check_real, check_seed
from .gaussian import half_log_det_precision, log_density, mahalanobis_sq, sample_ridge, whitened_sq, whitening
from .gmm import GaussianMixture

__all__ = [
    "Mixture",
    "HFCModel",
    "fit_hfc_mixtures",
    "hfc_energy",
    "hfc_layer_energies",
    "hfc_components",
    "HFCLoss",
    "LayerForward",
    "BIM_HFC",
    "PGD_HFC",
    "MIM_HFC",
    "other_class",
]

HFC_FORMAT = 1
"""Version of the files written by :meth:`HFCModel.save`."""


# =========================================================================== the model


@dataclasses.dataclass
class Mixture:
    r"""One fitted Gaussian mixture (one layer, one class), float64.

    Attributes
    ----------
    means: ``(K, C)`` component means :math:`\mu_k`.
    precisions_cholesky: ``(K, C, C)`` upper factors :math:`U_k`, :math:`U_k U_k^\top = \Sigma_k^{-1}`.
    log_weights: ``(K,)`` :math:`\log \pi_k`.
    """

    means: torch.Tensor
    precisions_cholesky: torch.Tensor
    log_weights: torch.Tensor

    def __post_init__(self):
        K, C = self.means.shape
        if self.precisions_cholesky.shape != (K, C, C) or self.log_weights.shape != (K,):
            raise ValueError(f"inconsistent mixture shapes: means {tuple(self.means.shape)}, precisions_cholesky "
                             f"{tuple(self.precisions_cholesky.shape)}, log_weights {tuple(self.log_weights.shape)}")

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def half_log_det_precision(self) -> torch.Tensor:
        r"""``(K,)`` :math:`\sum_i \log (U_k)_{ii} = -\tfrac12 \log\det\Sigma_k`."""
        return half_log_det_precision(self.precisions_cholesky)

    def weighted_log_prob(self, h: torch.Tensor) -> torch.Tensor:
        r"""``(N, K)`` :math:`\log\pi_k + \log\mathcal N(h \mid \mu_k, \Sigma_k)` (differentiable)."""
        p = self._cast(h)
        maha = mahalanobis_sq(h, p.means, p.precisions_cholesky)
        return log_density(maha, p.log_weights + p.half_log_det_precision, self.dim)

    def _cast(self, ref: torch.Tensor) -> "Mixture":
        return Mixture(*(t.to(ref.device, ref.dtype) for t in (self.means, self.precisions_cholesky,
                                                                self.log_weights)))

    def to(self, device=None, dtype=None) -> "Mixture":
        return Mixture(*(t.to(device=device, dtype=dtype) for t in (self.means, self.precisions_cholesky,
                                                                     self.log_weights)))


class _Compiled:
    """The mixtures of one layer for one or several classes, cast to one (device, dtype).

    Everything the energy needs is precomputed: with the classes' components stacked
    (M = n_classes * K of them), ``white`` is their :class:`~medadv_tutorial.gaussian.Whitening`
    (computed in float64, then cast), so that the whitened residuals of every component are
    one matrix product (:func:`~medadv_tutorial.gaussian.whitened_sq`).
    """

    __slots__ = ("n_classes", "K", "C", "white", "bias")

    def __init__(self, mixtures: Sequence[Mixture], device, dtype):
        means = torch.cat([m.means for m in mixtures])  # (M, C), float64
        U = torch.cat([m.precisions_cholesky for m in mixtures])  # (M, C, C)
        self.n_classes, self.K, self.C = len(mixtures), mixtures[0].n_components, means.shape[1]
        self.white = whitening(means, U).to(device, dtype)
        # log pi_k - 1/2 log det Sigma_k: the part of the weighted log-probability the argmax needs
        self.bias = torch.stack([m.log_weights + m.half_log_det_precision for m in mixtures]).to(device, dtype)


_STACK_ELEMENTS = 1 << 20  # stack the classes of a layer when n_classes * K * C^2 is at most this (C <= 512 for 2 x 2)


class HFCModel:
    """Per-layer, per-class Gaussian mixtures of clean features: the model behind HFC.

    Built by :func:`fit_hfc_mixtures` (or :meth:`load`).  ``mixtures[layer][cls]`` is a
    :class:`Mixture`; every layer has a mixture for every class in :attr:`classes`.

    Attributes
    ----------
    layers: constrained layer names, shallow to deep.
    widths: ``{layer: C_l}``.
    classes: class indices with mixtures.
    info: ``{(layer, cls): {"reg_covar", "n_samples", "converged", "n_iter", "lower_bound"}}``.
    """

    _derived_attributes = ("_cache",)  # compiled copies of the mixtures (not part of a result-cache key)

    def __init__(self, mixtures: Mapping[str, Mapping[int, Mixture]], info: Mapping | None = None):
        if not mixtures:
            raise ValueError("an HFCModel needs at least one layer")
        self.mixtures = OrderedDict((layer, OrderedDict(sorted((int(c), m) for c, m in per.items())))
                                    for layer, per in mixtures.items())
        self.layers = list(self.mixtures)
        self.classes = list(next(iter(self.mixtures.values())))
        self.widths = OrderedDict()
        for layer, per in self.mixtures.items():
            if list(per) != self.classes:
                raise ValueError(f"layer {layer!r} has mixtures for classes {list(per)}, expected {self.classes}")
            dims = {m.dim for m in per.values()}
            if len(dims) != 1:
                raise ValueError(f"layer {layer!r}: mixtures of different widths {sorted(dims)}")
            self.widths[layer] = dims.pop()
        self.info = dict(info or {})
        self._cache: dict = {}

    def __repr__(self) -> str:
        k = {m.n_components for per in self.mixtures.values() for m in per.values()}
        return (f"HFCModel({len(self.layers)} layers, classes={self.classes}, "
                f"n_components={k.pop() if len(k) == 1 else sorted(k)}, widths={dict(self.widths)})")

    def mixture(self, layer: str, cls: int) -> Mixture:
        """The :class:`Mixture` of ``layer`` and class ``cls``."""
        if layer not in self.mixtures:
            raise KeyError(f"no layer {layer!r} in this HFCModel; it constrains {self.layers}")
        if int(cls) not in self.mixtures[layer]:
            raise KeyError(f"no class {cls} in this HFCModel; it has {self.classes}")
        return self.mixtures[layer][int(cls)]

    def _compiled(self, layer: str, classes: tuple, device, dtype) -> _Compiled:
        key = (layer, classes, torch.device(device), dtype)
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = _Compiled([self.mixture(layer, k) for k in classes], device, dtype)
        return c

    def _stackable(self, layer: str) -> bool:
        """One matrix product for all classes (cheaper in launches) unless that wastes too much."""
        per = self.mixtures[layer]
        ks = {m.n_components for m in per.values()}
        return len(ks) == 1 and len(per) * ks.pop() * self.widths[layer] ** 2 <= _STACK_ELEMENTS

    def to(self, device) -> "HFCModel":
        """A copy with every mixture on ``device`` (the cache moves tensors anyway; this saves a copy)."""
        return HFCModel({l: {c: m.to(device) for c, m in per.items()} for l, per in self.mixtures.items()},
                        self.info)

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """The model as plain tensors, lists, numbers and strings (what :meth:`save` writes and
        ``torch.load(weights_only=True)`` reads back exactly)."""
        return {"format": HFC_FORMAT, "layers": self.layers, "classes": self.classes,
                "mixtures": {f"{l}|{c}": {"means": m.means.cpu(), "precisions_cholesky": m.precisions_cholesky.cpu(),
                                          "log_weights": m.log_weights.cpu()}
                             for l, per in self.mixtures.items() for c, m in per.items()},
                "info": {f"{l}|{c}": dict(v) for (l, c), v in self.info.items()}}

    @classmethod
    def from_state(cls, blob) -> "HFCModel":
        """The model of a :meth:`state` dict (``ValueError`` when it is not one)."""
        if not isinstance(blob, dict) or blob.get("format") != HFC_FORMAT:
            raise ValueError(f"not an HFC model of format {HFC_FORMAT}")
        mixtures = OrderedDict((l, OrderedDict((c, Mixture(**blob["mixtures"][f"{l}|{c}"]))
                                               for c in blob["classes"])) for l in blob["layers"])
        info = {(k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1])): v for k, v in blob.get("info", {}).items()}
        return cls(mixtures, info)

    def save(self, path) -> None:
        """Write the model to ``path`` atomically (``torch.save`` of :meth:`state`)."""
        atomic_torch_save(self.state(), Path(path))

    @classmethod
    def load(cls, path, map_location="cpu") -> "HFCModel":
        """Read a model written by :meth:`save`.

        Raises :class:`~medadv_tutorial.checks.CorruptFileError` naming the file when it cannot be read.
        """
        return load_state(path, cls.from_state, "HFC model file", "it is corrupt or truncated. Delete it and fit "
                          "the model again (fit_hfc_mixtures(...).save(path))", map_location=map_location)


# =========================================================================== fitting


def fit_hfc_mixtures(
    clean_train,
    layers: Sequence[str] | None = None,
    *,
    n_components: int = 2,
    reg: float = 1e-3,
    exclude_wider_than: int | None = None,
    classes: Sequence[int] | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    seed: int = 0,
    device=None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    cache: bool = False,
) -> HFCModel:
    r"""Fit one Gaussian mixture per (layer, class) on clean training features.

    Parameters
    ----------
    clean_train: a :class:`~medadv_tutorial.features.FeatureSet` of *clean training*
        images (``.feats[layer]`` ``(N, C_l)``, ``.labels`` ``(N,)`` true classes).
    layers: layers to constrain (default: every layer of ``clean_train``), kept in
        ``clean_train``'s shallow-to-deep order.
    n_components: K, components per mixture (the paper uses a few; 2 by default).
    reg: the relative ridge of every covariance (:mod:`~medadv_tutorial.gaussian`): ``reg`` times
        the mean per-channel variance of that layer's class features is added to its diagonal
        (the mixtures' absolute ``reg_covar``), so one value fits layers of any scale.  It
        matters when a class has fewer images than channels (the covariance is then singular):
        the energy of a move outside the span of the clean features is ~ 1 / reg.
    exclude_wider_than: drop layers with more than this many channels (the authors'
        code skips layers wider than 512: their mixtures need many images and much time).
    classes: the classes to model (default: every class in ``clean_train.labels``).
    tol, max_iter, n_init, init_params, seed, dtype: passed to
        :class:`~medadv_tutorial.gmm.GaussianMixture`.
    device: where to run EM (default: the features' device; a GPU makes this fast).
    progress: show a tqdm bar over (layer, class) pairs.
    cache: read the mixtures from the result cache when the same features, labels and settings
        were fitted before (:mod:`~medadv_tutorial.cache`: content keys, sha256-checked; EM is
        deterministic, so a cached model is bit-identical to a fitted one), else fit and store them.

    Returns
    -------
    :class:`HFCModel` with float64 mixtures on ``device`` and, in ``info``, the
    effective ``reg_covar``, the number of images, convergence and the final average
    log-likelihood of every fit.
    """
    feats = getattr(clean_train, "feats", None)
    labels = getattr(clean_train, "labels", None)
    if not isinstance(feats, Mapping) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"clean_train must be a FeatureSet (with .feats and .labels), got {type(clean_train).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"clean_train.labels must hold integer class indices, got dtype {labels.dtype}")
    n_components, seed = check_int(n_components, "n_components"), check_seed(seed)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    available = list(feats)
    if layers is None:
        chosen = available
    else:
        if isinstance(layers, str):
            layers = [layers]
        unknown = [l for l in layers if l not in feats]
        if unknown:
            raise KeyError(f"layers {unknown} are not in clean_train; it has {available}")
        chosen = [l for l in available if l in set(layers)]
    if exclude_wider_than is not None:
        if isinstance(exclude_wider_than, bool) or not isinstance(exclude_wider_than, int) or exclude_wider_than < 1:
            raise ValueError(f"exclude_wider_than must be a positive int or None, got {exclude_wider_than!r}")
        chosen = [l for l in chosen if feats[l].shape[1] <= exclude_wider_than]
    if not chosen:
        raise ValueError(f"no layer left to constrain (layers={layers}, exclude_wider_than={exclude_wider_than})")
    reg = check_real(reg, "reg (relative ridge)", low=0.0)
    for l in chosen:
        check_features(feats[l], f"clean_train.feats[{l!r}]")
    labels = labels.long()
    present = sorted(int(c) for c in torch.unique(labels))
    classes = present if classes is None else sorted({int(c) for c in classes})
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"classes {missing} have no image in clean_train (labels present: {present})")

    pairs = [(l, c) for l in chosen for c in classes]
    settings = dict(n_components=n_components, reg=reg, tol=tol, max_iter=max_iter, n_init=n_init,
                    init_params=init_params, seed=seed, dtype=dtype)

    def fit() -> HFCModel:
        mixtures: OrderedDict[str, OrderedDict[int, Mixture]] = OrderedDict()
        info = {}
        for layer, c in progress_bar(pairs, enabled=progress, desc="HFC mixtures"):
            mixtures.setdefault(layer, OrderedDict())[c], info[(layer, c)] = _fit_one(
                feats[layer], labels, layer, c, device, **settings)
        return HFCModel(mixtures, info)

    if not cache:
        return fit()
    dev = check_device(device) if device is not None else feats[chosen[0]].device
    key = dict(feats={l: feats[l] for l in chosen}, labels=labels, classes=classes, device=str(dev), **settings)
    state, _ = result_cache.cached_tensors("hfc_mixtures", key, lambda: fit().state(), code="hfc")
    return HFCModel.from_state(state).to(dev)


def _fit_one(x_all, labels, layer, c, device, *, n_components, reg, tol, max_iter, n_init, init_params, seed,
             dtype) -> tuple[Mixture, dict]:
    """The mixture of class ``c`` in one layer, and its fit record."""
    dev = check_device(device) if device is not None else x_all.device
    x = x_all[(labels == c).to(x_all.device)].to(dev, dtype)
    if x.shape[0] < max(2, n_components):
        raise ValueError(f"class {c} has {x.shape[0]} clean training images; layer {layer!r} needs at least "
                         f"max(2, n_components={n_components})")
    try:
        reg_covar = sample_ridge(x, reg)
    except ValueError as err:
        raise ValueError(f"clean_train.feats[{layer!r}], class {c}: {err}") from err
    gmm = GaussianMixture(n_components, reg_covar=reg_covar, tol=tol, max_iter=max_iter, n_init=n_init,
                          init_params=init_params, seed=seed, dtype=dtype, warn=False)
    try:
        gmm.fit(x)
    except ValueError as err:
        raise ValueError(f"layer {layer!r}, class {c}: {err} (reg_covar={reg_covar:.3g})") from err
    mixture = Mixture(gmm.means_.to(torch.float64), gmm.precisions_cholesky_.to(torch.float64),
                      torch.log(gmm.weights_).to(torch.float64))
    return mixture, {"reg_covar": reg_covar, "n_samples": int(x.shape[0]), "converged": bool(gmm.converged_),
                     "n_iter": int(gmm.n_iter_), "lower_bound": float(gmm.lower_bound_)}


# =========================================================================== the energy


def _check_targets(targets, n: int, model: HFCModel, device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of shape ({n},) (the attack's target classes)")
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},) to match the features, got {tuple(targets.shape)}")
    return targets.to(device=device, dtype=torch.long)


class _Plan:
    """How the rows of a batch map to classes, computed once per batch (one host sync)."""

    def __init__(self, targets: torch.Tensor, model: HFCModel):
        present = sorted(int(c) for c in torch.unique(targets)) if targets.numel() else []
        unknown = [c for c in present if c not in model.classes]
        if unknown:
            raise ValueError(f"targets contain classes {unknown} without clean-feature mixtures; "
                             f"the HFCModel has {model.classes}")
        self.n = targets.shape[0]
        self.single = present[0] if len(present) == 1 else None
        self.groups = [(c, torch.nonzero(targets == c).squeeze(1)) for c in present]
        lut = torch.full((max(model.classes) + 1,), -1, dtype=torch.long)
        lut[torch.tensor(model.classes)] = torch.arange(len(model.classes))
        self.pos = lut.to(targets.device)[targets] if present else targets  # (N,) index into model.classes
        self.rows = torch.arange(self.n, device=targets.device)


def _check_feats(feats, model: HFCModel, layers: Sequence[str]) -> int:
    if not isinstance(feats, Mapping):
        raise TypeError("features must be a dict {layer: (N, C_l) tensor}; inside an attack, pass a forward that "
                        "returns (logits, feature dict), e.g. LayerForward(hfc.layers) (the HFC attacks do)")
    missing = [l for l in layers if l not in feats]
    if missing:
        raise KeyError(f"the features lack the constrained layers {missing} (have {list(feats)})")
    n = None
    for l in layers:
        h = feats[l]
        if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[1] != model.widths[l]:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"features[{l!r}] must have shape (N, {model.widths[l]}), got {shape}")
        if n is None:
            n = h.shape[0]
        elif h.shape[0] != n:
            raise ValueError(f"every layer must have the same N; features[{l!r}] has {h.shape[0]}, expected {n}")
    return n


def _layer_energy(h: torch.Tensor, comp: _Compiled, pos: torch.Tensor | None = None,
                  rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E (n,), k* (n,))``: the Mahalanobis energy to the most likely component, and that component.

    With several classes in ``comp``, row i uses class ``pos[i]`` (an index into them).
    """
    n = h.shape[0]
    # exact_sum: the same squared norms with and without autograd (hfc_components = the attack's choice)
    maha = whitened_sq(h, comp.white, exact_sum=True).view(n, comp.n_classes, comp.K)
    if comp.n_classes == 1:
        maha, bias = maha[:, 0], comp.bias[0]
    else:
        maha, bias = maha[rows, pos], comp.bias[pos]  # (n, K) of each row's class
    with torch.no_grad():
        k = (bias - 0.5 * maha.detach()).argmax(dim=1)
    return 0.5 * maha.gather(1, k[:, None]).squeeze(1), k


def _energies(feats, plan: _Plan, model: HFCModel, layers, scaled: bool, want_components: bool = False):
    out_e, out_k = OrderedDict(), OrderedDict()
    for layer in layers:
        h = feats[layer]
        dtype = h.dtype if h.dtype in (torch.float32, torch.float64) else torch.float32
        h = h.to(dtype)
        if plan.single is not None:
            e_all, k_all = _layer_energy(h, model._compiled(layer, (plan.single,), h.device, dtype))
        elif model._stackable(layer):
            comp = model._compiled(layer, tuple(model.classes), h.device, dtype)
            e_all, k_all = _layer_energy(h, comp, plan.pos, plan.rows)
        else:  # one product per class present
            e_all = h.new_zeros(plan.n)
            k_all = torch.zeros(plan.n, dtype=torch.long, device=h.device)
            for c, idx in plan.groups:
                e, k = _layer_energy(h[idx], model._compiled(layer, (c,), h.device, dtype))
                e_all = e_all.index_put((idx,), e)  # out of place: keeps the graph
                k_all[idx] = k
        out_e[layer] = e_all / model.widths[layer] if scaled else e_all
        out_k[layer] = k_all
    return (out_e, out_k) if want_components else out_e


def hfc_layer_energies(feats: Mapping[str, torch.Tensor], targets: torch.Tensor, model: HFCModel, *,
                       scaled: bool = True, layers: Sequence[str] | None = None) -> "OrderedDict[str, torch.Tensor]":
    r"""Per-layer HFC energies ``{layer: (N,)}``: :math:`E_l(h_l) / C_l` (or :math:`E_l` if not ``scaled``).

    ``feats``: ``{layer: (N, C_l)}`` (extra layers are ignored); ``targets``: ``(N,)``
    classes whose mixtures are used (the attack's targets; for clean images their
    labels).  Differentiable in the features; computed in their dtype, on their device
    (float32 features give energies to a relative ~1e-4 -- plenty to steer an attack;
    pass ``.double()`` features for numbers to report).
    ``layers``: a subset of ``model.layers`` (default: all).
    """
    if not isinstance(model, HFCModel):
        raise TypeError(f"model must be an HFCModel (from fit_hfc_mixtures), got {type(model).__name__}")
    layers = model.layers if layers is None else list(layers)
    n = _check_feats(feats, model, layers)
    for l in layers:
        check_finite(feats[l], f"feats[{l!r}]")
    targets = _check_targets(targets, n, model, feats[layers[0]].device)
    return _energies(feats, _Plan(targets, model), model, layers, scaled)


def hfc_energy(feats: Mapping[str, torch.Tensor], targets: torch.Tensor, model: HFCModel, *,
               lam: float = 1.0) -> torch.Tensor:
    r"""The HFC term :math:`\lambda \sum_l E_l(h_l) / C_l`, shape ``(N,)`` (>= 0, differentiable).

    See the module docstring for :math:`E_l`; arguments as :func:`hfc_layer_energies`.
    """
    lam = check_real(lam, "lam", low=0.0)
    per = hfc_layer_energies(feats, targets, model)
    return lam * torch.stack(list(per.values())).sum(0)


def hfc_components(feats: Mapping[str, torch.Tensor], targets: torch.Tensor,
                   model: HFCModel) -> "OrderedDict[str, torch.Tensor]":
    r"""The chosen components :math:`k^*` per layer, ``{layer: (N,) int64}`` (the argmax of the
    weighted log-probability under the mixture of each row's target class)."""
    if not isinstance(model, HFCModel):
        raise TypeError(f"model must be an HFCModel (from fit_hfc_mixtures), got {type(model).__name__}")
    n = _check_feats(feats, model, model.layers)
    for l in model.layers:
        check_finite(feats[l], f"feats[{l!r}]")
    targets = _check_targets(targets, n, model, feats[model.layers[0]].device)
    with torch.no_grad():
        _, comps = _energies(feats, _Plan(targets, model), model, model.layers, True, want_components=True)
    return comps


class HFCLoss:
    r"""The HFC term as an ``extra_loss`` of :func:`~medadv_tutorial.attacks.iterative_attack`.

    ``HFCLoss(hfc, lam).bind(x, y)`` (called by the loop with the clean batch and the
    *targets* of a targeted attack) returns ``fn(x_adv, logits, aux) -> (N,)``:
    :math:`\lambda \sum_l E_l(\mathrm{aux}[l]) / C_l` with the mixtures of class
    ``y``.  ``aux`` must be the feature dict of the same forward pass (use
    ``forward=LayerForward(hfc.layers)``).

    Sign: the loop **subtracts** the extra term from the objective it ascends, so the
    attack *minimises* the HFC energy while it raises the probability of the target.
    ``lam`` trades the two: 0 is plain targeted PGD; large values keep the features
    typical at the price of success.
    """

    def __init__(self, hfc_model: HFCModel, lam: float = 1.0):
        if not isinstance(hfc_model, HFCModel):
            raise TypeError(f"hfc_model must be an HFCModel (from fit_hfc_mixtures), got {type(hfc_model).__name__}")
        self.hfc_model, self.lam = hfc_model, check_real(lam, "lam", low=0.0)

    def __repr__(self) -> str:
        return f"HFCLoss(lam={self.lam:g}, layers={len(self.hfc_model.layers)})"

    def bind(self, x: torch.Tensor, y: torch.Tensor):
        model, lam = self.hfc_model, self.lam
        targets = _check_targets(y, x.shape[0], model, x.device)
        plan = _Plan(targets, model)

        def hfc_term(x_adv, logits, aux):
            _check_feats(aux, model, model.layers)
            per = _energies(aux, plan, model, model.layers, scaled=True)
            return (lam * torch.stack(list(per.values())).sum(0)).to(logits.dtype)

        return hfc_term


# =========================================================================== attacks


class LayerForward:
    """``forward(model, x) -> (logits, {layer: (N, C_l)})`` for the attack loop.

    Calls ``model.forward_features(x, layers=...)`` (a
    :class:`~medadv_tutorial.models.Classifier`, or any module with that method; one
    without a ``layers`` argument is called as ``forward_features(x)``).  The layers
    are ``layers`` plus those of ``also`` that the model lists in ``feature_names``
    (by default ``"penultimate"``, so that recorders and detector terms find it even
    when HFC does not constrain it; it costs nothing, the pass computes it anyway).
    """

    def __init__(self, layers: Sequence[str], also: Sequence[str] = ("penultimate",)):
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of tap names such as [{layers!r}], got str {layers!r}")
        self.layers = list(layers)
        self.also = [l for l in also if l not in self.layers]

    def __repr__(self) -> str:
        return f"LayerForward({self.layers})"

    def __call__(self, model, x):
        method = getattr(model, "forward_features", None)
        if not callable(method):
            raise ValueError("the model has no forward_features(x, layers=...) method")
        names = getattr(model, "feature_names", None)
        layers = self.layers + [l for l in self.also if names is not None and l in names]
        try:
            takes_layers = "layers" in inspect.signature(method).parameters
        except (TypeError, ValueError):
            takes_layers = True
        logits, feats = method(x, layers=layers) if takes_layers else method(x)
        if logits is None:
            raise ValueError("forward_features returned no logits; it must be called with logits=True")
        return logits, feats


def _hfc_attack(cls, hfc_model, eps, lam, kwargs):
    if not isinstance(hfc_model, HFCModel):
        raise TypeError(f"hfc_model must be an HFCModel (from fit_hfc_mixtures), got {type(hfc_model).__name__}")
    for k in ("targeted", "extra_loss", "forward"):
        if k in kwargs:
            raise TypeError(f"{k} is fixed by the HFC attack (targeted=True, HFCLoss, LayerForward)")
    return cls(eps, targeted=True, extra_loss=HFCLoss(hfc_model, lam), forward=LayerForward(hfc_model.layers),
               **kwargs)


def BIM_HFC(hfc_model: HFCModel, eps: float, *, lam: float = 1.0, **kwargs) -> BIM:
    """Targeted :class:`~medadv_tutorial.attacks.BIM` with the HFC term.

    ``kwargs``: ``alpha``, ``steps``, ``early_stop`` (BIM's).  Call it with the targets:
    ``attack(model, x, targets)`` or ``run_attack(attack, model, data, targets=other_class)``.
    ``early_stop`` would stop each image as soon as it reaches the target, before HFC has
    pulled its features in: leave it off.
    """
    return _hfc_attack(BIM, hfc_model, eps, lam, kwargs)


def PGD_HFC(hfc_model: HFCModel, eps: float, *, lam: float = 1.0, **kwargs) -> PGD:
    """Targeted :class:`~medadv_tutorial.attacks.PGD` (random start) with the HFC term.

    ``kwargs``: ``alpha``, ``steps``, ``random_start``, ``seed``, ``early_stop``.
    See :func:`BIM_HFC`.
    """
    return _hfc_attack(PGD, hfc_model, eps, lam, kwargs)


def MIM_HFC(hfc_model: HFCModel, eps: float, *, lam: float = 1.0, **kwargs) -> MIM:
    """Targeted :class:`~medadv_tutorial.attacks.MIM` (momentum) with the HFC term.

    ``kwargs``: ``alpha``, ``steps``, ``decay``, ``random_start``, ``seed``, ``early_stop``.
    See :func:`BIM_HFC`.
    """
    return _hfc_attack(MIM, hfc_model, eps, lam, kwargs)


def other_class(y: torch.Tensor) -> torch.Tensor:
    """Target of a binary targeted attack: ``1 - y`` for labels in {0, 1}.

    Pass it as ``run_attack(attack, model, data, targets=other_class)``: the loop applies
    it to every batch of true labels.
    """
    y = torch.as_tensor(y)
    if y.numel() and bool(((y != 0) & (y != 1)).any()):
        raise ValueError("other_class is for binary tasks: y (the labels) must be 0 or 1; for more classes pass "
                         "explicit targets (a tensor) or another callable")
    return 1 - y.long()

