"""Hierarchical feature extraction: the pooled features of every tap, in one pass per batch.

The first of three tools for chapters 3-5 (the others: :mod:`~medadv_tutorial.outliers`, the
outlier statistics, and :mod:`~medadv_tutorial.direction`, the fixed-direction analysis).
:func:`extract_features` runs a model once per batch over a whole data set and keeps the pooled
features of every tap (see :meth:`medadv_tutorial.models.Classifier.forward_features`), the
logits and the labels in a :class:`FeatureSet`; with ``cache=True`` the set goes to the result
store (:mod:`~medadv_tutorial.cache`), keyed by the model's weights, the images, the layers and
the version of this module's code, and is read back on the next call::

    clean = extract_features(model, test_set, cache=True)
    clean["block5"].shape, clean.penultimate.shape   # (N, 40), (N, 1280)

Conventions: feature tensors are ``(N, C_l)`` floats (``C_l`` channels of layer ``l``); a
:class:`FeatureSet` lives on the CPU in float32.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .batching import iter_batches, model_device, resolve_batch_size
from .checks import (check_device, check_finite, check_images, check_input_dtype, check_labels, check_model,
                     describe, eval_mode)
from .io import atomic_torch_save
from .persistence import load_state
from .progress import progress as progress_bar

__all__ = [
    "FeatureSet",
    "extract_features",
]

FEATURES_FORMAT = 1
"""Version of the feature files :meth:`FeatureSet.save` writes."""

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
        # Scanned once, here, where the rows enter: the suite's detectors then check shapes only.
        for k, v in self.feats.items():
            check_finite(v, f"feats[{k!r}]")
        check_finite(self.logits, "logits")

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
        return load_state(path, cls.from_state, "feature file", "it is corrupt, truncated or not a feature set; "
                          "delete it and save the features again")


def extract_features(
    model,
    data,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
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
    batch_size: images per forward pass (ignored for a ``DataLoader``); default: the device's
        (:func:`~medadv_tutorial.batching.default_batch_size`).
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
    batch_size = resolve_batch_size(batch_size, device)

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
