"""Files written by the package: atomic ``torch.save`` (a reader never sees a partial file), and file hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path) -> Path:
    """``torch.save(obj)`` to a temporary file in ``path``'s folder, then rename it to ``path``.

    The rename is atomic on POSIX and Windows, so a concurrent reader (another chapter run in
    parallel) finds either the old file, no file, or the complete new one.  Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def file_sha256(path) -> str:
    """sha256 (hex) of the bytes of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
