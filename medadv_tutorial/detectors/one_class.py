"""One-class detectors from scikit-learn on standardised features: OCSVM and Isolation Forest."""

from __future__ import annotations

import torch

from ..checks import check_int, check_real, check_seed
from .base import Detector


class _SklearnOneClass(Detector):
    def __init__(self, seed: int = 0):
        self.seed = check_seed(seed)

    def _estimator(self):
        raise NotImplementedError

    def _fit(self, x, labels):
        if x.shape[0] < 2:
            raise ValueError(f"clean_features must have at least 2 rows to fit {type(self).__name__} (the features "
                             f"are standardised), got {x.shape[0]}")
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model_ = make_pipeline(StandardScaler(), self._estimator())
        self.model_.fit(x.detach().to("cpu", torch.float64).numpy())

    def _score(self, x, labels):
        s = -self.model_.decision_function(x.detach().to("cpu", torch.float64).numpy())
        return torch.as_tensor(s, dtype=torch.float64)


class OCSVM(_SklearnOneClass):
    """One-class SVM on standardised clean features (scikit-learn ``OneClassSVM``).

    Score = ``-decision_function`` (positive outside the learned support, higher = more
    adversarial).  Fit on clean features only; ``labels`` are ignored.  A competitor of
    MGM in Li & Zhu (2020).  Its training scores are in-sample and optimistic: calibrate
    the threshold on held-out clean features (:meth:`calibrate`).
    Parameters: ``nu`` (fraction of training outliers allowed),
    ``kernel``, ``gamma`` as in scikit-learn; ``seed`` is kept for a uniform API (the SVM
    is deterministic).
    """

    name = "OCSVM"

    def __init__(self, nu: float = 0.1, kernel: str = "rbf", gamma="scale", seed: int = 0):
        super().__init__(seed)
        nu = check_real(nu, "nu (the fraction of training outliers allowed)", low=0.0, low_open=True, high=1.0)
        self.nu, self.kernel, self.gamma = nu, kernel, gamma

    def _params(self):
        return {"nu": self.nu, "kernel": self.kernel, "gamma": self.gamma}

    def _estimator(self):
        from sklearn.svm import OneClassSVM

        return OneClassSVM(nu=self.nu, kernel=self.kernel, gamma=self.gamma)


class ISO(_SklearnOneClass):
    """Isolation Forest on standardised clean features (scikit-learn ``IsolationForest``).

    Score = ``-decision_function`` (higher = isolated faster = more anomalous).  Fit on
    clean features only; ``labels`` are ignored.  ``seed`` is the forest's random_state.
    A competitor of MGM in Li & Zhu (2020).
    """

    name = "ISO"

    def __init__(self, n_estimators: int = 100, seed: int = 0):
        super().__init__(seed)
        self.n_estimators = check_int(n_estimators, "n_estimators")

    def _params(self):
        return {"n_estimators": self.n_estimators, "seed": self.seed}

    def _estimator(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)
