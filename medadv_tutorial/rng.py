"""Scoped use of torch's global state: its generator and its thread count, given back after a block.

Every random choice of the package draws from a ``torch.Generator`` (or a NumPy
``Generator``) made from a seed it is given; nothing draws from, reseeds or leaves changed
the process-wide generators or the thread count.  Two things in torch cannot take a
generator: the initialisation of a new layer and dropout / stochastic depth in training
mode.  Training therefore runs inside :func:`seeded_global_rng`, which seeds torch's global
generator for the duration of the block and gives the caller back the state it had before
(``torch.random.fork_rng``); :func:`scoped_threads` does the same for the thread count.
"""

from __future__ import annotations

import contextlib

import torch

from .checks import check_int, check_seed

__all__ = ["seeded_global_rng", "scoped_threads"]


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
