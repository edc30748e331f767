r"""Capacity sweep: are medical models easy to attack because they are over-parameterised?

Ma et al. (Pattern Recognition 2021) explain the vulnerability of medical-image models partly by
capacity: state-of-the-art networks are *over-parameterised* for simple medical tasks, which makes
their loss landscape sharp (their second explanation).  They show sharp landscapes but do not vary
the capacity.  This module does: it trains models of growing capacity on one data set at one
resolution and measures, for each, the attack success at a fixed budget and the sharpness
(:func:`medadv_tutorial.landscape.sharpness`)::

    row = capacity.sweep_model("pneumoniamnist", "cnn8", profile="ci")
    row["success"].float().mean(), row["sharpness"].mean()

The line-up, :data:`SWEEP` (smallest first):

* ``cnn4`` ... ``cnn32``: small convolutional networks trained *from scratch*
  (:func:`small_cnn`; about 2 thousand to 0.14 million weights);
* ``efficientnet_lite0``, ``efficientnet_lite2``: the book's ImageNet-pretrained backbones,
  fine-tuned (about 3.4 and 4.9 million weights).

Every model sees the images at :data:`SWEEP_SIZE` = 28 px, the native size of the MedMNIST sets,
so that a medical task and CIFAR-10 (32 px, read at 28) are compared at one resolution: the
book's Chapter 2 found that what separates the medical sets from CIFAR-10 goes with the source
resolution, and a capacity effect has to be seen apart from it.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from . import cache as result_cache
from .attacks import PGD
from .checks import check_eps, check_seed, describe
from .landscape import sharpness
from .models import Classifier, build_model
from .profiles import Profile, as_profile
from .rng import scoped_threads, seeded_global_rng

__all__ = ["SWEEP", "SWEEP_SIZE", "SWEEP_EPOCHS", "CNN_WIDTHS", "small_cnn", "build_sweep_model", "n_parameters",
           "sweep_model", "sweep"]

SWEEP_SIZE = 28
"""Side length (px) every sweep model is trained and attacked at."""

SWEEP_EPOCHS = 6
"""Training epochs of every sweep model (a from-scratch network needs more than the book's two
fine-tuning epochs; at 28 px an epoch of 2000 images takes seconds)."""

CNN_WIDTHS = (4, 8, 16, 32)
SWEEP = tuple(f"cnn{w}" for w in CNN_WIDTHS) + ("efficientnet_lite0", "efficientnet_lite2")
"""The sweep's models, smallest first."""


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(width: int, num_classes: int = 2, in_channels: int = 1) -> Classifier:
    """A from-scratch CNN of ``width`` base channels as a :class:`~medadv_tutorial.models.Classifier`.

    Three stages, taps ``block1``, ``block2`` and ``penultimate``: two 3x3 convolutions of ``width``
    channels and a 2x2 max-pool; two of ``2 * width`` and a max-pool; one of ``4 * width`` (each
    convolution followed by batch norm and ReLU), then global average pooling and a linear head.
    Inputs are normalised inside as ``(x - 0.5) / 0.25``.
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be a positive int (base channels), got {describe(width)}")
    w = width
    stages = [("block1", nn.Sequential(*_conv(3, w), *_conv(w, w), nn.MaxPool2d(2))),
              ("block2", nn.Sequential(*_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2))),
              ("head", nn.Sequential(*_conv(2 * w, 4 * w)))]
    return Classifier(stages, 4 * w, num_classes, in_channels, (0.5,) * 3, (0.25,) * 3, dropout=0.0,
                      backbone=f"cnn{w}")


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in SWEEP:
        raise ValueError(f"name must be one of the sweep's models {SWEEP}, got {describe(name)}")
    return name


def build_sweep_model(name: str, num_classes: int, in_channels: int) -> Classifier:
    """A fresh sweep model: ``cnnW`` from scratch, or an EfficientNet-Lite with its ImageNet weights."""
    name = _check_name(name)
    if name.startswith("cnn"):
        return small_cnn(int(name[3:]), num_classes, in_channels)
    return build_model(name, num_classes, in_channels, SWEEP_SIZE, pretrained=True)


def n_parameters(model: nn.Module) -> int:
    """Number of weights of ``model`` (its linear head included)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {describe(model)}")
    return sum(p.numel() for p in model.parameters())


def sweep_model(dataset: str, name: str, *, profile: Profile | str | None = None, seed: int = 0,
                eps: float = 1 / 255, progress: bool = False) -> dict:
    """Train one sweep model on ``dataset`` at 28 px and measure it (through the result cache).

    The model is trained on the profile's training subset (``profile.n_train`` images, seeded by
    ``seed``) for :data:`SWEEP_EPOCHS` epochs with the profile's batch size, learning rate and class
    weighting, then measured on ``profile.n_attack`` correctly classified test images (a seeded draw,
    :func:`~medadv_tutorial.training.correctly_classified`; each model draws among its own correct ones):

    Returns a dict: ``name``, ``dataset``, ``n_params``, ``accuracy`` (on the profile's test subset),
    ``success`` (bool (n,): PGD with ``eps``, ``profile.attack_steps`` steps and a seeded random
    start flips the prediction), ``sharpness`` (float64 (n,): the loss rise of one FGSM step of ``eps``),
    ``train_seconds`` and ``cached``.
    """
    from .data import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    name, profile = _check_name(name), as_profile(profile)
    seed, eps = check_seed(seed, "seed"), check_eps(eps, "eps")
    settings = dict(dataclasses.asdict(profile), name=None, image_size=SWEEP_SIZE)
    parts = dict(dataset=dataset, model=name, seed=seed, eps=eps, epochs=SWEEP_EPOCHS, settings=settings)
    row, hit = result_cache.cached_tensors(
        "capacity", parts, lambda: _train_and_measure(dataset, name, profile, seed, eps, progress), code="capacity")
    return dict(row, name=name, dataset=dataset, cached=hit)


def _train_and_measure(dataset: str, name: str, profile: Profile, seed: int, eps: float, progress: bool) -> dict:
    from .data import load_dataset
    from .training import correctly_classified, evaluate, fit

    sized = dataclasses.replace(profile, image_size=SWEEP_SIZE)
    train, test = (load_dataset(dataset, split, profile=sized, seed=seed) for split in ("train", "test"))
    with seeded_global_rng(seed), scoped_threads(profile.num_threads):
        model = build_sweep_model(name, len(test.classes), test.channels)
        t0 = time.perf_counter()
        fit(model, train, epochs=SWEEP_EPOCHS, batch_size=profile.batch_size, lr=profile.lr, seed=seed,
            class_weighted=profile.class_weighted, progress=progress)
        seconds = time.perf_counter() - t0
        accuracy = evaluate(model, test)["accuracy"]
        x, y = correctly_classified(model, test, n=profile.n_attack, seed=seed)
        x_adv = PGD(eps, steps=profile.attack_steps, random_start=True, seed=seed)(model, x, y)
        with torch.no_grad():
            success = model(x_adv).argmax(1) != y
        rise = sharpness(model, x, y, eps)
    return {"n_params": n_parameters(model), "accuracy": float(accuracy), "success": success.cpu(),
            "sharpness": rise, "train_seconds": seconds}


def sweep(datasets=("pneumoniamnist", "cifar10"), names=SWEEP, **kwargs) -> dict:
    """``{(dataset, name): sweep_model(dataset, name, **kwargs)}`` for every pair, in order."""
    return {(d, n): sweep_model(d, n, **kwargs) for d in datasets for n in names}
