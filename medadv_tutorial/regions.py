r"""Perturbations inside and outside the region the model looks at.

Ma et al. (Pattern Recognition 2021) explain the high detectability of medical adversarial
examples partly by *where* the perturbation goes (their third explanation): the attack perturbs
the image outside the pathological region as much as inside it, and the perturbation outside,
where the clean image gives the model little evidence, moves the deep features in ways no clean
image does.  No data set of the book has lesion masks, so the region is a proxy: the top 20% of
the clean image's Grad-CAM map (:func:`attention_region`).  This module measures

* :func:`inside_share`: the share of a perturbation's L1 mass inside the region (a perturbation
  spread evenly gives the region's pixel share, 0.2);
* :func:`feature_displacement`: how far a perturbation moves a tap's pooled features, so that the
  inside part and the outside part of one perturbation (:func:`split`) can each be applied alone;
* :class:`ConfinedPGD`: PGD whose perturbation is confined to the region or to its complement,
  and :func:`match_success`, the smallest budget at which a confined attack succeeds as often as
  a reference, chosen on a selection set.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .attacks import PGD, iterative_attack
from .checks import check_eps, check_images, check_int, check_real, describe, eval_mode
from .gradcam import grad_cam, top_region

__all__ = ["attention_region", "inside_share", "split", "feature_displacement", "ConfinedPGD", "match_success"]


def attention_region(model, x: torch.Tensor, layer: str = "penultimate", fraction: float = 0.2,
                     batch_size: int | None = None) -> torch.Tensor:
    """Boolean masks (N, H, W): the top ``fraction`` of each image's Grad-CAM map of its predicted
    class at ``layer`` (:func:`~medadv_tutorial.gradcam.grad_cam`, :func:`~medadv_tutorial.gradcam.top_region`)."""
    return top_region(grad_cam(model, x, layer, batch_size=batch_size), fraction)


def _check_region(region, delta: torch.Tensor) -> torch.Tensor:
    if not isinstance(region, torch.Tensor) or region.dtype != torch.bool:
        raise TypeError(f"region must be a bool mask (N, H, W) (attention_region), got {describe(region)}")
    if delta.ndim != 4 or region.shape != (delta.shape[0],) + tuple(delta.shape[2:]):
        raise ValueError(f"region must be (N, H, W) = ({delta.shape[0]}, {', '.join(map(str, delta.shape[2:]))}) "
                         f"for a perturbation of shape {tuple(delta.shape)}, got {tuple(region.shape)}")
    return region.to(delta.device)


def _check_delta(delta) -> torch.Tensor:
    if not isinstance(delta, torch.Tensor) or not delta.is_floating_point() or delta.ndim != 4:
        raise TypeError(f"delta must be a float tensor (N, C, H, W) (x_adv - x), got {describe(delta)}")
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("delta has non-finite values")
    return delta


def inside_share(delta: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image, the share of ``delta``'s L1 mass (summed over channels) inside ``region``: (N,) float64.

    An image whose perturbation is zero has no share: NaN.
    """
    delta = _check_delta(delta)
    region = _check_region(region, delta)
    mass = delta.abs().sum(1).double()
    total = mass.flatten(1).sum(1)
    inside = (mass * region).flatten(1).sum(1)
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan"))).cpu()


