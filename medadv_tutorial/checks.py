"""Input validation shared by every public function, and the guard that restores a model's state.

Every check raises at the public boundary, once per call (never inside an attack or EM loop),
with a message that names the argument, says what was expected and what was received::

    check_int(0, "batch_size")   # ValueError: batch_size must be an int >= 1, got int 0
    check_eps(8, "eps")          # ValueError: eps must be ... in [0, 1] ..., got 8; did you mean 8/255 = 0.03137?

:func:`eval_mode` is the one context manager behind every helper that switches a model to eval
mode: it restores each submodule's ``training`` flag and each parameter's ``requires_grad``,
also when the body raises.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterator

import torch
from torch import nn

LARGE_EPS = 64 / 255
"""Budgets above this warn: far beyond the literature's (1/255 to 16/255), usually a unit mistake."""


class CorruptFileError(ValueError):
    """A file the package wrote (a checkpoint, a saved feature set or HFC model) cannot be read back."""

    @classmethod
    def of(cls, what: str, path, err: BaseException, advice: str) -> "CorruptFileError":
        """``"<what> <path> cannot be read (<error>): <advice>"``, raised ``from err`` by the caller."""
        return cls(f"{what} {path} cannot be read ({type(err).__name__}: {str(err)[:300] or 'no message'}): {advice}")


def describe(value) -> str:
    """``"int 3"``, ``"str 'a'"``, ``"NoneType"``, ``"Tensor float32 (2, 3)"``: what was received."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else type(value).__name__


def check_int(value, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (``bool`` and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def check_real(value, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, finite: bool = True, hint: str = "") -> float:
    """``value`` as a ``float``, not NaN (and finite unless ``finite=False``), ``>= low`` (``> low``
    with ``low_open``) and ``<= high``.  One-element floating tensors are accepted."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{hint}, got {describe(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number{hint}, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}{hint}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}{hint}, got {value:g}")
    return value


def check_seed(seed, name: str = "seed") -> int:
    """A seed: an ``int`` in ``[0, 2**63 - 1]`` (what every random generator accepts)."""
    return check_int(seed, name, 0, 2**63 - 1)


def check_eps(eps, name: str = "eps") -> float:
    """An L-inf budget in pixel units of images in ``[0, 1]``: a float in ``[0, 1]``.

    Above 1 the value cannot be a pixel-space budget (``8`` was meant as ``8/255``): ``ValueError``.
    Above :data:`LARGE_EPS` (64/255) a ``UserWarning`` says so.
    """
    eps = check_real(eps, name, low=0.0, hint=" (an L-inf radius in pixel units, e.g. 4/255)")
    if eps > 1:
        raise ValueError(f"{name} must be an L-inf radius in pixel units of images in [0, 1] (e.g. 8/255 = "
                         f"{8 / 255:.4g}), got {eps:g}; did you mean {eps:g}/255 = {eps / 255:.4g}?")
    if eps > LARGE_EPS:
        warnings.warn(f"{name}={eps:.4g} = {eps * 255:.4g}/255 is a very large L-inf budget (papers use 1/255 to "
                      f"16/255 on images in [0, 1]); did you mean {eps:.4g}/255 = {eps / 255:.4g}?",
                      UserWarning, stacklevel=3)
    return eps


def check_images(x: torch.Tensor, name: str = "x", ndim: tuple[int, ...] | None = (4, 5)) -> torch.Tensor:
    """Check that ``x`` is a floating tensor of images in ``[0, 1]``.

    Parameters
    ----------
    x: tensor of shape ``(N, C, H, W)`` (or ``(N, C, D, H, W)`` for volumes).
    name: the argument name used in error messages.
    ndim: accepted numbers of dimensions (``None``: any).

    Returns ``x`` unchanged.  Raises ``TypeError`` / ``ValueError`` otherwise.
    """
    check_image_tensor(x, name, ndim)
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


