"""medadv_tutorial.suite: the book's detector line-up, fitted and scored in one call.

A toy classifier with the four taps the ensembles read (block3, block8, block13,
penultimate), dropout before its head (for BU) and an LDA head on 8x8 images whose class
is their brightness.  Images with strong added noise are far outside the clean feature
distribution: the density detectors must rank them above clean test images.
"""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import lda_head

from medadv_tutorial import metrics
from medadv_tutorial import suite as S
from medadv_tutorial.detectors import Detector, Inputs
from medadv_tutorial.features import extract_features
from medadv_tutorial.suite import DETECTOR_NAMES, ENSEMBLE_LAYERS, DetectorSuite, kd_bandwidth

torch.set_num_threads(1)


class Toy(nn.Module):
    feature_names = list(ENSEMBLE_LAYERS)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleList([nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1),
                                    nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)])
        with torch.no_grad():
            for c in self.convs:
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) / 3)
                c.bias.copy_(torch.randn(c.bias.shape, generator=g) * 0.1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 2)

    def forward_features(self, x, layers=None, logits=True):
        feats, h = OrderedDict(), x
        for name, conv in zip(self.feature_names, self.convs):
            h = F.softplus(conv(h))
            feats[name] = h.mean((2, 3))
        out = self.fc(self.dropout(feats["penultimate"]))
        if layers is not None:
            feats = OrderedDict((k, feats[k]) for k in layers)
        return out, feats

    def forward(self, x):
        return self.forward_features(x)[0]

    @torch.no_grad()
    def fit_head(self, x, y):
        """Linear discriminant analysis on the penultimate features (two logits)."""
        weight, bias = lda_head(self.forward_features(x)[1]["penultimate"], y, margin=8)
        self.fc.weight.copy_(weight)
        self.fc.bias.copy_(bias)


def make_data(n, g):
    y = torch.arange(n) % 2
    x = 0.4 + 0.2 * y[:, None, None, None] + 0.05 * torch.randn(n, 1, 8, 8, generator=g)
    return x.clamp(0, 1), y


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture(scope="module")
def fitted():
    g = torch.Generator().manual_seed(0)
    x_train, y_train = make_data(600, g)
    x_test, y_test = make_data(60, g)
    model = Toy()
    model.fit_head(x_train, y_train)
    model.eval()
    train = Pairs(x_train, y_train)
    fs_train = extract_features(model, train, progress=False)
    suite = DetectorSuite.fit(model, train, fs_train, eps=8 / 255, n_fgsm=200)
    return dict(model=model, suite=suite, x=x_test, y=y_test, g=g, train=train, fs_train=fs_train)


class L2Norm(Detector):
    """A toy detector: the L2 norm of the penultimate features (the default inputs: one layer, no labels)."""

    name = "L2"

    def _fit(self, x, labels):
        self.mean_norm_ = x.double().norm(dim=1).mean()

    def _score(self, x, labels):
        return x.double().norm(dim=1)


class Recorder(Detector):
    """A toy detector that declares every input and records what it is given; scores 0."""

    name = "rec"
    inputs = Inputs(view="layers", fit_labels=True, score_labels="predicted", adversarial=True)

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None):
        self._check_fit_sets(adv_features, clean_val_features)
        with self._fitting():
            self.fit_args_ = (clean_features, labels, adv_features, clean_val_features)
            self.n_features_in_ = {k: v.shape[1] for k, v in clean_features.items()}
            self.reference_scores_ = torch.zeros(len(labels), dtype=torch.float64)
        return self

    def score(self, features, labels=None, *, scanned=False):
        self._check_fitted("score")
        self.score_args_ = (features, labels)
        self.scanned_ = scanned
        return torch.zeros(len(labels), dtype=torch.float64)


