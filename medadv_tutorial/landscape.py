r"""The loss landscape around an image: are medical models' losses sharp?

Ma et al. (Pattern Recognition 2021) explain the vulnerability of medical-image models partly by
their loss landscape: trained on small, simple data sets, the models are over-parameterised and
their loss surface around an image is *sharp*, so a tiny step along the gradient already raises
the loss a lot.  They show it with 2-D loss surfaces over two perturbation directions (the
sign-gradient of the model itself and that of a second, transferred model).  This module
computes that surface and one per-image scalar for it:

* :func:`loss_grid`: :math:`L\big(\mathrm{clip}_{[0,1]}(x + a\,d_1 + b\,d_2),\, y\big)` over a
  grid of step sizes :math:`a, b`, with :math:`L` the per-image cross-entropy;
* :func:`sign_gradient`: the direction :math:`\mathrm{sign}(\nabla_x L)` (one FGSM step's);
* :func:`sharpness`: the loss rise of one FGSM step,
  :math:`L(\mathrm{clip}(x + \epsilon\,\mathrm{sign}\nabla_x L)) - L(x)`, per image, for
  :func:`medadv_tutorial.metrics.mean_interval`.

Forward and backward passes run in ``x``'s dtype (float32) on ``x``'s device; returned losses are
float64 CPU tensors (MPS has no float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_eps, check_finite, describe, eval_mode
from .saliency import _check_loss_inputs, loss_gradient

__all__ = ["loss_grid", "sign_gradient", "sharpness"]


def _check_direction(d, x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(d, torch.Tensor) or not d.is_floating_point() or d.shape != x.shape:
        raise ValueError(f"{name} must be a floating tensor of the shape of x {tuple(x.shape)} (one direction per "
                         f"image), got {describe(d)}")
    return check_finite(d, name)


def _check_radii(radii) -> torch.Tensor:
    try:
        r = torch.as_tensor(radii, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"radii must be a 1-D sequence of step sizes such as torch.linspace(0, 8/255, 9), got "
                        f"{describe(radii)}") from err
    if r.ndim != 1 or len(r) == 0:
        raise ValueError(f"radii must be a non-empty 1-D sequence of step sizes such as torch.linspace(0, 8/255, 9), "
                         f"got shape {tuple(r.shape)}")
    check_finite(r, "radii")
    if float(r.min()) < 0:
        raise ValueError(f"radii must be >= 0 (step sizes along the directions), got {float(r.min()):.4g}")
    check_eps(float(r.max()), "radii")  # pixel units: 8 (meant 8/255) is refused
    return r


def loss_grid(model, x: torch.Tensor, y: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, radii,
              batch_size: int | None = None) -> torch.Tensor:
    """Per-image cross-entropy over a 2-D grid of perturbations: (R, R, N) float64.

    ``grid[i, j, n]`` is the loss of image ``n`` at ``clip(x + radii[i] * d1 + radii[j] * d2, 0, 1)``
    (``reduction="none"``), so ``grid[0, 0]`` is the clean loss when ``radii[0] == 0``.  With
    sign directions (:func:`sign_gradient`) a step ``a`` is an L-inf step of size ``a``.

    Parameters
    ----------
    model: maps (N, C, H, W) images in [0, 1] to logits (N, K); run in eval mode, then restored.
    x: (N, C, H, W) images in [0, 1].  y: (N,) labels.
    d1, d2: (N, C, H, W) directions, e.g. the sign-gradients of this model and of another one.
    radii: 1-D step sizes >= 0 in pixel units, e.g. ``torch.linspace(0, 8/255, 9)``.
    batch_size: images per forward pass (default the device's,
        :func:`~medadv_tutorial.batching.default_batch_size`).
    """
    batch_size = _check_loss_inputs(model, x, y, batch_size)
    d1, d2 = _check_direction(d1, x, "d1"), _check_direction(d2, x, "d2")
    r = _check_radii(radii).tolist()
    grid = torch.empty(len(r), len(r), len(x), dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        for n in range(0, len(x), batch_size):
            xb, yb, u, v = (t[n : n + batch_size] for t in (x, y, d1, d2))
            for i, a in enumerate(r):
                for j, b in enumerate(r):
                    loss = F.cross_entropy(model((xb + a * u + b * v).clamp(0, 1)), yb, reduction="none")
                    grid[i, j, n : n + len(xb)] = loss.double().cpu()
    return grid


def sign_gradient(model, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``sign(d L / d x)`` of the cross-entropy ``L(f(x), y)``: (N, C, H, W) in {-1, 0, 1}, ``x``'s dtype.

    The direction of one FGSM step; computed in eval mode (restored afterwards).
    """
    return loss_gradient(model, x, y, batch_size).sign()


def sharpness(model, x: torch.Tensor, y: torch.Tensor, eps: float = 1 / 255,
              batch_size: int | None = None) -> torch.Tensor:
    """Per-image loss rise of one FGSM step, ``L(clip(x + eps * sign(grad_x L))) - L(x)``: (N,) float64.

    To first order the rise is ``eps * ||grad_x L||_1`` (:func:`~medadv_tutorial.stress.input_gradient_l1`);
    the difference between the two is the curvature the step meets.  For a model whose logits are
    affine in ``x`` the cross-entropy is convex in ``x``, so the rise is at least that first-order
    term (and >= 0) wherever clipping does not shorten the step; for a deep network it can be negative.

    Parameters
    ----------
    model, x, y: as for :func:`loss_grid`.
    eps: the step, in pixel units (default 1/255).
    """
    batch_size = _check_loss_inputs(model, x, y, batch_size)
    eps = check_eps(eps, "eps")
    d = sign_gradient(model, x, y, batch_size=batch_size)
    out = []
    with eval_mode(model), torch.no_grad():
        for n in range(0, len(x), batch_size):
            xb, yb, db = x[n : n + batch_size], y[n : n + batch_size], d[n : n + batch_size]
            clean, stepped = (F.cross_entropy(model(xs), yb, reduction="none").double()
                              for xs in (xb, (xb + eps * db).clamp(0, 1)))
            out.append((stepped - clean).cpu())
    return torch.cat(out)