def check_unit_range(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Check that the values of the non-empty tensor ``x`` lie in ``[0, 1]`` (NaN refused) with one
    reduction and one read of two numbers; returns ``x``."""
    lo, hi = torch.stack(torch.aminmax(x.detach().reshape(-1))).tolist()
    if not (lo >= 0.0 and hi <= 1.0):  # also False for NaN
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"{name} contains NaN values")
        hint = " (uint8-style values: divide by 255)" if hi > 1.0 and hi <= 255.0 and lo >= 0.0 else ""
        raise ValueError(
            f"{name} must lie in [0, 1] (images in pixel space), got values in [{lo:.4g}, {hi:.4g}]{hint}"
            " -- normalisation belongs inside the model, not in the data"
        )
    return x


def check_image_tensor(x: torch.Tensor, name: str = "x", ndim: tuple[int, ...] | None = (4, 5)) -> torch.Tensor:
    """The part of :func:`check_images` that reads no value (no device synchronisation, so a
    model may run it at every forward pass): a floating tensor with ``ndim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype} "
            "(convert uint8 images with x.float() / 255)"
        )
    if ndim is not None and x.ndim not in ndim:
        shapes = " or ".join({4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}.get(d, f"{d}-D") for d in ndim)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    return x


def as_labels(y) -> torch.Tensor:
    """Labels as a tensor; MedMNIST-style ``(N, 1)`` columns become ``(N,)`` (no dtype change)."""
    y = torch.as_tensor(y)
    return y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y


def check_labels(y: torch.Tensor, n: int, name: str = "y", num_classes: int | None = None,
                 of: str = "the images") -> torch.Tensor:
    """Check that ``y`` is an integer tensor of shape ``(n,)`` with values ``>= 0`` (and
    ``< num_classes`` when given)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match {of}, got {tuple(y.shape)}")
    if n:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            within = "class indices >= 0" if num_classes is None else \
                f"the {num_classes} classes [0, {num_classes - 1}]"
            raise ValueError(f"{name} holds class index {lo if lo < 0 else hi}, outside {within}")
    return y


def check_features(x, name: str, d: int | None = None, *, finite: bool = True) -> torch.Tensor:
    """``x`` must be a floating tensor (N, d), N >= 1, finite; ``d`` as fitted when given.

    ``finite=False`` skips the scan for NaN and infinite values (for rows already scanned where
    they entered, e.g. a :class:`~medadv_tutorial.features.FeatureSet`); shapes are always checked.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of shape (N, d), got dtype {x.dtype}")
    if x.ndim != 2:
        expected = "(N, d)" if d is None else f"(N, {d})"
        raise ValueError(f"{name} must have shape {expected} (one feature vector per row), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}, need at least one row")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{name} must have shape (N, {d}) as the features the detector was fitted on, "
                         f"got {tuple(x.shape)}")
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` must hold no NaN or infinite value."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a device)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {describe(device)}") from err


def check_model(model, name: str = "model", method: str | None = None):
    """``model`` must be callable (and have ``method``, e.g. ``"forward_features"``, when given)."""
    if not callable(model) or (method is not None and not callable(getattr(model, method, None))):
        need = f"a module with a {method}() method (a medadv_tutorial Classifier)" if method else "callable"
        raise TypeError(f"{name} must be {need}, got {type(model).__name__}")
    return model


def check_input_dtype(model, x: torch.Tensor, name: str = "x") -> None:
    """``x`` must have the dtype of ``model``'s floating parameters (float64 images, float32 model)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != x.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {p.dtype}: convert the "
                                f"images to {p.dtype} (images.to({p.dtype}))")
            return


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Context manager: eval mode and no parameter gradients, restored on exit.

    Every submodule's ``training`` flag and every parameter's ``requires_grad`` are
    recorded and restored individually (also when the body raises), so a model with,
    for example, frozen layers or a dropout layer switched on comes back exactly as it
    was.  In eval mode BatchNorm running statistics do not change, and no parameter
    gradient (``.grad``) accumulates.  A plain callable that is not an ``nn.Module`` is
    left alone.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)