def split(delta: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inside, outside)``: ``delta`` with everything outside, then everything inside, ``region`` set
    to zero; the two add up to ``delta`` exactly.  If ``x + delta`` lies in [0, 1], so do ``x + inside``
    and ``x + outside`` (each pixel keeps either its perturbation or none)."""
    delta = _check_delta(delta)
    m = _check_region(region, delta).unsqueeze(1)
    zero = torch.zeros((), dtype=delta.dtype, device=delta.device)
    return torch.where(m, delta, zero), torch.where(m, zero, delta)


@torch.no_grad()
def feature_displacement(model, x: torch.Tensor, delta: torch.Tensor, layer: str = "penultimate",
                         batch_size: int | None = None) -> torch.Tensor:
    """Per image, ``||h(x + delta) - h(x)||_2`` of the pooled features ``h`` at ``layer``: (N,) float64.

    ``x + delta`` must lie in [0, 1] (the model checks it).  The model runs in eval mode (restored).
    """
    check_images(x, "x", ndim=(4,))
    delta = _check_delta(delta)
    if delta.shape != x.shape:
        raise ValueError(f"delta must have x's shape {tuple(x.shape)}, got {tuple(delta.shape)}")
    if not isinstance(layer, str) or layer not in getattr(model, "feature_names", ()):
        raise ValueError(f"layer must be one of the model's taps {getattr(model, 'feature_names', None)}, "
                         f"got {describe(layer)}")
    batch_size = check_int(batch_size, "batch_size") if batch_size is not None else 64
    out = []
    with eval_mode(model):
        for n in range(0, len(x), batch_size):
            xb, db = x[n : n + batch_size], delta[n : n + batch_size]
            (_, clean), (_, moved) = (model.forward_features(t, layers=[layer], logits=False) for t in (xb, xb + db))
            out.append((moved[layer] - clean[layer]).double().norm(dim=1).cpu())
    return torch.cat(out)


class ConfinedPGD(PGD):
    """PGD whose perturbation stays inside (``where="inside"``) or outside (``"outside"``) each
    image's :func:`attention_region`, computed on the clean image when the attack is called.

    The loop is the package's PGD (:func:`~medadv_tutorial.attacks.iterative_attack`, random start,
    ``alpha = eps / 4`` unless given) run on ``x + m * (x' - x)`` with ``m`` the mask: the gradient
    is zero where ``m`` is, so only the allowed pixels move; the returned image is
    ``x + m * (x_adv - x)``.  Untargeted; runs through
    :func:`~medadv_tutorial.attacks.run_attack` and :func:`~medadv_tutorial.protocol.evaluate_attack`
    like any :class:`~medadv_tutorial.attacks.Attack`.
    """

    def __init__(self, eps: float, *, where: str = "inside", steps: int = 10, alpha: float | None = None,
                 layer: str = "penultimate", fraction: float = 0.2, seed: int | None = 0):
        if where not in ("inside", "outside"):
            raise ValueError(f"where must be 'inside' or 'outside' (the attention region or its complement), "
                             f"got {describe(where)}")
        super().__init__(eps, alpha=alpha, steps=steps, random_start=True, seed=seed)
        if not isinstance(layer, str):
            raise TypeError(f"layer must be the name of a tap (e.g. 'penultimate'), got {describe(layer)}")
        self.where, self.layer = where, layer
        self.fraction = check_real(fraction, "fraction", low=0.0, low_open=True, high=1.0)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        self._validate()
        region = attention_region(model, x, self.layer, self.fraction)
        m = (region if self.where == "inside" else ~region).unsqueeze(1).to(x.dtype)
        x = x.detach()

        def forward(net, xa):
            return net(x + m * (xa - x)), None

        x_adv = iterative_attack(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True,
                                 forward=forward, seed=None if generator is not None else self.seed,
                                 generator=generator)
        return (x + m * (x_adv - x)).detach()

    def _settings(self):
        return dict(super()._settings(), where=self.where, layer=self.layer, fraction=self.fraction)


def match_success(make_attack: Callable[[float], Callable], budgets: Sequence[float], model, x: torch.Tensor,
                  y: torch.Tensor, target: float) -> tuple[float | None, dict]:
    """The smallest budget whose attack flips at least a share ``target`` of ``(x, y)``.

    ``make_attack(eps)`` returns an attack ``(model, x, y) -> x_adv``; the budgets are tried in
    increasing order until one reaches ``target``.  Run it on a *selection* set, never on the images
    the chosen attack is evaluated on.  Returns ``(eps or None if none reaches it, {eps: success})``.
    """
    target = check_real(target, "target", low=0.0, high=1.0)
    budgets = sorted(check_eps(b, "budgets") for b in budgets)
    if not budgets:
        raise ValueError("budgets is empty: give at least one eps")
    tried = {}
    for eps in budgets:
        x_adv = make_attack(eps)(model, x, y)
        with torch.no_grad(), eval_mode(model):
            tried[eps] = float((model(x_adv).argmax(1) != y.to(x_adv.device)).double().mean())
        if tried[eps] >= target:
            return eps, tried
    return None, tried
