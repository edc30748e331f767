"""Supervised layer ensembles (MAHA-LR, LID-LR): per-layer scores of unsupervised detectors
combined by a logistic regression."""

from __future__ import annotations

import numpy as np
import torch

from ..checks import check_real, check_seed
from .base import Detector, Inputs, _check_labels, _check_layers
from .gaussians import Mahalanobis
from .lid import LID


class _LayerLR(Detector):
    """Per-layer unsupervised scores combined by a logistic regression (scikit-learn).

    Fit: one base detector per layer on ``clean_features`` (with ``labels``); then a
    ``StandardScaler + LogisticRegression`` on the per-layer scores of clean features
    (label 0) against ``adv_features`` (label 1).  Score: the regression's log-odds.
    """

    inputs = Inputs(view="layers", adversarial=True)

    def __init__(self, C: float = 1.0, seed: int = 0):
        self.C = check_real(C, "C (inverse regularisation of the logistic regression)", low=0.0, low_open=True)
        self.seed = check_seed(seed)

    def _validate(self, x, name, fitting, finite=True):
        return _check_layers(x, name, None if fitting else self.n_features_in_, finite=finite)

    def _make_base(self) -> Detector:
        raise NotImplementedError

    def _check_clean(self, x: dict) -> None:
        """Hook: refuse clean training features the per-layer detectors cannot be fitted on."""

    def _layer_scores(self, x: dict) -> np.ndarray:
        """(N, L) the per-layer detectors' scores of ``x``, through their public ``score``."""
        return np.stack([det.score(x[k], scanned=True).detach().cpu().numpy()
                         for k, det in self.layer_detectors_.items()], axis=1)

    def _training_layer_scores(self) -> np.ndarray:
        """(N, L) the per-layer detectors' own clean training scores (their ``reference_scores_``)."""
        return np.stack([det.reference_scores_.detach().cpu().numpy() for det in self.layer_detectors_.values()],
                        axis=1)

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None):
        """Fit the per-layer detectors and the logistic regression. Returns self.

        Parameters
        ----------
        clean_features: {layer: (N, d_l)} clean *training* features (fit the per-layer
            detectors; label 0 of the regression unless ``clean_val_features`` is given).
        labels: (N,) int true classes of ``clean_features`` (MAHA class means); optional.
        adv_features: {layer: (N_adv, d_l)} label-1 features: adversarial images of a
            *training* attack, or noisy images (Lee et al.'s attack-free variant).  Never
            the images the detector is evaluated on.
        clean_val_features: {layer: (N_val, d_l)} held-out clean features (optionally
            with noisy ones, as Ma et al. do) for label 0 of the regression; default: the
            training features' own scores (leave-one-out for LID, in-sample for MAHA).

        The threshold's reference scores are those of ``clean_features``.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._check_fit_sets(adv_features, clean_val_features)
        with self._fitting():
            x = self._validate(clean_features, "clean_features", fitting=True)
            self._check_clean(x)
            dims = self._dim(x)
            y = None if labels is None else _check_labels(labels, self._n_rows(x), "labels", self._device(x))
            adv = _check_layers(adv_features, "adv_features", dims)
            # one detector per layer, fitted and scored through its public API only; fit leaves each
            # with its own clean training scores (its reference_scores_, as the unsupervised detector has them)
            self.layer_detectors_ = {k: self._make_base().fit(v, y) for k, v in x.items()}
            with torch.no_grad():
                s_clean = self._training_layer_scores()
                if clean_val_features is not None:
                    s_neg = self._layer_scores(_check_layers(clean_val_features, "clean_val_features", dims))
                else:
                    s_neg = s_clean
                s_adv = self._layer_scores(adv)
            self.regression_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=1000,
                                                                                   random_state=self.seed))
            target = np.r_[np.zeros(len(s_neg)), np.ones(len(s_adv))]
            self.regression_.fit(np.concatenate([s_neg, s_adv]), target)
            self.n_features_in_ = dims
            self.reference_scores_ = torch.as_tensor(self.regression_.decision_function(s_clean),
                                                     dtype=torch.float64)
        return self

    def _score(self, x, labels):
        with torch.no_grad():
            s = self._layer_scores(x)
        return torch.as_tensor(self.regression_.decision_function(s), dtype=torch.float64)

    def layer_scores(self, features) -> dict[str, torch.Tensor]:
        """The unsupervised per-layer scores {layer: (N,) float64} that the regression combines."""
        self._check_fitted("layer_scores")
        x = self._validate(features, "features", fitting=False)
        return {k: det.score(x[k], scanned=True) for k, det in self.layer_detectors_.items()}


class MahaEnsemble(_LayerLR):
    """Layer ensemble of Mahalanobis scores (Lee et al., NeurIPS 2018), supervised.

    Per layer, a :class:`Mahalanobis` detector (class means, tied covariance) on clean
    training features; a logistic regression on the per-layer scores separates clean
    features from ``adv_features`` (see :meth:`fit`).  The regression must be trained on
    features of a *training* attack (or of noisy images), never on the images it is
    evaluated on.  Score: the regression's log-odds (real, higher = more adversarial).

    Parameters
    ----------
    reg: relative ridge of every layer's covariance (``reg`` times the layer's mean feature
        variance, as :class:`Mahalanobis`; one value suits layers of different scales).
    C: inverse L2 strength of the logistic regression.  seed: its random_state.
    """

    name = "MAHA-LR"
    inputs = Inputs(view="layers", fit_labels=True, adversarial=True)

    def __init__(self, reg: float = 1e-3, C: float = 1.0, seed: int = 0):
        super().__init__(C=C, seed=seed)
        Mahalanobis(reg)  # validate now
        self.reg = float(reg)

    def _params(self):
        return {"reg": self.reg, "C": self.C, "seed": self.seed}

    def _make_base(self):
        return Mahalanobis(self.reg)


class LIDDetector(_LayerLR):
    """Layer ensemble of LID estimates (Ma et al., ICLR 2018), supervised.

    Per layer, :class:`LID` with the clean training features as reference batch; a
    logistic regression on the per-layer LIDs separates clean features from
    ``adv_features`` (see :meth:`fit`; Ma et al. train it on clean + noisy images against
    adversarial ones of the same attack on *training* images).  ``labels`` are not used.
    Score: the regression's log-odds.

    Parameters
    ----------
    k: neighbours of the LID estimate.  C, seed: logistic regression.
    """

    name = "LID-LR"

    def __init__(self, k: int = 20, C: float = 1.0, seed: int = 0):
        super().__init__(C=C, seed=seed)
        LID(k)  # validate now
        self.k = k

    def _params(self):
        return {"k": self.k, "C": self.C, "seed": self.seed}

    def _make_base(self):
        return LID(self.k)

    def _check_clean(self, x):
        n = self._n_rows(x)
        if n < self.k + 1:
            raise ValueError(f"LIDDetector with k={self.k} needs at least k+1={self.k + 1} clean reference "
                             f"features, got {n}")
