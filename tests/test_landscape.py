"""Loss landscape (medadv_tutorial.landscape): closed forms on a linear model, convexity, bad inputs.

With affine logits z = W x + b the cross-entropy L(x) = logsumexp(z) - z_y is convex in x, which
gives exact statements: along s = sign(grad L) the loss never decreases (a convex function of the
step t whose slope at t = 0 is ||grad L||_1 >= 0), and one step of size eps raises it by at least the
first-order term eps ||grad L||_1.  The images stay in [0.45, 0.55] and the steps below 8/255, so no
clipping shortens a step.
"""

from __future__ import annotations

import pytest
import torch
from toys import LinearClassifier

from medadv_tutorial import landscape, stress

G = torch.Generator().manual_seed(0)
X = 0.45 + 0.1 * torch.rand(6, 1, 4, 4, generator=G)
Y = torch.tensor([0, 1, 2, 0, 1, 2])
RADII = torch.linspace(0, 4 / 255, 5)


Linear = LinearClassifier


def closed_form_loss(m: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy logsumexp(z) - z_y in float64."""
    z = x.flatten(1).double() @ m.weight.detach().double().T + m.bias.detach().double()
    return torch.logsumexp(z, 1) - z[torch.arange(len(y)), y]


def closed_form_gradient(m: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w, b = m.weight.detach().double(), m.bias.detach().double()
    p = torch.softmax(x.flatten(1).double() @ w.T + b, dim=1)
    return ((p - torch.nn.functional.one_hot(y, 3).double()) @ w).view(x.shape)


def test_sign_gradient_known_answer():
    m = Linear().train()  # dropout on: eval mode must be used, then restored
    s = landscape.sign_gradient(m, X, Y)
    g = closed_form_gradient(m, X, Y)
    assert s.shape == X.shape and s.dtype == X.dtype
    assert bool((g.abs() > 1e-6).all())  # no component near zero, so the signs are unambiguous
    assert torch.equal(s.double(), g.sign())
    assert m.training and all(p.requires_grad and p.grad is None for p in m.parameters())


def test_loss_grid_equals_the_closed_form_at_the_shifted_inputs():
    m, other = Linear().train(), Linear(seed=2)
    d1, d2 = landscape.sign_gradient(m, X, Y), landscape.sign_gradient(other, X, Y)  # own and transferred
    grid = landscape.loss_grid(m, X, Y, d1, d2, RADII)
    assert grid.shape == (5, 5, 6) and grid.dtype == torch.float64
    expected = torch.stack([torch.stack([closed_form_loss(m, X + a * d1 + b * d2, Y) for b in RADII]) for a in RADII])
    torch.testing.assert_close(grid, expected, rtol=1e-5, atol=1e-5)
    clean = torch.nn.functional.cross_entropy(m.eval()(X), Y, reduction="none").double()
    m.train()
    assert torch.equal(grid[0, 0], clean)  # x + 0 * d1 + 0 * d2 is x
    torch.testing.assert_close(landscape.loss_grid(m, X, Y, d1, d2, RADII.tolist(), batch_size=4), grid,
                               rtol=1e-6, atol=1e-6)
    assert m.training and all(p.requires_grad for p in m.parameters())


def test_the_loss_rises_monotonically_along_its_own_sign_gradient():
    """Convexity in x: L(x + t s) is convex in t with slope ||grad L||_1 >= 0 at 0, so non-decreasing."""
    m = Linear()
    d1 = landscape.sign_gradient(m, X, Y)
    grid = landscape.loss_grid(m, X, Y, d1, torch.zeros_like(d1), torch.linspace(0, 8 / 255, 9))
    assert bool((grid[1:, 0] - grid[:-1, 0] >= -1e-6).all())
    assert bool((grid[-1, 0] > grid[0, 0]).all())


@pytest.mark.parametrize("eps", [1 / 255, 4 / 255])
def test_sharpness_of_a_linear_model_is_at_least_the_first_order_term(eps):
    """Convexity: L(x + eps s) >= L(x) + eps <grad L, s> = L(x) + eps ||grad L||_1 >= L(x)."""
    m = Linear().train()
    rise = landscape.sharpness(m, X, Y, eps=eps)
    first_order = eps * stress.input_gradient_l1(m, X, Y).double()
    assert rise.shape == (6,) and rise.dtype == torch.float64
    assert bool((rise >= first_order - 1e-5).all()) and bool((rise > 0).all())
    s = landscape.sign_gradient(m, X, Y)
    exact = closed_form_loss(m, X + eps * s, Y) - closed_form_loss(m, X, Y)
    torch.testing.assert_close(rise, exact, rtol=1e-4, atol=1e-5)
    assert m.training and all(p.requires_grad and p.grad is None for p in m.parameters())


def test_loss_grid_clips_to_the_unit_box():
    m = Linear()
    x = torch.zeros(2, 1, 4, 4)
    d = -torch.ones_like(x)  # would leave [0, 1]: clipped back to x itself
    grid = landscape.loss_grid(m, x, Y[:2], d, d, [0.0, 2 / 255])
    assert torch.equal(grid[1, 1], grid[0, 0])


@pytest.mark.parametrize("call, error, match", [
    (lambda: landscape.loss_grid(Linear(), X, Y, X[:3], X, RADII), ValueError,
     r"\bd1 must be a floating tensor of the shape of x \(6, 1, 4, 4\)"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X.long(), RADII), ValueError, r"\bd2 must be a floating tensor"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X.view(6, 1, 16, 1), RADII), ValueError, r"\bd2 must be"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X, RADII.view(5, 1)), ValueError, r"\bradii must be a non-empty "
                                                                                     r"1-D sequence"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X, []), ValueError, r"\bradii must be a non-empty 1-D"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X, [0.0, -1 / 255]), ValueError, r"\bradii must be >= 0"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X, [0, 8]), ValueError, r"\bradii\b.*did you mean 8/255"),
    (lambda: landscape.loss_grid(Linear(), X, Y, X, X, "small"), TypeError, r"\bradii must be a 1-D sequence"),
    (lambda: landscape.loss_grid(Linear(), X, Y[:5], X, X, RADII), ValueError, r"\by must have shape \(6,\)"),
    (lambda: landscape.sign_gradient(Linear(), X, Y + 1), ValueError, r"\by holds class index 3"),
    (lambda: landscape.sign_gradient(Linear(), X[:0], Y[:0]), ValueError, r"\bx is empty"),
    (lambda: landscape.sharpness(Linear(), X, Y, eps=8), ValueError, r"\beps\b.*did you mean 8/255"),
    (lambda: landscape.sharpness(Linear(), X, Y, eps=-1 / 255), ValueError, r"\beps must be >= 0"),
    (lambda: landscape.sharpness(Linear(), X, Y, batch_size=1.5), TypeError, r"\bbatch_size must be an int"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
