"""medadv_tutorial.hfc: the Hierarchical Feature Constraint and its attacks; medadv_tutorial.adaptive: the rivals.

The toy classifier: 8x8 grayscale images whose class is their mean brightness (0.47 vs
0.53, pixel noise 0.1), two pooled softplus conv layers with fixed random filters
("block1", 6 channels; "penultimate", 8 channels) and an LDA linear head.  Targeted PGD
flips it at eps = 24/255 and, unconstrained, overshoots the target class's features.
"""

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_normal
from torch import nn
from toys import lda_head

from medadv_tutorial import cache
from medadv_tutorial.attacks import BIM, MIM, PGD, run_attack
from medadv_tutorial.detectors import MGM
from medadv_tutorial.features import FeatureSet
from medadv_tutorial.gmm import GaussianMixture
from medadv_tutorial.adaptive import DetectorAwareLoss, FeatureMatchLoss, PGD_DetectorAware, PGD_FeatureMatch
from medadv_tutorial.hfc import (
    BIM_HFC,
    MIM_HFC,
    PGD_HFC,
    HFCLoss,
    HFCModel,
    LayerForward,
    fit_hfc_mixtures,
    hfc_components,
    hfc_energy,
    hfc_layer_energies,
    other_class,
)

torch.set_num_threads(1)
EPS = 24 / 255


