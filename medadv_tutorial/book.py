"""The chapters' common set-up: one call that makes the experiment context and says what is in effect.

Every chapter starts with::

    from medadv_tutorial import book
    ctx = book.start()
    profile = ctx.profile

which

* makes the :class:`~medadv_tutorial.experiment.Experiment` of the active profile
  (``$MEDADV_PROFILE``, default ``ci``) and enters it: the CPU numerics pin, the seeds, torch's
  thread count and the figure resolution are set on purpose, and a printed line says so;
* on Colab, mounts Google Drive when ``$MEDADV_CACHE`` points into it, so that trained models
  are found again by later chapters (each Colab notebook runs in its own runtime),
* prints the versions, the pin, the profile, how to change it, and where data and models live,
* glues the profile's settings (``profile_image_size``, ``profile_n_attack``, ...) so that the
  chapters' prose quotes them with ``{glue:}`` instead of typing them.

Chapters 3 to 5 then reach their classifier, data sets, cached features, attack sets and
detector suite through the context (``ctx.setup("chest_xray")``, ``ctx.attack_sets(...)``,
``ctx.suite(...)``).  This module imports nothing heavy, so that ``book.start()`` can pin the
numerics before numpy is loaded.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import sys
import textwrap

from . import numerics
from .profiles import PROFILE_ENV, Profile, get_profile

WIDTH = 100  # stored text lines longer than this are cut off in the built book

COLAB_DRIVE = "/content/drive"
COLAB_CACHE_HINT = "/content/drive/MyDrive/medadv_cache"


def in_colab() -> bool:
    """Whether this kernel runs in Google Colab."""
    return "google.colab" in sys.modules


def _mount_drive_if_asked() -> str | None:
    """Mount Google Drive when ``$MEDADV_CACHE`` lies inside it (Colab only); returns a note."""
    from . import environ

    cache = environ.value(environ.CACHE)
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


def start(*, seed: int = 0, dpi: int = 72, glue_profile: bool = True):
    """Set up a chapter: make and enter its :class:`~medadv_tutorial.experiment.Experiment`, and return it.

    Parameters
    ----------
    seed: the experiment seed (the chapters use 0).
    dpi: matplotlib figure resolution in the notebook.
    glue_profile: glue the profile's settings for the prose (see :func:`settings`).
    """
    from .experiment import Experiment, environment_note

    ctx = Experiment(get_profile(), seed=seed)
    entered = ctx.enter(dpi=dpi)  # the numerics pin first, before this imports numpy
    import torch

    from . import __version__

    drive_note = _mount_drive_if_asked()
    profile = ctx.profile
    say(f"medadv_tutorial {__version__}, torch {torch.__version__}, device {ctx.device.type}")
    say(numerics.report())
    say(entered)
    others = ", ".join(sorted(set(("ci", "full", "smoke")) - {profile.name}))
    say(f"profile {profile.name!r}" + (" (the book's stored outputs)" if profile.name == "ci" else "")
         + f"; to change it, restart the kernel and run %env {PROFILE_ENV}=<name> ({others}) "
         "before this cell")
    say("settings: " + profile.describe())
    say(environment_note())
    if drive_note:
        say(drive_note)
    if not profile.check_claims:
        say(f"the {profile.name!r} profile checks no claim: its numbers are not the book's")
    if glue_profile:
        glue_settings(profile)
    return ctx


def glue(name: str, value, digits: int | None = None, display: bool = False):
    """Glue ``value`` under ``name`` for the prose (``{glue:}`name```).

    Returns ``None``, so a cell that ends with it shows nothing under any executor (a trailing
    ``;`` is not enough: nbval executes cells without storing them in the history, where
    IPython looks for the semicolon).

    ``digits`` rounds a float first, so the stored record (compared by nbval) shows what the
    prose shows.  Strings are glued as Markdown, like :func:`glue_settings` (prose:
    ``{glue:md}`name```, no quotes); numpy/torch scalars as plain numbers.  A no-op where
    ``myst_nb`` is absent (e.g. Colab).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string (the key the prose quotes), got {name!r}")
    shown = value.item() if hasattr(value, "item") else value
    if digits is not None:
        from .checks import check_int

        digits = check_int(digits, "digits (decimal places to round to)", 0)
        if not isinstance(shown, numbers.Real):
            raise TypeError(f"digits rounds numbers, but value {name!r} is {type(shown).__name__}: {shown!r}")
        shown = round(float(shown), digits)
    try:
        from IPython.display import Markdown
        from myst_nb import glue as _glue
    except ImportError:
        return None
    _glue(name, Markdown(shown) if isinstance(shown, str) else shown, display=display)
    return None


def glue_results(digits: int = 2, **results) -> None:
    """Glue several results at once (:func:`glue`): floats rounded to ``digits`` as the tables
    show them (``digits=0``: an int), strings as Markdown, other values as they are."""
    from .checks import check_int

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


