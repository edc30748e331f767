"""Known-answer tests for medadv_tutorial.attacks (tiny seeded CNN on 3x16x16 images; CPU, seconds)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medadv_tutorial.attacks import (
    BIM,
    CWLinf,
    FGSM,
    MIM,
    PGD,
    AttackResult,
    attack_mode,
    eps_at_success,
    iterative_attack,
    linf_box,
    margin,
    run_attack,
    success_rate,
)

K = 3  # classes


# ----------------------------------------------------------------------------- fixtures


def _templates() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = (torch.rand(K, 3, 4, 4, generator=g) > 0.5).float() * 2 - 1
    return F.interpolate(t, size=16, mode="nearest")  # (K, 3, 16, 16) blocky +-1 patterns


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable synthetic task: image = 0.5 + 0.25 * template[y] + noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = (0.5 + 0.25 * _templates()[y] + 0.1 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)
    return x, y


class TinyNet(nn.Module):
    """Two convs + linear head; ``forward_features`` mirrors medadv_tutorial.models.Classifier."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)  # makes train vs eval mode observable
        self.fc = nn.Linear(16, K)
        self.n_forward = 0

    def forward_features(self, x):
        self.n_forward += 1
        h1 = F.relu(self.c1(x))
        h2 = F.relu(self.c2(h1))
        pooled = h2.mean(dim=(2, 3))
        return self.fc(self.drop(pooled)), {"c1": h1.mean(dim=(2, 3)), "penultimate": pooled}

    def forward(self, x):
        return self.forward_features(x)[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and several threads on a busy 2-core
    machine made this file ~20x slower (threads waiting for each other on every small op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(one_thread) -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    x, y = make_data(512, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(128, seed=2)


def predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def fooled(model, x_adv, y) -> float:
    return (predict(model, x_adv) != y).float().mean().item()


ATTACKS = {
    "FGSM": lambda e, **kw: FGSM(e, **kw),
    "BIM": lambda e, **kw: BIM(e, **kw),
    "PGD": lambda e, **kw: PGD(e, seed=0, **kw),
    "MIM": lambda e, **kw: MIM(e, **kw),
    "CWLinf": lambda e, **kw: CWLinf(e, seed=0, **kw),
}


def test_model_is_accurate(model, data):
    x, y = data
    assert (predict(model, x) == y).float().mean() >= 0.98


# -------------------------------------------------------------------- budget properties


@pytest.mark.filterwarnings("ignore:eps=0.3 = 76.5/255 is a very large:UserWarning")  # 0.3: on purpose
@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 0.3])
@pytest.mark.parametrize("targeted", [False, True])
def test_linf_budget_and_range(model, name, eps, targeted):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 16, 16, generator=g)
    x[:, :, :3] = 0.0  # rows on the boundaries of [0, 1]
    x[:, :, -3:] = 1.0
    x[:, :, 5] = 0.3  # a value where x + eps rounds up in float32
    y = torch.randint(0, K, (16,), generator=g)
    x_adv = ATTACKS[name](eps, targeted=targeted)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps  # compared in float64, no tolerance
    assert bool(((x_adv - x).abs() <= eps).all())  # and in float32
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if eps >= 8 / 255:
        assert (x_adv - x).abs().max() > 0.5 * eps  # the attack actually moved


def test_linf_box_guards_round_off():
    x = torch.linspace(0, 1, 20001)
    eps = 4 / 255
    naive_hi, naive_lo = (x + eps).clamp(max=1), (x - eps).clamp(min=0)
    naive_excess = ((naive_hi - x).double() > eps) | ((x - naive_lo).double() > eps)
    assert naive_excess.any(), "the grid should contain round-off cases, else this test is vacuous"
    lo, hi = linf_box(x, eps)
    assert ((hi - x).double() <= eps).all() and ((x - lo).double() <= eps).all()
    assert (lo >= 0).all() and (hi <= 1).all()
    assert ((hi - x) > 0.999 * eps)[x < 1 - 1.01 * eps].all()  # no needless shrinking


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_changes_nothing(model, data, name):
    x, y = data
    x_adv = ATTACKS[name](0.0)(model, x, y)
    assert torch.equal(x_adv, x)
    assert torch.equal(predict(model, x_adv), predict(model, x))


