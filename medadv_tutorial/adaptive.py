r"""Adaptive attacks that rival HFC: attackers who know the detector, or copy clean features.

Chapter 5 compares the Hierarchical Feature Constraint (:mod:`medadv_tutorial.hfc`) with
two other ways an attacker can hide from feature-space detectors.  Both add a term to the
targeted attack loop of :mod:`medadv_tutorial.attacks` (which ascends
:math:`J = s\,L(f(x'), y) - E(x')` and so *lowers* its extra term :math:`E`), and read
the feature taps through :class:`~medadv_tutorial.hfc.LayerForward`:

* :class:`DetectorAwareLoss` / :func:`PGD_DetectorAware`: :math:`E = \lambda\, s(h_l(x'))`,
  a differentiable detector score (``MGM``, ``MAHA``, ``KD``, ``LID`` of
  :mod:`medadv_tutorial.detectors`) on one layer -- the attacker who knows *the* detector
  (Carlini & Wagner's adaptive attack);
* :class:`FeatureMatchLoss` / :func:`PGD_FeatureMatch`:
  :math:`E = \lambda \sum_l \lVert h_l(x') - g_l \rVert^2 / C_l`, pulling the features toward
  those of a guide image of the target class (Sabour et al., ICLR 2016).

::

    attack = PGD_DetectorAware(fitted_mgm, eps=2/255, lam=0.01, steps=20)
    x_adv = attack(model, x, targets)

This module sits above :mod:`~medadv_tutorial.attacks`, :mod:`~medadv_tutorial.detectors`
and :mod:`~medadv_tutorial.hfc`; nothing in the package imports it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from .attacks import PGD
from .checks import check_real, check_seed, describe
from .detectors import Detector, check_is_fitted
from .hfc import LayerForward

__all__ = ["DetectorAwareLoss", "FeatureMatchLoss", "PGD_DetectorAware", "PGD_FeatureMatch"]


class DetectorAwareLoss:
    r"""Extra term: a differentiable detector score on one layer (the detector-aware attack).

    ``fn(x_adv, logits, aux) = lam * score(aux[layer])``, subtracted by the loop, so
    the attack lowers the detector's score while it reaches the target: the adaptive
    attacker who knows the detector.

    Parameters
    ----------
    detector: a *fitted* detector of :mod:`medadv_tutorial.detectors` that scores one
        layer's features (``inputs.view == "penultimate"``) with differentiable torch
        (``MGM``, ``MAHA``, ``KD``, ``LID``), or any callable ``score(feats (N, C)) -> (N,)``
        (higher = more adversarial).
    layer: the feature tap the detector reads (``"penultimate"``).
    lam: weight :math:`\lambda >= 0`.  Detector scores have their own scale (an MGM
        score is a negative log-density of order the feature dimension): choose ``lam``
        relative to the cross-entropy, e.g. ``1 / C``.
    labels: for detectors whose score reads predicted classes
        (``inputs.score_labels == "predicted"``, KD):
        ``"target"`` (the class the attack steers to, default) or ``"predicted"`` (the
        current prediction at every step).
    """

    def __init__(self, detector, layer: str = "penultimate", lam: float = 1.0, labels: str = "target"):
        if isinstance(detector, Detector):
            check_is_fitted(detector, "score")
            if detector.inputs.view != "penultimate":
                raise ValueError(f"detector must score the features of one layer (inputs.view 'penultimate'); "
                                 f"{type(detector).__name__} reads {detector.inputs.view!r}")
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
            return det.score(h, labels if det.inputs.score_labels == "predicted" else None)
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
