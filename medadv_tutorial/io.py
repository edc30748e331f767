"""Files written by the package: atomic writes (a reader never sees a partial file), and file hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch


def atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` with a temporary file name in ``path``'s folder, then rename it to ``path``.

    The rename is atomic on POSIX and Windows, so a concurrent reader (another chapter run in
    parallel) finds either the old file, no file, or the complete new one; on an error the
    temporary file is removed and ``path`` is left as it was.  Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_torch_save(obj, path) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`.  Returns ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` through :func:`atomic_write`.  Returns ``path``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def file_sha256(path) -> str:
    """sha256 (hex) of the bytes of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
