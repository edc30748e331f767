"""Progress bars: one helper over ``tqdm.autonotebook`` (widgets in Jupyter/Colab when ipywidgets
is installed, text otherwise), without its warnings.

Not ``tqdm.auto``: its class adds ``tqdm.asyncio``, whose constructor calls ``iter()`` on the
iterable at once, so a bar over a ``DataLoader`` made a second iterator of it, and every
``DataLoader`` iterator draws its base seed from the loader's generator (or from torch's
global one) when it is made.  A progress bar then moved every later random draw: the shuffled
batches of training, for one.  A bar from this module never iterates what it shows more
than once (a test checks that it leaves a loader's generator alone).
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.autonotebook import tqdm  # noqa: F401

__all__ = ["progress"]  # tqdm is re-exported for the package's own loops, not documented here


def progress(iterable, *, desc: str, total: int | None = None, enabled: bool = True, leave: bool = True):
    """``iterable`` with a progress bar labelled ``desc`` (``iterable`` itself when not ``enabled``).

    ``total``: the number of items, when ``len(iterable)`` does not give it (generators).
    ``leave``: keep the finished bar on screen.
    """
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=leave)
