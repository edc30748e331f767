"""Two-sided wrapper: flags scores far from the clean median on either side (over-hiding)."""

from __future__ import annotations

import torch

from .base import Detector


class TwoSided(Detector):
    r"""Two-sided version of any detector: flags scores far from the clean median, on either side.

    .. math:: s_2(x) = |s(x) - m|, \qquad m = \mathrm{median}\{s(x_i) : x_i \text{ clean reference}\}

    An attack that *over-hides* (HFC with a large :math:`\lambda`) can make its
    features more typical than clean ones -- scores *below* the clean range -- which a
    one-sided threshold never flags.  The median and the threshold come from clean
    scores only: the wrapped detector's ``reference_scores_`` (its clean training
    scores), or the held-out clean set given to :meth:`calibrate`.

    ``TwoSided(fitted_detector)`` is ready to use; ``TwoSided(detector).fit(...)`` fits
    the wrapped detector first (same arguments).  Its ``inputs`` are the wrapped
    detector's: it is fitted on and scores what that detector is.  Scores are float64
    ``(N,)`` >= 0; ``threshold``, ``predict`` as for every detector.

    Attributes after fit: ``center_`` the clean median :math:`m`, ``reference_scores_``
    the clean :math:`|s - m|`, ``n_features_in_`` the wrapped detector's.
    """

    def __init__(self, detector: Detector):
        if not isinstance(detector, Detector):
            raise TypeError(f"detector must be a Detector, got {type(detector).__name__}")
        self.detector = detector
        self.name = f"{detector.name} (two-sided)"
        self.inputs = detector.inputs
        if detector.is_fitted:
            self._set_reference(detector.reference_scores_)

    def __repr__(self) -> str:
        return f"TwoSided({self.detector!r})"

    def _set_reference(self, clean_scores: torch.Tensor) -> None:
        s = clean_scores.detach().to(torch.float64)
        self.center_ = float(torch.quantile(s.cpu(), 0.5))
        self.reference_scores_ = (s - self.center_).abs()
        self.n_features_in_ = self.detector.n_features_in_

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None) -> "TwoSided":
        """Fit the wrapped detector (same arguments), then take the median of its clean scores."""
        with self._fitting():
            self.detector.fit(clean_features, labels, adv_features=adv_features,
                              clean_val_features=clean_val_features)
            self._set_reference(self.detector.reference_scores_)
        return self

    def score(self, features, labels=None, *, scanned: bool = False) -> torch.Tensor:
        """``|s(features) - median|``, ``(N,)`` float64 on the features' device (``scanned``: as
        :meth:`Detector.score <medadv_tutorial.detectors.base.Detector.score>`)."""
        self._check_fitted("score")
        return (self.detector.score(features, labels, scanned=scanned) - self.center_).abs()

    def calibrate(self, clean_features, labels=None) -> "TwoSided":
        """Median and threshold from held-out clean features instead of the training scores."""
        self._check_fitted("calibrate")
        with torch.no_grad():
            self._set_reference(self.detector.score(clean_features, labels))
        return self