def test_a_detector_joins_the_line_up_with_one_row(fitted, monkeypatch):
    # One row each in the table, nothing else: the suite builds, fits and scores them from
    # their declared inputs.
    monkeypatch.setitem(S.LINE_UP, "L2", S.Entry(lambda c: L2Norm(), S.clean_train))
    monkeypatch.setitem(S.LINE_UP, "rec", S.Entry(lambda c: Recorder(), S.first_500_vs_fgsm))
    model, x, y, fs_train = fitted["model"], fitted["x"], fitted["y"], fitted["fs_train"]
    grown = DetectorSuite.fit(model, fitted["train"], fs_train, eps=8 / 255, n_fgsm=200)
    assert list(grown.detectors) == list(DETECTOR_NAMES) + ["L2", "rec"]
    fs = extract_features(model, (x, y), progress=False)
    scores = grown.score(fs, x)
    torch.testing.assert_close(scores["L2"], fs.penultimate.double().norm(dim=1), rtol=0, atol=0)
    l2 = grown.detectors["L2"]
    assert l2.is_fitted and torch.equal(l2.reference_scores_, fs_train.penultimate.double().norm(dim=1))
    assert "L2 two-sided" in grown.with_two_sided(["L2"]).score(fs, x)
    # what the suite passed: the ensemble layers of the rows named in the table, their true
    # labels, the FGSM pairs as adversarial and held-out clean sets; at score time the layers
    # of the scored set and the classes the model predicts
    clean, labels, adv, clean_val = grown.detectors["rec"].fit_args_
    assert list(clean) == list(ENSEMBLE_LAYERS) and all(torch.equal(clean[l], fs_train[l][:500]) for l in clean)
    assert torch.equal(labels, fs_train.labels[:500])
    assert list(adv) == list(clean_val) == list(ENSEMBLE_LAYERS)
    assert len(adv["penultimate"]) == len(clean_val["penultimate"]) > 0
    feats, pred = grown.detectors["rec"].score_args_
    assert all(torch.equal(feats[l], fs[l]) for l in ENSEMBLE_LAYERS) and torch.equal(pred, fs.predictions)
    # the book's ten are untouched: the same random draws, bit for bit the same scores
    before = fitted["suite"].score(fs, x)
    assert all(torch.equal(before[n], scores[n]) for n in DETECTOR_NAMES)


def test_kd_bandwidth_known_answer():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0]])  # nearest-neighbour distances 1, 1, 2, 3
    assert kd_bandwidth(pts) == 1.0
    with pytest.raises(ValueError):
        kd_bandwidth(torch.zeros(1, 3))


def test_suite_scores_every_detector_and_flags_far_features(fitted):
    suite, model, x, y = fitted["suite"], fitted["model"], fitted["x"], fitted["y"]
    assert list(suite.detectors) == list(DETECTOR_NAMES)
    x_far = (x + 0.3 * torch.randn(x.shape, generator=fitted["g"])).clamp(0, 1)
    fs_clean = extract_features(model, (x, y), progress=False)
    fs_far = extract_features(model, (x_far, y), progress=False)
    s_clean, s_far = suite.score(fs_clean, x), suite.score(fs_far, x_far)
    for name in DETECTOR_NAMES:
        assert s_clean[name].shape == (len(y),) and s_clean[name].dtype == torch.float64
        assert torch.isfinite(s_clean[name]).all() and torch.isfinite(s_far[name]).all()
    for name in ("MGM", "MAHA", "KD", "ISO", "OCSVM"):
        assert metrics.auroc(s_clean[name], s_far[name]) > 0.9, name
    # a subset of names, and the same numbers as the full call
    part = suite.score(fs_far, x_far, names=["MGM", "KD"])
    assert list(part) == ["MGM", "KD"] and torch.equal(part["KD"], s_far["KD"])


def test_suite_errors_name_what_is_missing(fitted):
    suite, model, x, y = fitted["suite"], fitted["model"], fitted["x"], fitted["y"]
    fs = extract_features(model, (x, y), progress=False)
    with pytest.raises(ValueError, match="BU scores images"):
        suite.score_one("BU", fs)
    with pytest.raises(KeyError, match="unknown detector"):
        suite.score_one("XYZ", fs)
    with pytest.raises(KeyError, match="ensemble layers"):
        DetectorSuite.fit(model, Pairs(x, y), fs.select(["penultimate"]))
    with pytest.raises(ValueError, match="rows"):
        DetectorSuite.fit(model, Pairs(x[:10], y[:10]), fs)


def spy_on_the_checks(monkeypatch):
    """Spies on the names the detectors look up when they check their inputs: ``calls`` gets the ``finite``
    flag of each features check (``base._check_features``, which every ``Detector._validate`` and the
    ensembles' ``_check_layers`` call, and DNN's own import of it); ``scans`` gets ``(module, name)`` of each
    NaN / infinity scan (``checks.check_finite``, which ``check_features`` scans with, and BU's own import
    of it).  BU's ``check_images`` (a scan too) runs only for a ``Classifier``, not for the toy model here."""
    import medadv_tutorial.checks as checks
    import medadv_tutorial.detectors.base as base
    import medadv_tutorial.detectors.dnn as dnn
    import medadv_tutorial.detectors.uncertainty as uncertainty

    calls, scans = [], []
    real_features = checks.check_features
    spy_features = lambda *a, **k: (calls.append(k.get("finite", True)), real_features(*a, **k))[1]  # noqa: E731
    for module in (base, dnn):
        monkeypatch.setattr(module, "_check_features", spy_features)
    for module in (checks, uncertainty):
        real = module.check_finite
        monkeypatch.setattr(module, "check_finite", lambda v, name, real=real, m=module.__name__.split(".")[-1]:
                            (scans.append((m, name)), real(v, name))[1])
    return calls, scans


