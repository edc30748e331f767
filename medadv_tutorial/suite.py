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
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping

import torch

from . import attacks, detectors, features, metrics, training
from .checks import check_eps, check_features, check_int, check_real, check_seed
from .hfc import TwoSided

__all__ = ["ENSEMBLE_LAYERS", "DETECTOR_NAMES", "kd_bandwidth", "DetectorSuite", "AttackEvaluation",
           "evaluate_attack"]

ENSEMBLE_LAYERS = ("block3", "block8", "block13", "penultimate")
"""Layers of the MAHA-LR and LID-LR ensembles."""

DETECTOR_NAMES = ("MGM", "MAHA", "KD", "LID", "ISO", "OCSVM", "MAHA-LR", "LID-LR", "DNN", "BU")
"""The detectors of :class:`DetectorSuite`, in the order of the book's tables."""


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


class DetectorSuite:
    """Ten fitted detectors and the rule for feeding each its input.

    Build it with :meth:`fit`; ``detectors`` is an ordered ``{name: Detector}`` with the names
    of :data:`DETECTOR_NAMES`.  :meth:`score` returns every detector's scores (float64
    ``(N,)`` on the CPU, higher = more adversarial) for a :class:`~medadv_tutorial.features.FeatureSet`
    and the images it was computed from (``BU`` needs the images; the others the features).
    """

    def __init__(self, dets: Mapping[str, detectors.Detector], layers=ENSEMBLE_LAYERS):
        self.detectors = OrderedDict(dets)
        self.layers = tuple(layers)

    def __repr__(self) -> str:
        return f"DetectorSuite({list(self.detectors)})"

    @classmethod
    def fit(cls, model, train, fs_train: features.FeatureSet, *, eps: float = 1 / 255, n_fgsm: int = 100,
            seed: int = 0, reg: float = 1e-3, k: int = 20, layers=ENSEMBLE_LAYERS) -> "DetectorSuite":
        """Fit the line-up on clean training data.

        Parameters
        ----------
        model: the classifier under attack (for the FGSM training set and BU).
        train: the clean training data set (images in [0, 1]) that ``fs_train`` was computed from.
        fs_train: its features (every layer of ``layers`` present).
        eps: budget of the FGSM images the supervised detectors are trained on.
        n_fgsm: the supervised detectors use the correctly classified images among a seeded
            random ``n_fgsm`` training images, clean and under FGSM.
        seed: seed of those choices (one generator, drawn in a fixed order).
        reg, k: MGM / MAHA ridge and the LID neighbourhood size.
        """
        if not isinstance(fs_train, features.FeatureSet):
            raise TypeError(f"fs_train must be a FeatureSet (from extract_features), got {type(fs_train).__name__}")
        eps, n_fgsm, seed = check_eps(eps, "eps"), check_int(n_fgsm, "n_fgsm"), check_seed(seed)
        reg, k = check_real(reg, "reg", low=0.0), check_int(k, "k")
        missing = [l for l in layers if l not in fs_train.feats]
        if missing:
            raise KeyError(f"fs_train lacks the ensemble layers {missing}")
        if len(fs_train) != len(train):
            raise ValueError(f"fs_train has {len(fs_train)} rows but train has {len(train)} images")
        g = torch.Generator().manual_seed(seed)
        tr_idx = torch.randperm(len(train), generator=g)[:n_fgsm]
        x_tr, y_tr = training.correctly_classified(model, torch.utils.data.Subset(train, tr_idx.tolist()))
        x_tr_adv = attacks.run_attack(attacks.FGSM(eps), model, (x_tr, y_tr), progress=False).x_adv
        fs_tr_clean = features.extract_features(model, (x_tr, y_tr), progress=False)
        fs_tr_adv = features.extract_features(model, (x_tr_adv, y_tr), progress=False)

        pen = fs_train.penultimate
        pick = lambda fs: {l: fs[l] for l in layers}  # noqa: E731
        dets = OrderedDict()
        dets["MGM"] = detectors.MGM(reg=reg).fit(pen)
        dets["MAHA"] = detectors.Mahalanobis(reg=reg).fit(pen, fs_train.labels)
        dets["KD"] = detectors.KD(bandwidth=kd_bandwidth(pen)).fit(pen, fs_train.labels)
        dets["LID"] = detectors.LID(k=k).fit(pen[torch.randperm(len(pen), generator=g)[:500]])
        dets["ISO"] = detectors.ISO(seed=seed).fit(pen)
        dets["OCSVM"] = detectors.OCSVM().fit(pen)
        dets["MAHA-LR"] = detectors.MahaEnsemble().fit(
            pick(fs_train), fs_train.labels, adv_features=pick(fs_tr_adv), clean_val_features=pick(fs_tr_clean))
        dets["LID-LR"] = detectors.LIDDetector(k=k).fit(
            {l: fs_train[l][:500] for l in layers}, adv_features=pick(fs_tr_adv), clean_val_features=pick(fs_tr_clean))
        dets["DNN"] = detectors.DNNDetector(seed=seed).fit(fs_tr_clean.penultimate, adv_features=fs_tr_adv.penultimate)
        dets["BU"] = detectors.BU(model, n_samples=10, seed=seed).fit(x_tr)
        return cls(dets, layers)

    def with_two_sided(self, names=("MGM", "MAHA")) -> "DetectorSuite":
        """A suite with, in addition, :class:`~medadv_tutorial.hfc.TwoSided` versions of ``names``
        (called ``"<name> two-sided"``; median and threshold from the clean training scores)."""
        dets = OrderedDict(self.detectors)
        unknown = [n for n in names if n not in self.detectors]
        if isinstance(names, str) or unknown:
            raise KeyError(f"names must list detectors of the suite {list(self.detectors)}, got {names!r}")
        for n in names:
            dets[f"{n} two-sided"] = TwoSided(self.detectors[n])
        return DetectorSuite(dets, self.layers)

    def score_one(self, name: str, fs: features.FeatureSet, images: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of detector ``name`` for the features ``fs`` (and ``images``, for BU)."""
        if not isinstance(name, str) or name not in self.detectors:
            raise KeyError(f"unknown detector {name!r}; the suite has {list(self.detectors)}")
        if not isinstance(fs, features.FeatureSet):
            raise TypeError(f"fs must be a FeatureSet (from extract_features), got {type(fs).__name__}")
        det = self.detectors[name]
        base = det.detector if isinstance(det, TwoSided) else det
        if isinstance(base, detectors.BU):
            if images is None:
                raise ValueError("BU scores images: pass the images the features were computed from")
            s = det.score(images)
        elif base.input_kind == "layers":
            s = det.score({l: fs[l] for l in self.layers})
        elif isinstance(base, detectors.KD):
            s = det.score(fs.penultimate, fs.predictions)
        else:
            s = det.score(fs.penultimate)
        return s.detach().to("cpu", torch.float64)

    def score(self, fs: features.FeatureSet, images: torch.Tensor | None = None, names=None) -> "OrderedDict[str, torch.Tensor]":
        """``{name: (N,) scores}`` for every detector (or those in ``names``)."""
        names = list(self.detectors) if names is None else list(names)
        return OrderedDict((n, self.score_one(n, fs, images)) for n in names)


@dataclasses.dataclass
class AttackEvaluation:
    """One attack run on one image set, scored by a :class:`DetectorSuite`.

    ``x_adv`` ``(N, C, H, W)``, ``fs`` their features, ``success`` the fraction reaching the
    goal (target class for targeted attacks, any wrong class otherwise), ``seconds`` the
    attack's wall time, ``scores`` / ``auroc`` / ``tpr90`` per detector (clean images of the
    same set as negatives, adversarial ones as positives; TPR at 90% TNR).
    """

    name: str
    x_adv: torch.Tensor
    fs: features.FeatureSet
    success: float
    seconds: float
    scores: "OrderedDict[str, torch.Tensor]"
    auroc: "OrderedDict[str, float]"
    tpr90: "OrderedDict[str, float]"


def evaluate_attack(name: str, attack, model, x: torch.Tensor, y: torch.Tensor, suite: DetectorSuite,
                    clean_scores: Mapping[str, torch.Tensor], *, targets: torch.Tensor | None = None,
                    batch_size: int | None = None, cache: bool = True) -> AttackEvaluation:
    """Run ``attack`` on ``(x, y)`` and score the result with every detector of ``suite``.

    ``clean_scores``: ``suite.score(fs_clean, x)`` of the same clean images.  For a targeted
    attack pass ``targets`` ``(N,)``; success then means reaching them.  ``cache``: read the
    adversarial images of a run computed before from the result cache (bit-identical; see
    :func:`~medadv_tutorial.attacks.run_attack`); ``seconds`` is then the computed run's.
    """
    if not isinstance(clean_scores, Mapping):
        raise TypeError(f"clean_scores must be a mapping {{detector name: (N,) scores}} (suite.score(fs_clean, x)), "
                        f"got {type(clean_scores).__name__}")
    missing = [n for n in suite.detectors if n not in clean_scores]
    if missing:
        raise KeyError(f"clean_scores lacks {missing}: compute them with suite.score(fs_clean, x)")
    res = attacks.run_attack(attack, model, (x, y), batch_size=batch_size, progress=False, targets=targets,
                             cache=cache)
    seconds = res.seconds
    fs = features.extract_features(model, (res.x_adv, y), progress=False)
    pred = fs.predictions
    success = float((pred == targets).float().mean()) if targets is not None else float((pred != y).float().mean())
    scores = suite.score(fs, res.x_adv)
    auroc = OrderedDict((n, metrics.auroc(clean_scores[n], s)) for n, s in scores.items())
    tpr = OrderedDict((n, metrics.tpr_at_tnr(clean_scores[n], s, 0.90)) for n, s in scores.items())
    return AttackEvaluation(name, res.x_adv, fs, success, seconds, scores, auroc, tpr)
