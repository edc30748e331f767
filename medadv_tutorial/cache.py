"""The one store of computed results: content keys with a code version, atomic writes, checked hashes.

Everything the package computes once and reads back goes through this store: trained model
checkpoints (:func:`~medadv_tutorial.training.get_model`), extracted features
(:func:`~medadv_tutorial.features.extract_features` with ``cache=True``), attack runs
(:func:`~medadv_tutorial.attacks.run_attack`), the HFC mixtures and the fitted detector suite.
One key rule for all of them:

* **The key is the content of the inputs.**  :func:`fingerprint` hashes a canonical description
  of every input -- tensors by their bytes, dtype and shape, modules by their class and
  ``state_dict``, data sets, attacks and loss terms by their class and every attribute,
  recursively (except those a class lists in ``_derived_attributes``: caches and descriptions
  recomputed from the others).  Change any input (a weight, ε, a seed, an image) and the key
  changes: the old entry is simply not found.
* **Plus the version of the code that computed it.**  Each caller names the package module whose
  functions compute its entries (``code="attacks"``); :func:`code_version` hashes the source of
  that module *and of every package module it imports*, transitively.  Edit a kernel -- or
  anything it depends on -- and what it produced is computed again; edit a module it does not
  import (the plots, say) and the entries stay valid.  This is deliberately conservative (a
  changed comment also invalidates), and it needs no hand-kept version number that a forgotten
  bump would make stale.  :data:`FORMAT` remains for a change of the store's own layout.
* **Refuse what cannot be keyed.**  Functions and lambdas (their code is not hashed) and
  ``torch.Generator`` objects (their state moves on when used, so a cached run would leave
  them where a computed one would not) raise :class:`Uncacheable`; callers then compute
  without the cache.  Nothing is cached on a guess.
* **Nothing half-written, nothing corrupt.**  Entries are written atomically (temporary file
  + rename) with a sha256 beside them; an entry whose bytes do not match its sha256, or that
  fails to load, is reported with a warning naming the file, deleted and recomputed.  Pickled
  entries (:func:`cached_object`) are unpickled only after their sha256 matched.

Entries live in ``cache_dir()/results/<kind>/<key>.pt`` (``$MEDADV_CACHE``); deleting the
folder is always safe.  Set ``MEDADV_RESULT_CACHE=0`` to compute everything afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any
from pathlib import Path

import numpy as np
import torch

from . import environ
from .io import atomic_torch_save, file_sha256

__all__ = ["FORMAT", "Uncacheable", "fingerprint", "code_version", "source_key", "enabled", "entry_path",
           "store_key", "cached_tensors", "cached_object", "read_entry", "write_entry"]

FORMAT = 2
"""The layout of the store itself (2: keys carry the code version); the code's own changes are in
:func:`code_version`."""

_PACKAGE = __name__.rsplit(".", 1)[0]

from .environ import RESULT_CACHE as ENV


class Uncacheable(TypeError):
    """An input has no content key (a function, a random generator, an unknown type)."""


def enabled() -> bool:
    """``False`` when ``$MEDADV_RESULT_CACHE`` is ``0``/``false``/``no``/``off``."""
    return environ.switched_on(ENV)


def _feed(h, obj, path: str, seen: set) -> None:
    """Add a canonical description of ``obj`` to the hash ``h`` (``path`` names it in errors)."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, complex)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, torch.Generator):
        raise Uncacheable(f"{path} is a torch.Generator: its state changes when it is used")
    if isinstance(obj, torch.dtype) or isinstance(obj, torch.device):
        h.update(f"{obj};".encode())
        return
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:{obj.requires_grad};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"ndarray:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
        return
    if id(obj) in seen:
        h.update(b"<cycle>;")
        return
    seen = seen | {id(obj)}
    if isinstance(obj, torch.nn.Module):
        h.update(f"module:{type(obj).__module__}.{type(obj).__qualname__}:{obj.training};".encode())
        for name, value in obj.state_dict(keep_vars=False).items():
            h.update(f"{name}=".encode())
            _feed(h, value, f"{path}.{name}", seen)
        # attributes that are not parameters or buffers (e.g. the taps a Classifier exposes)
        derived = set(getattr(type(obj), "_derived_attributes", ()))
        for name, value in sorted(vars(obj).items()):
            if not name.startswith("_") and name != "training" and name not in derived:
                h.update(f".{name}=".encode())
                _feed(h, value, f"{path}.{name}", seen)
        return
    if isinstance(obj, Mapping):
        h.update(f"map:{len(obj)}{{".encode())
        for key, value in obj.items():
            _feed(h, key, f"{path}[key]", seen)
            _feed(h, value, f"{path}[{key!r}]", seen)
        h.update(b"};")
        return
    if isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}:{len(obj)}[".encode())
        for i, value in enumerate(obj):
            _feed(h, value, f"{path}[{i}]", seen)
        h.update(b"];")
        return
    if isinstance(obj, (set, frozenset)):
        h.update(f"set:{len(obj)}[".encode())
        for value in sorted(obj, key=repr):
            _feed(h, value, f"{path}{{}}", seen)
        h.update(b"];")
        return
    if inspect.isroutine(obj) or isinstance(obj, (functools.partial, type)):
        raise Uncacheable(f"{path} is a function ({obj!r}): its code is not part of a key")
    state = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else None
    if state is None and hasattr(obj, "__dict__"):
        state = vars(obj)
    if state is None and hasattr(obj, "__slots__"):
        state = {s: getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)}
    if state is None:
        raise Uncacheable(f"{path} has type {type(obj).__name__}, which has no content key")
    derived = set(getattr(type(obj), "_derived_attributes", ()))
    h.update(f"object:{type(obj).__module__}.{type(obj).__qualname__}{{".encode())
    for name, value in sorted(state.items()):
        if name in derived:
            continue
        h.update(f"{name}=".encode())
        _feed(h, value, f"{path}.{name}", seen)
    h.update(b"};")


