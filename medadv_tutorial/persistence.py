"""Reading back the state files that :meth:`FeatureSet.save <medadv_tutorial.features.FeatureSet.save>` and
:meth:`HFCModel.save <medadv_tutorial.hfc.HFCModel.save>` write: one loader that names the file when it cannot be read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .checks import CorruptFileError


def load_state(path, from_state: Callable[[Any], Any], what: str, advice: str, map_location="cpu"):
    """``from_state(torch.load(path, weights_only=True))``.

    A missing file raises ``FileNotFoundError``; any other failure -- unreadable bytes, or a
    state ``from_state`` refuses -- raises :class:`~medadv_tutorial.checks.CorruptFileError`
    ``"<what> <path> cannot be read (<error>): <advice>"``.
    """
    try:
        return from_state(torch.load(path, map_location=map_location, weights_only=True))
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding error means the file is unusable
        raise CorruptFileError.of(what, path, err, advice) from err