def test_values_are_scanned_once_where_they_enter(fitted, monkeypatch):
    """A FeatureSet scans its values when it is made; the suite checks its images once and tells the
    detectors (and the ensembles their per-layer detectors) not to scan again; shapes are still checked."""
    from medadv_tutorial.features import FeatureSet

    suite, model, x, y = fitted["suite"], fitted["model"], fitted["x"], fitted["y"]
    fs = extract_features(model, (x, y), progress=False)
    bad = OrderedDict((k, v.clone()) for k, v in fs.feats.items())
    bad["block8"][3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"feats\['block8'\] contains NaN"):
        FeatureSet(bad, fs.labels, fs.logits)
    calls, scans = spy_on_the_checks(monkeypatch)
    names = [n for n in suite.detectors if n != "BU"]  # BU: test_bu_does_not_scan_the_suites_images_again
    scores = suite.score(fs, x, names=names)
    assert len(calls) >= len(names) and not any(calls), \
        "a detector scanned rows the FeatureSet had scanned"  # the spy is live: each detector checked its rows
    assert scans == [], f"values scanned again while scoring: {scans}"
    assert list(scores) == names
    # a direct call of a detector's public score still scans its input (and the spies see it)
    for name in ("MGM", "DNN"):  # base._check_features; dnn's own import of it
        calls.clear(), scans.clear()
        suite.detectors[name].score(fs.penultimate)
        assert calls == [True] and scans == [("checks", "features")], name
    # shapes are checked whatever the caller says
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        suite.detectors["MGM"].score(fs.penultimate[:, :5], scanned=True)
    with pytest.raises(ValueError, match="images must be the 60 images"):
        suite.score(fs, x[:10])


def test_bu_does_not_scan_the_suites_images_again(fitted, monkeypatch):
    suite, model, x, y = fitted["suite"], fitted["model"], fitted["x"], fitted["y"]
    fs = extract_features(model, (x, y), progress=False)
    _, scans = spy_on_the_checks(monkeypatch)
    suite.detectors["BU"].score(x)
    if ("uncertainty", "features") not in scans:  # not an AssertionError: a dead spy fails, never xfails
        pytest.fail(f"the spy on BU's scan is not live: a direct call scanned {scans}")
    scans.clear()
    suite.score(fs, x, names=["BU"])
    assert scans == [], f"BU scanned the suite's images again: {scans}"


def test_two_sided_entries_and_evaluate_attack(fitted):
    from medadv_tutorial.attacks import PGD
    from medadv_tutorial.protocol import evaluate_attack

    base, model, x, y = fitted["suite"], fitted["model"], fitted["x"], fitted["y"]
    suite = base.with_two_sided(("MGM", "KD"))
    assert list(suite.detectors)[-2:] == ["MGM two-sided", "KD two-sided"]
    assert list(base.detectors) == list(DETECTOR_NAMES)  # the original suite is unchanged
    fs_clean = extract_features(model, (x, y), progress=False)
    clean = suite.score(fs_clean, x)
    # two-sided = distance of the one-sided score from the clean training median
    med = torch.quantile(base.detectors["MGM"].reference_scores_.double().cpu(), 0.5)
    torch.testing.assert_close(clean["MGM two-sided"], (clean["MGM"] - med).abs())
    with pytest.raises(KeyError, match="clean_scores lacks"):
        evaluate_attack("PGD", PGD(8 / 255, steps=5), model, x, y, suite, {"MGM": clean["MGM"]})
    ev = evaluate_attack("PGD", PGD(0.15, steps=10, seed=0), model, x, y, suite, clean)
    assert ev.x_adv.shape == x.shape and (ev.x_adv - x).abs().max() <= 0.15 + 1e-6
    # success as attacks.AttackResult counts it: over the images the model gets right when clean
    correct = model(x).argmax(1) == y
    fooled = ev.fs.predictions != y
    assert ev.success == pytest.approx(float((fooled & correct).sum() / correct.sum())) and ev.success > 0.5
    assert set(ev.auroc) == set(suite.detectors) and all(0.0 <= v <= 1.0 for v in ev.auroc.values())
    assert ev.auroc["MGM"] == metrics.auroc(clean["MGM"], ev.scores["MGM"]) and ev.seconds > 0


