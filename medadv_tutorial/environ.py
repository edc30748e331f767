"""The package's environment variables, named and read in one place.

* ``MEDADV_DATA``: the folder of the offline data copies (:mod:`~medadv_tutorial.data`);
  unset, the data sets are downloaded.
* ``MEDADV_CACHE``: the folder of downloads and of the result store (default
  ``~/.cache/medadv_tutorial``).
* ``MEDADV_PROFILE``: the run profile, ``ci`` (default), ``full`` or ``smoke``.
* ``MEDADV_RESULT_CACHE``: ``0`` switches the result store off (default on).
* ``MEDADV_CPU_PIN``: ``0`` leaves the CPU math libraries' defaults (default: the pin applies).

Reading them is all this module does (it imports nothing heavy); the package never writes
them.  The experiment context reads them when it is made.
"""

from __future__ import annotations

import os

DATA = "MEDADV_DATA"
CACHE = "MEDADV_CACHE"
PROFILE = "MEDADV_PROFILE"
RESULT_CACHE = "MEDADV_RESULT_CACHE"
CPU_PIN = "MEDADV_CPU_PIN"

NAMES = (DATA, CACHE, PROFILE, RESULT_CACHE, CPU_PIN)

_OFF = {"0", "off", "false", "no"}


def value(name: str) -> str:
    """The stripped value of the package variable ``name`` (``""`` when unset)."""
    if name not in NAMES:
        raise ValueError(f"{name!r} is not a variable of the package; they are {NAMES}")
    return os.environ.get(name, "").strip()


def switched_on(name: str) -> bool:
    """False when the on/off variable ``name`` is ``0``/``off``/``false``/``no`` (any case); True otherwise."""
    return value(name).lower() not in _OFF
