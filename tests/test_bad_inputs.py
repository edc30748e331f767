"""Bad input gets a clear error, never a silent wrong number (issue 11).

Every public module is fed what a careless user would pass: budgets in the wrong units, 0..255
or uint8 images, NaN features, float labels, empty selections, corrupt files, wrong types.  Each
case asserts the exception type (or warning) *and* that the message names the offending argument
or file.  The property tests check that every helper that switches a model to eval mode gives it
back exactly as it was (each submodule's mode, ``requires_grad``, BatchNorm statistics, ``.grad``),
also when it raises.

The model is a tiny :class:`~medadv_tutorial.models.Classifier` (three conv stages with
BatchNorm and dropout, 8x8 grey images), so the whole file runs in seconds on one core.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medadv_tutorial import adaptive, attacks, data, detectors, features, gmm, hfc, metrics, models, plots, profiles
from medadv_tutorial import direction, experiment, outliers, report, rng, stress, suite, training
from medadv_tutorial import gradcam, landscape, saliency
from medadv_tutorial.attacks import BIM, CWLinf, FGSM, MIM, PGD
from medadv_tutorial.checks import CorruptFileError
from medadv_tutorial.data import DataIntegrityError
from medadv_tutorial.features import FeatureSet

pytestmark = pytest.mark.filterwarnings("ignore:eps=1 = 255/255")  # success_rate([1, 2, 4]) warns, then raises
SHARED = Path(os.environ.get("MEDADV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# ----------------------------------------------------------------------------- toys


class Toy(models.Classifier):
    """A three-stage Classifier (BatchNorm, dropout) on 1x8x8 images; ``explode`` makes it raise."""

    explode = False

    def __init__(self):
        torch.manual_seed(0)
        stages = [("stem", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())),
                  ("block1", nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU())),
                  ("head", nn.Sequential(nn.Conv2d(6, 8, 1), nn.ReLU()))]
        super().__init__(stages, 8, 2, 1, (0.5,) * 3, (0.25,) * 3, dropout=0.3, backbone="toy")

    def forward_features(self, x, layers=None, logits=True):
        if self.explode:
            raise RuntimeError("boom")
        return super().forward_features(x, layers, logits)


torch.set_num_threads(1)
MODEL = Toy().eval()
G = torch.Generator().manual_seed(0)
X = torch.rand(8, 1, 8, 8, generator=G)
Y = torch.arange(8) % 2
F = torch.randn(40, 4, generator=G, dtype=torch.float64)  # features
LAB = torch.arange(40) % 2


def nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


def fs_of(f=F, labels=LAB, dtype=torch.float32) -> FeatureSet:
    return FeatureSet(OrderedDict(block1=f[:, :3].to(dtype), penultimate=f.to(dtype)), labels,
                      torch.randn(len(labels), 2, generator=G))


def hfc_model():
    return hfc.fit_hfc_mixtures(fs_of(), n_components=1)


def fitted(det, f=F, **kw):
    return det.fit(f, **kw)


def fit(train_data, **kw):
    args = dict(epochs=1, batch_size=4, lr=1e-3, progress=False) | kw
    return training.fit(Toy(), train_data, **args)


class AllWrong(nn.Module):
    """Predicts class 1 - y for the toy data (so nothing is classified correctly)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        s = (x.flatten(1).sum(1) * 0 + torch.arange(len(x)) % 2).float()  # = y of the toy batch order
        return torch.stack([s, 1 - s], 1) + self.w


def write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


# ------------------------------------------------------------------- cases: (callable, exception, match)