class Toy(nn.Module):
    """Two pooled taps and a linear head; ``forward_features(x, layers=None) -> (logits, dict)``."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        with torch.no_grad():
            for c in (self.conv1, self.conv2):
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) / 3)
                c.bias.copy_(torch.randn(c.bias.shape, generator=g) * 0.1)
        self.fc = nn.Linear(8, 2)

    def forward_features(self, x, layers=None, logits=True):
        h1 = F.softplus(self.conv1(x))
        h2 = F.softplus(self.conv2(h1))
        feats = OrderedDict(block1=h1.mean((2, 3)), penultimate=h2.mean((2, 3)))
        out = self.fc(feats["penultimate"])
        if layers is not None:
            feats = OrderedDict((k, feats[k]) for k in layers)
        return out, feats

    def forward(self, x):
        return self.forward_features(x)[0]

    @torch.no_grad()
    def fit_head(self, x, y):
        """Linear discriminant analysis on the penultimate features (two logits)."""
        weight, bias = lda_head(self.forward_features(x)[1]["penultimate"], y)
        self.fc.weight.copy_(weight)
        self.fc.bias.copy_(bias)


def make_data(n, g):
    y = torch.arange(n) % 2
    x = 0.47 + 0.06 * y[:, None, None, None] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    x_train, y_train = make_data(400, g)
    x_test, y_test = make_data(64, g)
    model = Toy()
    model.fit_head(x_train, y_train)
    model.eval()
    with torch.no_grad():
        logits, feats = model.forward_features(x_train)
    clean = FeatureSet(feats, y_train, logits)
    hfc = fit_hfc_mixtures(clean, n_components=2)
    return dict(model=model, clean=clean, hfc=hfc, x=x_test, y=y_test)


def feats_of(model, x):
    with torch.no_grad():
        return model.forward_features(x)


# --------------------------------------------------------------------------- fitting


def test_fit_structure_and_layer_selection(setup):
    hfc, clean = setup["hfc"], setup["clean"]
    assert hfc.layers == ["block1", "penultimate"] and hfc.classes == [0, 1]
    assert dict(hfc.widths) == {"block1": 6, "penultimate": 8}
    m = hfc.mixture("penultimate", 1)
    assert m.means.shape == (2, 8) and m.precisions_cholesky.shape == (2, 8, 8) and m.log_weights.shape == (2,)
    assert m.means.dtype == torch.float64
    assert torch.allclose(torch.logsumexp(m.log_weights, 0), torch.zeros((), dtype=torch.float64))
    info = hfc.info[("penultimate", 1)]
    assert info["n_samples"] == 200 and info["converged"]
    assert fit_hfc_mixtures(clean, exclude_wider_than=6).layers == ["block1"]
    assert fit_hfc_mixtures(clean, layers=["penultimate"]).layers == ["penultimate"]
    with pytest.raises(KeyError, match="block9"):
        fit_hfc_mixtures(clean, layers=["block9"])
    with pytest.raises(ValueError, match="no layer left"):
        fit_hfc_mixtures(clean, exclude_wider_than=4)


def test_mixture_is_the_em_fit_with_the_relative_ridge(setup):
    clean, hfc = setup["clean"], setup["hfc"]
    x = clean["block1"][clean.labels == 0].double()
    reg = 1e-3 * float(x.var(0, unbiased=False).mean())
    assert hfc.info[("block1", 0)]["reg_covar"] == reg  # the same formula: bit-identical
    gmm = GaussianMixture(2, reg_covar=reg, seed=0).fit(x)
    m = hfc.mixture("block1", 0)
    assert torch.allclose(m.means, gmm.means_) and torch.allclose(m.log_weights, gmm.weights_.log())
    assert torch.allclose(m.precisions_cholesky, gmm.precisions_cholesky_)


# --------------------------------------------------------------------------- the energy


def reference_weighted_log_prob(mix, h):
    """(N, K) log pi_k + log N(h | mu_k, Sigma_k) with scipy, from the stored precision factors."""
    U = mix.precisions_cholesky.numpy()
    covs = [np.linalg.inv(u @ u.T) for u in U]
    return np.stack([lw + multivariate_normal(mu, c).logpdf(h)
                     for lw, mu, c in zip(mix.log_weights.numpy(), mix.means.numpy(), covs)], axis=1), covs


def test_energy_is_the_chosen_components_nll_up_to_its_constant(setup):
    hfc, model = setup["hfc"], setup["model"]
    x_adv = PGD(EPS, steps=10, targeted=True, seed=0)(model, setup["x"], other_class(setup["y"]))
    feats = {k: v.double() for k, v in feats_of(model, torch.cat([setup["x"], x_adv]))[1].items()}
    targets = torch.cat([setup["y"], other_class(setup["y"])])
    raw = hfc_layer_energies(feats, targets, hfc, scaled=False)
    scaled = hfc_layer_energies(feats, targets, hfc)
    comps = hfc_components(feats, targets, hfc)
    total = torch.zeros(len(targets), dtype=torch.float64)
    for layer in hfc.layers:
        C = hfc.widths[layer]
        assert torch.allclose(scaled[layer], raw[layer] / C)
        total += raw[layer] / C
        for c in (0, 1):
            rows = targets == c
            mix = hfc.mixture(layer, c)
            wlp, covs = reference_weighted_log_prob(mix, feats[layer][rows].numpy())
            k = wlp.argmax(1)
            assert np.array_equal(comps[layer][rows].numpy(), k)  # argmax of the weighted log-prob
            np.testing.assert_allclose(mix.weighted_log_prob(feats[layer][rows]).numpy(), wlp, rtol=1e-9)
            const = np.array([0.5 * np.linalg.slogdet(cv)[1] + 0.5 * C * math.log(2 * math.pi) - lw
                              for cv, lw in zip(covs, mix.log_weights.numpy())])
            nll = -wlp[np.arange(len(k)), k]
            np.testing.assert_allclose(raw[layer][rows].numpy(), nll - const[k], rtol=1e-7, atol=1e-8)
    assert torch.allclose(hfc_energy(feats, targets, hfc, lam=2.5), 2.5 * total)
    assert bool((total >= 0).all())


def test_stacked_and_per_class_evaluations_agree(setup, monkeypatch):
    """Narrow layers evaluate all classes in one product, wide ones one class at a time: same energies."""
    import medadv_tutorial.hfc as hfc_module

    hfc, model = setup["hfc"], setup["model"]
    feats = {k: v.double() for k, v in feats_of(model, setup["x"])[1].items()}
    h = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    t = other_class(setup["y"])
    assert len(t.unique()) > 1  # targets of one class take neither path (one class's product)
    # a spy on the per-layer product: comp.n_classes of each call says which path ran
    products, real = [], hfc_module._layer_energy
    monkeypatch.setattr(hfc_module, "_layer_energy", lambda h, comp, *a: products.append(comp.n_classes) or
                        real(h, comp, *a))
    n_classes, default = len(hfc.classes), hfc_module._STACK_ELEMENTS
    assert hfc._stackable("penultimate")
    stacked = hfc_energy(h, t, hfc)
    assert n_classes in products  # stacked: one product for all classes (at least penultimate)
    (g_stacked,) = torch.autograd.grad(stacked.sum(), h["penultimate"])
    monkeypatch.setattr(hfc_module, "_STACK_ELEMENTS", 0)
    assert not hfc._stackable("penultimate")
    products.clear()
    grouped = hfc_energy(h, t, hfc)
    assert products and set(products) == {1}  # the patch is live: every layer one class at a time
    (g_grouped,) = torch.autograd.grad(grouped.sum(), h["penultimate"])
    assert torch.allclose(stacked, grouped, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g_stacked, g_grouped, rtol=1e-8, atol=1e-12)
    comps = hfc_components(feats, t, hfc)  # grouped
    monkeypatch.setattr(hfc_module, "_STACK_ELEMENTS", default)
    products.clear()
    for layer, k in hfc_components(feats, t, hfc).items():  # stacked
        assert torch.equal(k, comps[layer])
    assert n_classes in products


def test_energy_validation(setup):
    hfc = setup["hfc"]
    feats = {"block1": torch.zeros(3, 6), "penultimate": torch.zeros(3, 8)}
    with pytest.raises(ValueError, match="classes \\[2\\]"):
        hfc_energy(feats, torch.tensor([0, 1, 2]), hfc)
    with pytest.raises(KeyError, match="block1"):
        hfc_energy({"penultimate": torch.zeros(3, 8)}, torch.tensor([0, 1, 1]), hfc)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        hfc_energy({"block1": torch.zeros(3, 6), "penultimate": torch.zeros(3, 7)}, torch.tensor([0, 1, 1]), hfc)


def test_hfc_loss_is_differentiable_and_reaches_x(setup):
    hfc, model = setup["hfc"], setup["model"]
    x = setup["x"][:8].clone().requires_grad_(True)
    t = other_class(setup["y"][:8])
    term = HFCLoss(hfc, lam=1.0).bind(x.detach(), t)
    logits, aux = LayerForward(hfc.layers)(model, x)
    e = term(x, logits, aux)
    assert e.shape == (8,) and e.dtype == logits.dtype
    assert torch.allclose(e, hfc_energy(aux, t, hfc))
    (g,) = torch.autograd.grad(e.sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    # the gradient with respect to the features is the analytic one (chosen component fixed)
    h = {k: v.detach().double().requires_grad_(True) for k, v in aux.items()}
    assert torch.autograd.gradcheck(lambda a, b: hfc_energy({"block1": a, "penultimate": b}, t, hfc),
                                    (h["block1"], h["penultimate"]))


# --------------------------------------------------------------------------- the attacks


def test_hfc_attacks_are_the_package_attacks_configured(setup):
    hfc = setup["hfc"]
    for factory, cls in ((BIM_HFC, BIM), (PGD_HFC, PGD), (MIM_HFC, MIM)):
        a = factory(hfc, EPS, lam=0.5, steps=5)
        assert type(a) is cls and a.targeted and isinstance(a.extra_loss, HFCLoss)
        assert a.extra_loss.lam == 0.5 and a.forward.layers == hfc.layers
    with pytest.raises(TypeError, match="targeted"):
        PGD_HFC(hfc, EPS, targeted=False)


def test_layer_forward_adds_the_penultimate_tap_when_the_model_has_it():
    from medadv_tutorial.models import Classifier

    stages = [("stem", nn.Conv2d(3, 4, 3, padding=1)), ("block1", nn.Conv2d(4, 5, 3, padding=1)),
              ("head", nn.Conv2d(5, 6, 1))]
    model = Classifier(stages, 6, 2, 1, (0.5,) * 3, (0.5,) * 3, dropout=0.0, backbone="toy").eval()
    logits, feats = LayerForward(["block1"])(model, torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 2) and list(feats) == ["block1", "penultimate"]
    assert list(LayerForward(["block1"], also=())(model, torch.rand(2, 1, 8, 8))[1]) == ["block1"]


@pytest.mark.parametrize("factory", [BIM_HFC, PGD_HFC, MIM_HFC])
def test_hfc_attacks_respect_the_budget(setup, factory):
    x = setup["x"][:16]
    x_adv = factory(setup["hfc"], EPS, steps=5)(setup["model"], x, other_class(setup["y"][:16]))
    assert (x_adv - x).abs().max() <= EPS and x_adv.min() >= 0 and x_adv.max() <= 1


def test_hfc_hides_the_features_that_pgd_pushes_out(setup):
    """At equal eps and steps: both reach the target, HFC's features are far more typical of it."""
    model, hfc, x, y = setup["model"], setup["hfc"], setup["x"], setup["y"]
    t = other_class(y)
    x_pgd = PGD(EPS, steps=20, targeted=True, seed=0)(model, x, t)
    x_hfc = PGD_HFC(hfc, EPS, steps=20, seed=0, lam=1.0)(model, x, t)
    (l_pgd, f_pgd), (l_hfc, f_hfc) = feats_of(model, x_pgd), feats_of(model, x_hfc)
    assert (l_pgd.argmax(1) == t).float().mean() >= 0.95
    assert (l_hfc.argmax(1) == t).float().mean() >= 0.95
    e_pgd, e_hfc = hfc_energy(f_pgd, t, hfc), hfc_energy(f_hfc, t, hfc)
    assert e_hfc.mean() < 0.25 * e_pgd.mean()
    assert (e_hfc < e_pgd).float().mean() >= 0.9
    # every constrained layer is pulled in, not just the sum
    per_pgd, per_hfc = hfc_layer_energies(f_pgd, t, hfc), hfc_layer_energies(f_hfc, t, hfc)
    for layer in hfc.layers:
        assert per_hfc[layer].mean() < per_pgd[layer].mean()
    # and the clean-feature detector of the target class sees it: MGM on the penultimate features
    clean = setup["clean"]
    det = MGM(reg=1e-6).fit(clean.penultimate[clean.labels == 1])
    rows = t == 1
    assert det.score(f_hfc["penultimate"][rows]).mean() < det.score(f_pgd["penultimate"][rows]).mean()


