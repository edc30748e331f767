r"""The stress test: how far can a tiny perturbation move a model's internal features?

Two views of vulnerability, compared across data sets on the same backbone:

* **decision vulnerability** (Ma et al.): attack success rate versus the budget eps,
  see :func:`medadv_tutorial.attacks.success_rate` (one attack over several budgets);
* **representation vulnerability** (the HFC paper's stress test, this module): inside an
  L-inf ball of radius eps, push the pooled features of a layer as far as possible in
  one direction -- maximise, then minimise, their mean activation -- and measure the
  displacement in units of the spread of that data set's clean features.

For a layer with clean features :math:`h_c(x) \in \mathbb{R}^{C}` (spatially averaged), the
"max" attack solves :math:`\max_{\|\delta\|_\infty \le \epsilon} \tfrac1C \sum_c h_c(x+\delta)`
(the "min" attack the opposite) with the package's PGD loop, and the reported deviation is
the displacement in units of the clean cloud's root-mean-square radius,

.. math:: D = \frac{\|h(x+\delta) - h(x)\|_2}{\sqrt{\mathbb{E}_{x'}\|h(x') - \mu\|_2^2}},

averaged over images, where the expectation and the mean :math:`\mu` are over the data set's
clean images.  ``D = 1`` means the perturbation moved the feature vector as far as a typical
clean image lies from the centre of the clean cloud.  (A per-channel normalisation would
divide by the tiny spread of channels that are almost always zero after ReLU6 and blow up.)

The radius over all clean images grows with the number of classes whose clouds it spans: a
ten-class data set gets a wider yardstick, and so a smaller ``D`` for the same displacement,
than a binary one.  Given the images' labels, :func:`stress_test` also measures ``D`` in units
of the radius of each image's own class (:func:`class_radii`), which removes that difference.
"""

from __future__ import annotations

import torch

from . import metrics
from .attacks import iterative_attack
from .batching import resolve_batch_size
from .checks import (check_eps, check_finite, check_images, check_int, check_labels, check_model, check_seed,
                     eval_mode)


def _zero_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.new_zeros(logits.shape[0])


