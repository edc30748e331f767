"""Figures used across chapters (matplotlib; each function returns the Figure).

Every text in a figure is at least :data:`MIN_FONT` pt and every figure at most 10 in wide, so
that at the book's 72 dpi (720 px) it is shown at its size, not scaled down, in the page column.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

MIN_FONT = 9
"""Smallest font size (pt) of any text in the package's figures."""


def to_display(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] -> (H, W) or (H, W, 3) array for ``imshow``."""
    if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] not in (1, 3):
        got = f"shape {tuple(img.shape)}" if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"img must be one image (C, H, W) with C = 1 or 3, got {got}")
    a = img.detach().float().cpu().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def amplified(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """A perturbation ``delta`` (values in ``[-eps, eps]``) as an image around mid-grey:
    ``0.5 + delta / (2 eps)``, so that ``-eps`` shows black and ``+eps`` white (at ``eps`` =
    1/255, an amplification of 127.5).  Every chapter shows perturbations this way, so that
    their amplifications match."""
    if not isinstance(delta, torch.Tensor):
        raise TypeError(f"delta must be a tensor (a perturbation), got {type(delta).__name__}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a budget > 0 (the perturbation's L-inf bound), got {eps!r}")
    return 0.5 + delta / (2 * eps)


def sample_grid(dataset, n_per_class: int = 4, seed: int = 0, title: str | None = None, size: float = 1.6):
    """A grid of ``n_per_class`` random images per class (one row per class) with labels.

    ``dataset`` is a :class:`medadv_tutorial.data.ImageDataset`.
    """
    from .checks import check_int, check_seed

    n_per_class, seed = check_int(n_per_class, "n_per_class"), check_seed(seed)
    if not hasattr(dataset, "classes") or not hasattr(dataset, "labels"):
        raise TypeError(f"dataset must be an ImageDataset (with .classes and .labels), got {type(dataset).__name__}")
    g = torch.Generator().manual_seed(seed)
    classes = dataset.classes
    fig, axes = plt.subplots(len(classes), n_per_class, figsize=(size * n_per_class, size * len(classes)), squeeze=False)
    for c, name in enumerate(classes):
        idx = torch.nonzero(dataset.labels == c).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:n_per_class]]
        for j in range(n_per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(pick):
                img, _ = dataset[int(pick[j])]
                ax.imshow(to_display(img), cmap="gray", vmin=0, vmax=1)
            if j == 0:
                ax.set_title(name, fontsize=MIN_FONT, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(records: dict[str, dict], smooth: int = 10):
    """Per-batch training loss and accuracy (moving average over ``smooth`` batches).

    ``records`` maps a display name to the record returned by
    :func:`medadv_tutorial.training.get_model`.
    """
    from .checks import check_int

    smooth = check_int(smooth, "smooth (batches averaged)")
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    kernel = np.ones(smooth) / smooth
    for name, rec in records.items():
        loss = np.asarray(rec["history"]["step_loss"])
        acc = np.asarray(rec["history"]["step_accuracy"])
        k = min(smooth, len(loss))
        steps = np.arange(k, len(loss) + 1)
        ax_l.plot(steps, np.convolve(loss, kernel[:k] * smooth / k, mode="valid"), label=name)
        ax_a.plot(steps, np.convolve(acc, kernel[:k] * smooth / k, mode="valid"), label=name)
    ax_l.set(xlabel="training step (batch)", ylabel="cross-entropy", title="training loss")
    ax_a.set(xlabel="training step (batch)", ylabel="accuracy", title="training accuracy", ylim=(0, 1.02))
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
    # one legend beside the panels: inside, it would cover the curves' ends
    fig.legend(*ax_a.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=MIN_FONT, frameon=False)
    fig.tight_layout()
    return fig


def confusion_matrices(records: dict[str, dict]):
    """One confusion-matrix panel per record (rows = true class, columns = predicted)."""
    fig, axes = plt.subplots(1, len(records), figsize=(3.3 * len(records), 3.0), squeeze=False)
    for ax, (name, rec) in zip(axes[0], records.items()):
        cm = np.asarray(rec["test"]["confusion"])
        classes = rec["classes"]
        ax.imshow(cm, cmap="Blues")
        k = len(classes)
        show_text = k <= 4
        for i in range(k):
            for j in range(k):
                if show_text:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                            color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=9)
        # long names wrap onto two lines instead of being cut
        wrapped = [textwrap.fill(c, 10, break_long_words=False) for c in classes]
        if k > 2:  # vertical names: at 45 degrees, ten of them overlap
            ax.set_xticks(range(k), wrapped, rotation=90, ha="right", va="center", rotation_mode="anchor",
                          fontsize=MIN_FONT)
        else:
            ax.set_xticks(range(k), wrapped, fontsize=MIN_FONT)
        ax.set_yticks(range(k), wrapped, fontsize=MIN_FONT)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.tight_layout()
    return fig
