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

Competing adaptive attacks on the same loop
-------------------------------------------
* :class:`DetectorAwareLoss`: subtract a differentiable detector score (``MGM``,
  ``MAHA``, ``KD`` from :mod:`medadv_tutorial.detectors`) computed on one layer: the
  attacker who knows *the* detector (Carlini & Wagner's adaptive attack).
* :class:`FeatureMatchLoss`: pull the features toward those of a guide image of the
  target class (Sabour et al., ICLR 2016).

And, for chapter 5's *over-hiding* analysis, :class:`TwoSided` turns any fitted detector
into a two-sided one: HFC can push features to be *more* typical than clean ones.

Conventions: features are ``(N, C_l)`` float tensors (the pooled taps of
:meth:`~medadv_tutorial.models.Classifier.forward_features`); energies are computed in
the features' dtype (float32 inside attacks) on their device; the mixtures are fitted
and stored in float64 and cast (once, cached) to the device and dtype they meet.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .io import atomic_torch_save
from .attacks import BIM, MIM, PGD
from .checks import (CorruptFileError, check_device, check_features, check_finite, check_int, check_real, check_seed,
                     describe)
from .detectors import Detector, NotFittedError
from .gmm import GaussianMixture, mahalanobis_sq

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
    "DetectorAwareLoss",
    "FeatureMatchLoss",
    "PGD_DetectorAware",
    "PGD_FeatureMatch",
    "TwoSided",
]

_LOG_2PI = math.log(2.0 * math.pi)
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
        return torch.log(torch.diagonal(self.precisions_cholesky, dim1=-2, dim2=-1)).sum(-1)

    def weighted_log_prob(self, h: torch.Tensor) -> torch.Tensor:
        r"""``(N, K)`` :math:`\log\pi_k + \log\mathcal N(h \mid \mu_k, \Sigma_k)` (differentiable)."""
        p = self._cast(h)
        maha = mahalanobis_sq(h, p.means, p.precisions_cholesky)
        return p.log_weights + p.half_log_det_precision - 0.5 * (self.dim * _LOG_2PI + maha)

    def _cast(self, ref: torch.Tensor) -> "Mixture":
        return Mixture(*(t.to(ref.device, ref.dtype) for t in (self.means, self.precisions_cholesky,
                                                                self.log_weights)))

    def to(self, device=None, dtype=None) -> "Mixture":
        return Mixture(*(t.to(device=device, dtype=dtype) for t in (self.means, self.precisions_cholesky,
                                                                     self.log_weights)))


class _Compiled:
    """The mixtures of one layer for one or several classes, cast to one (device, dtype).

    Everything the energy needs is precomputed: with the classes' components stacked
    (M = n_classes * K of them), a common centre ``c`` (the mean of the means),
    ``flat = [U_1, ..., U_M]`` (C, M C) and ``mu_u[m] = (mu_m - c) U_m``, the whitened
    residuals of every component are one matrix product ``(h - c) @ flat - mu_u``.
    """

    __slots__ = ("n_classes", "K", "C", "center", "flat", "mu_u", "bias")

    def __init__(self, mixtures: Sequence[Mixture], device, dtype):
        means = torch.cat([m.means for m in mixtures])  # (M, C), float64
        U = torch.cat([m.precisions_cholesky for m in mixtures])  # (M, C, C)
        self.n_classes, self.K, self.C = len(mixtures), mixtures[0].n_components, means.shape[1]
        center = means.mean(0)
        mu_u = torch.matmul((means - center).unsqueeze(1), U).squeeze(1)
        self.center = center.to(device, dtype)
        self.mu_u = mu_u.to(device, dtype)
        self.flat = U.permute(1, 0, 2).reshape(self.C, -1).to(device, dtype).contiguous()
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
    def save(self, path) -> None:
        """Write the model to ``path`` atomically (``torch.save`` of plain tensors and numbers)."""
        path = Path(path)
        blob = {"format": HFC_FORMAT, "layers": self.layers, "classes": self.classes,
                "mixtures": {f"{l}|{c}": {"means": m.means.cpu(), "precisions_cholesky": m.precisions_cholesky.cpu(),
                                          "log_weights": m.log_weights.cpu()}
                             for l, per in self.mixtures.items() for c, m in per.items()},
                "info": {f"{l}|{c}": dict(v) for (l, c), v in self.info.items()}}
        atomic_torch_save(blob, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> "HFCModel":
        """Read a model written by :meth:`save`.

        Raises :class:`~medadv_tutorial.checks.CorruptFileError` naming the file when it cannot be read.
        """
        try:
            blob = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != HFC_FORMAT:
                raise ValueError(f"not an HFC model file of format {HFC_FORMAT}")
            mixtures = OrderedDict((l, OrderedDict((c, Mixture(**blob["mixtures"][f"{l}|{c}"]))
                                                   for c in blob["classes"])) for l in blob["layers"])
            info = {(k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1])): v for k, v in blob.get("info", {}).items()}
            return cls(mixtures, info)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoding error means the file is unusable
            raise CorruptFileError.of("HFC model file", path, err, "it is corrupt or truncated. Delete it and fit "
                                      "the model again (fit_hfc_mixtures(...).save(path))") from err


