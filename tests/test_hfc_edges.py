"""Known answers of the HFC energy on hand-made mixtures (``python benchmarks/mutation.py hfc``).

Two components of identity covariance per class: the energy of a row is half the squared distance
to the most likely mean of its target class -- the nearest one when the weights are equal.
"""

import math

import pytest
import torch

import medadv_tutorial.hfc as H
from medadv_tutorial.hfc import HFCLoss, HFCModel, Mixture, hfc_components, hfc_energy, hfc_layer_energies

F64 = torch.float64
MEANS = {  # class -> (2 components, 2 features); classes 2 and 5: not 0..n-1
    2: torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=F64),
    5: torch.tensor([[0.0, 10.0], [0.0, -10.0]], dtype=F64),
}


def mixture(means, weights=(0.5, 0.5)):
    K, C = means.shape
    return Mixture(means, torch.eye(C, dtype=F64).expand(K, C, C).contiguous(), torch.tensor(weights, dtype=F64).log())


@pytest.fixture
def model():
    return HFCModel({"a": {c: mixture(m) for c, m in MEANS.items()},
                     "b": {c: mixture(2 * m) for c, m in MEANS.items()}})


def expected(h, targets, scale=1.0):
    """0.5 min_k |h - scale mu_k|^2 over the components of each row's class, and the argmin."""
    d2 = torch.stack([((h[i] - scale * MEANS[int(t)]) ** 2).sum(1) for i, t in enumerate(targets)])
    return 0.5 * d2.min(1).values, d2.argmin(1)


H_A = torch.tensor([[1.0, 0.5], [3.0, 0.0], [0.0, 7.0], [1.0, -9.0], [-2.0, 1.0]], dtype=F64)
TARGETS = torch.tensor([2, 2, 5, 5, 2])


def feats(h=H_A):
    return {"a": h, "b": 2 * h}


def test_energy_is_half_the_squared_distance_to_the_nearest_component(model):
    raw = hfc_layer_energies(feats(), TARGETS, model, scaled=False)
    for layer, scale in (("a", 1.0), ("b", 2.0)):
        e, k = expected(scale * H_A, TARGETS, scale)
        torch.testing.assert_close(raw[layer], e)
        assert torch.equal(hfc_components(feats(), TARGETS, model)[layer], k)
    scaled = hfc_layer_energies(feats(), TARGETS, model)
    torch.testing.assert_close(scaled["a"], raw["a"] / 2)  # divided by the width C_l = 2
    torch.testing.assert_close(hfc_energy(feats(), TARGETS, model, lam=3.0), 3.0 * (scaled["a"] + scaled["b"]))
    only = hfc_layer_energies(feats(), TARGETS, model, layers=["b"])
    assert list(only) == ["b"]
    torch.testing.assert_close(only["b"], scaled["b"])


def test_the_weights_choose_the_component():
    # equal distances to both means: the heavier component is the one chosen
    heavy = HFCModel({"a": {0: mixture(MEANS[2], (0.2, 0.8))}})
    h = torch.tensor([[2.0, 0.0]], dtype=F64)
    assert hfc_components({"a": h}, torch.tensor([0]), heavy)["a"].tolist() == [1]
    torch.testing.assert_close(hfc_layer_energies({"a": h}, torch.tensor([0]), heavy, scaled=False)["a"],
                               torch.tensor([2.0], dtype=F64))


@pytest.mark.parametrize("stack", [True, False], ids=["stacked", "per-class"])
def test_a_row_s_energy_does_not_depend_on_the_other_rows(model, monkeypatch, stack):
    if not stack:
        monkeypatch.setattr(H, "_STACK_ELEMENTS", 0)
    mixed = hfc_layer_energies(feats(), TARGETS, model)
    for c in (2, 5):  # a batch of one target class (the single-class product), row by row the same
        rows = TARGETS == c
        alone = hfc_layer_energies(feats(H_A[rows]), TARGETS[rows], model)
        for layer in ("a", "b"):
            torch.testing.assert_close(alone[layer], mixed[layer][rows])
        comps = hfc_components(feats(H_A[rows]), TARGETS[rows], model)
        assert torch.equal(comps["a"], hfc_components(feats(), TARGETS, model)["a"][rows])


@pytest.mark.parametrize("stack", [True, False], ids=["stacked", "per-class"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_features_are_computed_in_float32(model, monkeypatch, stack, dtype):
    if not stack:
        monkeypatch.setattr(H, "_STACK_ELEMENTS", 0)
    for rows in (slice(None), TARGETS == 5):  # mixed classes, and one class (its own product)
        ref = hfc_layer_energies(feats(H_A[rows]), TARGETS[rows], model)
        low = hfc_layer_energies({k: v.to(dtype) for k, v in feats(H_A[rows]).items()}, TARGETS[rows], model)
        for layer in ("a", "b"):
            assert low[layer].dtype == torch.float32
            torch.testing.assert_close(low[layer].double(), ref[layer], atol=1e-5,
                                       rtol=1e-2 if dtype != torch.float32 else 1e-5)


def test_the_energy_is_the_same_with_and_without_a_gradient():
    # float32 features of a wide layer: the squared norm taken two ways differs in the last bit,
    # the energy (and the component choice) must not
    g = torch.Generator().manual_seed(0)
    C = 64
    means = torch.randn(3, C, dtype=F64, generator=g)
    m = HFCModel({"w": {0: Mixture(means, torch.eye(C, dtype=F64).expand(3, C, C).contiguous(),
                                   torch.full((3,), -math.log(3), dtype=F64))}})
    h = torch.randn(500, C, generator=g) * 3
    t = torch.zeros(500, dtype=torch.long)
    plain = hfc_layer_energies({"w": h}, t, m)["w"]
    with_grad = hfc_layer_energies({"w": h.clone().requires_grad_(True)}, t, m)["w"]
    assert torch.equal(plain, with_grad.detach())


def test_hfc_loss_defaults_refuses_negative_lam_and_returns_the_logits_dtype(model):
    assert HFCLoss(model).lam == 1.0
    with pytest.raises(ValueError, match="lam must be >= 0"):
        HFCLoss(model, lam=-0.5)
    term = HFCLoss(model, lam=2.0).bind(torch.zeros(5, 1, 2, 2), TARGETS)
    logits = torch.zeros(5, 6, dtype=torch.float32)
    e = term(None, logits, feats())  # float64 features, float32 logits
    assert e.dtype == torch.float32
    torch.testing.assert_close(e, hfc_energy(feats(), TARGETS, model, lam=2.0).float())