def test_run_attack_with_other_class(setup):
    res = run_attack(PGD_HFC(setup["hfc"], EPS, steps=10, seed=0), setup["model"],
                     (setup["x"][:32], setup["y"][:32]), batch_size=16, targets=other_class, progress=False)
    assert torch.equal(res.target, 1 - res.y)
    assert res.success_rate >= 0.9
    with pytest.raises(ValueError, match="binary"):
        other_class(torch.tensor([0, 2]))


# --------------------------------------------------------------------------- rival adaptive attacks (adaptive.py)


def test_detector_aware_attack_lowers_the_detector_score(setup):
    model, clean, x, y = setup["model"], setup["clean"], setup["x"], setup["y"]
    t = other_class(y)
    det = MGM(reg=1e-6).fit(clean.penultimate)
    term = DetectorAwareLoss(det, "penultimate", lam=1.0)
    xa = x[:4].clone().requires_grad_(True)
    logits, aux = LayerForward(["penultimate"])(model, xa)
    s = term.bind(x[:4], t[:4])(xa, logits, aux)
    assert torch.allclose(s.double(), det.score(aux["penultimate"]).detach(), rtol=1e-5)
    (g,) = torch.autograd.grad(s.sum(), xa)
    assert float(g.abs().sum()) > 0
    x_pgd = PGD(EPS, steps=20, targeted=True, seed=0)(model, x, t)
    x_da = PGD_DetectorAware(det, EPS, lam=1.0, steps=20, seed=0)(model, x, t)
    (l_pgd, f_pgd), (l_da, f_da) = feats_of(model, x_pgd), feats_of(model, x_da)
    assert (l_da.argmax(1) == t).float().mean() >= 0.9
    assert det.score(f_da["penultimate"]).mean() < det.score(f_pgd["penultimate"]).mean()


