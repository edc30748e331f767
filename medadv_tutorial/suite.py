"""The book's detector line-up, fitted in one call and scored in one call.

Chapters 4 and 5 evaluate the same ten detectors with the same settings, fixed before any
attack is run (see chapter 4 for the reasoning behind each):

* **unsupervised**, fitted on clean training features only: ``MGM``, ``ISO``, ``OCSVM``
  (penultimate layer), ``MAHA`` (class means, tied covariance, penultimate), ``KD``
  (penultimate, per predicted class, bandwidth = median nearest-neighbour distance of 500
  clean training features), ``LID`` (k = 20 in a clean reference batch of 500), ``BU``
  (MC-dropout variance, 10 samples);
* **supervised**, trained on clean vs FGSM features of *training* images (never the test
  images): ``MAHA-LR`` and ``LID-LR`` (layer ensembles with logistic regression over
  :data:`ENSEMBLE_LAYERS`) and ``DNN``.

Usage::

    suite = DetectorSuite.fit(model, train, fs_train, eps=1/255, n_fgsm=2 * profile.n_attack)
    scores = suite.score(fs, images)          # {detector name: (N,) float64}, high = adversarial

The line-up table
-----------------
:data:`LINE_UP` is the one ordered table of the line-up: detector name -> :class:`Entry`
(how to build the detector from a :class:`FitContext`, and which rows it is fitted on, a
function of the same context returning :class:`FitRows`).  :data:`DETECTOR_NAMES` is its
keys.  Each detector declares its inputs (:class:`~medadv_tutorial.detectors.Inputs`:
one layer, several layers or images; true labels at fit; predicted labels at score; an
adversarial set at fit), and the suite feeds it from that declaration alone: the
penultimate features, the :data:`ENSEMBLE_LAYERS` or the images of a
:class:`~medadv_tutorial.features.FeatureSet`, its true labels (fit) or predicted
classes (score).  Adding a detector is one row and its class::

    LINE_UP["L2"] = Entry(lambda c: L2Norm(), clean_train)

:meth:`DetectorSuite.fit` draws every random choice from one seeded generator, in a
fixed order: the supervised detectors' training images first, then the rows of the
table in order (only LID's reference batch, :func:`random_500`, draws).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from . import attacks, detectors, features, training
from . import cache as result_cache
from .checks import check_eps, check_features, check_images, check_int, check_real, check_seed

__all__ = ["ENSEMBLE_LAYERS", "BACKBONE_ENSEMBLE_LAYERS", "ensemble_layers",
           "LINE_UP", "DETECTOR_NAMES", "Entry", "FitContext", "FitRows", "clean_train",
           "random_500", "clean_train_vs_fgsm", "first_500_vs_fgsm", "fgsm_pairs", "kd_bandwidth", "DetectorSuite"]

ENSEMBLE_LAYERS = ("block3", "block8", "block13", "penultimate")
"""Layers of the MAHA-LR and LID-LR ensembles on the book's backbone, EfficientNet-Lite0."""

BACKBONE_ENSEMBLE_LAYERS = {"efficientnet_lite0": ENSEMBLE_LAYERS}
"""Ensemble layers chosen per backbone; another backbone gets :func:`ensemble_layers`' depth rule."""


def ensemble_layers(model) -> tuple:
    """The layers of the MAHA-LR and LID-LR ensembles for ``model``'s backbone.

    :data:`BACKBONE_ENSEMBLE_LAYERS` when it names the backbone (``model.backbone_name``); for
    any other backbone, the taps at a quarter, a half and three quarters of the depth of
    ``model.feature_names`` (without the penultimate layer) and the penultimate layer, so
    that the suite runs on another architecture without a table entry.
    """
    names = list(getattr(model, "feature_names", None) or ())
    if len(names) < 2 or names[-1] != "penultimate":
        raise ValueError(f"model must expose feature_names ending in 'penultimate' (a Classifier), got {names!r}")
    chosen = BACKBONE_ENSEMBLE_LAYERS.get(getattr(model, "backbone_name", None))
    if chosen is not None and all(layer in names for layer in chosen):
        return tuple(chosen)
    inner = names[:-1]
    picks = sorted({round(f * (len(inner) - 1)) for f in (0.25, 0.5, 0.75)})
    return tuple(inner[i] for i in picks) + ("penultimate",)


def kd_bandwidth(feats: torch.Tensor, n: int = 500) -> float:
    """Median nearest-neighbour distance among the first ``n`` rows of ``feats`` ``(N, d)``.

    The KD bandwidth of the book: a property of clean features alone, fixed before any attack.
    """
    check_features(feats, "feats")
    n = check_int(n, "n", 2)
    if feats.shape[0] < 2:
        raise ValueError(f"feats must be (N >= 2, d), got {tuple(feats.shape)}")
    f = feats[:n].double()
    d = torch.cdist(f, f)
    d.fill_diagonal_(float("inf"))
    bandwidth = float(d.min(1).values.median())
    if not bandwidth > 0:
        raise ValueError(f"feats: the median nearest-neighbour distance of its first {len(f)} rows is 0 (most rows "
                         "have an exact duplicate), so it cannot serve as the KD bandwidth; remove the duplicates")
    return bandwidth