def _answer_mismatch(value, expected, tol: float, where: str) -> str | None:
    """Why ``value`` does not match ``expected`` (see :func:`check_answer`), or ``None``."""
    from collections.abc import Iterable, Mapping

    import numpy as np

    if isinstance(expected, Mapping):
        if not isinstance(value, Mapping):
            return f"{where}expected a dict with keys {sorted(map(str, expected))}, got {type(value).__name__}"
        if set(value) != set(expected):
            return f"{where}expected the keys {sorted(map(str, expected))}, got {sorted(map(str, value))}"
        for k in expected:
            why = _answer_mismatch(value[k], expected[k], tol, f"{where}[{k!r}]: ")
            if why:
                return why
        return None
    if expected is None or isinstance(expected, (str, bytes, bool)):
        return None if value == expected and type(value) is type(expected) else \
            f"{where}expected {expected!r}, got {value!r}"

    def as_array(v):
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        elif isinstance(v, Iterable) and not isinstance(v, (str, bytes, np.ndarray)):
            v = list(v)
        return np.asarray(v, dtype=np.float64)

    try:
        e = as_array(expected)
    except (TypeError, ValueError) as err:
        raise TypeError(f"expected must be a number, an array of numbers, a dict of them, None or a string, "
                        f"got {type(expected).__name__}") from err
    if value is None or isinstance(value, (str, bytes, Mapping)):
        return f"{where}expected {'a number' if e.ndim == 0 else f'numbers of shape {e.shape}'}, got {value!r}"
    try:
        v = as_array(value)
    except (TypeError, ValueError):
        return f"{where}expected {'a number' if e.ndim == 0 else f'numbers of shape {e.shape}'}, got {value!r}"
    if v.shape != e.shape:
        return f"{where}expected shape {e.shape}, got shape {v.shape} ({value!r})"
    if not np.allclose(v, e, rtol=0.0, atol=tol, equal_nan=True):
        shown = lambda a: f"{a.item():.10g}" if a.ndim == 0 else np.array2string(a, precision=8)  # noqa: E731
        return f"{where}expected {shown(e)} (within {tol:g}), got {shown(v)}"
    return None


def _scaffold(value) -> bool:
    """Whether ``value`` is still (or still holds) the scaffold ``...`` of an answer cell."""
    if value is Ellipsis:
        return True
    if isinstance(value, dict):
        return any(_scaffold(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_scaffold(v) for v in value)
    return False


def check_answer(name: str, value, expected, tol: float = 1e-6, hint: str = "") -> bool:
    """Check a reader's answer to an exercise: prints ``"<name>: correct"`` and returns ``True``, else
    raises ``AssertionError`` saying what was expected, what came, and ``hint``.

    An answer that is (or holds) the answer cell's scaffold ``...`` is not checked: the check prints
    ``"<name>: not answered yet"`` and returns ``False``, so that a reader's copy runs from top to
    bottom before the exercises are done.

    Numbers match within the absolute tolerance ``tol`` (NaN matches NaN); arrays, tensors,
    lists and tuples (also a :class:`~medadv_tutorial.metrics.Interval`) match element by
    element and must have the expected shape; dicts must have the expected keys, with matching
    values; ``None``, strings and bools must be equal.

    Parameters
    ----------
    name: what the answer is, as the message should name it (e.g. ``"sensitivity"``).
    value: the reader's answer.  expected: the answer computed from the chapter's objects.
    tol: absolute tolerance for numbers, >= 0.  hint: one sentence on where a wrong answer
        usually comes from, added to the message.
    """
    from .checks import check_real

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string (what the answer is), got {name!r}")
    tol = check_real(tol, "tol (absolute tolerance)", low=0.0)
    if not isinstance(hint, str):
        raise TypeError(f"hint must be a string, got {type(hint).__name__}")
    if _scaffold(value):
        print(f"{name}: not answered yet (replace the ... in your answer cell)")
        return False
    why = _answer_mismatch(value, expected, tol, "")
    if why:
        raise AssertionError(f"{name} is not right yet: {why}." + (f" Hint: {hint}" if hint else ""))
    print(f"{name}: correct")
    return True


def check_rejects(check, *wrong, why: str) -> None:
    """Test of an exercise's check: ``check(*wrong)``, a plausible wrong answer, must raise ``AssertionError``.

    Raises ``AssertionError`` naming ``why`` (the mistake the wrong answer makes) if the check accepts
    it, or if it does not say "not answered yet" (return ``False``) for the scaffold ``...``.  The
    chapters run one such test per checked exercise in a cell the book and the readers' copies leave
    out; CI runs them with the chapters.
    """
    if not callable(check):
        raise TypeError(f"check must be the exercise's check function, got {type(check).__name__}")
    if not isinstance(why, str) or not why:
        raise TypeError("why must say which mistake the wrong answer makes (a non-empty string)")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            check(*wrong)
        except AssertionError:
            pass
        else:
            raise AssertionError(f"the check accepted a wrong answer ({why})")
        if check(*([...] * len(wrong))) is not False:
            raise AssertionError("the check does not say 'not answered yet' for the scaffold ...")
    print(f"the check rejects {why}")