def test_feature_matching_pulls_towards_the_guides(setup):
    model, clean, x, y = setup["model"], setup["clean"], setup["x"], setup["y"]
    t = other_class(y)
    loss = FeatureMatchLoss(clean, ["penultimate"], guide="mean")
    g = loss.guides(t)["penultimate"]
    means = torch.stack([clean.penultimate[clean.labels == c].mean(0) for c in (0, 1)])
    assert torch.allclose(g, means[t])
    rnd = FeatureMatchLoss(clean, "penultimate", guide="random", seed=3).guides(t)["penultimate"]
    rows = [int(((clean.penultimate - r).abs().sum(1) == 0).nonzero()[0]) for r in rnd]
    assert torch.equal(clean.labels[rows], t)  # each guide is a clean image of the target class
    x_pgd = PGD(EPS, steps=20, targeted=True, seed=0)(model, x, t)
    x_fm = PGD_FeatureMatch(clean, EPS, guide="mean", lam=10.0, steps=20, seed=0)(model, x, t)
    d_pgd = ((feats_of(model, x_pgd)[1]["penultimate"] - g) ** 2).sum(1)
    d_fm = ((feats_of(model, x_fm)[1]["penultimate"] - g) ** 2).sum(1)
    assert d_fm.mean() < d_pgd.mean()


