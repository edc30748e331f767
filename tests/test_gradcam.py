"""Grad-CAM (medadv_tutorial.gradcam): known answers on toy Classifiers, properties, bad inputs.

The toys are tiny :class:`~medadv_tutorial.models.Classifier` s on 1x8x8 images with fixed (or
explicitly seeded) weights, so every test runs in milliseconds on one core.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medadv_tutorial import gradcam, models

G = torch.Generator().manual_seed(0)
X = torch.rand(5, 1, 8, 8, generator=G)
MAPS = torch.rand(2, 4, 4, generator=G)
REGION = torch.zeros(8, 8, dtype=torch.bool)
REGION[2:6, 3:8] = True  # aligned with the 8x8 feature grid: no upsampling, no blur
W_HEAD = torch.tensor([[1.0, -0.5], [-1.0, 2.0]])


class Mask(nn.Module):
    """Zeroes every activation outside REGION."""

    def forward(self, a):
        return a * REGION.to(a.dtype)


def _two_channels() -> nn.Conv2d:
    """1x1 conv on the grey image repeated to RGB: channel 0 = x, channel 1 = 1 - x."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 0] = -1.0
        conv.bias.copy_(torch.tensor([0.0, 1.0]))
    return conv


def region_toy(mask_in_tap: bool) -> models.Classifier:
    """stem (tap, 8x8) -> head (identity) -> mean pool -> fc(W_HEAD); the logits see REGION only.

    ``mask_in_tap``: the mask is the last layer of the tapped stage (the activation itself is zero
    outside REGION); otherwise it is the next stage (only the later layers ignore the outside).
    """
    with torch.random.fork_rng(devices=[]):  # module construction draws from the global generator
        stem = nn.Sequential(_two_channels(), Mask()) if mask_in_tap else _two_channels()
        head = nn.Identity() if mask_in_tap else Mask()
        m = models.Classifier([("stem", stem), ("head", head)], 2, 2, 1, (0.0,) * 3, (1.0,) * 3,
                              dropout=0.0, backbone="toy")
    with torch.no_grad():
        m.fc.weight.copy_(W_HEAD)
        m.fc.bias.zero_()
    return m.eval()


