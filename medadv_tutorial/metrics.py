"""Detection metrics: AUROC, TPR at a fixed TNR, F1 at a threshold, and the follow-up AUROC.

Convention throughout: a detector gives one score per image, **higher = more
adversarial**, and the *adversarial* images are the positive class.  Every function
takes the clean and the adversarial scores as two separate 1-D arrays (torch tensors on
any device, numpy arrays or lists), so the caller never builds label vectors::

    auroc(s_clean, s_adv)                  # area under the ROC curve, in [0, 1]
    tpr_at_tnr(s_clean, s_adv, tnr=0.90)   # detection rate when 90% of clean images pass
    f1_at_threshold(s_clean, s_adv, t)     # F1 of the rule "score > t  ->  adversarial"

Thresholds are *strict*: an image is flagged when its score is **greater than** the
threshold, and a threshold taken as a quantile of clean scores follows
:func:`quantile_threshold` (the same rule as ``Detector.threshold`` in
:mod:`medadv_tutorial.detectors`).

:func:`followup_auroc` is the metric of Li & Zhu (ISBI 2020): the *classifier's* AUROC on
the images that the detector lets through.

How precise is a number measured on a few hundred images?  Each estimate comes with a 95%
interval over the images, as an :class:`Interval` that prints as a table cell, one method per
kind of quantity:

* a rate (a success rate, a TPR, an accuracy): :func:`rate_interval`, the Wilson score
  interval, which does not collapse when every image (or none) succeeds;
* an AUROC, a TPR at a TNR, an F1, a mean: a percentile bootstrap over the images
  (:func:`auroc_interval`, :func:`tpr_interval`, :func:`f1_interval`, :func:`mean_interval`);
* a difference of two such numbers: :func:`difference_interval` (rates and means) and
  :func:`auroc_difference_interval`, *paired* when both were measured on the same images (two
  attacks, two detectors), so that what the two share cancels; two rates on different images
  (two data sets): :func:`rate_difference_interval`, Newcombe's interval built from the two
  Wilson intervals, which does not collapse when both rates are 0 or 1.

A verdict on a difference is read from the interval of the difference::

    f"{rate_interval(result.success)}"      # '0.93 [0.87, 0.96]'
    difference_interval(a.success, b.success, paired=True).side()   # +1, -1, or 0 (not told apart)

Two separate intervals that overlap do *not* say that two numbers are alike.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .checks import check_int, check_real, check_seed

__all__ = [
    "Interval",
    "auroc",
    "auroc_interval",
    "auroc_difference_interval",
    "difference_interval",
    "rate_difference_interval",
    "f1_at_threshold",
    "f1_interval",
    "followup_auroc",
    "followup_auroc_interval",
    "mean_interval",
    "quantile_threshold",
    "rate_interval",
    "roc_curve",
    "tpr_at_tnr",
    "tpr_interval",
]


def _as_1d(scores, name: str) -> np.ndarray:
    """``scores`` (tensor / array / list of shape (n,), n >= 1) -> float64 numpy array."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a 1-D array of real scores with shape (n,), got {type(scores).__name__} "
                        f"({err})") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores with shape (n,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN score(s)")
    return arr


def _finite_for_ranking(*arrays: np.ndarray) -> list[np.ndarray]:
    """Replace +-inf by values just beyond the finite range (order, hence ranks, preserved).

    scikit-learn refuses infinite scores; AUROC and ROC curves depend only on the order
    of the scores, so mapping +inf to ``max + 1`` and -inf to ``min - 1`` changes nothing.
    """
    allv = np.concatenate(arrays)
    fin = allv[np.isfinite(allv)]
    hi = fin.max() + 1.0 if fin.size else 1.0
    lo = fin.min() - 1.0 if fin.size else -1.0
    return [np.where(a == np.inf, hi, np.where(a == -np.inf, lo, a)) for a in arrays]


def _labels_and_scores(scores_clean, scores_adv) -> tuple[np.ndarray, np.ndarray]:
    c = _as_1d(scores_clean, "scores_clean")
    a = _as_1d(scores_adv, "scores_adv")
    c, a = _finite_for_ranking(c, a)
    y = np.concatenate([np.zeros(len(c), dtype=np.int64), np.ones(len(a), dtype=np.int64)])
    return y, np.concatenate([c, a])


def auroc(scores_clean, scores_adv) -> float:
    """Area under the ROC curve of a detector, adversarial = positive.

    Parameters
    ----------
    scores_clean: (n_clean,) detector scores of clean images (higher = more adversarial).
    scores_adv: (n_adv,) scores of adversarial images.

    Returns a float in [0, 1]: 1.0 when every adversarial score exceeds every clean score,
    0.5 for a detector that cannot tell them apart (ties count one half), 0.0 when the
    order is reversed.  Computed with :func:`sklearn.metrics.roc_auc_score`.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _labels_and_scores(scores_clean, scores_adv)
    return float(roc_auc_score(y, s))


def roc_curve(scores_clean, scores_adv):
    """ROC curve for plotting: ``(fpr, tpr, thresholds)``, as :func:`sklearn.metrics.roc_curve`.

    ``fpr`` = fraction of clean images flagged, ``tpr`` = fraction of adversarial images
    flagged, for the rule ``score >= thresholds[i]``; all three are 1-D numpy arrays of the
    same length (infinite scores are mapped to just beyond the finite range first).
    """
    from sklearn.metrics import roc_curve as _roc

    y, s = _labels_and_scores(scores_clean, scores_adv)
    fpr, tpr, thr = _roc(y, s)
    return fpr, tpr, thr


def quantile_threshold(scores, quantile: float) -> float:
    """The threshold that keeps (at least) a fraction ``quantile`` of ``scores`` below or at it.

    With the ``n`` scores sorted, ``s_(1) <= ... <= s_(n)``, the threshold is
    ``s_(k)`` with ``k = ceil(quantile * n)`` (the lower empirical quantile, numpy's
    ``method="inverted_cdf"``; ``quantile * n`` is rounded to 9 decimals first so that,
    say, ``0.9 * 10`` counts as 9).  The rule ``score > threshold -> flagged`` then flags
    at most ``1 - quantile`` of these scores, fewer when scores tie at the threshold:
    **ties with the threshold are kept (not flagged)**.

    Parameters
    ----------
    scores: (n,) scores, n >= 1.
    quantile: fraction in (0, 1].
    """
    s = _as_1d(scores, "scores")
    quantile = check_real(quantile, "quantile", low=0.0, low_open=True, high=1.0, hint=" (a fraction in (0, 1])")
    k = max(1, math.ceil(round(quantile * len(s), 9)))
    return float(np.sort(s)[k - 1])


def tpr_at_tnr(scores_clean, scores_adv, tnr: float = 0.90) -> float:
    """Fraction of adversarial images detected when a fraction ``tnr`` of clean images pass.

    The threshold is ``t = quantile_threshold(scores_clean, tnr)``: the smallest clean
    score with at least ``tnr`` of the clean scores ``<= t``.  An adversarial image counts
    as detected when its score is **strictly greater** than ``t``; an adversarial score
    tied with ``t`` is *not* detected (the conservative choice), and the realised TNR is
    ``>= tnr`` (larger only when clean scores tie at ``t``).

    Parameters
    ----------
    scores_clean: (n_clean,) clean scores.  scores_adv: (n_adv,) adversarial scores.
    tnr: target true-negative rate in (0, 1]; the HFC paper reports TPR at 90% TNR.

    Returns the TPR, a float in [0, 1].
    """
    tnr = check_real(tnr, "tnr", low=0.0, low_open=True, high=1.0, hint=" (a true-negative rate in (0, 1])")
    t = quantile_threshold(scores_clean, tnr)
    a = _as_1d(scores_adv, "scores_adv")
    return float(np.mean(a > t))


def f1_at_threshold(scores_clean, scores_adv, threshold: float) -> float:
    """F1 score of the rule ``score > threshold -> adversarial`` (adversarial = positive).

    ``F1 = 2 TP / (2 TP + FP + FN)`` with TP = adversarial flagged, FP = clean flagged,
    FN = adversarial missed (``scores_adv`` is non-empty, so the ratio is always defined;
    F1 = 0.0 exactly when no adversarial image is flagged).  Li & Zhu report it at the
    threshold that keeps 95% of clean training data (``detector.threshold(0.95)``).

    Returns a float in [0, 1].
    """
    c = _as_1d(scores_clean, "scores_clean")
    a = _as_1d(scores_adv, "scores_adv")
    threshold = check_real(threshold, "threshold", finite=False)
    tp = int((a > threshold).sum())
    fn = len(a) - tp
    fp = int((c > threshold).sum())
    return 2.0 * tp / (2.0 * tp + fp + fn)


def followup_auroc(classifier_probs, labels, accepted_mask) -> float:
    """Li & Zhu's follow-up metric: the classifier's AUROC on the images the detector accepts.

    A detector in front of a classifier rejects the images it flags; the follow-up AUROC
    asks how good the diagnosis is on what remains (clean images and the adversarial
    images that slipped through).  A perfect detector restores the clean AUROC; a detector
    that lets successful attacks through leaves it low.

    Parameters
    ----------
    classifier_probs: (N,) probability of the positive class (binary task), or (N, C)
        class probabilities / scores (C = 2 uses column 1; C > 2 uses one-vs-rest).
    labels: (N,) integer ground-truth classes in ``[0, C)``.
    accepted_mask: (N,) bool, True where the detector lets the image through
        (``~detector.predict(features)``).

    Returns
    -------
    float in [0, 1], or ``nan`` when the AUROC is undefined:

    * binary task: ``nan`` if the accepted images contain only one class (or none);
    * C > 2: the macro average over classes of the one-vs-rest AUROC
      ``roc_auc_score(labels == c, probs[:, c])``, taken over the classes that are both
      present and absent somewhere among the accepted images; classes with no accepted
      image are skipped (the average is over fewer classes), and ``nan`` if no class
      qualifies.  With every class present this equals scikit-learn's
      ``roc_auc_score(..., multi_class="ovr", average="macro")``.
    """
    from sklearn.metrics import roc_auc_score

    p = classifier_probs
    if isinstance(p, torch.Tensor):
        p = p.detach().to("cpu", torch.float64).numpy()
    p = np.asarray(p, dtype=np.float64)
    if p.ndim not in (1, 2) or len(p) == 0:
        raise ValueError(f"classifier_probs must have shape (N,) or (N, C), got {p.shape}")
    n = len(p)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape ({n},), got {y.dtype} {y.shape}")
    m = accepted_mask.detach().cpu().numpy() if isinstance(accepted_mask, torch.Tensor) else np.asarray(accepted_mask)
    if m.shape != (n,) or m.dtype != np.bool_:
        raise ValueError(f"accepted_mask must be a bool array of shape ({n},), got {m.dtype} {m.shape}")
    n_classes = 2 if p.ndim == 1 else p.shape[1]
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must be classes in [0, {n_classes}) to match classifier_probs, got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    p, y = p[m], y[m]
    if p.ndim == 1:
        if len(np.unique(y)) < 2:
            return float("nan")
        return float(roc_auc_score(y, p))
    per_class = []
    for c in range(p.shape[1]):
        pos = y == c
        if pos.any() and not pos.all():
            per_class.append(roc_auc_score(pos.astype(np.int64), p[:, c]))
    return float(np.mean(per_class)) if per_class else float("nan")


# ----------------------------------------------------------------------- bootstrap intervals


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its interval (percentile bootstrap, or Wilson score for a rate).

    Unpacks as ``estimate, low, high = interval``; formats as a table cell, the format
    applying to each of the three numbers (default ``.2f``)::

        f"{iv}"        # '0.93 [0.89, 0.96]'
        f"{iv:.0%}"    # '93% [89%, 96%]'

    Attributes
    ----------
    estimate: the statistic on the images as they are (not the bootstrap mean).
    low, high: the bounds (``low <= high``); for a bootstrap interval, the ``(1 - level) / 2`` and
        ``(1 + level) / 2`` quantiles of the replicates (the estimate usually, not always, lies
        between them).
    level: the nominal coverage, e.g. 0.95.
    n_boot: number of bootstrap replicates (0 for a Wilson interval).
    method: ``"percentile bootstrap"`` or ``"Wilson score"``.
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 2000
    method: str = "percentile bootstrap"

    def __iter__(self):
        return iter((self.estimate, self.low, self.high))

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return format(self, "")

    @property
    def half_width(self) -> float:
        """``(high - low) / 2``."""
        return (self.high - self.low) / 2

    def side(self, value: float = 0.0) -> int:
        """Where the interval lies against ``value``: ``+1`` wholly above, ``-1`` wholly below,
        ``0`` when it contains ``value``.  On the interval of a difference
        (:func:`difference_interval`, :func:`auroc_difference_interval`) with the default
        ``value = 0``: which of the two is larger beyond sampling error, or ``0``, not told apart."""
        value = check_real(value, "value")
        return 1 if self.low > value else -1 if self.high < value else 0

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside ``[low, high]`` (e.g. ``auroc_ci.excludes(0.5)``:
        the detector differs from chance)."""
        value = check_real(value, "value")
        return value < self.low or value > self.high


def _check_bootstrap(n_boot, level, seed) -> tuple[int, float, int]:
    n_boot = check_int(n_boot, "n_boot (bootstrap replicates)", 1)
    level = check_real(level, "level", low=0.0, low_open=True, high=1.0, hint=" (a coverage in (0, 1), e.g. 0.95)")
    if level == 1.0:
        raise ValueError("level must be < 1 (a coverage in (0, 1), e.g. 0.95), got 1")
    return n_boot, level, check_seed(seed)


def _percentile_interval(estimate: float, replicates: np.ndarray, level: float, n_boot: int) -> Interval:
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high), level, n_boot)