@pytest.mark.parametrize("make", [
    lambda s, eps: PGD_FeatureMatch(s["clean"], eps, lam=10.0, steps=5, seed=0, guide_seed=1),
    lambda s, eps: PGD_HFC(s["hfc"], eps, lam=1.0, steps=5, seed=0),
    lambda s, eps: PGD_DetectorAware(MGM(reg=1e-6).fit(s["clean"].penultimate), eps, lam=1.0, steps=5, seed=0),
])
def test_adaptive_attacks_are_reproducible_with_a_seed(setup, make):
    """``seed`` reaches PGD's random start: two fresh attacks give the same images."""
    model, x, y = setup["model"], setup["x"], setup["y"]
    t = other_class(y)
    a = make(setup, EPS)(model, x, t)
    b = make(setup, EPS)(model, x, t)
    assert torch.equal(a, b)
    assert make(setup, EPS).seed == 0


def test_save_and_load_roundtrip(setup, tmp_path):
    hfc = setup["hfc"]
    path = tmp_path / "hfc.pt"
    hfc.save(path)
    back = HFCModel.load(path)
    assert back.layers == hfc.layers and back.classes == hfc.classes and back.info == hfc.info
    f = {k: v.double() for k, v in setup["clean"].feats.items()}
    assert torch.equal(hfc_energy(f, setup["clean"].labels, back), hfc_energy(f, setup["clean"].labels, hfc))


def test_hfc_attack_cache_key_does_not_move_when_used(setup):
    # The HFC model compiles its mixtures on first use; that derived state must not enter the
    # result-cache key, or a warm re-run would miss every attack after the first.
    from medadv_tutorial import cache

    fresh = fit_hfc_mixtures(setup["clean"], n_components=2)
    att = PGD_HFC(fresh, EPS, lam=0.1, steps=2, seed=0)
    before = cache.fingerprint(attack=att)
    run_attack(att, setup["model"], (setup["x"][:8], setup["y"][:8]), targets=1 - setup["y"][:8], progress=False)
    assert fresh._cache, "the attack should have compiled the mixtures"
    assert cache.fingerprint(attack=att) == before
    assert cache.fingerprint(attack=PGD_HFC(fresh, EPS, lam=0.2, steps=2, seed=0)) != before
    assert cache.fingerprint(attack=PGD_HFC(setup["hfc"], EPS, lam=0.1, steps=2, seed=0)) == before  # same fit


def test_mixture_cache_cold_and_warm_are_identical(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDADV_RESULT_CACHE", raising=False)
    clean, fitted = setup["clean"], setup["hfc"]
    cold = fit_hfc_mixtures(clean, n_components=2, cache=True)
    stored = sorted((tmp_path / "results" / "hfc_mixtures").glob("*.pt"))
    assert len(stored) == 1

    def no_em(*args, **kwargs):
        raise AssertionError("a warm cache must not run EM")

    with monkeypatch.context() as mp:
        mp.setattr(GaussianMixture, "fit", no_em)
        warm = fit_hfc_mixtures(clean, n_components=2, cache=True)
        with pytest.raises(AssertionError, match="must not run EM"):  # other settings: another key
            fit_hfc_mixtures(clean, n_components=2, reg=2e-3, cache=True)
    for model in (cold, warm):
        assert model.layers == fitted.layers and model.info == fitted.info
        for l in fitted.layers:
            for c in fitted.classes:
                a, b = model.mixture(l, c), fitted.mixture(l, c)
                assert all(torch.equal(getattr(a, f), getattr(b, f))
                           for f in ("means", "precisions_cholesky", "log_weights"))
    # a cached model gives the attack the same result-cache key as a fitted one
    assert cache.fingerprint(warm) == cache.fingerprint(fitted)
