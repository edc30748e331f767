"""Perturbations inside and outside the attention region (medadv_tutorial.regions): known answers,
properties and bad inputs on tiny Classifiers (milliseconds on one core)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medadv_tutorial import models, regions
from medadv_tutorial.capacity import small_cnn

G = torch.Generator().manual_seed(0)
X = torch.rand(4, 1, 8, 8, generator=G) * 0.5 + 0.25
Y = torch.tensor([0, 1, 0, 1])
REGION = torch.zeros(4, 8, 8, dtype=torch.bool)
REGION[:, 2:6, 1:4] = True  # 12 of 64 pixels


def _cnn():
    torch.manual_seed(0)
    return small_cnn(2, 2, 1).eval()


def test_inside_share_known_answers():
    delta = torch.zeros(4, 1, 8, 8)
    delta[0] = 0.01  # spread evenly: the region's pixel share
    delta[1, :, 2:6, 1:4] = -0.02  # all inside
    delta[2, :, 0, 0] = 0.03  # all outside
    share = regions.inside_share(delta, REGION)
    assert share.dtype == torch.float64
    assert share[0].item() == pytest.approx(12 / 64, abs=1e-12)
    assert share[1].item() == 1.0 and share[2].item() == 0.0
    assert torch.isnan(share[3])  # no perturbation, no share


def test_inside_share_sums_channels():
    delta = torch.zeros(1, 3, 8, 8)
    delta[0, 0, 2, 1] = 0.3  # inside, channel 0
    delta[0, 2, 0, 0] = 0.1  # outside, channel 2
    assert regions.inside_share(delta, REGION[:1]).item() == pytest.approx(0.75, abs=1e-7)


def test_split_adds_up_and_respects_the_region():
    delta = torch.randn(4, 1, 8, 8, generator=G)
    inside, outside = regions.split(delta, REGION)
    assert torch.equal(inside + outside, delta)
    assert torch.all(inside[~REGION.unsqueeze(1)] == 0) and torch.all(outside[REGION.unsqueeze(1)] == 0)
    assert regions.inside_share(inside, REGION).eq(1).all() and regions.inside_share(outside, REGION).eq(0).all()


def test_feature_displacement_known_answer_and_zero():
    model = _cnn()
    delta = torch.rand(X.shape, generator=G) * 0.02
    d = regions.feature_displacement(model, X, delta, "block1")
    with torch.no_grad():
        _, a = model.forward_features(X, layers=["block1"], logits=False)
        _, b = model.forward_features(X + delta, layers=["block1"], logits=False)
    assert torch.allclose(d, (b["block1"] - a["block1"]).double().norm(dim=1), atol=1e-6)
    assert torch.all(d > 0)
    assert torch.all(regions.feature_displacement(model, X, torch.zeros_like(X)) == 0)


def test_attention_region_holds_a_fifth_of_the_pixels():
    masks = regions.attention_region(_cnn(), X, "block2", 0.2)
    assert masks.dtype == torch.bool and masks.shape == (4, 8, 8)
    assert torch.all(masks.flatten(1).sum(1) == 13)  # round(0.2 * 64)


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_confined_pgd_moves_only_the_allowed_pixels(where):
    model = _cnn()
    attack = regions.ConfinedPGD(4 / 255, where=where, steps=3, layer="block2", seed=0)
    x_adv = attack(model, X, Y)
    region = regions.attention_region(model, X, "block2", 0.2).unsqueeze(1)
    allowed = region if where == "inside" else ~region
    delta = x_adv - X
    assert torch.all(delta[~allowed] == 0)
    assert delta[allowed].abs().max() <= 4 / 255 and delta[allowed].abs().max() > 0
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(attack(model, X, Y), x_adv)  # seeded
    assert f"where={where}" in repr(attack)


def test_confined_pgd_is_pgd_on_the_allowed_pixels():
    """With the whole image allowed (complement of an empty region), the confined loop is PGD."""
    from medadv_tutorial.attacks import PGD

    model = _cnn()
    attack = regions.ConfinedPGD(2 / 255, where="outside", steps=3, layer="block2", seed=0)
    attack_region = regions.attention_region
    try:
        regions.attention_region = lambda m, x, layer, fraction: torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
        confined = attack(model, X, Y)
    finally:
        regions.attention_region = attack_region
    assert torch.allclose(confined, PGD(2 / 255, steps=3, seed=0)(model, X, Y), atol=1e-7)


def test_match_success_takes_the_smallest_budget_that_reaches_the_target():
    class Flips(nn.Module):
        """Predicts class 1 when the mean pixel exceeds 0.5: only a large enough budget flips class 0."""

        def forward(self, x):
            s = x.flatten(1).mean(1) - 0.5
            return torch.stack([-s, s], 1)

    x = torch.full((4, 1, 2, 2), 0.49)
    y = torch.zeros(4, dtype=torch.long)

    def make(eps):
        return lambda model, x, y: (x + eps).clamp(0, 1)

    eps, tried = regions.match_success(make, [8 / 255, 1 / 255, 4 / 255], Flips(), x, y, target=1.0)
    assert eps == 4 / 255 and list(tried) == [1 / 255, 4 / 255]
    assert tried[1 / 255] == 0.0 and tried[4 / 255] == 1.0
    eps, tried = regions.match_success(make, [1 / 255], Flips(), x, y, target=0.5)
    assert eps is None and tried == {1 / 255: 0.0}


def test_bad_inputs_are_named():
    delta = torch.zeros(4, 1, 8, 8)
    with pytest.raises(TypeError, match="region must be a bool mask"):
        regions.inside_share(delta, REGION.float())
    with pytest.raises(ValueError, match="region must be"):
        regions.inside_share(delta, REGION[:2])
    with pytest.raises(TypeError, match="delta must be a float tensor"):
        regions.split(delta.long(), REGION)
    with pytest.raises(ValueError, match="non-finite"):
        regions.split(delta + float("nan"), REGION)
    with pytest.raises(ValueError, match="layer must be one of"):
        regions.feature_displacement(_cnn(), X, delta, "block9")
    with pytest.raises(ValueError, match="delta must have x's shape"):
        regions.feature_displacement(_cnn(), X, delta[:2], "block1")
    with pytest.raises(ValueError, match="where must be 'inside' or 'outside'"):
        regions.ConfinedPGD(1 / 255, where="around")
    with pytest.raises(ValueError, match="budgets is empty"):
        regions.match_success(lambda e: None, [], _cnn(), X, Y, 0.5)
    with pytest.raises(ValueError, match="target"):
        regions.match_success(lambda e: None, [1 / 255], _cnn(), X, Y, 1.5)


def test_confined_pgd_runs_through_run_attack():
    from medadv_tutorial.attacks import run_attack

    model = _cnn()
    attack = regions.ConfinedPGD(4 / 255, where="inside", steps=2, layer="block2", seed=3)
    res = run_attack(attack, model, (X, Y), batch_size=4)
    assert torch.equal(res.x_adv, attack(model, X, Y))
    with pytest.raises(TypeError, match="layer must be the name of a tap"):
        regions.ConfinedPGD(1 / 255, layer=3)