@dataclasses.dataclass(frozen=True)
class FitContext:
    """What the line-up is built and fitted from; :meth:`DetectorSuite.fit` makes it.

    Attributes
    ----------
    train: clean training features (every layer of ``layers``); ``train.labels`` (N,) their
        true classes (also :attr:`labels`).
    clean, adv: the supervised detectors' training pairs: features of the correctly
        classified images among ``n_fgsm`` seeded training images, and of their FGSM versions
        (same rows, same order).
    images, adv_images: those images ``(N_s, C, H, W)`` in [0, 1], clean and under FGSM.
    model: the classifier under attack.
    generator: the seeded CPU generator, after the draw of the supervised images; the
        rows functions that draw (:func:`random_500`) draw from it, in table order.
    seed, reg, k, layers: the settings of :meth:`DetectorSuite.fit`.
    """

    train: features.FeatureSet
    clean: features.FeatureSet
    adv: features.FeatureSet
    images: torch.Tensor
    adv_images: torch.Tensor
    model: torch.nn.Module
    generator: torch.Generator
    seed: int
    reg: float
    k: int
    layers: tuple

    @property
    def labels(self) -> torch.Tensor:
        """(N,) true classes of the clean training features."""
        return self.train.labels


@dataclasses.dataclass(frozen=True)
class FitRows:
    """The rows a detector is fitted on (the suite takes from them what the detector's ``inputs`` ask).

    clean: clean features (the true labels of fit are ``clean.labels``); images: their
    images, for image detectors.  adv / adv_images: a training attack's features / images,
    for detectors with ``inputs.adversarial``; clean_val: held-out clean features for the
    negative class of a supervised detector (its ``clean_val_features``), or None.
    """

    clean: features.FeatureSet
    images: torch.Tensor | None = None
    adv: features.FeatureSet | None = None
    adv_images: torch.Tensor | None = None
    clean_val: features.FeatureSet | None = None


def clean_train(c: FitContext) -> FitRows:
    """Every clean training row."""
    return FitRows(c.train)


def random_500(c: FitContext) -> FitRows:
    """500 clean training rows drawn at random from the seeded generator (LID's reference batch)."""
    return FitRows(c.train.subset(torch.randperm(len(c.train), generator=c.generator)[:500]))


def clean_train_vs_fgsm(c: FitContext) -> FitRows:
    """Every clean training row against the FGSM pairs (their clean halves as held-out negatives)."""
    return FitRows(c.train, adv=c.adv, adv_images=c.adv_images, clean_val=c.clean)


def first_500_vs_fgsm(c: FitContext) -> FitRows:
    """The first 500 clean training rows against the FGSM pairs (their clean halves as negatives)."""
    return FitRows(c.train.subset(torch.arange(min(500, len(c.train)))), adv=c.adv, adv_images=c.adv_images,
                   clean_val=c.clean)


def fgsm_pairs(c: FitContext) -> FitRows:
    """The supervised detectors' training images: clean rows (with their images) against their FGSM versions."""
    return FitRows(c.clean, images=c.images, adv=c.adv, adv_images=c.adv_images)


class Entry(NamedTuple):
    """One row of :data:`LINE_UP`: how to build the detector, and what it is fitted on."""

    build: Callable[[FitContext], detectors.Detector]
    fit_on: Callable[[FitContext], FitRows]


LINE_UP: "OrderedDict[str, Entry]" = OrderedDict([
    # name      how to build it (c: the FitContext)                                        fitted on
    ("MGM",     Entry(lambda c: detectors.MGM(reg=c.reg),                                  clean_train)),
    ("MAHA",    Entry(lambda c: detectors.Mahalanobis(reg=c.reg),                          clean_train)),
    ("KD",      Entry(lambda c: detectors.KD(bandwidth=kd_bandwidth(c.train.penultimate)), clean_train)),
    ("LID",     Entry(lambda c: detectors.LID(k=c.k),                                      random_500)),
    ("ISO",     Entry(lambda c: detectors.ISO(seed=c.seed),                                clean_train)),
    ("OCSVM",   Entry(lambda c: detectors.OCSVM(),                                         clean_train)),
    ("MAHA-LR", Entry(lambda c: detectors.MahaEnsemble(),                                  clean_train_vs_fgsm)),
    ("LID-LR",  Entry(lambda c: detectors.LIDDetector(k=c.k),                              first_500_vs_fgsm)),
    ("DNN",     Entry(lambda c: detectors.DNNDetector(seed=c.seed),                        fgsm_pairs)),
    ("BU",      Entry(lambda c: detectors.BU(c.model, n_samples=10, seed=c.seed),          fgsm_pairs)),
])
"""The line-up, in the order of the book's tables (and of fitting): name -> :class:`Entry`."""