def _as_outcomes(values, name: str) -> np.ndarray:
    """``values`` (tensor / array / list of shape (n,), entries 0/1 or bool) -> bool numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:  # pragma: no cover - ragged input
        raise TypeError(f"{name} must be a 1-D array of per-image outcomes (bool or 0/1), got "
                        f"{type(values).__name__} ({err})") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-image outcomes with shape (n,), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must hold bool or 0/1 per-image outcomes, got dtype {arr.dtype}")
        bad = ~np.isin(arr, (0, 1))
        if bad.any():
            raise ValueError(f"{name} must hold bool or 0/1 per-image outcomes, got {int(bad.sum())} other "
                             f"value(s), e.g. {arr[bad][0]!r}")
        arr = arr.astype(bool)
    return arr


def rate_interval(successes, among=None, *, level: float = 0.95) -> Interval:
    """A rate over images (success rate, TPR, accuracy) with its Wilson score interval.

    With ``k`` successes among ``n`` images, the interval holds the rates ``p`` for which
    ``|k/n - p| <= z sqrt(p (1 - p) / n)`` (``z`` the normal quantile of ``(1 + level) / 2``);
    scipy's ``binomtest(k, n).proportion_ci(level, method="wilson")``.  Unlike a percentile
    bootstrap it does not collapse to a point when every (or no) image succeeds: 50 successes
    out of 50 give about ``[0.93, 1.00]``.

    Parameters
    ----------
    successes: (N,) bool or 0/1 per image, tensor / array / list: the outcome of each image
        (e.g. ``AttackResult.success``, or ``scores_adv > threshold`` for a TPR).  From a count
        ``k`` of ``n`` alone: ``rate_interval(torch.arange(n) < k)``.
    among: optional (N,) bool mask of the images the rate is taken over (e.g. the images an
        attack attacks, ``AttackResult.attacked``); default all N.
    level: coverage in (0, 1).

    Returns an :class:`Interval` with ``estimate = k / n``, ``n_boot = 0`` and
    ``method = "Wilson score"``.
    """
    from scipy.stats import binomtest

    s = _masked_outcomes(successes, among)
    _, level, _ = _check_bootstrap(1, level, 0)
    n, k = len(s), int(s.sum())
    ci = binomtest(k, n).proportion_ci(level, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), level, 0, "Wilson score")


def _masked_outcomes(successes, among) -> np.ndarray:
    s = _as_outcomes(successes, "successes")
    if among is not None:
        m = _as_outcomes(among, "among")
        if len(m) != len(s):
            raise ValueError(f"among must have one entry per image of successes: successes has {len(s)}, "
                             f"among has {len(m)}")
        s = s[m]
    if len(s) == 0:
        raise ValueError("successes is empty" + (" after the among mask" if among is not None else "")
                         + ": a rate needs at least one image")
    return s


def rate_difference_interval(first, second, *, level: float = 0.95) -> Interval:
    """The difference of two rates measured on *different* images (two data sets),
    ``rate(first) - rate(second)``, with Newcombe's hybrid score interval (his method 10, 1998).

    With the two Wilson intervals ``[l1, u1]`` and ``[l2, u2]`` (:func:`rate_interval`) of the
    rates ``p1`` and ``p2``, the difference ``d = p1 - p2`` gets
    ``[d - sqrt((p1 - l1)^2 + (u2 - p2)^2),  d + sqrt((u1 - p1)^2 + (p2 - l2)^2)]``: each bound
    combines the two rates' distances to the Wilson bounds on its side.  It inherits the Wilson
    interval's behaviour at 0 and 1: 50 of 50 against 50 of 50 gives about ``[-0.07, 0.07]``,
    where a bootstrap gives the point 0.  For two rates on the *same* images use
    :func:`difference_interval` with ``paired=True``.

    Parameters
    ----------
    first, second: (N,) and (M,) bool or 0/1 per-image outcomes (as for :func:`rate_interval`).
    level: coverage in (0, 1).
    """
    a = rate_interval(first, level=level)
    b = rate_interval(second, level=level)
    d = a.estimate - b.estimate
    low = d - math.hypot(a.estimate - a.low, b.high - b.estimate)
    high = d + math.hypot(a.high - a.estimate, b.estimate - b.low)
    return Interval(d, low, high, a.level, 0, "Newcombe hybrid score")


def difference_interval(first, second, *, paired: bool, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> Interval:
    """The difference of two means of per-image values, ``mean(first) - mean(second)``, with its
    percentile bootstrap interval.  A rate is the mean of 0/1 outcomes, so this serves a
    difference of two success rates (give the per-image outcomes) as well as of two mean
    displacements.

    * ``paired=True``: both were measured on the *same* images, entry ``i`` of each being image
      ``i`` (two attacks on the same images, two detectors' decisions on the same images): each
      replicate resamples the images once and applies the resample to both, so that what the two
      share cancels.  The two must then have equal lengths.
    * ``paired=False``: independent samples (two data sets): each is resampled on its own.

    Read the verdict with :meth:`Interval.side`: ``+1`` first larger, ``-1`` second larger,
    ``0`` not told apart by these images.  When every image gives the same outcome under both
    (a paired difference of two rates both at 0 or both at 1), no resample can differ and the
    interval is the point ``[0, 0]``: these images show no difference, which bounds it no
    better than their number does.

    Parameters
    ----------
    first, second: (N,) and (M,) real or bool values, one per image (tensor / array / list;
        finite).  n_boot: bootstrap replicates, >= 1.  level: coverage in (0, 1).
    seed: seeds the resampling.
    """
    if not isinstance(paired, bool):
        raise TypeError(f"paired must be True (the same images) or False (independent samples), got {paired!r}")
    values = []
    for name, v in (("first", first), ("second", second)):
        v = _as_1d(v, name).astype(float)
        if not np.isfinite(v).all():
            raise ValueError(f"{name} must be finite, got {int((~np.isfinite(v)).sum())} non-finite value(s)")
        values.append(v)
    v1, v2 = values
    if paired and len(v1) != len(v2):
        raise ValueError(f"paired=True needs one value per image in both: first has {len(v1)}, second {len(v2)}")
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOT_CHUNK // (len(v1) + len(v2)))
    replicates = []
    for b in (min(per_chunk, n_boot - start) for start in range(0, n_boot, per_chunk)):
        w1 = _resample_counts(rng, len(v1), b)
        w2 = w1 if paired else _resample_counts(rng, len(v2), b)
        replicates.append(w1 @ v1 / len(v1) - w2 @ v2 / len(v2))
    return _percentile_interval(float(v1.mean() - v2.mean()), np.concatenate(replicates), level, n_boot)


def tpr_interval(scores_clean, scores_adv, tnr: float = 0.90, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> Interval:
    """:func:`tpr_at_tnr` with its stratified percentile bootstrap interval.

    Each replicate resamples the clean and, independently, the adversarial images with
    replacement, sets the threshold on the resampled clean scores (as :func:`tpr_at_tnr`
    does) and counts the resampled adversarial scores strictly above it; so the interval
    carries the uncertainty of the threshold as well as that of the detection rate.

    Parameters
    ----------
    scores_clean: (n_clean,) clean scores.  scores_adv: (n_adv,) adversarial scores.
    tnr: target true-negative rate in (0, 1].
    n_boot: bootstrap replicates, >= 1.  level: coverage in (0, 1).  seed: seeds the resampling.

    Returns an :class:`Interval` whose ``estimate`` is :func:`tpr_at_tnr` of the given scores.
    """
    c = _as_1d(scores_clean, "scores_clean")
    a = _as_1d(scores_adv, "scores_adv")
    tnr = check_real(tnr, "tnr", low=0.0, low_open=True, high=1.0, hint=" (a true-negative rate in (0, 1])")
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    rng = np.random.default_rng(seed)
    k = max(1, math.ceil(round(tnr * len(c), 9)))  # the rank quantile_threshold picks
    per_chunk = max(1, _BOOT_CHUNK // (len(c) + len(a)))
    replicates = []
    for start in range(0, n_boot, per_chunk):
        b = min(per_chunk, n_boot - start)
        t = np.sort(c[rng.integers(0, len(c), size=(b, len(c)))], axis=1)[:, k - 1]
        replicates.append((a[rng.integers(0, len(a), size=(b, len(a)))] > t[:, None]).mean(1))
    return _percentile_interval(tpr_at_tnr(c, a, tnr), np.concatenate(replicates), level, n_boot)


def f1_interval(scores_clean, scores_adv, threshold: float, *, n_boot: int = 2000, level: float = 0.95,
                seed: int = 0) -> Interval:
    """:func:`f1_at_threshold` with its stratified percentile bootstrap interval.

    The threshold is fixed (set beforehand, on training data); each replicate resamples the
    clean and, independently, the adversarial images.  A resample of ``n`` images of which
    ``k`` are flagged flags ``Binomial(n, k / n)`` of them, so the two counts are drawn as
    such (the same distribution as resampling the images).

    Returns an :class:`Interval` whose ``estimate`` is :func:`f1_at_threshold` of the given scores.
    """
    c = _as_1d(scores_clean, "scores_clean")
    a = _as_1d(scores_adv, "scores_adv")
    threshold = check_real(threshold, "threshold", finite=False)
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    rng = np.random.default_rng(seed)
    tp = rng.binomial(len(a), float((a > threshold).mean()), size=n_boot)
    fp = rng.binomial(len(c), float((c > threshold).mean()), size=n_boot)
    replicates = 2.0 * tp / (2.0 * tp + fp + (len(a) - tp))
    return _percentile_interval(f1_at_threshold(c, a, threshold), replicates, level, n_boot)


def followup_auroc_interval(classifier_probs, labels, accepted_mask, *, n_boot: int = 1000, level: float = 0.95,
                            seed: int = 0) -> Interval:
    """:func:`followup_auroc` with its percentile bootstrap interval over images.

    Each replicate resamples all ``N`` images with replacement (their probabilities, labels
    and accepted flags together) and recomputes the follow-up AUROC; replicates where it is
    undefined (one class among the accepted images) are left out.  The interval is NaN on
    both ends when fewer than half of the replicates are defined.
    """
    estimate = followup_auroc(classifier_probs, labels, accepted_mask)  # validates the inputs
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    as_np = (lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
    p, y, m = as_np(classifier_probs), as_np(labels), as_np(accepted_mask)
    rng = np.random.default_rng(seed)
    replicates = np.array([followup_auroc(p[i], y[i], m[i])
                           for i in rng.integers(0, len(y), size=(n_boot, len(y)))])
    replicates = replicates[~np.isnan(replicates)]
    if len(replicates) < n_boot / 2:
        return Interval(float(estimate), float("nan"), float("nan"), level, n_boot)
    return _percentile_interval(estimate, replicates, level, n_boot)


def mean_interval(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean of per-image values (a displacement, a distance) with its percentile bootstrap
    interval: the images are resampled with replacement ``n_boot`` times and the mean recomputed.

    Parameters
    ----------
    values: (N,) real values, one per image (tensor / array / list; N >= 1, no NaN).
    n_boot: bootstrap replicates, >= 1.  level: coverage in (0, 1).  seed: seeds the resampling.

    Returns an :class:`Interval` with ``estimate`` the mean of ``values``.
    """
    v = _as_1d(values, "values")
    if not np.isfinite(v).all():
        raise ValueError(f"values must be finite, got {int((~np.isfinite(v)).sum())} infinite value(s)")
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOT_CHUNK // len(v))
    replicates = np.concatenate([_resample_counts(rng, len(v), b) @ v / len(v)
                                 for b in (min(per_chunk, n_boot - start) for start in range(0, n_boot, per_chunk))])
    return _percentile_interval(float(v.mean()), replicates, level, n_boot)


_BOOT_CHUNK = 2**22
"""Resample counts held at once by :func:`auroc_interval` (about 32 MB per int64 array)."""


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) int64: how often each of n items is drawn in each of n_boot resamples of size n."""
    picks = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def _weighted_auroc(c: np.ndarray, a: np.ndarray, w_clean: np.ndarray, w_adv: np.ndarray) -> np.ndarray:
    """AUROC of each weighted resample: ``w_clean`` (B, n_clean), ``w_adv`` (B, n_adv) counts -> (B,).

    The Mann-Whitney form ``sum_ij w_i v_j [H(a_j - c_i)] / (sum w)(sum v)`` with ``H`` = 1 above,
    1/2 at ties: for each adversarial score the weighted count of clean scores below (and tied)
    is read off a cumulative sum over the sorted clean scores, in O(B (n_clean + n_adv)).
    """
    order = np.argsort(c, kind="stable")
    cs = c[order]
    cum = np.zeros((w_clean.shape[0], len(c) + 1))
    np.cumsum(w_clean[:, order], axis=1, out=cum[:, 1:])
    lo, hi = np.searchsorted(cs, a, "left"), np.searchsorted(cs, a, "right")
    below, tied = cum[:, lo], cum[:, hi] - cum[:, lo]
    u = (w_adv * (below + 0.5 * tied)).sum(1)
    return u / (w_clean.sum(1) * w_adv.sum(1))


def auroc_interval(scores_clean, scores_adv, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """:func:`auroc` with its stratified percentile bootstrap interval.

    Each of the ``n_boot`` replicates resamples the clean images and, independently, the
    adversarial images with replacement (so every replicate keeps ``n_clean`` clean and
    ``n_adv`` adversarial images) and recomputes the AUROC (ties count one half, as in
    :func:`auroc`); the interval runs between the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the replicates.  Vectorised (2 x 200 images and 2000 replicates take tens of
    milliseconds), in chunks of replicates that bound the memory for large sets.

    Parameters
    ----------
    scores_clean: (n_clean,) clean scores.  scores_adv: (n_adv,) adversarial scores
        (tensors / arrays / lists; higher = more adversarial; +-inf allowed, NaN not).
    n_boot: bootstrap replicates, >= 1.  level: coverage in (0, 1).  seed: seeds the resampling.

    Returns an :class:`Interval` whose ``estimate`` is :func:`auroc` of the given scores.
    """
    c = _as_1d(scores_clean, "scores_clean")
    a = _as_1d(scores_adv, "scores_adv")
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    c, a = _finite_for_ranking(c, a)
    rng = np.random.default_rng(seed)
    # replicates in chunks of about _BOOT_CHUNK counts, so that memory stays bounded for large sets
    per_chunk = max(1, _BOOT_CHUNK // (len(c) + len(a)))
    replicates = np.concatenate([
        _weighted_auroc(c, a, _resample_counts(rng, len(c), b), _resample_counts(rng, len(a), b))
        for b in (min(per_chunk, n_boot - start) for start in range(0, n_boot, per_chunk))])
    return _percentile_interval(auroc(c, a), replicates, level, n_boot)


def auroc_difference_interval(first, second, *, paired: bool, n_boot: int = 2000, level: float = 0.95,
                              seed: int = 0) -> Interval:
    """The difference of two AUROCs, ``auroc(*first) - auroc(*second)``, with its percentile bootstrap interval.

    ``first`` and ``second`` are ``(scores_clean, scores_adv)`` pairs (as for :func:`auroc`).

    * ``paired=True``: both were measured on the *same* images (two detectors, or two attacks on the
      same clean images, image ``i`` of each list being the same image): each replicate draws one
      resample of the clean images and one of the adversarial images and applies it to both AUROCs,
      so what the two share cancels and the interval is that of the difference on these images.
      The two pairs must then have equal lengths.
    * ``paired=False``: independent samples (two data sets, say): each of the four score lists is
      resampled on its own, as :func:`auroc_interval` does for one AUROC.

    An interval that excludes 0 says the two differ beyond sampling error; two separate intervals
    that overlap do not say the opposite.
    """
    if not isinstance(paired, bool):
        raise TypeError(f"paired must be True (the same images) or False (independent samples), got {paired!r}")
    pairs = []
    for name, pair in (("first", first), ("second", second)):
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise TypeError(f"{name} must be a (scores_clean, scores_adv) pair, got {type(pair).__name__}")
        pairs.append(_finite_for_ranking(_as_1d(pair[0], f"{name}[0] (clean scores)"),
                                         _as_1d(pair[1], f"{name}[1] (adversarial scores)")))
    (c1, a1), (c2, a2) = pairs
    if paired and (len(c1), len(a1)) != (len(c2), len(a2)):
        raise ValueError(f"paired=True needs the same images in both: first has {len(c1)} clean and {len(a1)} "
                         f"adversarial scores, second {len(c2)} and {len(a2)}")
    n_boot, level, seed = _check_bootstrap(n_boot, level, seed)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOT_CHUNK // (len(c1) + len(a1) + len(c2) + len(a2)))
    replicates = []
    for b in (min(per_chunk, n_boot - start) for start in range(0, n_boot, per_chunk)):
        w_c1, w_a1 = _resample_counts(rng, len(c1), b), _resample_counts(rng, len(a1), b)
        w_c2, w_a2 = (w_c1, w_a1) if paired else (_resample_counts(rng, len(c2), b), _resample_counts(rng, len(a2), b))
        replicates.append(_weighted_auroc(c1, a1, w_c1, w_a1) - _weighted_auroc(c2, a2, w_c2, w_a2))
    return _percentile_interval(auroc(c1, a1) - auroc(c2, a2), np.concatenate(replicates), level, n_boot)