def fingerprint(*parts, **named) -> str:
    """sha256 (hex) of a canonical description of ``parts`` and ``named``, the package version
    and :data:`FORMAT`.  Raises :class:`Uncacheable` for inputs without a content key."""
    from . import __version__

    h = hashlib.sha256(f"medadv_tutorial {__version__} cache format {FORMAT};".encode())
    _feed(h, list(parts), "argument", set())
    for name, value in sorted(named.items()):
        h.update(f"{name}=".encode())
        _feed(h, value, name, set())
    return h.hexdigest()


def source_key(fn) -> str:
    """A content key for a function of the package: its module, name and source text.

    :func:`fingerprint` refuses functions, whose behaviour their attributes do not describe;
    a caller that *owns* a function (a row of the detector line-up, say) can key it by its
    source with this helper instead, so that editing the function changes the key.  Raises
    :class:`Uncacheable` when the source cannot be read (built-ins, code typed at a prompt).
    """
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError) as err:
        raise Uncacheable(f"the source of {fn!r} cannot be read ({err}), so it has no content key") from err
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}:{source}"


def _spec_origin(name: str) -> Path | None:
    """The source file of the module ``name`` (dotted, full), or ``None`` when there is none."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _package_imports(module: str) -> set[str]:
    """The package modules (dotted names below the package, e.g. ``"checks"``, ``"detectors.base"``)
    that ``module``'s source imports, anywhere in the file (also inside functions), and the
    sub-packages whose ``__init__`` importing them runs."""
    import ast

    full = f"{_PACKAGE}.{module}"
    origin = _spec_origin(full)
    if origin is None:
        raise ValueError(f"{module!r} is not a module of {_PACKAGE}")
    is_package = origin.name == "__init__.py"
    package = full if is_package else full.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(origin.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            if t.startswith(f"{_PACKAGE}.") and _spec_origin(t) is not None:
                found.add(t[len(_PACKAGE) + 1:])
    # importing a.b.c runs the __init__ of the sub-package a.b too
    for m in list(found):
        parts = m.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    found.discard(module)
    return found


@functools.lru_cache(maxsize=None)
def _closure_version(modules: tuple[str, ...]) -> str:
    todo, seen = list(modules), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_package_imports(m) - seen)
    h = hashlib.sha256()
    for m in sorted(seen):
        h.update(f"{m}:".encode())
        h.update(_code_text(_spec_origin(f"{_PACKAGE}.{m}")).encode())
    return h.hexdigest()


def _code_text(origin: Path) -> str:
    """What of a module's source can change a result: its syntax tree without docstrings (``ast.dump``, no
    line numbers; comments and layout are not in the tree), so that editing prose does not invalidate the store."""
    import ast

    tree = ast.parse(origin.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_version(*modules: str) -> str:
    """sha256 (hex) of the code of the package ``modules`` (names below the package, e.g. ``"attacks"``
    or ``"detectors.gaussians"``) and of every package module they import, transitively (a sub-package
    counts with all the modules its ``__init__`` imports): the version of the code that computes an entry.
    Docstrings, comments and layout are not part of it (:func:`_code_text`): a prose edit keeps the store valid.

    Read from the files on disk once per process (a later edit is seen by the next process).
    """
    if not modules or not all(isinstance(m, str) and m and not m.startswith((".", _PACKAGE + ".")) for m in modules):
        raise ValueError(f"modules must be names below {_PACKAGE} such as 'attacks', got {modules!r}")
    return _closure_version(tuple(sorted(set(modules))))


_NAME_RE = __import__("re").compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


def entry_path(kind: str, key: str) -> Path:
    """``cache_dir()/results/<kind>/<key>.pt``."""
    from .data import cache_dir

    if not isinstance(kind, str) or not kind.replace("_", "").isalnum() or not isinstance(key, str) \
            or not _NAME_RE.match(key):
        raise ValueError(f"kind and key must be plain names, got {kind!r} and {key!r}")
    return cache_dir() / "results" / kind / f"{key}.pt"


def store_key(kind: str, key_parts: Mapping, code) -> str:
    """The key of an entry of ``kind``: :func:`fingerprint` of ``key_parts`` and :func:`code_version`
    of ``code`` (a module name or a tuple of them).  Raises :class:`Uncacheable` like :func:`fingerprint`."""
    code = (code,) if isinstance(code, str) else tuple(code)
    return fingerprint(store_kind=kind, code_version=code_version(*code), **key_parts)


def read_entry(path: Path, weights_only: bool = True):
    """The entry at ``path`` after its sha256 matched, or ``None`` (missing; or corrupt: warned about and
    deleted)."""
    return _read(path, weights_only=weights_only)


def write_entry(path: Path, entry) -> None:
    """Write ``entry`` to ``path`` atomically, with its sha256 beside it."""
    _write(path, entry)


def _read(path: Path, weights_only: bool = True):
    """The entry at ``path``, or ``None`` (missing; or corrupt: warned about and deleted)."""
    sidecar = path.with_suffix(".sha256")
    if not path.exists():
        return None
    problem = None
    try:
        expected = sidecar.read_text().strip() if sidecar.exists() else None
        if expected is None:
            problem = "has no sha256 beside it (an interrupted write)"
        elif file_sha256(path) != expected:
            problem = "does not match its sha256 (corrupted on disk)"
        else:
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - any decoding error means the entry is unusable
        problem = f"cannot be read ({type(err).__name__}: {err})"
    warnings.warn(f"cached result {path} {problem}; deleting it and computing the result again",
                  RuntimeWarning, stacklevel=3)
    for p in (path, sidecar):
        p.unlink(missing_ok=True)
    return None


def _write(path: Path, entry) -> None:
    atomic_torch_save(entry, path)
    sidecar = path.with_suffix(".sha256")
    tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
    tmp.write_text(file_sha256(path) + "\n")
    os.replace(tmp, sidecar)


def cached_tensors(kind: str, key_parts: Mapping, compute: Callable[[], dict], *, code) -> tuple[dict, bool]:
    """``(entry, hit)``: the entry cached under :func:`store_key` of ``key_parts`` and ``code`` (the
    package module(s) whose functions compute it), or ``compute()`` stored there.

    ``compute()`` must return a dict of tensors (or ``None``), numbers and strings: what
    ``torch.load(weights_only=True)`` reads back exactly.  When the cache is disabled
    (``$MEDADV_RESULT_CACHE=0``) or a part is :class:`Uncacheable`, ``compute()`` runs and
    nothing is stored (``hit`` is ``False``).
    """
    return _cached(kind, key_parts, compute, code, weights_only=True)


def cached_object(kind: str, key_parts: Mapping, compute: Callable[[], Any], *, code) -> tuple[Any, bool]:
    """``(object, hit)`` as :func:`cached_tensors`, for a Python object that is not plain tensors
    (a fitted detector suite holding scikit-learn estimators and small networks).

    The object is stored with ``torch.save`` (pickle).  It is read back only from this cache,
    after its sha256 matched the one written beside it; like any pickle it is code, so point
    ``$MEDADV_CACHE`` only at a folder you trust.  ``compute()`` must return a picklable object.
    """
    return _cached(kind, key_parts, compute, code, weights_only=False)


def _cached(kind: str, key_parts: Mapping, compute: Callable[[], Any], code, weights_only: bool) -> tuple[Any, bool]:
    if not enabled():
        return compute(), False
    try:
        key = store_key(kind, key_parts, code)
    except Uncacheable:
        return compute(), False
    path = entry_path(kind, key)
    entry = _read(path, weights_only=weights_only)
    if entry is not None:
        return entry, True
    entry = compute()
    _write(path, entry)
    return entry, False
