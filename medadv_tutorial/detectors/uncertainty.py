"""Bayesian uncertainty (BU, Feinman et al. 2017): the MC-dropout variance of the softmax."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_finite, check_image_tensor, check_images, check_int, check_seed, describe, eval_mode
from ..batching import resolve_batch_size
from ..models import Classifier
from .base import Detector, Inputs


def mc_dropout_variance(model: nn.Module, x: torch.Tensor, n_samples: int = 20, *, batch_size: int | None = None,
                        seed: int | None = 0) -> torch.Tensor:
    """Bayesian-uncertainty score of Feinman et al. (2017) by Monte-Carlo dropout.

    Runs the model ``T = n_samples`` times with only its dropout layers active (every
    other module, BatchNorm included, in eval mode) and returns, per input, the summed
    variance of the softmax outputs::

        U(x) = sum_c ( 1/T sum_t p_tc(x)^2 - (1/T sum_t p_tc(x))^2 )   in [0, 1)

    Parameters
    ----------
    model: maps ``x`` to logits (N, C); must contain ``nn.Dropout``-type layers with p > 0.
    x: (N, ...) model inputs (images in [0, 1] for the book's classifiers).
    n_samples: T >= 2.  batch_size: inputs per forward pass (default: the device's,
        :func:`~medadv_tutorial.batching.default_batch_size`).
    seed: seeds the dropout masks (the global RNG is left untouched); None = global RNG.

    Returns (N,) float64 on ``x``'s device.  The model's train/eval flags are restored.

    When the only active dropout is a :class:`~medadv_tutorial.models.Classifier`'s own, before
    its linear head (the book's models), the backbone is deterministic: it runs once per batch
    and only the dropout and the head run ``T`` times -- the same masks from the same generator,
    the same numbers as ``T`` whole passes, at about ``1/T`` of the cost.
    """
    _check_inputs(x, "x", model)
    return _mc_dropout_variance(model, x, n_samples, batch_size=batch_size, seed=seed)


def _mc_dropout_variance(model, x, n_samples, *, batch_size, seed) -> torch.Tensor:
    """:func:`mc_dropout_variance` on inputs already checked (BU's score: the suite checks and scans
    its images once)."""
    from torch.nn.modules.dropout import _DropoutNd

    n_samples, batch_size = check_int(n_samples, "n_samples", 2), resolve_batch_size(batch_size, x.device)
    seed = None if seed is None else check_seed(seed)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module with dropout, got {type(model).__name__}")
    drops = [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]
    if not drops:
        raise ValueError("model has no dropout layer with p > 0: the MC-dropout variance would be 0 for "
                         "every input (BU needs a model with dropout)")
    devices = [x.device] if x.device.type == "cuda" else []
    head_only = isinstance(model, Classifier) and drops == [model.dropout]
    with eval_mode(model):  # every submodule's flag is restored afterwards, the dropout layers' too
        for m in drops:
            m.train()
        with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = []
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size]
                if head_only:  # the backbone once; the dropout masks and the head T times
                    pooled = model.forward_features(xb, layers=["penultimate"], logits=False)[1]["penultimate"]
                    sample = lambda: model.fc(model.dropout(pooled))  # noqa: E731
                else:
                    sample = lambda: model(xb)  # noqa: E731
                s1 = s2 = 0.0
                for _ in range(n_samples):
                    p = torch.softmax(sample().double(), dim=1)
                    s1, s2 = s1 + p, s2 + p * p
                mean = s1 / n_samples
                out.append((s2 / n_samples - mean * mean).sum(1).clamp_min(0.0))
    return torch.cat(out)


def _check_inputs(x, name: str, model=None, finite: bool = True) -> torch.Tensor:
    """Model inputs for BU: a non-empty, finite floating tensor (N, ...); images in [0, 1] for a Classifier."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty floating tensor of model inputs (N, C, H, W), got {describe(x)}")
    if isinstance(model, Classifier):
        (check_images if finite else check_image_tensor)(x, name, ndim=(4,))
    return check_finite(x, name) if finite else x


class BU(Detector):
    """Bayesian-uncertainty detector (Feinman et al., 2017): MC-dropout variance of a model.

    Unlike the feature detectors, BU scores *model inputs* (images), through ``model``:
    ``score(x) = mc_dropout_variance(model, x, n_samples)`` (see there), higher = more
    uncertain = more adversarial.  ``fit(clean_images)`` only records the clean scores
    for the threshold.  Needs a model with dropout (the book's EfficientNet-Lite0 has
    dropout before its linear head; ResNet-50 has none).
    """

    name = "BU"
    inputs = Inputs(view="images")

    def __init__(self, model: nn.Module, n_samples: int = 20, batch_size: int | None = None, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module with dropout, got {type(model).__name__}")
        self.model, self.n_samples = model, check_int(n_samples, "n_samples", 2)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size")
        self.seed = None if seed is None else check_seed(seed)

    def _params(self):
        return {"n_samples": self.n_samples, "seed": self.seed}

    def _validate(self, x, name, fitting, finite=True):
        _check_inputs(x, name, self.model, finite)
        if not fitting and tuple(x.shape[1:]) != self.n_features_in_:
            raise ValueError(f"{name} must have shape (N, {', '.join(map(str, self.n_features_in_))}) as at fit, "
                             f"got {tuple(x.shape)}")
        return x

    def _dim(self, x):
        return tuple(x.shape[1:])

    def _fit(self, x, labels):
        pass

    def _score(self, x, labels):
        return _mc_dropout_variance(self.model, x, self.n_samples, batch_size=self.batch_size, seed=self.seed)
