"""Progress bars: one helper over ``tqdm.auto`` (widgets in Jupyter/Colab when ipywidgets is
installed, text otherwise), without its warning about missing ipywidgets."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm  # noqa: F401

__all__ = ["tqdm", "progress"]


def progress(iterable, *, desc: str, total: int | None = None, enabled: bool = True, leave: bool = True):
    """``iterable`` with a progress bar labelled ``desc`` (``iterable`` itself when not ``enabled``).

    ``total``: the number of items, when ``len(iterable)`` does not give it (generators).
    ``leave``: keep the finished bar on screen.
    """
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=leave)
