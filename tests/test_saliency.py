"""Saliency and texture statistics (medadv_tutorial.saliency): known answers, SciPy cross-check, bad inputs.

The model is linear (logits = W flatten(x) + b, behind a dropout that eval mode must switch off),
so the input gradient has a closed form; everything runs in milliseconds on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from toys import LinearClassifier

from medadv_tutorial import saliency, stress

G = torch.Generator().manual_seed(0)
X = torch.rand(4, 3, 5, 6, generator=G)
MAPS = torch.rand(2, 4, 4, generator=G)
Y = torch.tensor([0, 2, 1, 2])


Linear = LinearClassifier


def closed_form_gradient(m: Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d x = W^T (softmax(z) - onehot(y)), in float64."""
    w, b = m.weight.detach().double(), m.bias.detach().double()
    p = torch.softmax(x.flatten(1).double() @ w.T + b, dim=1)
    return ((p - torch.nn.functional.one_hot(y, 3).double()) @ w).view(x.shape)


# ----------------------------------------------------------------------------- input gradients


def test_input_gradients_known_answer_for_a_linear_model():
    m = Linear(X[0].numel()).train()  # dropout on: eval mode must be used, then restored
    sal = saliency.input_gradients(m, X, Y)
    assert sal.shape == (4, 5, 6) and sal.dtype == X.dtype
    torch.testing.assert_close(sal.double(), closed_form_gradient(m, X, Y).abs().sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saliency.input_gradients(m, X, Y, batch_size=3), sal, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sal.sum(dim=(1, 2)), stress.input_gradient_l1(m, X, Y), rtol=1e-5, atol=1e-6)
    assert m.training and all(p.requires_grad for p in m.parameters()) and all(p.grad is None for p in m.parameters())


# ----------------------------------------------------------------------------- concentration


def test_fraction_above_known_answer():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 0.5]]])
    assert saliency.fraction_above(maps, 1.0).tolist() == [0.5, 0.75]  # strictly above
    assert saliency.fraction_above(maps, 5.0).tolist() == [0.0, 0.0]
    assert saliency.fraction_above(maps, -1.0).tolist() == [1.0, 1.0]
    assert saliency.fraction_above(maps, 1.0).dtype == torch.float64


def test_top_mass_share_known_answers():
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]], [[-4.0, 3.0], [2.0, 1.0]]])
    assert saliency.top_mass_share(maps, top=0.25).tolist() == pytest.approx([0.4, 0.4])  # |-4| counts
    assert saliency.top_mass_share(maps, top=0.5).tolist() == pytest.approx([0.7, 0.7])
    uniform = torch.full((2, 10, 10), 0.3)
    torch.testing.assert_close(saliency.top_mass_share(uniform, top=0.05), torch.full((2,), 0.05, dtype=torch.float64))
    one_hot = torch.zeros(2, 10, 10)
    one_hot[0, 3, 7] = 2.0
    one_hot[1, 9, 0] = 1e-6
    assert saliency.top_mass_share(one_hot, top=0.05).tolist() == [1.0, 1.0]
    share = saliency.top_mass_share(torch.stack([uniform[0], torch.zeros(10, 10)]), top=0.05)
    assert share[0] == pytest.approx(0.05) and torch.isnan(share[1])  # an all-zero map has no mass to share


# ----------------------------------------------------------------------------- texture


def test_local_texture_known_answers():
    board = (torch.arange(5)[:, None] + torch.arange(5)[None, :]) % 2
    x = board.float().expand(2, 3, 5, 5).clone()
    tex = saliency.local_texture(x, window=3)
    # every 3x3 window of a checkerboard (reflection keeps the parity) holds 5 of one colour, 4 of the other
    assert tex.shape == (2, 5, 5) and tex.dtype == torch.float64
    torch.testing.assert_close(tex, torch.full((2, 5, 5), 20 / 81, dtype=torch.float64))
    assert torch.equal(saliency.local_texture(torch.full((1, 1, 6, 6), 0.7), window=5), torch.zeros(1, 6, 6,
                                                                                                   dtype=torch.float64))
    assert torch.equal(saliency.local_texture(X, window=1), torch.zeros(4, 5, 6, dtype=torch.float64))


