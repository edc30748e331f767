r"""Input-gradient saliency and image texture: is a medical model drawn to texture?

Ma et al. (Pattern Recognition 2021) explain the vulnerability of medical-image models partly
by the images themselves (their first explanation): medical images carry complex biological
*texture*, and textured regions are where a model's input gradient is large, so they offer many
places where a small perturbation finds a steep direction.  They show input-gradient maps of
medical and natural images on one colour scale.  This module measures that claim per image:

* :func:`input_gradients`: the saliency map :math:`S_{ij} = \sum_c |\partial L / \partial x_{c,ij}|`
  of the cross-entropy loss :math:`L(f(x), y)` (absolute values summed over the channels; its
  sum over pixels is :func:`~medadv_tutorial.stress.input_gradient_l1`);
* how concentrated a map is: :func:`fraction_above` (share of pixels above a common threshold)
  and :func:`top_mass_share` (share of the map's L1 mass in its top pixels);
* :func:`local_texture`: the local variance of the grey image in a small window, a simple
  texture map, and :func:`texture_correlation`: the per-image Spearman rank correlation between
  a saliency map and that texture map.

Statistics are returned as float64 CPU tensors ``(N,)``, one value per image, ready for
:func:`medadv_tutorial.metrics.mean_interval` (float64 on the CPU: MPS has no float64); the maps
are small, so they are moved there first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batching import resolve_batch_size
from .checks import check_finite, check_images, check_int, check_labels, check_model, check_real, describe, eval_mode
from .gradcam import _check_maps, _top_count

__all__ = ["loss_gradient", "input_gradients", "fraction_above", "top_mass_share", "local_texture",
           "texture_correlation"]


def _check_loss_inputs(model, x, y, batch_size) -> int:
    """The checks of a per-image loss's inputs (model, images, labels); returns the batch size."""
    check_model(model)
    check_images(x, "x", ndim=(4,))
    check_labels(y, len(x), "y", getattr(model, "num_classes", None))
    batch_size = resolve_batch_size(batch_size, x.device)
    if len(x) == 0:
        raise ValueError("x is empty: no image to evaluate the loss at")
    return batch_size


def loss_gradient(model, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """``d L / d x`` of the cross-entropy ``L(f(x), y)`` per image: (N, C, H, W), ``x``'s dtype.

    The one computation of the loss's input gradient in the package: :func:`input_gradients` (the
    saliency map), :func:`~medadv_tutorial.stress.input_gradient_l1` (its L1 norm) and
    :func:`~medadv_tutorial.landscape.sign_gradient` (one FGSM step's direction) read it.  Computed
    in eval mode (restored afterwards); ``x`` (N, C, H, W) in [0, 1], ``y`` (N,) true labels;
    ``batch_size`` images per pass (default the device's,
    :func:`~medadv_tutorial.batching.default_batch_size`).
    """
    batch_size = _check_loss_inputs(model, x, y, batch_size)
    out = []
    with eval_mode(model), torch.enable_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].clone().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[i : i + batch_size], reduction="sum")
            (g,) = torch.autograd.grad(loss, xb)
            out.append(g.detach())
    return torch.cat(out)