CASES = {
    # ---- attacks: budgets, settings, inputs
    "PGD(8): eps in 0..255 units": (lambda: PGD(8)(MODEL, X, Y), ValueError, r"eps .*got 8; did you mean 8/255"),
    "PGD(1.5)": (lambda: PGD(1.5), ValueError, r"\beps\b.*got 1\.5"),
    "PGD(-0.1)": (lambda: PGD(-0.1), ValueError, r"\beps must be >= 0"),
    "PGD(nan)": (lambda: PGD(float("nan")), ValueError, r"\beps must be a finite number"),
    "PGD(None)": (lambda: PGD(None), TypeError, r"\beps must be a real number.*None"),
    "PGD steps=0": (lambda: PGD(4 / 255, steps=0), ValueError, r"\bsteps must be an int >= 1"),
    "PGD steps=2.5": (lambda: PGD(4 / 255, steps=2.5), TypeError, r"\bsteps must be an int"),
    "PGD alpha=0": (lambda: PGD(4 / 255, alpha=0.0), ValueError, r"\balpha must be > 0"),
    "PGD alpha=2 (meant 2/255)": (lambda: PGD(4 / 255, alpha=2), ValueError, r"\balpha must be <= 1"),
    "PGD seed=-1": (lambda: PGD(4 / 255, seed=-1), ValueError, r"\bseed must be an int in \[0"),
    "PGD seed=1.5": (lambda: PGD(4 / 255, seed=1.5), TypeError, r"\bseed must be an int"),
    "MIM decay=-1": (lambda: MIM(4 / 255, decay=-1.0), ValueError, r"\bmomentum must be >= 0 \(decay\)"),
    "CWLinf kappa=-1": (lambda: CWLinf(4 / 255, kappa=-1.0), ValueError, r"\bkappa must be >= 0"),
    "replace(eps=3)": (lambda: PGD(4 / 255).replace(eps=3), ValueError, r"\beps\b.*did you mean 3/255"),
    "eps assigned after construction": (lambda: setattr(a := BIM(1 / 255), "eps", 8) or a(MODEL, X, Y),
                                        ValueError, r"\beps\b.*did you mean 8/255"),
    "iterative_attack eps=8": (lambda: attacks.iterative_attack(MODEL, X, Y, eps=8), ValueError, r"\beps\b"),
    "attack: 0..255 images": (lambda: FGSM(1 / 255)(MODEL, X * 255, Y), ValueError, r"\bx must lie in \[0, 1\]"),
    "attack: uint8 images": (lambda: FGSM(1 / 255)(MODEL, (X * 255).byte(), Y), TypeError, r"\bx must be a floating"),
    "attack: float64 images, float32 model": (lambda: FGSM(1 / 255)(MODEL, X.double(), Y), TypeError,
                                              r"\bx has dtype torch\.float64 .*float32"),
    "attack: NaN images": (lambda: FGSM(1 / 255)(MODEL, nan_at(X), Y), ValueError, r"\bx contains NaN"),
    "attack: float labels": (lambda: FGSM(1 / 255)(MODEL, X, Y.float()), TypeError, r"\by must hold integer"),
    "attack: label out of range": (lambda: FGSM(1 / 255)(MODEL, X, Y + 1), ValueError, r"\by holds class index 2"),
    "attack: labels of another length": (lambda: FGSM(1 / 255)(MODEL, X, Y[:3]), ValueError, r"\by must have shape"),
    "attack: model not callable": (lambda: FGSM(1 / 255)("model", X, Y), TypeError, r"\bmodel must be callable"),
    "run_attack batch_size=0": (lambda: attacks.run_attack(FGSM(1 / 255), MODEL, (X, Y), batch_size=0, progress=False),
                                ValueError, r"\bbatch_size must be an int >= 1"),
    "run_attack targets too short": (lambda: attacks.run_attack(PGD(1 / 255, targeted=True), MODEL, (X, Y),
                                                                targets=Y[:3], progress=False),
                                     ValueError, r"\btargets must have shape \(8,\)"),
    "run_attack float targets": (lambda: attacks.run_attack(PGD(1 / 255, targeted=True), MODEL, (X, Y),
                                                            targets=1.0 - Y, progress=False),
                                 TypeError, r"\btargets must hold integer"),
    "run_attack numpy pair": (lambda: attacks.run_attack(FGSM(1 / 255), MODEL, (X.numpy(), Y.numpy()), progress=False),
                              TypeError, r"\bdata as a pair must be \(x, y\)"),
    "run_attack attack=str": (lambda: attacks.run_attack("PGD", MODEL, (X, Y)), TypeError,
                              r"\battack must be an Attack"),
    "success_rate eps=[1, 2, 4]": (lambda: attacks.success_rate(PGD(1 / 255), MODEL, (X, Y), [1, 2, 4],
                                                                progress=False),
                                   ValueError, r"\beps\b.*got 2; did you mean 2/255"),
    "success_rate eps=None": (lambda: attacks.success_rate(PGD(1 / 255), MODEL, (X, Y), None, progress=False),
                              TypeError, r"\beps must be a budget or a list of budgets.*None"),
    "success_rate eps=[]": (lambda: attacks.success_rate(PGD(1 / 255), MODEL, (X, Y), [], progress=False),
                            ValueError, r"\beps must list at least one budget"),
    "eps_at_success curve=None": (lambda: attacks.eps_at_success(None), TypeError, r"\bcurve must be a mapping"),
    "eps_at_success level=2": (lambda: attacks.eps_at_success({0.1: 0.5}, level=2), ValueError,
                               r"\blevel must be <= 1"),
    "eps_at_success rate=5": (lambda: attacks.eps_at_success({0.1: 5.0}), ValueError, r"\bcurve\[0\.1\] must be <= 1"),
    "linf_box eps=-0.1": (lambda: attacks.linf_box(X, -0.1), ValueError, r"\beps must be >= 0"),
    "linf_box eps=nan": (lambda: attacks.linf_box(X, float("nan")), ValueError, r"\beps must be a finite number"),
    "linf_box x*255": (lambda: attacks.linf_box(X * 255, 0.1), ValueError, r"\bx must lie in \[0, 1\]"),
    # ---- models
    "build_model image_size=-1": (lambda: models.build_model(image_size=-1, pretrained=False), ValueError,
                                  r"\bimage_size .*must be an int >= 1, got -1"),
    "build_model num_classes=2.5": (lambda: models.build_model(num_classes=2.5, pretrained=False), TypeError,
                                    r"\bnum_classes .*must be an int, got float 2\.5"),
    "build_model num_classes=1": (lambda: models.build_model(num_classes=1, pretrained=False), ValueError,
                                  r"\bnum_classes .*>= 2"),
    "build_model in_channels=2": (lambda: models.build_model(in_channels=2, pretrained=False), ValueError,
                                  r"\bin_channels must be 1 .* or 3"),
    "build_model backbone=vgg": (lambda: models.build_model("vgg16"), ValueError, r"unknown backbone 'vgg16'"),
    "build_model pretrained='yes'": (lambda: models.build_model(pretrained="yes"), TypeError,
                                     r"\bpretrained must be True or False"),
    "predict batch_size=0": (lambda: MODEL.predict(X, batch_size=0), ValueError, r"\bbatch_size must be an int >= 1"),
    "predict 0..255 images": (lambda: MODEL.predict(X * 255), ValueError, r"\bx must lie in \[0, 1\]"),
    "model(float64 images)": (lambda: MODEL(X.double()), TypeError, r"\bx has dtype torch\.float64"),
    "model(uint8 images)": (lambda: MODEL((X * 255).byte()), TypeError, r"\bx must be a floating tensor.*uint8"),
    "model(3 channels)": (lambda: MODEL(X.expand(-1, 3, -1, -1)), ValueError, r"\bx has 3 channels.*in_channels=1"),
    "forward_features layers='stem'": (lambda: MODEL.forward_features(X, layers="stem"), TypeError,
                                       r"\blayers must be a list of tap names"),
    "layer_widths image_size=0": (lambda: models.layer_widths(MODEL, 0), ValueError, r"\bimage_size must be an int"),
    "layer_widths plain module": (lambda: models.layer_widths(nn.Linear(2, 2), 8), TypeError,
                                  r"\bmodel must be a module with a forward_features"),
    # ---- training
    "fit 0..255 images": (lambda: fit((X * 255, Y)), ValueError, r"images of train_data must lie in \[0, 1\]"),
    "fit uint8 images": (lambda: fit(((X * 255).byte(), Y)), TypeError, r"images of train_data must be a floating"),
    "fit NaN images": (lambda: fit((nan_at(X), Y)), ValueError, r"images of train_data contains NaN"),
    "fit Inf images": (lambda: fit((X.masked_fill(X > 0.9, float("inf")), Y)), ValueError,
                       r"images of train_data must lie in \[0, 1\].*inf"),
    "fit float labels": (lambda: fit((X, Y + 0.7)), TypeError, r"labels of train_data must hold integer"),
    "fit labels out of range": (lambda: fit((X, Y + 1)), ValueError, r"labels of train_data holds class index 2"),
    "fit epochs=0": (lambda: fit((X, Y), epochs=0), ValueError, r"\bepochs must be an int >= 1"),
    "fit lr=-1": (lambda: fit((X, Y), lr=-1.0), ValueError, r"\blr must be > 0"),
    "fit batch_size=0": (lambda: fit((X, Y), batch_size=0), ValueError, r"\bbatch_size must be an int >= 1"),
    "fit seed=-1": (lambda: fit((X, Y), seed=-1), ValueError, r"\bseed must be an int in \[0"),
    "fit empty data": (lambda: fit((X[:0], Y[:0])), ValueError, r"\btrain_data is empty"),
    "fit images/labels of different lengths": (lambda: fit((X, Y[:5])), ValueError, r"\btrain_data: 8 images but 5"),
    "fit lr=1e30 (diverges)": (lambda: fit((X, Y), lr=1e30, epochs=3), FloatingPointError,
                               r"training diverged.*lower lr"),
    "evaluate label out of range": (lambda: training.evaluate(MODEL, (X, Y + 3)), ValueError,
                                    r"labels of data holds class index 4"),
    "evaluate 0..255 images": (lambda: training.evaluate(MODEL, (X * 255, Y)), ValueError,
                               r"images of data must lie in \[0, 1\]"),
    "evaluate uint8 images": (lambda: training.evaluate(MODEL, ((X * 255).byte(), Y)), TypeError,
                              r"images of data must be a floating tensor.*uint8"),
    "predict_proba NaN images": (lambda: training.predict_proba(MODEL, (nan_at(X), Y)), ValueError,
                                 r"images of data contains NaN"),
    "predict_proba batch_size=0": (lambda: training.predict_proba(MODEL, (X, Y), batch_size=0), ValueError,
                                   r"\bbatch_size must be an int >= 1"),
    "predict_proba model=str": (lambda: training.predict_proba("model", (X, Y)), TypeError,
                                r"\bmodel must be a torch nn\.Module"),
    "correctly_classified n=-1": (lambda: training.correctly_classified(MODEL, (X, Y), n=-1), ValueError,
                                  r"\bn \(the number of images.*>= 1, got -1"),
    "correctly_classified n=0": (lambda: training.correctly_classified(MODEL, (X, Y), n=0), ValueError,
                                 r"\bn \(the number of images.*got 0"),
    "correctly_classified: every image wrong": (lambda: training.correctly_classified(AllWrong(), (X, Y)),
                                                ValueError, r"\bdata \(.*\) has no correctly classified image"),
    "correctly_classified exclude=floats": (lambda: training.correctly_classified(MODEL, (X, Y), exclude=[0.5]),
                                            TypeError, r"\bexclude must hold data-set indices"),
    "attack_and_selection_sets n_attack=0": (lambda: training.attack_and_selection_sets(MODEL, (X, Y), 0, 2),
                                             ValueError, r"\bn_attack \(the attack-set size.*\) must be an int >= 1"),
    "seeded_global_rng(-1)": (lambda: rng.seeded_global_rng(-1).__enter__(), ValueError, r"\bseed must be an int in \[0"),
    "scoped_threads(0)": (lambda: rng.scoped_threads(0).__enter__(), ValueError, r"\bnum_threads must be an int >= 1"),
    "Experiment(seed=-1)": (lambda: experiment.Experiment("ci", seed=-1), ValueError, r"\bseed must be an int in \[0"),
    "Experiment(profile='x')": (lambda: experiment.Experiment("x"), ValueError, r"unknown profile 'x'"),
    "Experiment.data(unknown)": (lambda: experiment.Experiment("ci").data("mnist", "train"), ValueError,
                                 r"dataset must be one of"),
    "Experiment.data(split)": (lambda: experiment.Experiment("ci").data("chest_xray", "val"), ValueError,
                               r"split must be 'train' or 'test', got 'val'"),
    "Experiment.setup(features)": (lambda: experiment.Experiment("ci").setup("chest_xray", features="train"),
                                   ValueError, r"features must be a tuple of distinct splits"),
    "Experiment.enter(dpi=0)": (lambda: experiment.Experiment("ci").enter(dpi=0), ValueError, r"\bdpi .* must be an int >= 1"),
    "model(x in 0..255)": (lambda: MODEL(torch.full((1, 1, 8, 8), 200.0)), ValueError,
                           r"x \(the model's input\) must lie in \[0, 1\].*divide by 255"),
    "model(x with NaN)": (lambda: MODEL(torch.full((1, 1, 8, 8), float("nan"))), ValueError,
                          r"x \(the model's input\) contains NaN"),
    "class_weights float labels": (lambda: training.class_weights(torch.tensor([0.5, 1.0])), TypeError,
                                   r"\blabels must hold integer"),
    "checkpoint_key profile='fast'": (lambda: training.checkpoint_key("chest_xray", "efficientnet_lite0", "fast", 0),
                                      ValueError, r"unknown profile 'fast'"),
    "get_model profile=123": (lambda: training.get_model("chest_xray", profile=123), TypeError,
                              r"profile name must be a string.*profile=.*got int 123"),
    # ---- profiles
    "get_profile(123)": (lambda: profiles.get_profile(123), TypeError, r"profile name must be a string.*int 123"),
    # ---- data
    "load_dataset seed=-1": (lambda: data.load_dataset("chest_xray", "test", n=4, seed=-1), ValueError,
                             r"\bseed must be an int in \[0"),
    "load_dataset seed=1.5": (lambda: data.load_dataset("chest_xray", "test", n=4, seed=1.5), TypeError,
                              r"\bseed must be an int, got float"),
    "load_dataset profile=123": (lambda: data.load_dataset("chest_xray", profile=123), TypeError,
                                 r"profile name must be a string"),
    "load_dataset n=2.5": (lambda: data.load_dataset("chest_xray", "test", n=2.5), ValueError, r"\bn must be"),
    "stratified_indices n=2.5": (lambda: data.stratified_indices(np.arange(10) % 2, 2.5), TypeError,
                                 r"\bn \(a number of images.*must be an int"),
    "ImageDataset labels=list": (lambda: data.ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0, 1],
                                                           ["a", "b"], "toy", "test"), ValueError,
                                 r"\blabels must be int64 \(2,\), got list"),
    # ---- stress
    "stress_test layers=[]": (lambda: stress.stress_test(MODEL, X, [], eps=1 / 255, progress=False), ValueError,
                              r"\blayers is empty"),
    "stress_test layers='stem'": (lambda: stress.stress_test(MODEL, X, "stem", eps=1 / 255, progress=False),
                                  TypeError, r"\blayers must be a list of tap names"),
    "stress_test one-image reference": (lambda: stress.stress_test(MODEL, X, ["stem"], eps=1 / 255, reference=X[:1],
                                                                   progress=False),
                                        ValueError, r"\breference must hold at least 2 clean images"),
    "stress_test identical reference": (lambda: stress.stress_test(MODEL, X, ["stem"], eps=1 / 255,
                                                                   reference=X[:1].expand(4, -1, -1, -1),
                                                                   progress=False),
                                        ValueError, r"\breference: the clean features of layers \['stem'\]"),
    "stress_test eps=8": (lambda: stress.stress_test(MODEL, X, ["stem"], eps=8, progress=False), ValueError,
                          r"\beps\b.*did you mean 8/255"),
    "stress_test steps=0": (lambda: stress.stress_test(MODEL, X, ["stem"], eps=1 / 255, steps=0, progress=False),
                            ValueError, r"\bsteps must be an int >= 1"),
    "pooled_features batch_size=0": (lambda: stress.pooled_features(MODEL, X, ["stem"], batch_size=0), ValueError,
                                     r"\bbatch_size must be an int >= 1"),
    "pooled_features unknown layer": (lambda: stress.pooled_features(MODEL, X, ["block9"]), KeyError,
                                      r"unknown feature layers \['block9'\]"),
    "input_gradient_l1 label out of range": (lambda: stress.input_gradient_l1(MODEL, X, Y + 4), ValueError,
                                             r"\by holds class index 5"),
    "input_gradient_l1 0..255 images": (lambda: stress.input_gradient_l1(MODEL, X * 255, Y), ValueError,
                                        r"\bx must lie in \[0, 1\]"),
    "push_features direction=0": (lambda: stress.push_features(MODEL, X, "stem", eps=1 / 255, direction=0),
                                  ValueError, r"\bdirection must be \+1"),
    "clean_radius one row": (lambda: stress.clean_radius(F[:1]), ValueError, r"\bh must be clean features"),
    # ---- features
    "extract_features float labels": (lambda: features.extract_features(MODEL, (X, Y.float()), progress=False),
                                      TypeError, r"labels of data must hold integer"),
    "extract_features 0..255 images": (lambda: features.extract_features(MODEL, (X * 255, Y), progress=False),
                                       ValueError, r"images of data must lie in \[0, 1\]"),
    "extract_features layers='stem'": (lambda: features.extract_features(MODEL, (X, Y), layers="stem",
                                                                         progress=False),
                                       TypeError, r"\blayers must be a list"),
    "extract_features layers=[]": (lambda: features.extract_features(MODEL, (X, Y), layers=[], progress=False),
                                   ValueError, r"\blayers is empty"),
    "extract_features device='gpu'": (lambda: features.extract_features(MODEL, (X, Y), device="gpu", progress=False),
                                      ValueError, r"\bdevice must be a torch device"),
    "extract_features float64 images": (lambda: features.extract_features(MODEL, (X.double(), Y), progress=False),
                                        TypeError, r"images of data has dtype torch\.float64"),
    "extract_features batch_size=0": (lambda: features.extract_features(MODEL, (X, Y), batch_size=0, progress=False),
                                      ValueError, r"\bbatch_size must be an int >= 1"),
    "FeatureSet float labels": (lambda: fs_of(labels=LAB.float()), TypeError, r"\blabels must be an integer tensor"),
    "FeatureSet.subset out of range": (lambda: fs_of().subset([100]), IndexError, r"\bidx holds row 100"),
    "mahalanobis NaN features": (lambda: outliers.mahalanobis(nan_at(F), F.mean(0), torch.eye(4)), ValueError,
                                 r"\bfeats contains NaN"),
    "mahalanobis upper-triangular chol": (lambda: outliers.mahalanobis(F, F.mean(0), torch.ones(4, 4).triu()),
                                          ValueError, r"\bchol must be a lower Cholesky factor"),
    "mahalanobis singular chol": (lambda: outliers.mahalanobis(F, F.mean(0), torch.zeros(4, 4)), ValueError,
                                  r"\bchol must be a lower Cholesky factor"),
    "ClassGaussian.fit NaN features": (lambda: outliers.ClassGaussian.fit(nan_at(F), LAB), ValueError,
                                       r"\bfeats contains NaN"),
    "ClassGaussian.fit huge features": (lambda: outliers.ClassGaussian.fit(F * 1e200, LAB), ValueError,
                                        r"\bfeats are too large.*rescale"),
    "ClassGaussian.fit float labels": (lambda: outliers.ClassGaussian.fit(F, LAB.float()), ValueError,
                                       r"\blabels must be integer class indices"),
    "ClassGaussian.distance NaN": (lambda: outliers.ClassGaussian.fit(F, LAB).distance(nan_at(F), LAB), ValueError,
                                   r"\bfeats contains NaN"),
    "delta_w(W, 5, 1)": (lambda: direction.delta_w(MODEL.fc.weight, 5, 1), ValueError, r"\bsource holds class index 5"),
    "delta_w(W, 0.5, 1)": (lambda: direction.delta_w(MODEL.fc.weight, 0.5, 1), TypeError, r"\bsource must be a class"),
    "attack_direction y=2": (lambda: direction.attack_direction(MODEL.fc.weight, Y + 1), ValueError,
                             r"\by holds class index 2"),
    "logit_gradient y out of range": (lambda: direction.logit_gradient_wrt_features(MODEL.fc.weight.detach(),
                                                                                    torch.full((8, 2), 0.5), Y + 5),
                                      ValueError, r"\by holds class index"),
    "direction_stats NaN": (lambda: direction.direction_stats(nan_at(torch.rand(3, 4, 5)), torch.ones(5)), ValueError,
                            r"\btraj contains NaN"),
    "direction_stats zero direction": (lambda: direction.direction_stats(torch.rand(3, 4, 5), torch.zeros(5)),
                                       ValueError, r"\bdirection has zero length"),
    "direction_stats n_random=-1": (lambda: direction.direction_stats(torch.rand(3, 4, 5), torch.ones(5), n_random=-1),
                                    ValueError, r"\bn_random must be an int >= 0"),
    "pgd_feature_trajectory attack_kwargs=4/255": (lambda: direction.pgd_feature_trajectory(MODEL, X, Y, 4 / 255),
                                                   TypeError, r"\battack_kwargs must be a dict"),
    "MahalanobisOutliers ref_fraction=1.5": (lambda: outliers.MahalanobisOutliers(ref_fraction=1.5), ValueError,
                                             r"\bref_fraction must be <= 1"),
    "MahalanobisOutliers.fit(str)": (lambda: outliers.MahalanobisOutliers().fit("fs"), TypeError,
                                     r"\bclean_train must be a FeatureSet"),
    "outlier_rate level=200": (lambda: outliers.outlier_rate({"a": torch.rand(3)}, level=200), ValueError,
                               r"\blevel \(a percentile\) must be <= 100"),
    # ---- detectors
    "MGM.fit huge features": (lambda: fitted(detectors.MGM(), F * 1e200), ValueError,
                              r"clean_features are too large.*rescale"),
    "MGM.fit NaN": (lambda: fitted(detectors.MGM(), nan_at(F)), ValueError, r"\bclean_features contains NaN"),
    "MAHA.fit huge features": (lambda: detectors.Mahalanobis().fit(F * 1e200, LAB), ValueError,
                               r"clean_features are too large"),
    "OCSVM.fit one sample": (lambda: fitted(detectors.OCSVM(), F[:1]), ValueError,
                             r"\bclean_features must have at least 2 rows"),
    "ISO.fit one sample": (lambda: fitted(detectors.ISO(), F[:1]), ValueError,
                           r"\bclean_features must have at least 2 rows"),
    "OCSVM nu=2": (lambda: detectors.OCSVM(nu=2), ValueError, r"\bnu \(.*\) must be <= 1"),
    "ISO n_estimators=2.5": (lambda: detectors.ISO(n_estimators=2.5), TypeError, r"\bn_estimators must be an int"),
    "DNNDetector epochs=0": (lambda: detectors.DNNDetector(epochs=0), ValueError, r"\bepochs must be an int >= 1"),
    "DNNDetector hidden=0": (lambda: detectors.DNNDetector(hidden=0), ValueError, r"\bhidden .*must be an int >= 1"),
    "DNNDetector lr=0": (lambda: detectors.DNNDetector(lr=0), ValueError, r"\blr must be > 0"),
    "DNNDetector NaN adv_features": (lambda: detectors.DNNDetector().fit(F, adv_features=nan_at(F)), ValueError,
                                     r"\badv_features contains NaN"),
    "BU.score NaN images": (lambda: detectors.BU(MODEL, n_samples=2).fit(X).score(nan_at(X)), ValueError,
                            r"\bfeatures contains NaN"),
    "BU n_samples=1": (lambda: detectors.BU(MODEL, n_samples=1), ValueError, r"\bn_samples must be an int >= 2"),
    "BU model=str": (lambda: detectors.BU("model"), TypeError, r"\bmodel must be a torch nn\.Module"),
    "mc_dropout_variance batch_size=0": (lambda: detectors.mc_dropout_variance(MODEL, X, batch_size=0), ValueError,
                                         r"\bbatch_size must be an int >= 1"),
    "KD bandwidth=0": (lambda: detectors.KD(bandwidth=0), ValueError, r"\bbandwidth must be > 0"),
    "gaussian_kde_log_density bandwidth=0": (lambda: detectors.gaussian_kde_log_density(F, F, 0.0), ValueError,
                                             r"\bbandwidth must be > 0"),
    "lid_mle NaN": (lambda: detectors.lid_mle(nan_at(F), F, 5), ValueError, r"\bfeatures contains NaN"),
    "LID k=0": (lambda: detectors.LID(k=0), ValueError, r"\bk must be an int >= 1"),
    "MahaEnsemble C=0": (lambda: detectors.MahaEnsemble(C=0), ValueError, r"\bC \(.*\) must be > 0"),
    "threshold quantile=1.5": (lambda: fitted(detectors.MGM()).threshold(1.5), ValueError, r"\bquantile must be <= 1"),
    "score before fit": (lambda: detectors.MGM().score(F), detectors.NotFittedError, r"MGM is not fitted yet"),
    "MGM.fit adv_features": (lambda: detectors.MGM().fit(F, adv_features=F), TypeError,
                             r"MGM is fitted on clean rows only.*takes no adv_features"),
    "DNNDetector.fit no adv_features": (lambda: detectors.DNNDetector().fit(F), TypeError,
                                        r"DNNDetector is trained on clean against adversarial features: fit needs "
                                        r"adv_features="),
    "Inputs view=pixels": (lambda: detectors.Inputs(view="pixels"), ValueError, r"\bview must be one of"),
    "Inputs score_labels=true": (lambda: detectors.Inputs(score_labels="true"), ValueError,
                                 r"\bscore_labels must be None or 'predicted'"),
    # ---- suite
    "kd_bandwidth duplicate rows": (lambda: suite.kd_bandwidth(F[:2].repeat(10, 1)), ValueError,
                                    r"\bfeats: the median nearest-neighbour distance .* is 0"),
    "kd_bandwidth NaN": (lambda: suite.kd_bandwidth(nan_at(F)), ValueError, r"\bfeats contains NaN"),
    "kd_bandwidth n=1": (lambda: suite.kd_bandwidth(F, n=1), ValueError, r"\bn must be an int >= 2"),
    "DetectorSuite.fit fs_train=str": (lambda: suite.DetectorSuite.fit(MODEL, (X, Y), "fs"), TypeError,
                                       r"\bfs_train must be a FeatureSet"),
    "DetectorSuite.fit eps=8": (lambda: suite.DetectorSuite.fit(MODEL, (X, Y), fs_of(), eps=8), ValueError,
                                r"\beps\b.*did you mean 8/255"),
    # ---- metrics
    "f1_at_threshold threshold=None": (lambda: metrics.f1_at_threshold([0.1, 0.2], [0.3], None), TypeError,
                                       r"\bthreshold must be a real number"),
    "f1_at_threshold threshold=nan": (lambda: metrics.f1_at_threshold([0.1], [0.3], float("nan")), ValueError,
                                      r"\bthreshold must be a number"),
    "tpr_at_tnr tnr=0": (lambda: metrics.tpr_at_tnr([0.1], [0.3], tnr=0), ValueError, r"\btnr must be > 0"),
    "auroc string scores": (lambda: metrics.auroc(["a"], [0.3]), TypeError, r"\bscores_clean must be a 1-D array"),
    "quantile_threshold quantile=True": (lambda: metrics.quantile_threshold([0.1], True), TypeError,
                                         r"\bquantile must be a real number"),
    # ---- gmm
    "GaussianMixture seed=-1": (lambda: gmm.GaussianMixture(seed=-1), ValueError, r"\bseed must be an int in \[0"),
    "GaussianMixture.fit huge X": (lambda: gmm.GaussianMixture().fit(F * 1e200), ValueError,
                                   r"\bX is too large .*rescale"),
    "GaussianMixture.fit NaN": (lambda: gmm.GaussianMixture().fit(nan_at(F)), ValueError, r"\bX contains NaN"),
    "kmeans_plusplus n_clusters=2.5": (lambda: gmm.kmeans_plusplus(F, 2.5), TypeError, r"\bn_clusters must be an int"),
    # ---- hfc
    # NaN rows are refused where they enter, when the FeatureSet is made (before fit_hfc_mixtures)
    "fit_hfc_mixtures NaN features": (lambda: hfc.fit_hfc_mixtures(fs_of(nan_at(F))), ValueError,
                                      r"^feats\['penultimate'\] contains NaN"),
    "fit_hfc_mixtures huge features": (lambda: hfc.fit_hfc_mixtures(fs_of(F * 1e200, dtype=torch.float64)), ValueError,
                                       r"clean_train\.feats\['block1'\], class 0: the features are too large"),
    "fit_hfc_mixtures n_components=0": (lambda: hfc.fit_hfc_mixtures(fs_of(), n_components=0), ValueError,
                                        r"\bn_components must be an int >= 1"),
    "PGD_HFC(hfc, 8)": (lambda: hfc.PGD_HFC(hfc_model(), 8), ValueError, r"\beps\b.*did you mean 8/255"),
    "hfc_energy NaN features": (lambda: hfc.hfc_energy({"block1": nan_at(F[:, :3]), "penultimate": F}, LAB,
                                                       hfc_model()),
                                ValueError, r"\bfeats\['block1'\] contains NaN"),
    "hfc_energy lam=-1": (lambda: hfc.hfc_energy({"block1": F[:, :3], "penultimate": F}, LAB, hfc_model(), lam=-1),
                          ValueError, r"\blam must be >= 0"),
    "HFCLoss lam=nan": (lambda: hfc.HFCLoss(hfc_model(), lam=float("nan")), ValueError, r"\blam must be a finite"),
    "FeatureMatchLoss lam=-1": (lambda: adaptive.FeatureMatchLoss(fs_of(), lam=-1), ValueError,
                                r"\blam must be >= 0"),
    "DetectorAwareLoss unfitted MGM": (lambda: adaptive.DetectorAwareLoss(detectors.MGM()), detectors.NotFittedError,
                                       r"MGM is not fitted yet: call \.fit\(clean_features\) before \.score\(\)"),
    "DetectorAwareLoss image detector": (lambda: adaptive.DetectorAwareLoss(detectors.BU(MODEL, n_samples=2).fit(X)),
                                         ValueError, r"\bdetector must score the features of one layer.*'images'"),
    "other_class label 2": (lambda: hfc.other_class(torch.tensor([0, 2])), ValueError, r"\by \(the labels\) must be 0"),
    # ---- report, plots
    "markdown_table row not a list": (lambda: report.markdown_table([1, 2], ["a"]), TypeError,
                                      r"\brows\[0\] must be a list"),
    "markdown_table digits=-1": (lambda: report.markdown_table([[1.0]], ["a"], digits=-1), ValueError,
                                 r"\bdigits must be an int >= 0"),
    "to_display 2-D": (lambda: plots.to_display(torch.rand(2, 2)), ValueError, r"\bimg must be one image \(C, H, W\)"),
    # ---- Grad-CAM, saliency, loss landscape (Ma et al.'s three explanations)
    "grad_cam 0..255 images": (lambda: gradcam.grad_cam(MODEL, X * 255, "block1"), ValueError,
                               r"\bx must lie in \[0, 1\]"),
    "grad_cam unknown layer": (lambda: gradcam.grad_cam(MODEL, X, "block9"), KeyError,
                               r"layer 'block9' is not a tap of the model"),
    "grad_cam batch_size=0": (lambda: gradcam.grad_cam(MODEL, X, "block1", batch_size=0), ValueError,
                              r"\bbatch_size must be an int >= 1"),
    "top_region fraction=20 (a percentage)": (lambda: gradcam.top_region(X[:2, 0], 20), ValueError,
                                              r"\bfraction must be in \(0, 1\)"),
    "normalise_maps negative": (lambda: gradcam.normalise_maps(-X[:2, 0]), ValueError,
                                r"\bmaps must be non-negative"),
    "input_gradients label out of range": (lambda: saliency.input_gradients(MODEL, X, Y + 4), ValueError,
                                           r"\by holds class index 5"),
    "fraction_above threshold=nan": (lambda: saliency.fraction_above(X[:2, 0], float("nan")), ValueError,
                                     r"\bthreshold must be a finite number"),
    "top_mass_share top=5 (a percentage)": (lambda: saliency.top_mass_share(X[:2, 0], 5), ValueError,
                                            r"\btop must be in \(0, 1\)"),
    "local_texture window=4": (lambda: saliency.local_texture(X, 4), ValueError, r"\bwindow must be an odd int"),
    "texture_correlation shapes differ": (lambda: saliency.texture_correlation(X[:2, 0], X[:2, 0, :, :7]),
                                          ValueError, r"\btexture must be a floating tensor of the shape of maps"),
    "loss_grid radii=[0, 8] (meant 8/255)": (lambda: landscape.loss_grid(MODEL, X, Y, X, X, [0, 8]), ValueError,
                                             r"\bradii\b.*did you mean 8/255"),
    "sign_gradient float labels": (lambda: landscape.sign_gradient(MODEL, X, Y.float()), TypeError,
                                   r"\by must hold integer class indices"),
    "sharpness eps=8": (lambda: landscape.sharpness(MODEL, X, Y, eps=8), ValueError, r"\beps\b.*did you mean 8/255"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_clear_error(case):
    call, exc, match = CASES[case]
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- warnings

WARNINGS = {
    "PGD(0.3)": lambda: PGD(0.3),
    "success_rate eps=[0.5]": lambda: attacks.success_rate(FGSM(1 / 255), MODEL, (X, Y), [0.5], progress=False),
    "stress_test eps=0.4": lambda: stress.stress_test(MODEL, X, ["stem"], eps=0.4, steps=1, progress=False),
}


def test_a_fraction_given_as_percentile_level_warns():
    with pytest.warns(UserWarning, match=r"\blevel=0\.95 is a percentile .*did you mean level=95"):
        outliers.outlier_rate({"a": torch.rand(3)}, level=0.95)


@pytest.mark.parametrize("case", list(WARNINGS))
def test_a_very_large_budget_warns(case):
    with pytest.warns(UserWarning, match=r"\beps=0\.\d+ = \d+(\.\d+)?/255 is a very large L-inf budget.*did you mean"):
        WARNINGS[case]()


def test_the_chapters_budgets_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for e in (0.125 / 255, 1 / 255, 4 / 255, 16 / 255, 64 / 255):
            PGD(e)(MODEL, X, Y)


# ----------------------------------------------------------------------------- files


def test_zero_byte_checkpoint_names_the_file(tmp_path):
    path = write(tmp_path / "ckpt.pt", b"")
    with pytest.raises(CorruptFileError, match=r"checkpoint .*ckpt\.pt cannot be read .*Delete it"):
        training.load_checkpoint(path, Toy())
    assert path.exists() and path.stat().st_size == 0  # nothing changed on disk


def test_checkpoint_without_state_dict_names_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"weights": {}}, path)
    with pytest.raises(CorruptFileError, match=r"ckpt\.pt cannot be read.*'state_dict'.*retrain=True"):
        training.load_checkpoint(path, Toy())


