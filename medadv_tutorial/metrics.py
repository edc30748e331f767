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
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .checks import check_real

__all__ = [
    "auroc",
    "f1_at_threshold",
    "followup_auroc",
    "quantile_threshold",
    "roc_curve",
    "tpr_at_tnr",
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