DETECTOR_NAMES = tuple(LINE_UP)
"""The detectors of :class:`DetectorSuite`, in the order of the book's tables."""


def _view(name: str, det: detectors.Detector, fs: features.FeatureSet, images, layers):
    """What ``det`` reads of a feature set (and its images), by its declared ``inputs.view``."""
    view = det.inputs.view
    if view == "images":
        if images is None:
            raise ValueError(f"{name} scores images: pass the images the features were computed from")
        return images
    if view == "layers":
        return {l: fs[l] for l in layers}
    return fs.penultimate


def _fit(name: str, det: detectors.Detector, rows: FitRows, layers) -> detectors.Detector:
    """Fit ``det`` on ``rows``, passing what its ``inputs`` declare."""
    inputs = det.inputs
    labels = rows.clean.labels if inputs.fit_labels else None
    sets = {}
    if inputs.adversarial:
        if rows.adv is None:
            raise ValueError(f"{name} is trained on clean against adversarial features, but the rows it is fitted on "
                             "hold no adversarial set (FitRows.adv)")
        sets["adv_features"] = _view(name, det, rows.adv, rows.adv_images, layers)
        if rows.clean_val is not None:
            sets["clean_val_features"] = _view(name, det, rows.clean_val, None, layers)
    return det.fit(_view(name, det, rows.clean, rows.images, layers), labels, **sets)