def test_random_start_fills_the_whole_ball():
    """With a zero-gradient model the output is the random start itself: U[-eps, eps]."""
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, K))
    nn.init.zeros_(flat[1].weight)
    x = torch.full((64, 3, 16, 16), 0.5)
    eps = 8 / 255
    delta = PGD(eps, steps=1, seed=0)(flat, x, torch.zeros(64, dtype=torch.long)) - x
    assert delta.min() < -0.95 * eps and delta.max() > 0.95 * eps
    assert abs(delta.mean().item()) < 0.02 * eps
    assert abs((delta < 0).float().mean().item() - 0.5) < 0.02


# ----------------------------------------------------------------------- effectiveness


def test_pgd_succeeds_and_beats_fgsm(model, data):
    x, y = data
    assert fooled(model, PGD(4 / 255, seed=0)(model, x, y), y) < 0.2  # small eps: little effect
    eps = 24 / 255  # mid-range budget: iterating matters
    fgsm, pgd = fooled(model, FGSM(eps)(model, x, y), y), fooled(model, PGD(eps, seed=0)(model, x, y), y)
    assert pgd > 0.5 and (pgd >= fgsm + 0.1 or (pgd >= 0.99 and pgd >= fgsm))  # beats, or ties high
    assert fooled(model, PGD(48 / 255, seed=0)(model, x, y), y) >= 0.99


@pytest.mark.parametrize("name", ["FGSM", "BIM", "PGD", "MIM", "CWLinf"])
def test_targeted_attacks_hit_target(model, data, name):
    x, y = data
    target = (y + 1) % K
    x_adv = ATTACKS[name](64 / 255, targeted=True)(model, x, target)
    hit = (predict(model, x_adv) == target).float().mean().item()
    assert hit >= (0.8 if name == "FGSM" else 0.95)


def test_untargeted_label_is_not_a_target(model, data):
    """Sanity for the sign convention: an untargeted attack moves *away* from y."""
    x, y = data
    x_adv = PGD(64 / 255, seed=0)(model, x, y)
    assert (predict(model, x_adv) == y).float().mean() == 0


def test_mim_with_zero_momentum_is_bim(model, data):
    x, y = data
    bim = BIM(16 / 255, steps=8)(model, x, y)
    assert torch.equal(MIM(16 / 255, steps=8, decay=0.0)(model, x, y), bim)
    assert not torch.equal(MIM(16 / 255, steps=8, decay=1.0)(model, x, y), bim)


@pytest.mark.parametrize("targeted", [False, True])
def test_cw_reaches_margin_kappa(model, data, targeted):
    x, y = data
    labels = (y + 1) % K if targeted else y
    sign = -1 if targeted else 1  # margin(., t) < 0 means t wins
    strong = CWLinf(64 / 255, kappa=5.0, steps=20, seed=0, targeted=targeted)(model, x, labels)
    weak = CWLinf(64 / 255, kappa=0.0, steps=20, seed=0, targeted=targeted)(model, x, labels)
    with torch.no_grad():
        m_strong = sign * margin(model(strong), labels)
        m_weak = sign * margin(model(weak), labels)
    assert (m_strong >= 5.0).all()
    assert (m_weak >= 0).float().mean() >= 0.99
    assert m_weak.min() < 5.0  # kappa = 0 stops earlier: kappa really is used