# =========================================================================== fitting


def _progress(it, enabled: bool, total: int, desc: str):
    if not enabled:
        return it
    from .progress import tqdm

    return tqdm(it, total=total, desc=desc)


def fit_hfc_mixtures(
    clean_train,
    layers: Sequence[str] | None = None,
    *,
    n_components: int = 2,
    reg_covar: float = 1e-3,
    relative_reg: bool = True,
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
) -> HFCModel:
    r"""Fit one Gaussian mixture per (layer, class) on clean training features.

    Parameters
    ----------
    clean_train: a :class:`~medadv_tutorial.features.FeatureSet` of *clean training*
        images (``.feats[layer]`` ``(N, C_l)``, ``.labels`` ``(N,)`` true classes).
    layers: layers to constrain (default: every layer of ``clean_train``), kept in
        ``clean_train``'s shallow-to-deep order.
    n_components: K, components per mixture (the paper uses a few; 2 by default).
    reg_covar: added to every covariance's diagonal.  With ``relative_reg`` (default) it
        is multiplied by the mean per-channel variance of that layer's class features, so
        one value fits layers of any scale; otherwise it is absolute.  It matters when a
        class has fewer images than channels (the covariance is then singular): the
        energy of a move outside the span of the clean features is ~ 1 / reg.
    relative_reg: see ``reg_covar``.
    exclude_wider_than: drop layers with more than this many channels (the authors'
        code skips layers wider than 512: their mixtures need many images and much time).
    classes: the classes to model (default: every class in ``clean_train.labels``).
    tol, max_iter, n_init, init_params, seed, dtype: passed to
        :class:`~medadv_tutorial.gmm.GaussianMixture`.
    device: where to run EM (default: the features' device; a GPU makes this fast).
    progress: show a tqdm bar over (layer, class) pairs.

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
    reg_covar = check_real(reg_covar, "reg_covar", low=0.0)
    for l in chosen:
        check_features(feats[l], f"clean_train.feats[{l!r}]")
    labels = labels.long()
    present = sorted(int(c) for c in torch.unique(labels))
    classes = present if classes is None else sorted({int(c) for c in classes})
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"classes {missing} have no image in clean_train (labels present: {present})")

    mixtures: OrderedDict[str, OrderedDict[int, Mixture]] = OrderedDict()
    info = {}
    pairs = [(l, c) for l in chosen for c in classes]
    for layer, c in _progress(pairs, progress, len(pairs), "HFC mixtures"):
        x_all = feats[layer]
        dev = check_device(device) if device is not None else x_all.device
        x = x_all[(labels == c).to(x_all.device)].to(dev, dtype)
        if x.shape[0] < max(2, n_components):
            raise ValueError(f"class {c} has {x.shape[0]} clean training images; layer {layer!r} needs at least "
                             f"max(2, n_components={n_components})")
        reg = float(reg_covar)
        if relative_reg:
            reg *= max(float(x.var(0, unbiased=False).mean()), 1e-12)
            if not math.isfinite(reg):
                raise ValueError(f"clean_train.feats[{layer!r}] is too large: the variance of class {c}'s features "
                                 "overflows; rescale the features (a larger reg_covar cannot help)")
        gmm = GaussianMixture(n_components, reg_covar=reg, tol=tol, max_iter=max_iter, n_init=n_init,
                              init_params=init_params, seed=seed, dtype=dtype, warn=False)
        try:
            gmm.fit(x)
        except ValueError as err:
            raise ValueError(f"layer {layer!r}, class {c}: {err} (reg_covar={reg:.3g})") from err
        mixtures.setdefault(layer, OrderedDict())[c] = Mixture(
            gmm.means_.to(torch.float64), gmm.precisions_cholesky_.to(torch.float64),
            torch.log(gmm.weights_).to(torch.float64))
        info[(layer, c)] = {"reg_covar": reg, "n_samples": int(x.shape[0]), "converged": bool(gmm.converged_),
                            "n_iter": int(gmm.n_iter_), "lower_bound": float(gmm.lower_bound_)}
    return HFCModel(mixtures, info)


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
    y = ((h - comp.center) @ comp.flat).view(n, -1, comp.C).sub_(comp.mu_u)  # in place: mm keeps no output
    maha = (y * y).sum(-1).view(n, comp.n_classes, comp.K)
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


# ----------------------------------------------------------------- competing adaptive attacks


class DetectorAwareLoss:
    r"""Extra term: a differentiable detector score on one layer (the detector-aware attack).

    ``fn(x_adv, logits, aux) = lam * score(aux[layer])``, subtracted by the loop, so
    the attack lowers the detector's score while it reaches the target: the adaptive
    attacker who knows the detector.

    Parameters
    ----------
    detector: a *fitted* detector of :mod:`medadv_tutorial.detectors` whose scores are
        differentiable torch (``MGM``, ``MAHA``, ``KD``, ``LID``), or any callable
        ``score(feats (N, C)) -> (N,)`` (higher = more adversarial).
    layer: the feature tap the detector reads (``"penultimate"``).
    lam: weight :math:`\lambda >= 0`.  Detector scores have their own scale (an MGM
        score is a negative log-density of order the feature dimension): choose ``lam``
        relative to the cross-entropy, e.g. ``1 / C``.
    labels: for detectors that read class labels (KD: the *predicted* class):
        ``"target"`` (the class the attack steers to, default) or ``"predicted"`` (the
        current prediction at every step).
    """

    def __init__(self, detector, layer: str = "penultimate", lam: float = 1.0, labels: str = "target"):
        if isinstance(detector, Detector):
            if not detector.is_fitted:
                raise NotFittedError(f"{type(detector).__name__} is not fitted: fit it on clean features first")
        elif not callable(detector):
            raise TypeError(f"detector must be a fitted Detector or a callable, got {type(detector).__name__}")
        if labels not in ("target", "predicted"):
            raise ValueError(f"labels must be 'target' or 'predicted', got {labels!r}")
        if not isinstance(layer, str):
            raise TypeError(f"layer must be one tap name such as 'penultimate', got {describe(layer)}")
        self.detector, self.layer, self.lam, self.labels = detector, layer, check_real(lam, "lam", low=0.0), labels

    def __repr__(self) -> str:
        name = getattr(self.detector, "name", getattr(self.detector, "__name__", type(self.detector).__name__))
        return f"DetectorAwareLoss({name}, layer={self.layer!r}, lam={self.lam:g})"

    def _score(self, h, labels):
        det = self.detector
        if isinstance(det, Detector):
            return det.score(h, labels if det.uses_labels else None)
        return det(h)

    def bind(self, x: torch.Tensor, y: torch.Tensor):
        y = y.to(x.device).long()

        def detector_term(x_adv, logits, aux):
            if not isinstance(aux, Mapping) or self.layer not in aux:
                raise KeyError(f"the attack's forward must return aux[{self.layer!r}]; "
                               f"use forward=LayerForward([{self.layer!r}])")
            labels = y if self.labels == "target" else logits.detach().argmax(1)
            return (self.lam * self._score(aux[self.layer], labels)).to(logits.dtype)

        return detector_term


class FeatureMatchLoss:
    r"""Extra term: squared distance of the features to a guide of the target class (Sabour et al. 2016).

    ``fn(x_adv, logits, aux) = lam * sum_l ||aux[l] - g_l||^2 / C_l`` where ``g`` are
    the clean features of a guide image of the target class (``guide="random"``: one
    clean training image of that class per attacked image, drawn with ``seed``) or the
    class mean of the clean features (``guide="mean"``).

    Parameters
    ----------
    clean_train: :class:`~medadv_tutorial.features.FeatureSet` of clean training images.
    layers: the layers to match (default ``["penultimate"]``).
    lam: weight >= 0.
    """

    def __init__(self, clean_train, layers: Sequence[str] = ("penultimate",), lam: float = 1.0,
                 guide: str = "random", seed: int = 0):
        if guide not in ("random", "mean"):
            raise ValueError(f"guide must be 'random' or 'mean', got {guide!r}")
        if not isinstance(getattr(clean_train, "feats", None), Mapping):
            raise TypeError(f"clean_train must be a FeatureSet (from extract_features), got "
                            f"{type(clean_train).__name__}")
        lam, seed = check_real(lam, "lam", low=0.0), check_seed(seed)
        if isinstance(layers, str):
            layers = [layers]
        unknown = [l for l in layers if l not in clean_train.feats]
        if unknown:
            raise KeyError(f"layers {unknown} are not in clean_train; it has {list(clean_train.feats)}")
        self.layers, self.lam, self.guide, self.seed = list(layers), float(lam), guide, seed
        labels = clean_train.labels.long().cpu()
        self.classes = sorted(int(c) for c in torch.unique(labels))
        self._rows = {c: torch.nonzero(labels == c).squeeze(1) for c in self.classes}
        self._feats = {l: clean_train.feats[l].detach().cpu() for l in self.layers}
        self._gen = torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return f"FeatureMatchLoss(layers={self.layers}, lam={self.lam:g}, guide={self.guide!r})"

    def guides(self, y: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Guide features ``{layer: (N, C_l)}`` for target classes ``y`` (CPU)."""
        y = y.long().cpu()
        unknown = sorted({int(c) for c in y} - set(self.classes))
        if unknown:
            raise ValueError(f"no clean training image of classes {unknown}")
        if self.guide == "mean":
            return OrderedDict((l, torch.stack([self._feats[l][self._rows[int(c)]].mean(0) for c in y]))
                               for l in self.layers)
        pick = torch.stack([self._rows[int(c)][torch.randint(len(self._rows[int(c)]), (1,), generator=self._gen)][0]
                            for c in y]) if len(y) else torch.zeros(0, dtype=torch.long)
        return OrderedDict((l, self._feats[l][pick]) for l in self.layers)

    def bind(self, x: torch.Tensor, y: torch.Tensor):
        g = {l: v.to(x.device) for l, v in self.guides(y).items()}

        def feature_match_term(x_adv, logits, aux):
            total = 0.0
            for l in self.layers:
                h = aux[l]
                total = total + ((h - g[l].to(h.dtype)) ** 2).mean(1)
            return (self.lam * total).to(logits.dtype)

        return feature_match_term