class DetectorSuite:
    """The fitted line-up, each detector fed what its ``inputs`` declare.

    Build it with :meth:`fit`; ``detectors`` is an ordered ``{name: Detector}`` with the names
    of :data:`LINE_UP`.  :meth:`score` returns every detector's scores (float64 ``(N,)`` on
    the CPU, higher = more adversarial) for a :class:`~medadv_tutorial.features.FeatureSet`
    and the images it was computed from (image detectors such as ``BU`` need the images,
    the others the features: the penultimate layer, or ``layers`` for the ensembles).
    """

    def __init__(self, dets: Mapping[str, detectors.Detector], layers=ENSEMBLE_LAYERS):
        self.detectors = OrderedDict(dets)
        self.layers = tuple(layers)

    def __repr__(self) -> str:
        return f"DetectorSuite({list(self.detectors)})"

    @classmethod
    def fit(cls, model, train, fs_train: features.FeatureSet, *, eps: float = 1 / 255, n_fgsm: int = 100,
            seed: int = 0, reg: float = 1e-3, k: int = 20, layers=None,
            cache: bool = False) -> "DetectorSuite":
        """Fit the line-up on clean training data.

        Parameters
        ----------
        model: the classifier under attack (for the FGSM training set and BU).
        train: the clean training data set (images in [0, 1]) that ``fs_train`` was computed from.
        fs_train: its features (every layer of ``layers`` present).
        eps: budget of the FGSM images the supervised detectors are trained on.
        n_fgsm: the supervised detectors use the correctly classified images among a seeded
            random ``n_fgsm`` training images, clean and under FGSM.
        seed: seed of those choices (one generator, drawn in a fixed order: the ``n_fgsm``
            images first, then the rows of :data:`LINE_UP` in order).
        reg, k: the MGM / MAHA relative ridge (see :mod:`~medadv_tutorial.gaussian`) and the LID
            neighbourhood size.
        layers: the ensembles' layers; default :func:`ensemble_layers` of ``model``'s backbone.
        cache: read the fitted suite from the result cache when the same model, training data,
            features, settings and line-up (its rows keyed by their source text) were fitted
            before, else fit it and store it (:func:`~medadv_tutorial.cache.cached_object`).
            Fitting is deterministic under the seed, so a cached suite scores exactly as a
            freshly fitted one; detectors that hold the model (BU) get ``model`` itself back.

        Every detector of :data:`LINE_UP` is built from one :class:`FitContext` and fitted,
        in table order, on its rows, with what its ``inputs`` declare.
        """
        if not isinstance(fs_train, features.FeatureSet):
            raise TypeError(f"fs_train must be a FeatureSet (from extract_features), got {type(fs_train).__name__}")
        layers = ensemble_layers(model) if layers is None else tuple(layers)
        eps, n_fgsm, seed = check_eps(eps, "eps"), check_int(n_fgsm, "n_fgsm"), check_seed(seed)
        reg, k = check_real(reg, "reg", low=0.0), check_int(k, "k")
        missing = [l for l in layers if l not in fs_train.feats]
        if missing:
            raise KeyError(f"fs_train lacks the ensemble layers {missing}")
        if len(fs_train) != len(train):
            raise ValueError(f"fs_train has {len(fs_train)} rows but train has {len(train)} images")
        if cache:
            key = dict(model=model, train=train, fs_train=fs_train, eps=eps, n_fgsm=n_fgsm, seed=seed, reg=reg, k=k,
                       layers=tuple(layers), line_up=[(name, result_cache.source_key(e.build),
                                                       result_cache.source_key(e.fit_on)) for name, e in LINE_UP.items()])
            fitted, hit = result_cache.cached_object(
                "detector_suite", key, lambda: cls.fit(model, train, fs_train, eps=eps, n_fgsm=n_fgsm, seed=seed,
                                                       reg=reg, k=k, layers=layers), code="suite")
            if hit:  # a detector that holds the model (BU) gets the caller's model, not the stored copy
                for det in fitted.detectors.values():
                    if isinstance(getattr(det, "model", None), torch.nn.Module):
                        det.model = model
            return fitted
        g = torch.Generator().manual_seed(seed)
        tr_idx = torch.randperm(len(train), generator=g)[:n_fgsm]
        x_tr, y_tr = training.correctly_classified(model, torch.utils.data.Subset(train, tr_idx.tolist()))
        x_tr_adv = attacks.run_attack(attacks.FGSM(eps), model, (x_tr, y_tr), progress=False).x_adv
        fs_tr_clean = features.extract_features(model, (x_tr, y_tr), progress=False)
        fs_tr_adv = features.extract_features(model, (x_tr_adv, y_tr), progress=False)
        ctx = FitContext(train=fs_train, clean=fs_tr_clean, adv=fs_tr_adv, images=x_tr, adv_images=x_tr_adv,
                         model=model, generator=g, seed=seed, reg=reg, k=k, layers=tuple(layers))
        dets = OrderedDict()
        for name, entry in LINE_UP.items():
            det = entry.build(ctx)
            dets[name] = _fit(name, det, entry.fit_on(ctx), ctx.layers)
        return cls(dets, layers)

    def with_two_sided(self, names=("MGM", "MAHA")) -> "DetectorSuite":
        """A suite with, in addition, :class:`~medadv_tutorial.detectors.TwoSided` versions of ``names``
        (called ``"<name> two-sided"``; median and threshold from the clean training scores)."""
        dets = OrderedDict(self.detectors)
        unknown = [n for n in names if n not in self.detectors]
        if isinstance(names, str) or unknown:
            raise KeyError(f"names must list detectors of the suite {list(self.detectors)}, got {names!r}")
        for n in names:
            dets[f"{n} two-sided"] = detectors.TwoSided(self.detectors[n])
        return DetectorSuite(dets, self.layers)

    def score_one(self, name: str, fs: features.FeatureSet, images: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of detector ``name`` for the features ``fs`` (and ``images``, for image detectors such as BU).

        The detector reads what its ``inputs`` declare: ``fs.penultimate``, the suite's
        ``layers`` of ``fs`` or ``images``, and ``fs.predictions`` if it scores with predicted
        labels.  Returns ``(N,)`` float64 on the CPU.
        """
        if not isinstance(name, str) or name not in self.detectors:
            raise KeyError(f"unknown detector {name!r}; the suite has {list(self.detectors)}")
        return self._score_one(name, *self._checked_inputs(fs, images))

    def score(self, fs: features.FeatureSet, images: torch.Tensor | None = None, names=None) -> "OrderedDict[str, torch.Tensor]":
        """``{name: (N,) scores}`` for every detector (or those in ``names``).

        The feature set and the images are checked once here (a ``FeatureSet`` scanned its values
        when it was made); the detectors then check only the shapes of their views.
        """
        names = list(self.detectors) if names is None else list(names)
        unknown = [n for n in names if not isinstance(n, str) or n not in self.detectors]
        if unknown:
            raise KeyError(f"unknown detectors {unknown}; the suite has {list(self.detectors)}")
        fs, images = self._checked_inputs(fs, images)
        return OrderedDict((n, self._score_one(n, fs, images)) for n in names)

    @staticmethod
    def _checked_inputs(fs, images):
        if not isinstance(fs, features.FeatureSet):
            raise TypeError(f"fs must be a FeatureSet (from extract_features), got {type(fs).__name__}")
        if images is not None:
            check_images(images, "images")
            if len(images) != len(fs):
                raise ValueError(f"images must be the {len(fs)} images the features were computed from, "
                                 f"got {len(images)}")
        return fs, images

    def _score_one(self, name, fs, images) -> torch.Tensor:
        det = self.detectors[name]
        labels = fs.predictions if det.inputs.score_labels == "predicted" else None
        s = det.score(_view(name, det, fs, images, self.layers), labels, scanned=True)
        return s.detach().to("cpu", torch.float64)

