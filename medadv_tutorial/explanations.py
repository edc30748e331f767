"""Verdicts on Ma et al.'s explanations, read from intervals of differences.

Ma et al. (Pattern Recognition 2021) explain why medical-image models are easy to attack by
properties of medical images and models (textures, sharp losses, perturbations outside the
pathology).  Each explanation predicts a difference between a medical data set and a natural one
in a stated direction.  The book's Chapter 2 found that the chest X-ray set differs from CIFAR-10
in source resolution (224 px against 32) as much as in content, so a difference is also measured
between data sets of matched resolution (the 28 px MedMNIST sets against CIFAR-10).
:func:`resolution_verdict` reads the verdict from those intervals; :func:`trend_verdict` does the
same for a capacity trend on a medical and on a natural task.
"""

from __future__ import annotations

from typing import Sequence

from .checks import describe
from .metrics import Interval

__all__ = ["SUPPORTED", "NOT_SUPPORTED", "CONFOUNDED", "INCONSISTENT", "NOT_SPECIFIC", "resolution_verdict", "trend_verdict"]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
CONFOUNDED = "confounded with resolution"
INCONSISTENT = "inconsistent across the medical sets"
NOT_SPECIFIC = "supported, but not specific to medical images"


def _check(interval, name: str) -> Interval:
    if not isinstance(interval, Interval):
        raise TypeError(f"{name} must be a metrics.Interval of a difference, got {describe(interval)}")
    return interval


def _check_expected(expected) -> int:
    if expected not in (1, -1) or isinstance(expected, bool):
        raise ValueError(f"expected must be +1 (the explanation predicts medical > natural) or -1 (medical < "
                         f"natural), got {describe(expected)}")
    return expected


def resolution_verdict(direct: Interval, matched: Sequence[Interval], expected: int) -> str:
    """The verdict on a medical-vs-natural difference predicted to have sign ``expected``.

    Parameters
    ----------
    direct: interval of (medical - natural) at the sources' own resolutions (chest X-ray 224 px
        against CIFAR-10 32 px).
    matched: intervals of (medical - natural) between data sets of matched resolution.
    expected: +1 if the explanation predicts the medical value to be larger, -1 smaller.

    Returns

    * :data:`SUPPORTED` when the direct difference and every matched one lie on the predicted
      side of zero;
    * :data:`NOT_SUPPORTED` when neither the direct difference nor any matched one does;
    * :data:`INCONSISTENT` when some matched differences do and others do not (the medical sets
      of one resolution disagree: the data set, not its kind, decides);
    * :data:`CONFOUNDED` otherwise: the matched differences agree with each other but not with
      the direct one, so the difference comes or goes with resolution.
    """
    expected = _check_expected(expected)
    direct = _check(direct, "direct")
    if isinstance(matched, Interval) or not len(matched):
        raise ValueError(f"matched must be a non-empty list of Intervals, got {describe(matched)}")
    shown = [_check(m, f"matched[{i}]").side() == expected for i, m in enumerate(matched)]
    if direct.side() == expected and all(shown):
        return SUPPORTED
    if direct.side() != expected and not any(shown):
        return NOT_SUPPORTED
    return INCONSISTENT if any(shown) and not all(shown) else CONFOUNDED


def trend_verdict(medical: Interval, natural: Interval, expected: int = 1) -> str:
    """The verdict on a capacity trend (e.g. attack success of the largest minus the smallest model).

    :data:`SUPPORTED` when the medical trend lies on the predicted side and the natural one does
    not; :data:`NOT_SPECIFIC` when both do; :data:`NOT_SUPPORTED` when the medical one does not.
    """
    expected = _check_expected(expected)
    medical, natural = _check(medical, "medical"), _check(natural, "natural")
    if medical.side() != expected:
        return NOT_SUPPORTED
    return NOT_SPECIFIC if natural.side() == expected else SUPPORTED