def test_checkpoint_of_another_model_names_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    training.save_checkpoint(path, nn.Linear(2, 2), {})
    with pytest.raises(CorruptFileError, match=r"ckpt\.pt cannot be read"):
        training.load_checkpoint(path, Toy())


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """Writes are atomic: a save that dies half-way leaves the previous checkpoint intact, no stray file."""
    path = tmp_path / "ckpt.pt"
    training.save_checkpoint(path, Toy(), {"v": 1})
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        training.save_checkpoint(path, Toy(), {"v": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert training.load_checkpoint(path, Toy()) == {"v": 1}


def test_truncated_hfc_model_names_the_file(tmp_path):
    path = tmp_path / "hfc.pt"
    hfc_model().save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"HFC model file .*hfc\.pt cannot be read.*Delete it"):
        hfc.HFCModel.load(path)


def test_corrupt_feature_file_names_the_file(tmp_path):
    path = write(tmp_path / "fs.pt", b"\x00" * 64)
    with pytest.raises(CorruptFileError, match=r"feature file .*fs\.pt cannot be read"):
        FeatureSet.load(path)


def test_corrupt_feature_cache_is_recomputed_after_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDADV_RESULT_CACHE", raising=False)
    fs = features.extract_features(MODEL, (X, Y), progress=False, cache=True)
    (path,) = (tmp_path / "results" / "features").glob("*.pt")
    write(path, b"")
    with pytest.warns(RuntimeWarning, match=r"cached result .*\.pt does not match its sha256"):
        again = features.extract_features(MODEL, (X, Y), progress=False, cache=True)
    assert torch.equal(again.penultimate, fs.penultimate)
    assert torch.equal(FeatureSet.from_state(torch.load(path, weights_only=True)).penultimate, fs.penultimate)


def test_cache_folder_that_is_a_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(write(tmp_path / "file", b"x")))
    with pytest.raises(NotADirectoryError, match=r"\$MEDADV_CACHE=.*is a file, not a folder"):
        data.cache_dir()