def PGD_DetectorAware(detector, eps: float, *, layer: str = "penultimate", lam: float = 1.0,
                      labels: str = "target", **kwargs) -> PGD:
    """Targeted PGD that also lowers ``detector``'s score on ``layer`` (see :class:`DetectorAwareLoss`)."""
    return PGD(eps, targeted=True, extra_loss=DetectorAwareLoss(detector, layer, lam, labels),
               forward=LayerForward([layer]), **kwargs)


def PGD_FeatureMatch(clean_train, eps: float, *, layers: Sequence[str] = ("penultimate",), lam: float = 1.0,
                     guide: str = "random", guide_seed: int = 0, **kwargs) -> PGD:
    """Targeted PGD that also pulls ``layers`` toward a guide of the target class (see :class:`FeatureMatchLoss`).

    ``guide_seed`` seeds the choice of guide images; ``kwargs`` go to
    :class:`~medadv_tutorial.attacks.PGD` (``seed`` there seeds the random start).
    """
    loss = FeatureMatchLoss(clean_train, layers, lam, guide, guide_seed)
    return PGD(eps, targeted=True, extra_loss=loss, forward=LayerForward(loss.layers), **kwargs)


# =========================================================================== two-sided detection


class TwoSided(Detector):
    r"""Two-sided version of any detector: flags scores far from the clean median, on either side.

    .. math:: s_2(x) = |s(x) - m|, \qquad m = \mathrm{median}\{s(x_i) : x_i \text{ clean reference}\}

    An attack that *over-hides* (HFC with a large :math:`\lambda`) can make its
    features more typical than clean ones -- scores *below* the clean range -- which a
    one-sided threshold never flags.  The median and the threshold come from clean
    scores only: the wrapped detector's ``reference_scores_`` (its clean training
    scores), or the held-out clean set given to :meth:`calibrate`.

    ``TwoSided(fitted_detector)`` is ready to use; ``TwoSided(detector).fit(clean, labels)``
    fits the wrapped detector first.  Scores are float64 ``(N,)`` >= 0; ``threshold``,
    ``predict`` as for every detector.
    """

    def __init__(self, detector: Detector):
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be a Detector, got {type(detector).__name__}")
        self.detector = detector
        self.name = f"{detector.name} (two-sided)"
        self.uses_labels, self.input_kind, self.supervised = detector.uses_labels, detector.input_kind, \
            detector.supervised
        self.reference_scores_ = None
        self.center_ = None
        if detector.is_fitted:
            self._set_reference(detector.reference_scores_)

    def __repr__(self) -> str:
        return f"TwoSided({self.detector!r})"

    def _set_reference(self, clean_scores: torch.Tensor) -> None:
        s = clean_scores.detach().to(torch.float64)
        self.center_ = float(torch.quantile(s.cpu(), 0.5))
        self.reference_scores_ = (s - self.center_).abs()

    def fit(self, clean_features, labels=None, **kwargs) -> "TwoSided":
        """Fit the wrapped detector on clean features, then take the median of its clean scores."""
        self.detector.fit(clean_features, labels, **kwargs)
        self._set_reference(self.detector.reference_scores_)
        self.n_features_in_ = getattr(self.detector, "n_features_in_", None)
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