def test_local_texture_matches_a_numpy_loop():
    grey = X.double().mean(1).numpy()
    padded = np.pad(grey, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    expected = np.array([[[padded[n, i : i + 5, j : j + 5].var() for j in range(6)] for i in range(5)]
                         for n in range(len(grey))])
    np.testing.assert_allclose(saliency.local_texture(X, window=5).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_texture_correlation_known_answers():
    ramp = torch.arange(12.0).view(1, 3, 4)
    assert saliency.texture_correlation(ramp, ramp**2).tolist() == [1.0]  # monotone: ranks agree
    assert saliency.texture_correlation(ramp, -ramp).tolist() == [-1.0]
    # ties: ranks (1.5, 1.5, 3, 4) and (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5) = 0.9487...
    maps, tex = torch.tensor([[[1.0, 1.0], [2.0, 3.0]]]), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert saliency.texture_correlation(maps, tex).item() == pytest.approx(4.5 / np.sqrt(4.5 * 5), abs=1e-15)
    flat = saliency.texture_correlation(torch.ones(1, 3, 4), ramp)
    assert flat.dtype == torch.float64 and torch.isnan(flat).all()  # a constant map has no ranking (as SciPy)


def test_texture_correlation_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 6, (5, 7, 9), generator=g).float()  # many ties
    tex = torch.randint(0, 4, (5, 7, 9), generator=g).double() + 0.5 * maps.double()
    ours = saliency.texture_correlation(maps, tex)
    theirs = [spearmanr(maps[n].flatten().numpy(), tex[n].flatten().numpy()).statistic for n in range(5)]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)
    x = torch.rand(3, 1, 8, 8, generator=g)
    sal, texture = torch.rand(3, 8, 8, generator=g), saliency.local_texture(x)
    theirs = [spearmanr(sal[n].flatten().numpy(), texture[n].flatten().numpy()).statistic for n in range(3)]
    np.testing.assert_allclose(saliency.texture_correlation(sal, texture).numpy(), theirs, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call, error, match", [
    (lambda: saliency.input_gradients(Linear(90), X, Y[:3]), ValueError, r"\by must have shape \(4,\)"),
    (lambda: saliency.input_gradients(Linear(90), X * 255, Y), ValueError, r"\bx must lie in \[0, 1\]"),
    (lambda: saliency.input_gradients(Linear(90), X, Y, batch_size=0), ValueError, r"\bbatch_size must be an int"),
    (lambda: saliency.fraction_above(MAPS[0], 0.5), ValueError, r"\bmaps must be a floating tensor \(N, H, W\)"),
    (lambda: saliency.fraction_above(MAPS, float("nan")), ValueError, r"\bthreshold must be a finite"),
    (lambda: saliency.fraction_above(torch.ones(2, 4, 4, dtype=torch.long), 0.5), ValueError, r"\bmaps must be a "
                                                                                              r"floating tensor"),
    (lambda: saliency.top_mass_share(MAPS, top=0), ValueError, r"\btop must be > 0"),
    (lambda: saliency.top_mass_share(MAPS, top=5), ValueError, r"\btop must be in \(0, 1\)"),
    (lambda: saliency.top_mass_share(torch.full((1, 2, 2), float("inf"))), ValueError, r"\bmaps contains NaN or inf"),
    (lambda: saliency.local_texture(X, window=4), ValueError, r"\bwindow must be an odd int"),
    (lambda: saliency.local_texture(X, window=0), ValueError, r"\bwindow must be an int >= 1"),
    (lambda: saliency.local_texture(X, window=11), ValueError, r"\bwindow=11 is too large for images of size \(5, 6\)"),
    (lambda: saliency.local_texture(X[:, 0], window=3), ValueError, r"\bx must have shape \(N, C, H, W\)"),
    (lambda: saliency.texture_correlation(MAPS, MAPS[:, :, :3]), ValueError,
     r"\btexture must be a floating tensor of the shape of maps \(2, 4, 4\)"),
    (lambda: saliency.texture_correlation(MAPS, torch.full_like(MAPS, float("nan"))), ValueError,
     r"\btexture contains NaN"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
