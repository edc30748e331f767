"""Progress bars: ``tqdm.auto`` (widgets in Jupyter/Colab when ipywidgets is installed,
text otherwise) without its warning about missing ipywidgets."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm  # noqa: F401

__all__ = ["tqdm"]