def input_gradients(model, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Per-pixel saliency ``sum_c |d L / d x_c|`` of the cross-entropy ``L(f(x), y)``: (N, H, W).

    The absolute input gradient is summed over the channels (for a grey model, ``C = 1``, it is
    just ``|d L / d x|``).  Computed in eval mode (restored afterwards) in ``x``'s dtype.

    Parameters
    ----------
    model: maps (N, C, H, W) images in [0, 1] to logits (N, K).
    x: (N, C, H, W) images in [0, 1].
    y: (N,) true labels.
    batch_size: images per pass (default the device's,
        :func:`~medadv_tutorial.batching.default_batch_size`).
    """
    return loss_gradient(model, x, y, batch_size).abs().sum(1)


def fraction_above(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per image, the fraction of pixels whose value is strictly above ``threshold``: (N,) float64.

    Use one threshold for every image (and every data set) being compared, e.g. a percentile of
    the pooled maps of a reference set, so that the fractions share a scale.
    """
    _check_maps(maps)
    threshold = check_real(threshold, "threshold")
    return (maps.detach() > threshold).flatten(1).cpu().double().mean(1)


def top_mass_share(maps: torch.Tensor, top: float = 0.05) -> torch.Tensor:
    """Per image, the share of the map's L1 mass ``sum |m|`` held by its top ``top`` fraction of pixels.

    The top pixels are the ``k`` largest in absolute value, ``k`` the nearest integer to
    ``top * H * W`` (at least one), as in :func:`~medadv_tutorial.gradcam.top_region`.  A uniform
    map gives ``k / (H * W)`` (about ``top``), a map with one non-zero pixel gives 1.  An all-zero map
    (a saturated softmax has an exactly zero gradient) has no mass to share: its value is NaN,
    which :func:`~medadv_tutorial.metrics.mean_interval` refuses, so drop such images explicitly.

    Returns (N,) float64.
    """
    _check_maps(maps)
    top = check_real(top, "top", low=0.0, low_open=True, hint=" (a share of the pixels in (0, 1))")
    if top >= 1:
        raise ValueError(f"top must be in (0, 1) (a share of the pixels, e.g. 0.05), got {top:g}")
    mass = maps.detach().abs().flatten(1).cpu().double()
    k = _top_count(top, mass.shape[1])
    total = mass.sum(1)
    share = mass.topk(k, dim=1).values.sum(1) / total
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def local_texture(x: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Local variance of the grey image in a ``window`` x ``window`` neighbourhood: (N, H, W) float64, on the CPU.

    The grey image is the channel mean of ``x``; its border is extended by reflection
    (``window // 2`` pixels, the edge pixel not repeated) and the variance computed as
    ``E[g^2] - E[g]^2`` with two ``avg_pool2d`` passes in float64, clamped at 0 (round-off).

    Parameters
    ----------
    x: (N, C, H, W) images in [0, 1].
    window: odd int >= 1, smaller than twice the image side (reflection needs ``window // 2 < H, W``).
    """
    check_images(x, "x", ndim=(4,))
    window = check_int(window, "window")
    if window % 2 == 0:
        raise ValueError(f"window must be an odd int (a neighbourhood centred on each pixel), got {window}")
    pad = window // 2
    if pad >= min(x.shape[-2:]):
        raise ValueError(f"window={window} is too large for images of size {tuple(x.shape[-2:])}: reflection "
                         f"padding needs window // 2 < {min(x.shape[-2:])}")
    grey = F.pad(x.detach().cpu().double().mean(1, keepdim=True), (pad,) * 4, mode="reflect")
    mean = F.avg_pool2d(grey, window, stride=1)
    mean_sq = F.avg_pool2d(grey * grey, window, stride=1)
    return (mean_sq - mean * mean).clamp_min(0)[:, 0]


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P along each row of ``v`` (N, P), tied values getting the mean of their ranks."""
    n, p = v.shape
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = (starts.long().cumsum(1) - 1 + torch.arange(n, device=v.device)[:, None] * p).flatten()
    position = torch.arange(1, p + 1, dtype=torch.float64, device=v.device).repeat(n)
    total = torch.zeros(n * p, dtype=torch.float64, device=v.device).index_add_(0, group, position)
    count = torch.zeros(n * p, dtype=torch.float64, device=v.device).index_add_(0, group, torch.ones_like(position))
    mean_rank = (total[group] / count[group]).view(n, p)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def texture_correlation(maps: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """Per image, the Spearman rank correlation between a saliency map and a texture map: (N,) float64.

    The Pearson correlation of the pixels' ranks, tied values getting their average rank (as
    :func:`scipy.stats.spearmanr`).  +1: the most salient pixels are the most textured ones.  A
    constant map (or texture) has no ranking: its correlation is NaN, as in SciPy.

    Parameters
    ----------
    maps: (N, H, W) saliency maps, e.g. :func:`input_gradients`.
    texture: (N, H, W) texture maps of the same images, e.g. :func:`local_texture`.
    """
    _check_maps(maps)
    if not isinstance(texture, torch.Tensor) or texture.shape != maps.shape or not texture.is_floating_point():
        raise ValueError(f"texture must be a floating tensor of the shape of maps {tuple(maps.shape)}, got "
                         f"{describe(texture)}")
    check_finite(texture, "texture")
    ranks = [_average_ranks(t.detach().flatten(1).cpu().double()) for t in (maps, texture)]
    a, b = (r - r.mean(1, keepdim=True) for r in ranks)
    denom = (a.square().sum(1) * b.square().sum(1)).sqrt()
    corr = (a * b).sum(1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, corr.clamp(-1, 1), torch.full_like(corr, float("nan")))
