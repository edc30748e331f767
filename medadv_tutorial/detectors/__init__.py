"""Detectors of adversarial examples, all behind one fit / score API.

Every detector is fitted on *clean* data and then gives one score per image, **higher =
more adversarial**::

    det = MGM(reg=1e-3).fit(clean_train)          # (N, d) penultimate features
    s = det.score(feats)                          # (N,) float64, on feats' device
    t = det.threshold(0.95)                       # keeps 95% of the clean training scores
    flagged = det.predict(feats)                  # (N,) bool: s > t

The contract
------------
Every detector has the same two calls::

    det.fit(clean, labels=None, *, adv_features=None, clean_val_features=None)   # -> det
    det.score(x, labels=None)                                                    # -> (N,) float64

and declares what they take in its class attribute ``inputs``, an :class:`Inputs`:

* ``view``: ``"penultimate"``, features of one layer, a tensor ``(N, d)``; ``"layers"``,
  features of several layers, a dict ``{layer: (N, d_l)}`` (the format of
  ``Classifier.forward_features``); ``"images"``, model inputs ``(N, C, H, W)`` (the
  detector holds the model);
* ``fit_labels``: ``fit`` reads the *true* classes ``labels`` of the clean rows;
* ``score_labels="predicted"``: ``score`` reads the classes the classifier *predicts*;
* ``adversarial``: ``fit`` also takes ``adv_features`` (same view), features of a
  *training* attack's images -- never the images the detector is evaluated on -- and
  optionally ``clean_val_features``, held-out clean rows for the negative class.

Labels a detector does not declare are accepted and ignored; ``adv_features`` is refused
by the detectors that do not declare it.  :class:`~medadv_tutorial.suite.DetectorSuite`
feeds each detector from this declaration alone.  Scores are ``torch.float64`` tensors
of shape ``(N,)`` on the device of the input.  A detector is fitted once the attributes
its ``fit`` sets (names ending in ``_``) exist; using an unfitted one raises
:class:`NotFittedError` (:func:`check_is_fitted`).

The detectors
-------------
=========  =====================  ============================  ================================================
name       class                  inputs (view; labels; sets)   idea (paper)
=========  =====================  ============================  ================================================
MGM        :class:`MGM`           one layer                     one Gaussian over clean features, -log density
                                                                (Li & Zhu 2020)
MAHA       :class:`Mahalanobis`   one layer; true labels        min class-conditional Mahalanobis distance,
                                                                tied covariance (Lee et al. 2018)
MAHA-LR    :class:`MahaEnsemble`  layers; true labels; + adv    per-layer MAHA scores -> logistic regression
                                                                (Lee et al.)
KD         :class:`KD`            one layer; true + predicted   -log Gaussian kernel density of the predicted
                                                                class (Feinman et al. 2017)
LID        :class:`LID`           one layer                     local intrinsic dimensionality, MLE over k-NN
                                                                (Ma et al. 2018)
LID-LR     :class:`LIDDetector`   layers; + adv                 per-layer LID -> logistic regression (Ma et al.)
BU         :class:`BU`            images                        MC-dropout variance of the softmax
                                                                (Feinman et al. 2017)
OCSVM      :class:`OCSVM`         one layer                     one-class SVM on standardised features
ISO        :class:`ISO`           one layer                     Isolation Forest on standardised features
DNN        :class:`DNNDetector`   one layer; + adv              small MLP trained on clean vs adversarial
                                                                features
=========  =====================  ============================  ================================================

:class:`TwoSided` wraps any of them (same ``inputs``) and flags scores far from the clean
median on either side.  The book's line-up, with its settings and the rows each detector
is fitted on, is the table of :mod:`medadv_tutorial.suite`.

The threshold rule
------------------
:meth:`Detector.threshold` returns the ``quantile`` (default 0.95) of the clean scores
stored in ``reference_scores_`` -- by default the scores of the clean *training*
features, computed at fit time (Li & Zhu's rule: keep 95% of clean training data).

MGM, MAHA, KD and LID score each training point **leave-one-out**, i.e. with the model
fitted on the other N - 1 points (exact; in closed form for the Gaussians).  In-sample
scores would be useless for the rule: a training point is its own nearest neighbour, and
in-sample Mahalanobis distances shrink as ``d`` approaches ``N`` (at d = 256, N = 1000 an
in-sample 95% threshold keeps about 5% of new clean images, at d = 1280, N = 2000 none;
leave-one-out keeps 95%).  OCSVM, ISO, DNN and the logistic regressions use in-sample
scores, which are optimistic (the one-class SVM keeps ~93% of new clean images at d = 16
and ~80% at d = 256); :meth:`Detector.calibrate` takes the threshold from held-out clean
features instead.

GPU kernels
-----------
MGM, MAHA, KD and LID run in torch, in float64, on the features' device (on Apple MPS,
which has no float64, they compute on the CPU and return to MPS); their scores are
differentiable with respect to the features.  MGM and MAHA (and the layers of MAHA-LR)
take their Gaussian maths from :mod:`medadv_tutorial.gaussian`, as the outlier statistics
and HFC do: the covariance gets the *relative* ridge ``reg * trace(cov) / d`` (``reg``
times the mean feature variance, default ``1e-3``; scale free, so one value suits every
layer), is factorised once by Cholesky, and every distance is one matrix product.  OCSVM, ISO and the logistic regressions of
the ensembles use scikit-learn on the CPU.

Modules
-------
One file per detector family, all re-exported here: :mod:`.base` (the API: :class:`Detector`,
:class:`Inputs`, the fitted check, input validation), :mod:`.gaussians` (MGM, MAHA),
:mod:`.kernel_density` (KD), :mod:`.lid` (LID), :mod:`.ensembles` (MAHA-LR, LID-LR, which fit
and score their per-layer detectors through the public ``fit`` / ``score`` only),
:mod:`.one_class` (OCSVM, ISO), :mod:`.dnn` (DNN), :mod:`.uncertainty` (BU) and
:mod:`.two_sided` (TwoSided).
"""

from __future__ import annotations

from .base import Detector, Inputs, NotFittedError, check_is_fitted
from .gaussians import MAHA, MGM, Mahalanobis, input_preprocessing
from .kernel_density import KD, gaussian_kde_log_density
from .lid import LID, lid_mle
from .ensembles import LIDDetector, MahaEnsemble
from .one_class import ISO, OCSVM
from .dnn import DNNDetector
from .uncertainty import BU, mc_dropout_variance
from .two_sided import TwoSided

__all__ = [
    "BU",
    "DNNDetector",
    "Detector",
    "ISO",
    "Inputs",
    "KD",
    "LID",
    "LIDDetector",
    "MAHA",
    "MGM",
    "MahaEnsemble",
    "Mahalanobis",
    "NotFittedError",
    "OCSVM",
    "TwoSided",
    "check_is_fitted",
    "gaussian_kde_log_density",
    "input_preprocessing",
    "lid_mle",
    "mc_dropout_variance",
]