@torch.no_grad()
def pooled_features(model, x: torch.Tensor, layers: list[str], batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """Pooled clean features ``{layer: (N, C_l)}`` of ``x`` (N, C, H, W) in [0, 1], eval mode
    (``batch_size``: default the device's, :func:`~medadv_tutorial.batching.default_batch_size`)."""
    check_model(model, "model", "forward_features")
    check_images(x, "x", ndim=(4,))
    layers, batch_size = _check_layers(layers), resolve_batch_size(batch_size, x.device)
    if len(x) == 0:
        raise ValueError("x is empty: no image to compute features of")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            _, feats = model.forward_features(x[i : i + batch_size], layers=layers, logits=False)
            for k in layers:
                out[k].append(feats[k])
    return {k: torch.cat(v) for k, v in out.items()}


def _check_layers(layers) -> list[str]:
    """``layers``: a non-empty list of tap names (a single name is refused: it is not a list)."""
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of tap names such as ['block3', 'penultimate'], got {layers!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: name at least one tap (see model.feature_names)")
    return layers


def push_features(
    model,
    x: torch.Tensor,
    layer: str,
    *,
    eps: float,
    direction: int = +1,
    steps: int = 10,
    alpha: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """PGD that maximises (``direction=+1``) or minimises (``-1``) the mean pooled activation of ``layer``.

    Parameters
    ----------
    model: a :class:`~medadv_tutorial.models.Classifier` (needs ``forward_features``).
    x: (N, C, H, W) images in [0, 1].
    eps: L-inf budget in pixel units (e.g. ``1/255``).

    Returns the perturbed images (N, C, H, W) in [0, 1], within ``eps`` of ``x``.
    """
    if isinstance(direction, bool) or direction not in (-1, 1):
        raise ValueError(f"direction must be +1 (maximise) or -1 (minimise), got {direction!r}")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one tap name such as 'block3', got {layer!r}")
    check_model(model, "model", "forward_features")

    def forward(m, xa):  # stop at ``layer``; the loop only needs logits' shape
        _, feats = m.forward_features(xa, layers=[layer], logits=False)
        return feats[layer].new_zeros(len(xa), 2), feats

    def extra(xa, logits, feats):  # subtracted from the objective: -(+-mean) ascends +-mean
        return -direction * feats[layer].mean(dim=1)

    y = torch.zeros(len(x), dtype=torch.long, device=x.device)
    return iterative_attack(
        model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=True, seed=seed,
        loss_fn=_zero_loss, extra_loss=extra, forward=forward,
    )


def clean_radius(h: torch.Tensor) -> torch.Tensor:
    """RMS distance of clean features (N, C) from their mean: a scalar tensor."""
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[0] < 2:
        raise ValueError(f"h must be clean features (N, C) with N >= 2 (a spread needs two images), got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    check_finite(h, "h")
    return (h - h.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt()


def class_radii(h: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{class: clean_radius(h[y == class])}``: the RMS radius of each class's clean features
    (N, C), about that class's own mean.  Every class needs at least two images."""
    y = check_labels(y, len(h), "y", of="the features h")
    out = {}
    for c in torch.unique(y).tolist():
        if int((y == c).sum()) < 2:
            raise ValueError(f"class {c} has {int((y == c).sum())} image in y: a class's radius needs at least 2")
        out[c] = clean_radius(h[y == c])
    return out


def feature_deviation(h_adv: torch.Tensor, h_clean: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Per-image deviation ``||h_adv - h_clean||_2 / radius``: (N, C) x2, scalar -> (N,)."""
    if h_adv.shape != h_clean.shape:
        raise ValueError(f"h_adv and h_clean must have the same shape (N, C), got {tuple(h_adv.shape)} and "
                         f"{tuple(h_clean.shape)}")
    if not float(radius) > 0:
        raise ValueError(f"radius must be > 0 (the spread of clean features), got {float(radius)}")
    return (h_adv - h_clean).norm(dim=1) / radius.clamp_min(1e-12)


def stress_test(
    model,
    x: torch.Tensor,
    layers: list[str],
    *,
    eps: float,
    reference: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    steps: int = 10,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Representation vulnerability of ``model`` on images ``x``, layer by layer.

    Parameters
    ----------
    x: (N, C, H, W) images in [0, 1] to perturb.
    layers: tap names (see ``model.feature_names``).
    eps: L-inf budget.
    reference: clean images whose feature spread defines the radius (default: ``x``).
    labels: optional (N,) labels of ``x``; with them each layer's entry also holds
        ``"per_image_class"`` and ``"mean_class_ci"``: ``D`` in units of the radius of the image's
        own class among the reference images (:func:`class_radii`).
    reference_labels: the labels of ``reference`` (needed with ``labels`` when a reference is
        given; default ``labels``).
    batch_size: images per attack call (default: the device's,
        :func:`~medadv_tutorial.batching.default_batch_size`); image ``i`` of a batch starting at
        ``b`` is pushed from the random start of seed ``seed + b``.

    Returns ``{layer: {"max": D_max, "min": D_min, "mean": (D_max + D_min) / 2, "per_image":
    (N,) float64, "mean_ci": Interval}}`` with the mean deviations :math:`D` defined in the
    module docstring; ``per_image`` holds each image's ``(D_max + D_min) / 2`` (its mean is
    ``mean``), ``mean_ci`` that mean with its 95% bootstrap interval over the images
    (:func:`~medadv_tutorial.metrics.mean_interval`).
    """
    from .progress import progress as progress_bar

    check_images(x, "x", ndim=(4,))
    ref = x if reference is None else check_images(reference, "reference", ndim=(4,))
    name = "x (the reference when none is given)" if reference is None else "reference"
    if len(ref) < 2:
        raise ValueError(f"{name} must hold at least 2 clean images: the radius is the spread of their features, "
                         f"got {len(ref)}")
    if labels is not None:
        labels = check_labels(labels, len(x), "labels", of="the images x")
        if reference is not None and reference_labels is None:
            raise ValueError("reference_labels must be given with labels and a reference: the class radii are "
                             "taken over the reference images")
        reference_labels = labels if reference is None else check_labels(reference_labels, len(ref), "reference_labels",
                                                                          of="the reference images")
        missing = sorted(set(labels.tolist()) - set(reference_labels.tolist()))
        if missing:
            raise ValueError(f"labels holds classes {missing} that reference_labels does not: no radius for them")
    elif reference_labels is not None:
        raise ValueError("reference_labels needs labels (the labels of x) too")
    layers, eps = _check_layers(layers), check_eps(eps, "eps")
    steps, batch_size, seed = check_int(steps, "steps"), resolve_batch_size(batch_size, x.device), check_seed(seed)
    clean_ref = pooled_features(model, ref, layers)
    radius = {k: clean_radius(v) for k, v in clean_ref.items()}
    flat = [k for k, r in radius.items() if not float(r) > 0]
    if flat:
        raise ValueError(f"{name}: the clean features of layers {flat} do not spread (identical images?), so a "
                         "deviation in units of their spread is undefined")
    clean = pooled_features(model, x, layers)
    out: dict[str, dict] = {}
    per_image: dict[str, list[torch.Tensor]] = {}
    jobs = [(layer, d) for layer in layers for d in (+1, -1)]
    for layer, d in progress_bar(jobs, desc=f"stress test eps={eps * 255:.2g}/255", enabled=progress, leave=False):
        devs = []
        for i in range(0, len(x), batch_size):
            xa = push_features(model, x[i : i + batch_size], layer, eps=eps, direction=d, steps=steps, seed=seed + i)
            h = pooled_features(model, xa, [layer])[layer]
            devs.append(feature_deviation(h, clean[layer][i : i + batch_size], radius[layer]))
        out.setdefault(layer, {})["max" if d > 0 else "min"] = float(torch.cat(devs).mean())
        per_image.setdefault(layer, []).append(torch.cat(devs).double())
    for layer, v in out.items():
        v["mean"] = (v["max"] + v["min"]) / 2
        v["per_image"] = (per_image[layer][0] + per_image[layer][1]) / 2
        v["mean_ci"] = metrics.mean_interval(v["per_image"])
        if labels is not None:
            per_class = class_radii(clean_ref[layer], reference_labels)
            scale = torch.stack([radius[layer] / per_class[int(c)] for c in labels]).double()
            v["per_image_class"] = v["per_image"] * scale.cpu()
            v["mean_class_ci"] = metrics.mean_interval(v["per_image_class"])
    return out


def input_gradient_l1(model, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Per-image L1 norm of the input gradient of the cross-entropy, ``||grad_x L(f(x), y)||_1``: (N,).

    To first order, the largest loss increase an L-inf perturbation of size eps can buy is
    ``eps * ||grad_x L||_1``, so this norm measures how steep the loss is around each image
    -- one of the explanations Ma et al. give for the vulnerability of medical models.
    Computed in eval mode; ``x`` (N, C, H, W) in [0, 1], ``y`` (N,) true labels.
    """
    from .saliency import loss_gradient

    return loss_gradient(model, x, y, batch_size).abs().flatten(1).sum(1)
