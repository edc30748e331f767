"""One CPU numerics pin, so that the book's stored outputs reproduce on any x86-64 CPU.

Identical data, seeds and code give different trained weights on different CPUs, because
the math libraries under torch and numpy pick instruction-set-specific kernels at run time,
and kernels for different instruction sets add numbers in a different order:

=====================  ============================  ===========================================
library                what it computes here         pinned with
=====================  ============================  ===========================================
oneDNN (MKL-DNN)       every convolution of torch    ``DNNL_MAX_CPU_ISA=AVX2``
MKL                    torch's matrix products       ``MKL_CBWR=AVX2,STRICT``
ATen                   torch's element-wise ops,     ``ATEN_CPU_CAPABILITY=avx2``
                       reductions, resizing
OpenBLAS               numpy / scipy / scikit-learn  ``OPENBLAS_CORETYPE=Haswell``
                       matrix products, Cholesky
=====================  ============================  ===========================================

Measured on an AMD EPYC (AVX-512) machine: eight training steps of the chest X-ray model give
different weights with oneDNN's default AVX-512 kernels than with its AVX2 kernels; numpy's
products and Cholesky factors differ between OpenBLAS's SkylakeX (AVX-512) and Haswell (AVX2)
kernels; MKL's default branch differs from its AVX2 and AVX-512 conditional-numerical-
reproducibility branches.  ATen's AVX2 and AVX-512 kernels agreed, and are pinned anyway.
Every x86-64 CPU made since 2015 has AVX2, so the pin costs nothing measurable in speed.

:func:`pin` is applied on purpose, never as a side effect of an import: by the experiment
context (:meth:`medadv_tutorial.experiment.Experiment.enter`, which ``book.start()`` calls),
by ``python -m medadv_tutorial.prepare``, by the tests and by ``.ci/run``.  oneDNN, MKL and ATen
read their variables when they first compute, so the pin works even if torch was imported
earlier; OpenBLAS reads its variable when numpy is first imported, so enter the context (or
set the variables in the shell) *before* importing numpy.
:func:`report` says what is in effect.  Set ``MEDADV_CPU_PIN=0`` to leave the libraries'
defaults alone (faster kernels on AVX-512 CPUs, outputs that differ from the stored ones in
the last digits and, through training, in the second).

GPUs are not covered: CUDA results differ from CPU results and between GPU models; the
chapters' asserts (tolerance bands) are the contract there.

This module imports nothing heavy, so that importing it cannot load a library too early.
"""

from __future__ import annotations

import os
import sys
import warnings

from .environ import CPU_PIN as PIN_ENV, switched_on

#: Environment variable -> pinned value.  One place for CI, the tests, ``prepare`` and the chapters.
PIN: dict[str, str] = {
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "OPENBLAS_CORETYPE": "Haswell",
}

# OpenBLAS core types whose double/single-precision kernels are the Haswell ones (AVX2).
_OPENBLAS_AVX2_CORES = {"haswell", "zen"}

_state: dict[str, object] = {"applied": False, "kept": {}}


def enabled() -> bool:
    """False when ``$MEDADV_CPU_PIN`` is ``0``/``off``/``false``/``no``."""
    return switched_on(PIN_ENV)


def cpu_has_avx2() -> bool | None:
    """Whether the CPU reports AVX2 (Linux ``/proc/cpuinfo``); ``None`` when unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return " avx2 " in f" {line.split(':', 1)[1].strip()} "
    except OSError:
        return None
    return None


def pin() -> dict[str, str]:
    """Set the variables of :data:`PIN` in ``os.environ`` (idempotent); returns what is in effect.

    A variable the user already set to another value is kept, with a warning that names it:
    an explicit choice wins, but the stored outputs then need not reproduce.  Nothing is set
    when ``$MEDADV_CPU_PIN=0``, or on a CPU without AVX2 (warned: the pin cannot apply there).
    """
    if not enabled():
        return {}
    if cpu_has_avx2() is False:
        if not _state["applied"]:
            warnings.warn("this CPU has no AVX2, so the numerics pin of medadv_tutorial cannot apply; "
                          "results will differ from the stored outputs in the last digits",
                          RuntimeWarning, stacklevel=2)
        _state["applied"] = True
        return {}
    kept = {}
    for name, value in PIN.items():
        current = os.environ.get(name)
        if current is None or current == "":
            os.environ[name] = value
        elif current.strip().lower() != value.lower():
            kept[name] = current
    if kept and kept != _state["kept"]:
        warnings.warn(
            "medadv_tutorial keeps your CPU numerics settings "
            + ", ".join(f"{k}={v!r} (pin: {PIN[k]!r})" for k, v in kept.items())
            + "; stored outputs may not reproduce. Unset them to use the pin.",
            RuntimeWarning, stacklevel=2,
        )
    _state["applied"], _state["kept"] = True, kept
    return {k: os.environ[k] for k in PIN}


def openblas_cores() -> list[str]:
    """The core types of the OpenBLAS libraries loaded in this process (via threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return []
    return [str(i.get("architecture")) for i in threadpool_info() if i.get("internal_api") == "openblas"]


def report() -> str:
    """One line saying which pin is in effect (for the chapters' set-up printout).

    Checks the loaded OpenBLAS libraries too: if numpy was imported before the pin was set,
    they run their own kernels, and the line says so.
    """
    if not enabled():
        return f"CPU numerics: library defaults (${PIN_ENV}=0); outputs may differ from the stored ones"
    values = {k: os.environ.get(k, "") for k in PIN}
    if not any(values.values()):
        why = "no AVX2" if cpu_has_avx2() is False else "pin() was not called: enter an Experiment or call numerics.pin()"
        return f"CPU numerics: not pinned ({why}); outputs may differ from the stored ones"
    line = "CPU numerics pinned: " + ", ".join(f"{k}={v}" for k, v in values.items())
    if "numpy" in sys.modules:
        cores = openblas_cores()
        stray = [c for c in cores if c.lower() not in _OPENBLAS_AVX2_CORES]
        if stray:
            line += (f" -- but numpy's OpenBLAS runs {', '.join(sorted(set(stray)))} kernels "
                     "(numpy was imported before medadv_tutorial; restart and import it first)")
    return line
