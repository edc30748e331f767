"""Feeding a model: image sets in batches, the model's device, and its forward function.

The attacks (:mod:`~medadv_tutorial.attacks`) and the feature extraction
(:mod:`~medadv_tutorial.features`) take their images in the same three forms and call the
model the same way; this module is where that is decided:

* an image set is a pair ``(x, y)`` of tensors (images ``(N, C, H, W)``, labels ``(N,)``),
  a torch ``Dataset`` of ``(image, label)`` items, or a ``DataLoader`` yielding such batches;
* a model's *forward* is ``None`` (call the model: logits), a method name (e.g.
  ``"forward_features"``) or a callable ``forward(model, x)``, returning logits or a pair
  ``(logits, aux)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Union

import torch
from torch import nn

from .checks import as_labels, check_int, describe

__all__ = ["Forward", "CPU_BATCH_SIZE", "CUDA_BATCH_SIZE", "default_batch_size", "resolve_batch_size", "is_pair",
           "labels_of", "iter_batches", "n_images", "model_device", "resolve_forward"]

CPU_BATCH_SIZE = 10
"""Images per forward pass or attack call on the CPU when none is given.

Measured with the book's EfficientNet-Lite0 at 128 px, one thread, channels-last weights
(``benchmarks/bench_attack_step.py``; AMD EPYC, AVX-512, pinned to AVX2), with glibc's default
allocator: one attack step costs 15.3 ms per image in batches of 10, 19.8 at 25 and 23.1 at 50;
a forward pass of every tap 6.6 ms per image at 10, 7.8 at 25 and 13.7 at 100.  With freed
memory kept in the process (:mod:`~medadv_tutorial.allocator`, what the experiment context sets)
the attack step costs 14.5, 13.3 and 13.6 ms: most of the cost of large batches was the kernel
mapping their memory afresh, and 10 is within 9% of the best there.  A plain attack gives the same adversarial images in batches of 4 to 10
(the random start is one stream over the whole set); attacks with an extra loss need not (the
HFC term's float32 matrix products round differently for a different number of rows)."""

CUDA_BATCH_SIZE = 128
"""Images per forward pass or attack call on a GPU when none is given (a GPU wants large batches)."""


def default_batch_size(device: "str | torch.device") -> int:
    """:data:`CUDA_BATCH_SIZE` on a GPU, :data:`CPU_BATCH_SIZE` elsewhere."""
    return CUDA_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_BATCH_SIZE


def resolve_batch_size(batch_size: "int | None", device: "str | torch.device | None") -> int:
    """``batch_size`` checked (an int >= 1), or :func:`default_batch_size` of ``device`` when ``None``."""
    if batch_size is None:
        return default_batch_size("cpu" if device is None else device)
    return check_int(batch_size, "batch_size")

Forward = Union[str, Callable[[nn.Module, torch.Tensor], "tuple[torch.Tensor, Any]"], None]
"""How to call a model: ``None``, a method name or ``forward(model, x)`` (see the module docstring)."""


def is_pair(data) -> bool:
    """``data`` given as ``(x, y)`` (a tuple or list of two), not as a Dataset or DataLoader."""
    return isinstance(data, (tuple, list)) and len(data) == 2


def labels_of(y) -> torch.Tensor:
    """Labels as a tensor ``(N,)``: integer labels as int64 (MedMNIST yields shape ``(1,)`` per item);
    float labels are passed through for the caller to refuse."""
    y = as_labels(y)
    return y.long() if not y.is_floating_point() else y


def iter_batches(data, batch_size: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int | None]:
    """``(iterator over (x, y) batches of at most batch_size images, number of batches or None)``.

    ``data``: a pair ``(x, y)`` of tensors, a Dataset or a DataLoader (which keeps its own
    batch size).  Raises ``TypeError`` / ``ValueError`` naming ``data`` for anything else.
    """
    check_int(batch_size, "batch_size")
    if is_pair(data) and not isinstance(data[0], torch.Tensor):
        raise TypeError(f"data as a pair must be (x, y) with x a tensor of images, got x = {describe(data[0])}")
    if is_pair(data):
        x_all, y_all = data[0], labels_of(data[1])
        if len(x_all) != len(y_all):
            raise ValueError(f"data: {len(x_all)} images but {len(y_all)} labels")
        n = len(x_all)
        it = ((x_all[i:i + batch_size], y_all[i:i + batch_size]) for i in range(0, n, batch_size))
        return it, -(-n // batch_size)
    if isinstance(data, torch.utils.data.DataLoader):
        loader = data
    elif isinstance(data, torch.utils.data.Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        # its own generator: a loader iterator draws a base seed, and the global generator is left alone
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    else:
        raise TypeError(
            f"data must be a torch Dataset, a DataLoader or a pair (x, y) of tensors, got {type(data).__name__}"
        )

    def gen():
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise ValueError("data must yield (image, label) pairs")
            yield torch.as_tensor(batch[0]), labels_of(batch[1])

    try:
        total = len(loader)
    except TypeError:
        total = None
    return gen(), total


def n_images(data) -> int | None:
    """Number of images of ``data`` (a pair, a Dataset or a DataLoader), or ``None`` if unknown."""
    if is_pair(data) and isinstance(data[0], torch.Tensor):
        return len(data[0])
    try:
        return len(data.dataset) if isinstance(data, torch.utils.data.DataLoader) else len(data)
    except TypeError:
        return None


def model_device(model) -> torch.device | None:
    """Device of the model's first parameter (or buffer); ``None`` for a plain callable or an empty module."""
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return None


def resolve_forward(model: Callable, forward: Forward) -> Callable[[torch.Tensor], tuple[torch.Tensor, Any]]:
    """Turn ``forward`` (see :data:`Forward`) into ``x -> (logits, aux)`` (``aux`` ``None`` for plain logits)."""
    if forward is None:
        return lambda x: (model(x), None)
    if isinstance(forward, str):
        if not callable(getattr(model, forward, None)):
            raise ValueError(f"forward={forward!r}: the model has no method {forward!r}")
        method = getattr(model, forward)
        fn = lambda x: method(x)  # noqa: E731
    elif callable(forward):
        fn = lambda x: forward(model, x)  # noqa: E731
    else:
        raise TypeError(f"forward must be None, a method name or a callable, got {type(forward).__name__}")

    def wrapped(x):
        out = fn(x)
        if isinstance(out, torch.Tensor):
            return out, None
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError("forward must return logits or a pair (logits, aux)")
        return out[0], out[1]

    return wrapped
