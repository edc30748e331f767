"""The chapters' common set-up: one call that fixes the settings and says what is in effect.

Every chapter starts with::

    from medadv_tutorial import book
    profile = book.start()

which

* applies the CPU numerics pin (:mod:`medadv_tutorial.numerics`; importing the package did),
* reads the profile (``$MEDADV_PROFILE``, default ``ci``) and seeds Python, NumPy and torch,
* on Colab, mounts Google Drive when ``$MEDADV_CACHE`` points into it, so that trained models
  are found again by later chapters (each Colab notebook runs in its own runtime),
* prints the versions, the pin, the profile, how to change it, and where data and models live,
* glues the profile's settings (``profile_image_size``, ``profile_n_attack``, ...) so that the
  chapters' prose quotes them with ``{glue:}`` instead of typing them.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import sys
import textwrap

from . import numerics
from .checks import check_int
from .profiles import PROFILE_ENV, Profile, get_profile

WIDTH = 100  # stored text lines longer than this are cut off in the built book

COLAB_DRIVE = "/content/drive"
COLAB_CACHE_HINT = "/content/drive/MyDrive/medadv_cache"


def in_colab() -> bool:
    """Whether this kernel runs in Google Colab."""
    return "google.colab" in sys.modules


def _mount_drive_if_asked() -> str | None:
    """Mount Google Drive when ``$MEDADV_CACHE`` lies inside it (Colab only); returns a note."""
    cache = os.environ.get("MEDADV_CACHE", "")
    if not in_colab():
        return None
    if not cache.startswith(COLAB_DRIVE):
        return (f"models are cached in this runtime only; to keep them for the next chapters run "
                f"%env MEDADV_CACHE={COLAB_CACHE_HINT} before this cell (Drive is mounted for you)")
    if not os.path.isdir(os.path.join(COLAB_DRIVE, "MyDrive")):
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(COLAB_DRIVE)
    return f"models are cached on Google Drive: {cache}"


def settings(profile: Profile) -> dict[str, object]:
    """The profile's settings as ``{"profile_<field>": value}`` (what :func:`start` glues)."""
    out = {f"profile_{k}": v for k, v in dataclasses.asdict(profile).items()
           if isinstance(v, (int, float, str, bool)) or v is None}
    for ds in ("chest_xray", "retinamnist", "cifar10"):
        out[f"profile_epochs_{ds}"] = profile.epochs_for(ds)
    out["profile_n_train_text"] = "all" if profile.n_train is None else f"{profile.n_train:,}"
    out["profile_n_test_text"] = "all" if profile.n_test is None else f"{profile.n_test:,}"
    return out


def glue_settings(profile: Profile) -> None:
    """Glue :func:`settings` for the prose (no-op where ``myst_nb`` is absent, e.g. Colab).

    Numbers are glued as values (prose: ``{glue:}`profile_image_size```, or with a format,
    ``{glue:text}`profile_lr:.0e```); strings as Markdown (prose: ``{glue:md}`profile_name```),
    so that they render without quotes.
    """
    try:
        from IPython.display import Markdown
        from myst_nb import glue
    except ImportError:
        return
    for name, value in settings(profile).items():
        glue(name, Markdown(value) if isinstance(value, str) else value, display=False)


def say(text: str) -> None:
    """Print ``text`` wrapped to :data:`WIDTH` (longer stored lines are cut off in the book)."""
    print(textwrap.fill(text, WIDTH, subsequent_indent="    ", break_on_hyphens=False))


def start(*, seed: int = 0, dpi: int = 72, glue_profile: bool = True) -> Profile:
    """Set up a chapter and return its :class:`~medadv_tutorial.profiles.Profile`.

    Parameters
    ----------
    seed: seed for Python, NumPy and torch (the chapters use 0).
    dpi: matplotlib figure resolution in the notebook.
    glue_profile: glue the profile's settings for the prose (see :func:`settings`).
    """
    import torch

    from . import __version__
    from .data import cache_dir, data_dir
    from .training import seed_everything

    numerics.pin()
    drive_note = _mount_drive_if_asked()
    profile = get_profile()
    seed_everything(seed, profile.num_threads)
    try:
        import matplotlib.pyplot as plt

        plt.rcParams["figure.dpi"] = dpi
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"medadv_tutorial {__version__}, torch {torch.__version__}, device {device}")
    say(numerics.report())
    others = ", ".join(sorted(set(("ci", "full", "smoke")) - {profile.name}))
    say(f"profile {profile.name!r}" + (" (the book's stored outputs)" if profile.name == "ci" else "")
         + f"; to change it, restart the kernel and run %env {PROFILE_ENV}=<name> ({others}) "
         "before this cell")
    say("settings: " + profile.describe())
    # Name the variables, not their paths: the stored outputs must not depend on the machine.
    data_note = "offline copies in $MEDADV_DATA" if data_dir() else "downloaded on first use"
    cache_note = "$MEDADV_CACHE" if os.environ.get("MEDADV_CACHE", "").strip() else str(cache_dir())
    say(f"data: {data_note}; models and caches: {cache_note}")
    if drive_note:
        say(drive_note)
    if not profile.check_claims:
        say(f"the {profile.name!r} profile checks no claim: its numbers are not the book's")
    if glue_profile:
        glue_settings(profile)
    return profile


def glue(name: str, value, digits: int | None = None, display: bool = False):
    """Glue ``value`` under ``name`` for the prose (``{glue:}`name```); returns the value.

    ``digits`` rounds a float first, so the stored record (compared by nbval) shows what the
    prose shows.  Strings are glued as Markdown, like :func:`glue_settings` (prose:
    ``{glue:md}`name```, no quotes); numpy/torch scalars as plain numbers.  A no-op where
    ``myst_nb`` is absent (e.g. Colab).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string (the key the prose quotes), got {name!r}")
    shown = value.item() if hasattr(value, "item") else value
    if digits is not None:
        digits = check_int(digits, "digits (decimal places to round to)", 0)
        if not isinstance(shown, numbers.Real):
            raise TypeError(f"digits rounds numbers, but value {name!r} is {type(shown).__name__}: {shown!r}")
        shown = round(float(shown), digits)
    try:
        from IPython.display import Markdown
        from myst_nb import glue as _glue
    except ImportError:
        return value
    _glue(name, Markdown(shown) if isinstance(shown, str) else shown, display=display)
    return value


def glue_results(digits: int = 2, **results) -> None:
    """Glue several results at once (:func:`glue`): floats rounded to ``digits`` as the tables
    show them (``digits=0``: an int), strings as Markdown, other values as they are."""
    digits = check_int(digits, "digits (decimal places to round to)", 0)
    for name, value in results.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float):
            value = int(round(value)) if digits == 0 else round(value, digits)
        glue(name, value)


def check_claims(profile: Profile) -> bool:
    """Whether a chapter should assert its claims under ``profile``; prints why when it does not.

    Use as ``if book.check_claims(profile): assert ...``.
    """
    if not profile.check_claims:
        print(f"claims not checked under the {profile.name!r} profile")
    return profile.check_claims
