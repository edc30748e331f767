r"""Grad-CAM maps: where in the image does a model look for its decision?

Ma et al. (Pattern Recognition 2021) offer three explanations of why medical-image models are
easy to attack and their attacks easy to detect.  The third is about *where* the perturbation
lies: much of it falls outside the pathological region, the region the model looks at, and that
part may be what makes the attack detectable.  No data set here has lesion masks, so the region
the clean image's Grad-CAM map ranks highest stands in for it, a proxy, not the pathology.  Grad-CAM
(Selvaraju et al., ICCV 2017) is their lens.  For a convolutional activation
:math:`A \in \mathbb{R}^{C \times h \times w}` and the logit :math:`y^t` of class :math:`t`,

.. math::

   \alpha_c = \frac{1}{hw} \sum_{i,j} \frac{\partial y^t}{\partial A_{c,ij}}, \qquad
   M = \mathrm{ReLU}\Big(\sum_c \alpha_c A_c\Big),

and :math:`M` (h x w) is upsampled bilinearly to the input size.  :func:`grad_cam` returns
these raw maps, in units of the logit; :func:`normalise_maps` divides each by its maximum
(what figures show), and :func:`top_region` keeps the highest-scoring fraction of each map,
the "attention region" the chapter compares across data sets.

The channel weights :math:`\alpha_c` are global, so the map is *not* a pure gradient
attribution: it vanishes outside a region where the activation :math:`A` itself vanishes, but
not where only the later layers ignore :math:`A` (``tests/test_gradcam.py`` shows both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batching import resolve_batch_size
from .checks import check_images, check_labels, check_model, check_real, describe, eval_mode

__all__ = ["grad_cam", "normalise_maps", "top_region"]


def _tap_module(model, layer) -> torch.nn.Module:
    """The stage whose output (before pooling) is the tap ``layer`` of a Classifier."""
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one tap name such as 'block16', got {describe(layer)}")
    names = list(getattr(model, "feature_names", []))
    stages = getattr(model, "stages", None)
    if stages is None or len(names) != len(stages):
        raise TypeError(f"model must be a medadv_tutorial Classifier (with feature_names and stages), "
                        f"got {type(model).__name__}")
    if layer not in names:
        raise KeyError(f"layer {layer!r} is not a tap of the model; available: {names}")
    return stages[names.index(layer)]


def grad_cam(model, x: torch.Tensor, layer: str, target: torch.Tensor | None = None,
             batch_size: int | None = None) -> torch.Tensor:
    """Raw Grad-CAM maps of ``target``'s logit at the tap ``layer``, upsampled to the input size.

    The taps of :meth:`~medadv_tutorial.models.Classifier.forward_features` are spatially
    pooled, and Grad-CAM needs the activation map before pooling: the map ``A`` (N, C, h, w)
    is read with a forward hook on the stage that produces the tap (``model.stages[i]`` for
    ``model.feature_names[i]``; ``"penultimate"`` is the last stage, before global pooling).
    The hook is removed before the function returns, also when the model raises.

    Parameters
    ----------
    model: a :class:`~medadv_tutorial.models.Classifier` (run in eval mode, then restored).
    x: (N, C, H, W) images in [0, 1].
    layer: one name of ``model.feature_names``.
    target: (N,) class indices whose logit is explained; default the predicted class.
    batch_size: images per pass (default the device's,
        :func:`~medadv_tutorial.batching.default_batch_size`).

    Returns
    -------
    (N, H, W) tensor of ``x``'s dtype, >= 0, not normalised (see :func:`normalise_maps`):
    ``ReLU(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of ``d logit_target / d A_c``,
    upsampled bilinearly (``align_corners=False``) when ``h, w`` differ from ``H, W``.
    """
    check_model(model, "model", "forward_features")
    check_images(x, "x", ndim=(4,))
    module = _tap_module(model, layer)
    if target is not None:
        check_labels(target, len(x), "target", getattr(model, "num_classes", None))
    batch_size = resolve_batch_size(batch_size, x.device)
    if len(x) == 0:
        raise ValueError("x is empty: no image to explain")
    store: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        if not (isinstance(out, torch.Tensor) and out.ndim == 4):
            raise ValueError(f"layer {layer!r} gives {describe(out)}, not a spatial map (N, C, h, w)")
        a = out.detach().requires_grad_(True)  # the graph from here on: logits as a function of A
        store.append(a)
        return a.clone()  # a later in-place op (ReLU(inplace=True)) may change the copy, never A

    maps = []
    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.enable_grad():
            for i in range(0, len(x), batch_size):
                store.clear()
                logits = model(x[i : i + batch_size])
                t = logits.argmax(1) if target is None else target[i : i + batch_size].to(logits.device)
                (a,) = store
                (g,) = torch.autograd.grad(logits.gather(1, t[:, None].long()).sum(), a)
                alpha = g.mean(dim=(2, 3), keepdim=True)
                cam = torch.relu((alpha * a).sum(1, keepdim=True)).detach()
                if cam.shape[-2:] != x.shape[-2:]:
                    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
                maps.append(cam[:, 0].to(x.dtype))
    finally:
        handle.remove()
    return torch.cat(maps)


def _check_maps(maps, name: str = "maps") -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point() or maps.ndim != 3:
        raise ValueError(f"{name} must be a floating tensor (N, H, W) of per-pixel maps, got {describe(maps)}")
    if maps.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return maps


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map (N, H, W) divided by its maximum, so that it peaks at 1; an all-zero map stays zero.

    ``maps`` must be non-negative (Grad-CAM maps, absolute gradients); same shape and dtype back.
    """
    _check_maps(maps)
    if float(maps.min()) < 0:
        raise ValueError(f"maps must be non-negative (Grad-CAM or absolute-gradient maps), got a minimum of "
                         f"{float(maps.min()):.4g}")
    peak = maps.amax(dim=(1, 2), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero map: 0 / 1


def _top_count(fraction: float, n_pixels: int) -> int:
    """Number of pixels in the top ``fraction`` of ``n_pixels``: the nearest integer, at least 1."""
    return max(1, int(fraction * n_pixels + 0.5))


def top_region(maps: torch.Tensor, fraction: float = 0.2) -> torch.Tensor:
    """Boolean masks (N, H, W) of the top ``fraction`` of each map's pixels: the proxy attention region.

    Each mask holds exactly ``k`` pixels, ``k`` the nearest integer to ``fraction * H * W``
    (halves round up), at least one.  Ties are broken deterministically: among equal values
    the pixel that comes first in row-major order is taken first (a stable descending sort).

    Parameters
    ----------
    maps: (N, H, W) finite maps (any sign; the largest values are kept).
    fraction: in (0, 1).
    """
    _check_maps(maps)
    fraction = check_real(fraction, "fraction", low=0.0, low_open=True, hint=" (a share of the pixels in (0, 1))")
    if fraction >= 1:
        raise ValueError(f"fraction must be in (0, 1) (a share of the pixels, e.g. 0.2), got {fraction:g}")
    flat = maps.flatten(1)
    k = _top_count(fraction, flat.shape[1])
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(maps.shape)