def test_data_folder_that_is_a_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(write(tmp_path / "file", b"x")))
    with pytest.raises(FileNotFoundError, match=r"\$MEDADV_DATA is set to .*is a file, not a folder"):
        data.data_dir()


@pytest.mark.skipif(not (SHARED / "medmnist" / "retinamnist.npz").is_file(), reason="needs the offline data")
def test_in_place_corruption_after_a_verified_load_is_caught(tmp_path, monkeypatch):
    """Same size, same mtime, corrupted after it was verified: hashed again, never used."""
    rel = "medmnist/retinamnist.npz"
    (tmp_path / "medmnist").mkdir()
    path = tmp_path / rel
    shutil.copyfile(SHARED / rel, path)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert len(data.load_dataset("retinamnist", "test", image_size=28, n=10)) == 10
    st = path.stat()
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(DataIntegrityError, match=r"retinamnist\.npz is corrupt .*It was not used.*zenodo"):
        data.load_dataset("retinamnist", "test", image_size=28, n=10)


@pytest.mark.skipif(not (SHARED / "medmnist" / "retinamnist.npz").is_file(), reason="needs the offline data")
def test_a_decoding_error_rehashes_the_file(tmp_path, monkeypatch):
    """Even with the memo fooled, a file that fails to decode is hashed again and named."""
    rel = "medmnist/retinamnist.npz"
    (tmp_path / "medmnist").mkdir()
    path = tmp_path / rel
    blob = bytearray((SHARED / rel).read_bytes())
    blob[-1024:] = bytes(1024)  # the zip's central directory
    path.write_bytes(bytes(blob))
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    st = path.stat()
    monkeypatch.setitem(data._HASH_MEMO, (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns,
                                          st.st_ctime_ns), data.SHA256[rel])  # a stale memo entry
    hashed, real = [], data.file_sha256
    monkeypatch.setattr(data, "file_sha256", lambda *a: hashed.append(1) or real(*a))
    assert data.offline_file(rel) == path and hashed == []  # the memo entry is live: the check passes unhashed
    with pytest.raises(DataIntegrityError, match=r"retinamnist\.npz is corrupt .*fresh copy"):
        data.load_dataset("retinamnist", "test", image_size=28, n=10)
    assert hashed == [1]  # hashed again after the decoding error, once