def test_evaluate_attack_cold_and_warm_cache_agree(fitted, tmp_path, monkeypatch):
    # Caching must never change a number: the second call reads the adversarial images from the
    # cache and every score, AUROC, TPR and the recorded attack time equal the computed run's.
    from medadv_tutorial.attacks import PGD
    from medadv_tutorial.protocol import evaluate_attack

    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    suite, model, x, y = fitted["suite"].with_two_sided(), fitted["model"], fitted["x"], fitted["y"]
    clean = suite.score(extract_features(model, (x, y), progress=False), x)
    runs = [evaluate_attack("PGD", PGD(0.15, steps=6, seed=0, targeted=True), model, x, y, suite, clean,
                            targets=1 - y) for _ in range(2)]
    assert len(list((tmp_path / "results").rglob("*.pt"))) == 1
    cold, warm = runs
    assert torch.equal(cold.x_adv, warm.x_adv) and cold.success == warm.success and cold.seconds == warm.seconds
    assert cold.auroc == warm.auroc and cold.tpr90 == warm.tpr90
    assert all(torch.equal(cold.scores[n], warm.scores[n]) for n in suite.detectors)
    for layer in cold.fs.layers:
        assert torch.equal(cold.fs[layer], warm.fs[layer])
    off = evaluate_attack("PGD", PGD(0.15, steps=6, seed=0, targeted=True), model, x, y, suite, clean,
                          targets=1 - y, cache=False)
    assert torch.equal(off.x_adv, cold.x_adv) and off.auroc == cold.auroc


def test_suite_cache_cold_and_warm_score_alike(fitted, tmp_path, monkeypatch):
    # The fitted suite read back from the result cache scores every image exactly as the suite
    # fitted without the cache; a warm read fits nothing; BU gets the caller's model back.
    import medadv_tutorial.suite as suite_module

    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDADV_RESULT_CACHE", raising=False)
    model, train, fs_train, x, y = (fitted[k] for k in ("model", "train", "fs_train", "x", "y"))
    args = dict(eps=8 / 255, n_fgsm=200)
    cold = DetectorSuite.fit(model, train, fs_train, **args, cache=True)
    assert len(list((tmp_path / "results" / "detector_suite").glob("*.pt"))) == 1

    def no_fit(*a, **kw):
        raise AssertionError("a warm cache must not fit a detector")

    with monkeypatch.context() as mp:
        mp.setattr(suite_module, "_fit", no_fit)
        warm = DetectorSuite.fit(model, train, fs_train, **args, cache=True)
        with pytest.raises(AssertionError, match="must not fit"):  # another setting: another key
            DetectorSuite.fit(model, train, fs_train, eps=8 / 255, n_fgsm=200, k=10, cache=True)
    assert warm.detectors["BU"].model is model
    fs = extract_features(model, (x, y), progress=False)
    reference = fitted["suite"].score(fs, x)
    for got in (cold.score(fs, x), warm.score(fs, x)):
        assert list(got) == list(reference)
        assert all(torch.equal(got[n], reference[n]) for n in reference), [n for n in reference
                                                                          if not torch.equal(got[n], reference[n])]


def test_ensemble_layers_come_from_the_backbone():
    from medadv_tutorial.models import build_model
    from medadv_tutorial.suite import ensemble_layers

    lite = build_model("efficientnet_lite0", 2, 3, 32, pretrained=False)
    assert ensemble_layers(lite) == ENSEMBLE_LAYERS

    class Other:  # another architecture, no table entry: quarter, half, three quarters of its depth
        backbone_name = "resnet50"
        feature_names = ["stem"] + [f"layer{i}" for i in range(1, 9)] + ["penultimate"]

    assert ensemble_layers(Other()) == ("layer2", "layer4", "layer6", "penultimate")
    Other.feature_names = ["stem", "a", "penultimate"]
    assert ensemble_layers(Other()) == ("stem", "a", "penultimate")
    Other.feature_names = ["stem", "logits"]
    with pytest.raises(ValueError, match="feature_names ending in 'penultimate'"):
        ensemble_layers(Other())