def strided_toy(cls=models.Classifier) -> models.Classifier:
    """stem (8x8) -> block1 (stride 2: 4x4) -> head (4x4) with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        stages = [("stem", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())),
                  ("block1", nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU())),
                  ("head", nn.Sequential(nn.Conv2d(6, 5, 1), nn.ReLU()))]
        m = cls(stages, 5, 3, 1, (0.5,) * 3, (0.25,) * 3, dropout=0.3, backbone="toy")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.eval()


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("layer", ["stem", "penultimate"])
@pytest.mark.parametrize("t", [0, 1])
def test_map_is_zero_outside_the_region_the_activation_lives_in(layer, t):
    """Mask inside the tap: A = 0 outside REGION, alpha_c = W[t, c] / 64, map = ReLU(sum_c alpha_c A_c)."""
    m = region_toy(mask_in_tap=True)
    target = torch.full((len(X),), t)
    cam = gradcam.grad_cam(m, X, layer, target=target)
    a = torch.stack([X[:, 0], 1 - X[:, 0]], 1) * REGION
    expected = torch.relu(torch.einsum("c,nchw->nhw", W_HEAD[t] / 64, a))
    assert cam.shape == (len(X), 8, 8) and cam.dtype == X.dtype
    assert torch.equal(cam[:, ~REGION], torch.zeros_like(cam[:, ~REGION]))
    torch.testing.assert_close(cam, expected, rtol=1e-6, atol=1e-7)
    assert cam[:, REGION].max() > 0  # the known answer is not the trivial zero map


def test_channel_weights_are_global_so_a_mask_after_the_tap_leaks():
    """Mask after the tap: the gradient is zero outside REGION, but alpha_c is a global mean, so the
    map is ReLU(|REGION| / 64**2 * sum_c W[t, c] A_c) everywhere, outside REGION too."""
    m = region_toy(mask_in_tap=False)
    target = torch.zeros(len(X), dtype=torch.long)
    cam = gradcam.grad_cam(m, X, "stem", target=target)
    a = torch.stack([X[:, 0], 1 - X[:, 0]], 1)
    expected = torch.relu(torch.einsum("c,nchw->nhw", W_HEAD[0] * REGION.sum() / 64**2, a))
    torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-7)
    assert cam[:, ~REGION].max() > 0


def _manual_grad_cam(m: models.Classifier, x: torch.Tensor, tap: int, t: torch.Tensor) -> torch.Tensor:
    """Grad-CAM by running the stages one by one (no hook): an independent path."""
    h = m.normalize(x)
    for stage in m.stages[: tap + 1]:
        h = stage(h)
    a = h.detach().requires_grad_(True)
    h = a
    for stage in m.stages[tap + 1:]:
        h = stage(h)
    logits = m.fc(h.mean(dim=(2, 3)))
    (g,) = torch.autograd.grad(logits[torch.arange(len(x)), t].sum(), a)
    cam = torch.relu(torch.einsum("nc,nchw->nhw", g.mean(dim=(2, 3)), a)).detach()
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def test_low_resolution_tap_matches_a_manual_computation_upsampled_bilinearly():
    m = strided_toy()
    pred = m(X).argmax(1)
    cam = gradcam.grad_cam(m, X, "block1")  # 4x4 map, upsampled to 8x8
    assert cam.shape == (len(X), 8, 8) and bool((cam >= 0).all())
    torch.testing.assert_close(cam, _manual_grad_cam(m, X, 1, pred), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cam, gradcam.grad_cam(m, X, "block1", target=pred), rtol=0, atol=0)
    t = (pred + 1) % 3
    torch.testing.assert_close(gradcam.grad_cam(m, X, "block1", target=t, batch_size=2),
                               _manual_grad_cam(m, X, 1, t), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- properties


def test_scaling_the_logits_scales_the_map_by_the_same_factor():
    m = strided_toy()
    scaled = copy.deepcopy(m)
    with torch.no_grad():
        scaled.fc.weight.mul_(3.0)
        scaled.fc.bias.mul_(3.0)
    for layer in ("stem", "block1", "penultimate"):
        cam, cam3 = gradcam.grad_cam(m, X, layer), gradcam.grad_cam(scaled, X, layer)  # same predictions
        torch.testing.assert_close(cam3, 3.0 * cam, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gradcam.normalise_maps(cam3), gradcam.normalise_maps(cam), rtol=1e-5, atol=1e-6)


class Exploding(models.Classifier):
    explode = False

    def forward_features(self, x, layers=None, logits=True):
        if self.explode:
            raise RuntimeError("boom")
        return super().forward_features(x, layers, logits)


@pytest.mark.parametrize("explode", [False, True])
def test_model_mode_flags_and_hooks_are_restored(explode):
    m = strided_toy(Exploding).train()
    m.stages[0].eval()
    m.fc.bias.requires_grad_(False)
    modes = [mod.training for mod in m.modules()]
    flags = [p.requires_grad for p in m.parameters()]
    m.explode = explode
    if explode:
        with pytest.raises(RuntimeError, match="boom"):
            gradcam.grad_cam(m, X, "block1")
    else:
        cam = gradcam.grad_cam(m, X, "block1")
        m.eval()  # dropout was on: the map must be the eval-mode one
        torch.testing.assert_close(cam, gradcam.grad_cam(m, X, "block1"), rtol=0, atol=0)
        m.train()
        m.stages[0].eval()
    assert [mod.training for mod in m.modules()] == modes and [p.requires_grad for p in m.parameters()] == flags
    assert all(not mod._forward_hooks for mod in m.modules())
    assert all(p.grad is None for p in m.parameters())


def test_normalise_maps_known_answer():
    maps = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = gradcam.normalise_maps(maps)
    assert torch.equal(out, torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))


def test_top_region_known_answer_and_ties():
    maps = torch.tensor([[3.0, 1, 4, 1, 5, 9, 2, 6, 5, 3], [1.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]]).view(2, 2, 5)
    mask = gradcam.top_region(maps, fraction=0.2)  # 2 of 10 pixels
    assert mask.dtype == torch.bool and mask.shape == maps.shape
    assert mask.flatten(1)[0].nonzero().flatten().tolist() == [5, 7]  # the 9 and the 6
    assert mask.flatten(1)[1].nonzero().flatten().tolist() == [0, 1]  # ties: first in row-major order
    # 5 (index 4) and 5 (index 8) tie for third place: the first one is taken
    assert gradcam.top_region(maps, fraction=0.3).flatten(1)[0].nonzero().flatten().tolist() == [4, 5, 7]
    assert gradcam.top_region(maps, fraction=0.25).flatten(1).sum(1).tolist() == [3, 3]  # 2.5 rounds up
    assert gradcam.top_region(maps, fraction=0.01).flatten(1).sum(1).tolist() == [1, 1]  # at least one pixel


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call, error, match", [
    (lambda m: gradcam.grad_cam(m, X, "block9"), KeyError, r"layer 'block9' is not a tap of the model; available: "
                                                           r"\['stem', 'block1', 'penultimate'\]"),
    (lambda m: gradcam.grad_cam(m, X, ["block1"]), TypeError, r"\blayer must be one tap name"),
    (lambda m: gradcam.grad_cam(m, X, "block1", target=torch.zeros(len(X) + 1, dtype=torch.long)), ValueError,
     r"\btarget must have shape \(5,\)"),
    (lambda m: gradcam.grad_cam(m, X, "block1", target=torch.zeros(len(X))), TypeError,
     r"\btarget must hold integer class indices"),
    (lambda m: gradcam.grad_cam(m, X, "block1", target=torch.full((len(X),), 3)), ValueError,
     r"\btarget holds class index 3"),
    (lambda m: gradcam.grad_cam(nn.Identity(), X, "block1"), TypeError, r"\bmodel must be a module with a "
                                                                         r"forward_features\(\) method"),
    (lambda m: gradcam.grad_cam(m, X[:0], "block1"), ValueError, r"\bx is empty"),
    (lambda m: gradcam.top_region(MAPS, fraction=0.0), ValueError, r"\bfraction must be > 0"),
    (lambda m: gradcam.top_region(MAPS, fraction=1.0), ValueError, r"\bfraction must be in \(0, 1\)"),
    (lambda m: gradcam.top_region(MAPS, fraction=20), ValueError, r"\bfraction must be in \(0, 1\)"),
    (lambda m: gradcam.top_region(MAPS, fraction=-0.1), ValueError, r"\bfraction must be > 0"),
    (lambda m: gradcam.top_region(MAPS, fraction="0.2"), TypeError, r"\bfraction must be a real"),
    (lambda m: gradcam.top_region(MAPS[:, None]), ValueError, r"\bmaps must be a floating tensor \(N, H, W\)"),
    (lambda m: gradcam.normalise_maps(-MAPS), ValueError, r"\bmaps must be non-negative"),
    (lambda m: gradcam.normalise_maps(torch.full((1, 2, 2), float("nan"))), ValueError, r"\bmaps contains NaN"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(strided_toy())