# ----------------------------------------------------------------------------- properties


def _state(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
    }


def _same(a: dict, b: dict) -> bool:
    def eq(u, v):
        return (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))

    return (a["modes"] == b["modes"] and a["requires_grad"] == b["requires_grad"]
            and all(eq(u, v) for key in ("grads", "params", "buffers") for u, v in zip(a[key], b[key])))


def _odd_model() -> Toy:
    """Train mode with one submodule in eval, one frozen parameter, gradients present."""
    m = Toy().train()
    m.stages[1].eval()
    m.fc.bias.requires_grad_(False)
    m(X).sum().backward()
    return m


HELPERS = {
    "Classifier.predict": lambda m: m.predict(X),
    "training.predict_proba": lambda m: training.predict_proba(m, (X, Y)),
    "training.evaluate": lambda m: training.evaluate(m, (X, Y)),
    "training.correctly_classified": lambda m: training.correctly_classified(m, (X, Y)),
    "models.layer_widths": lambda m: models.layer_widths(m, 8),
    "stress.pooled_features": lambda m: stress.pooled_features(m, X, ["stem"]),
    "stress.input_gradient_l1": lambda m: stress.input_gradient_l1(m, X, Y),
    "stress.push_features": lambda m: stress.push_features(m, X, "stem", eps=1 / 255, steps=1),
    "stress.stress_test": lambda m: stress.stress_test(m, X, ["stem"], eps=1 / 255, steps=1, progress=False),
    "features.extract_features": lambda m: features.extract_features(m, (X, Y), progress=False),
    "direction.pgd_feature_trajectory": lambda m: direction.pgd_feature_trajectory(m, X, Y, {"eps": 1 / 255,
                                                                                           "steps": 2}),
    "attacks.PGD": lambda m: PGD(1 / 255, steps=2, seed=0)(m, X, Y),
    "attacks.run_attack": lambda m: attacks.run_attack(FGSM(1 / 255), m, (X, Y), progress=False),
    "attacks.success_rate": lambda m: attacks.success_rate(FGSM(1 / 255), m, (X, Y), [1 / 255], progress=False),
    "detectors.mc_dropout_variance": lambda m: detectors.mc_dropout_variance(m, X, 2),
    "gradcam.grad_cam": lambda m: gradcam.grad_cam(m, X, "block1"),
    "saliency.input_gradients": lambda m: saliency.input_gradients(m, X, Y),
    "landscape.sign_gradient": lambda m: landscape.sign_gradient(m, X, Y),
    "landscape.loss_grid": lambda m: landscape.loss_grid(m, X, Y, torch.ones_like(X), -torch.ones_like(X),
                                                         [0.0, 1 / 255]),
    "landscape.sharpness": lambda m: landscape.sharpness(m, X, Y),
}