def test_matches_torchattacks_reference(model, data):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = data
    ref = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    assert torch.allclose(BIM(8 / 255, alpha=2 / 255)(model, x, y), ref, atol=1e-6, rtol=0)
    ref = torchattacks.MIFGSM(model, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)(x, y)
    assert torch.allclose(MIM(8 / 255, alpha=2 / 255)(model, x, y), ref, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- mechanics


def test_seeded_runs_are_identical(model, data):
    x, y = data
    a, b = PGD(8 / 255, seed=7)(model, x, y), PGD(8 / 255, seed=7)(model, x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, PGD(8 / 255, seed=8)(model, x, y))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    attack = PGD(8 / 255)
    assert torch.equal(attack(model, x, y, generator=g1), attack(model, x, y, generator=g2))


def test_model_state_restored(model, data):
    x, y = data
    model.train()
    model.c1.eval()  # a submodule in its own mode
    model.c2.bias.requires_grad_(False)  # a frozen parameter
    seen = []
    handle = model.register_forward_hook(
        lambda m, i, o: seen.append((m.training, any(p.requires_grad for p in m.parameters())))
    )
    try:
        PGD(4 / 255, steps=2, seed=0)(model, x, y)
        assert seen and all(s == (False, False) for s in seen)  # eval, no param grads during
        assert model.training and model.drop.training and not model.c1.training
        assert model.c1.weight.requires_grad and not model.c2.bias.requires_grad

        def boom(x_adv, logits, aux):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            PGD(4 / 255, steps=2, extra_loss=boom)(model, x, y)
        assert model.training and model.drop.training and not model.c1.training
        assert model.c1.weight.requires_grad and not model.c2.bias.requires_grad
    finally:
        handle.remove()
        model.c2.bias.requires_grad_(True)
        model.eval()


def test_attack_mode_context_manager(model):
    model.train()
    with attack_mode(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()


def test_works_inside_no_grad(model, data):
    x, y = data
    with torch.no_grad():
        x_adv = PGD(32 / 255, seed=0)(model, x, y)
    assert fooled(model, x_adv, y) >= 0.99


def test_early_stop_freezes_successful_samples(model, data):
    x, y = data
    wrong = (y + 1) % K  # every sample is "already misclassified" w.r.t. these labels
    assert torch.equal(BIM(16 / 255, early_stop=True)(model, x, wrong), x)
    assert not torch.equal(BIM(16 / 255)(model, x, wrong), x)
    mixed = torch.where(torch.arange(len(y)) < 64, wrong, y)  # first half already "fooled"
    x_adv = BIM(16 / 255, early_stop=True)(model, x, mixed)
    assert torch.equal(x_adv[:64], x[:64]) and (x_adv[64:] != x[64:]).any(dim=(1, 2, 3)).all()
    free = BIM(32 / 255)(model, x, y)
    stopped = BIM(32 / 255, early_stop=True)(model, x, y)
    assert fooled(model, stopped, y) >= 0.95
    assert (stopped - x).abs().mean() < (free - x).abs().mean()


def test_empty_batch(model):
    x, y = torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long)
    assert PGD(4 / 255)(model, x, y).shape == (0, 3, 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(model, data):
    x, y = data
    net = TinyNet().cuda()
    net.load_state_dict(model.state_dict())
    x_adv = PGD(8 / 255, seed=0)(net.eval(), x.cuda(), y.cuda())
    assert x_adv.device.type == "cuda" and (x_adv.cpu() - x).abs().max().item() <= 8 / 255


# ---------------------------------------------------------------------- extra-loss hook


def test_extra_loss_is_used_and_subtracted(model, data):
    x, y = data
    x = x.clone()
    x[:, 0, 0, 0] = 0.0  # pixel 0 can only move up
    eps = 32 / 255
    free = BIM(eps, steps=4)(model, x, y)
    assert (free[:, 0, 0, 0] > 0).sum() >= 5, "without the penalty pixel 0 moves for some samples"
    held = BIM(eps, steps=4, extra_loss=lambda xa, logits, aux: 1e3 * xa[:, 0, 0, 0])(model, x, y)
    assert (held[:, 0, 0, 0] == 0).all()  # penalty on raising pixel 0: it stays put
    assert fooled(model, held, y) > 0.5  # ... while the rest of the image still attacks
    pushed = BIM(eps, steps=4, extra_loss=lambda xa, logits, aux: -1e3 * xa[:, 0, 0, 0])(model, x, y)
    assert torch.allclose(pushed[:, 0, 0, 0], torch.full((len(x),), eps), atol=1e-6)  # reward: raised


def test_extra_loss_sees_features_from_the_same_pass(model, data):
    x, y = data
    calls = []

    def feature_penalty(x_adv, logits, aux):
        calls.append(sorted(aux))
        return 50.0 * (aux["penultimate"] - clean_feats).pow(2).sum(dim=1)

    with torch.no_grad():
        _, feats = model.forward_features(x)
        clean_feats = feats["penultimate"]
    model.n_forward = 0
    hidden = PGD(16 / 255, steps=5, seed=0, forward="forward_features", extra_loss=feature_penalty)(model, x, y)
    assert model.n_forward == 5 and calls == [["c1", "penultimate"]] * 5  # one forward per step
    plain = PGD(16 / 255, steps=5, seed=0)(model, x, y)
    with torch.no_grad():
        dist = lambda z: (model.forward_features(z)[1]["penultimate"] - clean_feats).norm(dim=1).mean()  # noqa: E731
        assert dist(hidden) < 0.7 * dist(plain)
    # a callable forward(model, x) -> (logits, aux) works the same way
    same = PGD(16 / 255, steps=5, seed=0, forward=lambda m, z: m.forward_features(z),
               extra_loss=feature_penalty)(model, x, y)
    assert torch.equal(same, hidden)


class PixelZeroPenalty:
    """Penalises raising pixel 0 only for samples of class 0; learns which via ``bind``."""

    def __init__(self):
        self.bound = []

    def bind(self, x, y):
        self.bound.append((x.clone(), y.clone()))
        keep = (y == 0).float() * 1e3
        return lambda x_adv, logits, aux: keep * x_adv[:, 0, 0, 0]


def test_extra_loss_bind_sees_clean_batch_and_labels(model, data):
    x, y = data
    x = x.clone()
    x[:, 0, 0, 0] = 0.0
    term = PixelZeroPenalty()
    x_adv = BIM(32 / 255, steps=4, extra_loss=term)(model, x, y)
    assert len(term.bound) == 1 and torch.equal(term.bound[0][0], x) and torch.equal(term.bound[0][1], y)
    assert (x_adv[y == 0, 0, 0, 0] == 0).all() and (x_adv[y != 0, 0, 0, 0] > 0).any()
    term.bound.clear()
    run_attack(BIM(32 / 255, steps=2, extra_loss=term), model, (x, y), batch_size=50, progress=False)
    assert [len(b[1]) for b in term.bound] == [50, 50, 28]  # once per batch
    assert torch.equal(torch.cat([b[1] for b in term.bound]), y)


def test_iterative_attack_directly(model, data):
    x, y = data
    x_adv = iterative_attack(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
    assert torch.equal(x_adv, BIM(8 / 255, alpha=2 / 255)(model, x, y))


# ------------------------------------------------------------------------------ errors


def _bad(x=None, y=None, **kw):
    return x, y, kw


@pytest.mark.parametrize(
    "case, exc, word",
    [
        ("x above 1", ValueError, "x"),
        ("x below 0", ValueError, "x"),
        ("x nan", ValueError, "x"),
        ("x uint8", TypeError, "x"),
        ("x 3d", ValueError, "x"),
        ("y length", ValueError, "y"),
        ("y out of range", ValueError, "y"),
        ("y negative", ValueError, "y"),
        ("y float", TypeError, "y"),
        ("extra_loss scalar", ValueError, "extra_loss"),
    ],
)
def test_call_errors_name_the_argument(model, data, case, exc, word):
    x, y = data[0][:8].clone(), data[1][:8].clone()
    attack = PGD(4 / 255, steps=1)
    if case == "x above 1":
        x[0, 0, 0, 0] = 1.5
    elif case == "x below 0":
        x[0, 0, 0, 0] = -0.1
    elif case == "x nan":
        x[0, 0, 0, 0] = float("nan")
    elif case == "x uint8":
        x = (x * 255).to(torch.uint8)
    elif case == "x 3d":
        x = x[0]
    elif case == "y length":
        y = y[:5]
    elif case == "y out of range":
        y[0] = K
    elif case == "y negative":
        y[0] = -1
    elif case == "y float":
        y = y.float()
    elif case == "extra_loss scalar":
        attack = PGD(4 / 255, steps=1, extra_loss=lambda xa, logits, aux: xa.sum())
    with pytest.raises(exc, match=rf"\b{word}\b"):
        attack(model, x, y)


@pytest.mark.parametrize(
    "make, exc, word",
    [
        (lambda: PGD(-1 / 255), ValueError, "eps"),
        (lambda: PGD(float("nan")), ValueError, "eps"),
        (lambda: PGD("4/255"), TypeError, "eps"),
        (lambda: PGD(4 / 255, alpha=0.0), ValueError, "alpha"),
        (lambda: BIM(4 / 255, alpha=-1.0), ValueError, "alpha"),
        (lambda: PGD(4 / 255, steps=0), ValueError, "steps"),
        (lambda: PGD(4 / 255, steps=2.5), TypeError, "steps"),
        (lambda: MIM(4 / 255, decay=-1.0), ValueError, "momentum"),
        (lambda: CWLinf(4 / 255, kappa=-1.0), ValueError, "kappa"),
        (lambda: PGD(4 / 255, seed=1.5), TypeError, "seed"),
        (lambda: PGD(4 / 255, extra_loss=3.0), TypeError, "extra_loss"),
        (lambda: PGD(4 / 255).replace(eps=-1.0), ValueError, "eps"),
        (lambda: PGD(4 / 255).replace(colour=1), TypeError, "colour"),
    ],
)
def test_config_errors_name_the_argument(make, exc, word):
    with pytest.raises(exc, match=rf"\b{word}\b"):
        make()


def test_run_attack_errors(model, data):
    with pytest.raises(ValueError, match=r"\btargets\b"):
        run_attack(PGD(4 / 255, targeted=True), model, data, progress=False)
    with pytest.raises(ValueError, match=r"\bdata\b"):
        run_attack(PGD(4 / 255), model, (data[0], data[1][:5]), progress=False)
    with pytest.raises(TypeError, match=r"\bdata\b"):
        run_attack(PGD(4 / 255), model, 42, progress=False)
    with pytest.raises(ValueError, match=r"\blevel\b"):
        eps_at_success({0.0: 0.0}, level=0.0)


# ------------------------------------------------------------------ data-set helpers


def test_run_attack_accepts_datasets_pairs_and_loaders(model, data):
    x, y = data
    attack = BIM(16 / 255, steps=5)
    direct = attack(model, x, y)
    ds = torch.utils.data.TensorDataset(x, y[:, None])  # MedMNIST-style (1,) labels
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    for source in [(x, y), ds, loader]:
        res = run_attack(attack, model, source, batch_size=40, progress=False)
        assert isinstance(res, AttackResult) and len(res) == len(x)
        assert torch.allclose(res.x_adv, direct, atol=1e-6) and torch.equal(res.x, x) and torch.equal(res.y, y)
        x_adv, xx, yy, pred_clean, pred_adv = res
        assert torch.equal(pred_clean, predict(model, x)) and torch.equal(pred_adv, predict(model, x_adv))
        correct = pred_clean == y
        expected = ((pred_adv != y) & correct).sum().item() / correct.sum().item()
        assert res.success_rate == pytest.approx(expected)
        assert res.adv_accuracy == pytest.approx((pred_adv == y).float().mean().item())


def test_run_attack_targeted(model, data):
    res = run_attack(PGD(64 / 255, targeted=True, seed=0), model, data, targets=lambda y: (y + 1) % K,
                     batch_size=50, progress=False)
    assert torch.equal(res.target, (res.y + 1) % K)
    assert res.success_rate >= 0.95
    assert res.summary()["n_attacked"] == int((res.pred_clean == res.y).sum())


def test_success_rate_over_eps(model, data):
    x, y = data
    attack = PGD(1 / 255, seed=0)
    grid = [0.0, 4 / 255, 16 / 255, 32 / 255]
    curve = success_rate(attack, model, data, eps=grid, batch_size=50, progress=False)
    assert list(curve) == grid
    clean_correct = int((predict(model, x) == y).sum())
    assert all(curve[e]["n_attacked"] == clean_correct for e in grid)
    assert curve[0.0]["success_rate"] == 0.0
    assert curve[0.0]["adv_accuracy"] == pytest.approx(clean_correct / len(y))
    assert curve[32 / 255]["success_rate"] >= 0.99
    rates = [curve[e]["success_rate"] for e in grid]
    assert rates == sorted(rates)
    # same numbers as run_attack at one eps (same seeding per batch)
    single = run_attack(attack.replace(eps=16 / 255), model, data, batch_size=50, progress=False)
    assert single.summary() == curve[16 / 255]


def test_attacked_mask_and_success_known_answer():
    y = torch.tensor([0, 0, 1, 1, 1])
    res = AttackResult(torch.zeros(5, 1, 2, 2), torch.zeros(5, 1, 2, 2), y, pred_clean=torch.tensor([0, 1, 1, 1, 1]),
                       pred_adv=torch.tensor([1, 1, 0, 1, 0]))
    assert res.attacked.tolist() == [True, False, True, True, True]
    assert res.success.tolist() == [True, False, True, False, True]
    assert res.success[res.attacked].float().mean() == res.success_rate == 0.75
    targeted = dataclasses.replace(res, target=torch.tensor([1, 0, 1, 0, 0]))  # image 2's target is its label
    assert targeted.attacked.tolist() == [True, False, False, True, True]
    assert targeted.success.tolist() == [True, False, False, False, True]
    assert targeted.success[targeted.attacked].float().mean() == pytest.approx(targeted.success_rate) \
        and targeted.success_rate == pytest.approx(2 / 3)


def test_eps_at_success_known_answers():
    curve = {0.0: 0.0, 2 / 255: 0.4, 4 / 255: 0.8, 8 / 255: 1.0}
    assert eps_at_success(curve, 0.5) == pytest.approx(2.5 / 255)
    assert eps_at_success(curve, 0.5, interpolate=False) == pytest.approx(4 / 255)
    assert eps_at_success(curve, 0.9) == pytest.approx(6 / 255)
    assert eps_at_success(curve, 0.4) == pytest.approx(2 / 255)
    assert eps_at_success({1 / 255: 0.97, 2 / 255: 1.0}, 0.95) == pytest.approx(1 / 255)
    assert eps_at_success({1 / 255: 0.1, 2 / 255: 0.2}, 0.5) is None
    nested = {e: {"success_rate": s} for e, s in curve.items()}
    assert eps_at_success(nested, 0.95) == pytest.approx(7 / 255)
    assert eps_at_success({0.0: 0.0, 1.0: float("nan"), 2.0: 1.0}, 0.5) == pytest.approx(1.0)


def test_repr_reads_in_pixel_units():
    assert repr(PGD(4 / 255, steps=20)) == "PGD(eps=4/255, alpha=1/255, steps=20, random_start=True, targeted=False)"
    assert "kappa=2.0" in repr(CWLinf(8 / 255, kappa=2))
    assert PGD(4 / 255).replace(eps=8 / 255).alpha == pytest.approx(2 / 255)
    assert PGD(4 / 255, alpha=1 / 255).replace(eps=8 / 255).alpha == pytest.approx(1 / 255)
    assert math.isclose(FGSM(4 / 255).alpha, 4 / 255)
    assert "alpha=0.5/255" in repr(BIM(2 / 255)) and "eps=0.01" in repr(PGD(0.01))
