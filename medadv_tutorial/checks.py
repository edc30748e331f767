"""Input validation shared by every public function (messages name the argument)."""

from __future__ import annotations

import torch


def check_images(x: torch.Tensor, name: str = "x", ndim: tuple[int, ...] = (4, 5)) -> torch.Tensor:
    """Check that ``x`` is a floating tensor of images in ``[0, 1]``.

    Parameters
    ----------
    x: tensor of shape ``(N, C, H, W)`` (or ``(N, C, D, H, W)`` for volumes).
    name: the argument name used in error messages.
    ndim: accepted numbers of dimensions.

    Returns ``x`` unchanged.  Raises ``TypeError`` / ``ValueError`` otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype} "
            "(convert uint8 images with x.float() / 255)"
        )
    if x.ndim not in ndim:
        shapes = " or ".join({4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}.get(d, f"{d}-D") for d in ndim)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (images in pixel space), got values in [{lo:.4g}, {hi:.4g}]"
            " -- normalisation belongs inside the model, not in the data"
        )
    return x


def check_labels(y: torch.Tensor, n: int, name: str = "y") -> torch.Tensor:
    """Check that ``y`` is an integer tensor of shape ``(n,)``."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}")
    return y