@pytest.mark.parametrize("explode", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("helper", list(HELPERS))
def test_helpers_restore_the_model(helper, explode):
    m = _odd_model()
    before = _state(m)
    m.explode = explode
    if explode:
        with pytest.raises(RuntimeError, match="boom"):
            HELPERS[helper](m)
    else:
        HELPERS[helper](m)
    assert _same(before, _state(m))


def test_attacks_stay_in_the_ball_and_reruns_are_identical():
    for attack in (FGSM(2 / 255), BIM(2 / 255, steps=3), PGD(2 / 255, steps=3, seed=1), MIM(2 / 255, steps=3),
                   CWLinf(2 / 255, steps=3, seed=1)):
        a, b = attack(MODEL, X, Y), attack(MODEL, X, Y)
        assert torch.equal(a, b) and (a - X).abs().max() <= 2 / 255 and a.min() >= 0 and a.max() <= 1


# --------------------------------------------------------------------------- book (chapter set-up)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name="x", value=0.5, digits="2"), TypeError, "digits"),
    (dict(name="x", value=0.5, digits=-1), ValueError, "digits"),
    (dict(name="x", value="text", digits=2), TypeError, "digits rounds numbers, but value 'x'"),
    (dict(name="", value=0.5), TypeError, "name must be a non-empty string"),
])
def test_book_glue_names_the_bad_argument(kwargs, error, match):
    from medadv_tutorial import book

    with pytest.raises(error, match=match):
        book.glue(**kwargs)
