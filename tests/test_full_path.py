"""Chapter 2's package calls on the ``full`` code path, at 224 px, on the ``smoke`` profile's few images.

The other chapters run end to end under ``smoke`` (``tests/test_smoke_NN.py``).  Chapter 2's own
code has no branch that depends on the profile: what differs under ``full`` is what it hands the
package -- 224-px models of every data set (grayscale and RGB, two and ten classes), attack sets
capped by the test set (``n_attack`` asks for more than it has), a stress subset smaller than the
attack set, budgets from 0.125/255 to 4/255.  This file makes those calls, in the chapter's order
and with the chapter's arguments, under the ``smoke`` profile, and checks what they return; its
whole-chapter smoke run cost twice as much for the same package code (the chapter's own cells run
under ``ci`` in nbval).
"""

import pytest
import torch

from medadv_tutorial import attacks, data, stress, training
from medadv_tutorial.profiles import get_profile

SMOKE = get_profile("smoke")
EPS_GRID = [0.125 / 255, 0.25 / 255, 0.5 / 255, 1 / 255, 2 / 255, 4 / 255]  # Chapter 2's
LAYERS = ["block3", "block8", "block13", "penultimate"]  # Chapter 2's stress-test taps


@pytest.fixture(scope="module", params=["chest_xray", "cifar10"])
def attack_set(request):
    """A smoke-profile model (224 px) and its attack set, as Chapter 2 makes them."""
    model, record = training.get_model(request.param, profile=SMOKE, seed=0, progress=False)
    test = data.load_dataset(request.param, "test", profile=SMOKE)
    x, y = training.correctly_classified(model, test, n=SMOKE.n_attack)
    assert x.shape[1:] == (test.channels, 224, 224) and len(x) == len(y) <= len(test) < SMOKE.n_attack
    if len(x) < 2:
        pytest.skip(f"{request.param}: the one-epoch smoke model classifies {len(x)} test image(s) correctly")
    return request.param, model, record, x, y


def test_the_attack_zoo_runs_at_224_px(attack_set):
    _, model, _, x, y = attack_set
    eps, steps = 1 / 255, SMOKE.attack_steps
    zoo = {"FGSM": attacks.FGSM(eps), "BIM": attacks.BIM(eps, steps=steps), "PGD": attacks.PGD(eps, steps=steps, seed=0),
           "MIM": attacks.MIM(eps, steps=steps), "CW": attacks.CWLinf(eps, steps=steps, seed=0)}
    for name, att in zoo.items():
        res = attacks.run_attack(att, model, (x, y), progress=False)
        assert res.x_adv.shape == x.shape and float((res.x_adv - x).abs().max()) <= eps + 1e-7, name
        assert 0.0 <= res.success_rate <= 1.0 and torch.equal(res.pred_clean, y), name


def test_the_success_curve_and_the_seed_rerun(attack_set):
    _, model, _, x, y = attack_set
    pgd = attacks.PGD(EPS_GRID[0], steps=SMOKE.attack_steps, seed=0, early_stop=True)
    curve = attacks.success_rate(pgd, model, (x, y), EPS_GRID, progress=False)
    assert list(curve) == EPS_GRID and all(0.0 <= v["success_rate"] <= 1.0 for v in curve.values())
    # Chapter 2 takes seed 0 of its seed rerun from the curve: the same numbers as a run of its own
    again = attacks.success_rate(pgd.replace(seed=0), model, (x, y), [EPS_GRID[0]], progress=False)
    assert again[EPS_GRID[0]] == curve[EPS_GRID[0]]


def test_the_stress_test_and_the_gradient_norms(attack_set):
    _, model, _, x, y = attack_set
    n = min(SMOKE.n_stress, len(x))
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
    dev = stress.stress_test(model, x[pick], LAYERS, eps=1 / 255, reference=x, steps=SMOKE.attack_steps,
                             progress=False)
    assert list(dev) == LAYERS
    for layer, v in dev.items():
        assert v["per_image"].shape == (n,) and bool(torch.isfinite(v["per_image"]).all()), layer
    g = stress.input_gradient_l1(model, x, y)
    assert g.shape == (len(x),) and bool((g >= 0).all())
