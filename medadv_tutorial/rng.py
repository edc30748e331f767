"""Explicit randomness: seeds derived from one experiment seed, and scoped use of torch's global state.

Every random choice of the package draws from a ``torch.Generator`` (or a NumPy
``Generator``) made from a seed it is given; nothing draws from, reseeds or leaves changed
the process-wide generators or the thread count.  Two things in torch cannot take a
generator: the initialisation of a new layer and dropout / stochastic depth in training
mode.  Training therefore runs inside :func:`seeded_global_rng`, which seeds torch's global
generator for the duration of the block and gives the caller back the state it had before
(``torch.random.fork_rng``); :func:`scoped_threads` does the same for the thread count.

:func:`derive_seed` turns ``(seed, purpose...)`` into an independent seed, so that the
experiment context hands each use (a data-set draw, a detector's sampling, an attack's random
start) its own generator, and adding a new use does not move the draws of the others.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from .checks import check_int, check_seed

__all__ = ["derive_seed", "generator", "seeded_global_rng", "scoped_threads"]


def derive_seed(seed: int, *purpose) -> int:
    """A seed in ``[0, 2**63 - 1]`` determined by ``seed`` and the ``purpose`` labels (strings or ints).

    ``derive_seed(s)`` with no purpose is ``s`` itself, so an experiment seeded 0 draws what the
    functions called with ``seed=0`` draw.
    """
    seed = check_seed(seed, "seed")
    if not purpose:
        return seed
    for p in purpose:
        if not isinstance(p, (str, int)) or isinstance(p, bool):
            raise TypeError(f"purpose labels must be strings or ints, got {type(p).__name__} {p!r}")
    text = "|".join([str(seed), *(f"{type(p).__name__}:{p}" for p in purpose)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *purpose, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of ``seed`` and ``purpose``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *purpose))


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """Inside the block torch's global generators (CPU and CUDA) are seeded with ``seed``; after it they
    hold the state they had before, whatever the block drew (also when it raises)."""
    seed = check_seed(seed, "seed")
    with torch.random.fork_rng(devices=_cuda_devices()):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def scoped_threads(num_threads: int | None):
    """Inside the block torch uses ``num_threads`` CPU threads (``None``: unchanged); after it, as many as before."""
    if num_threads is None:
        yield
        return
    num_threads = check_int(num_threads, "num_threads")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
