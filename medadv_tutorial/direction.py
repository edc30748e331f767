r"""The fixed direction: why the features of adversarial images are outliers.

**The fixed-direction theorem** (Yao et al., MICCAI 2021, Sec. 2.2).  With a linear
head :math:`z = W h + b` on the penultimate features :math:`h` and the cross-entropy
:math:`L = -\log \mathrm{softmax}(z)_y`,

.. math:: \nabla_h L = (p - e_y)^\top W, \qquad p = \mathrm{softmax}(z)

(:func:`logit_gradient_wrt_features`).  With two classes this is
:math:`(1 - p_y)\,(w_{y'} - w_y)`: whatever the image, the gradient in feature space
points along the same direction :math:`\Delta w = w_{\mathrm{target}} - w_{\mathrm{source}}`
(:func:`delta_w`), scaled by a positive number.  An attack that follows it keeps
pushing the features along :math:`\Delta w`, step after step, far beyond the clean
distribution -- the reason adversarial features are outliers.  (In input space the
attack can only move :math:`h` within the reach of an :math:`L_\infty` step, so the
feature displacement is :math:`\Delta w` *filtered* by the network: for a linear feature
map :math:`h = A x` a sign step moves :math:`h` by :math:`\alpha A\,\mathrm{sign}(A^\top
\Delta w)`, whose projection on :math:`\Delta w`, :math:`\alpha \|A^\top \Delta w\|_1`,
is always positive.)  :func:`pgd_feature_trajectory` records :math:`h` at every PGD
iterate and :func:`direction_stats` measures how well the trajectory follows
:math:`\Delta w`, against random directions as a baseline.

Conventions: feature tensors are ``(N, C_l)`` floats (``C_l`` channels of layer ``l``);
a :class:`FeatureSet` lives on the CPU in float32; statistics are computed in float64 on
the device of their inputs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .attacks import PGD, Attack
from .batching import resolve_forward
from .checks import check_finite, check_int, check_labels, check_seed, describe, eval_mode
from .outliers import _as_classes

__all__ = ["logit_gradient_wrt_features", "delta_w", "attack_direction", "pgd_feature_trajectory", "direction_stats"]


def logit_gradient_wrt_features(W: torch.Tensor, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Analytic gradient of the cross-entropy w.r.t. the penultimate features.

    For logits :math:`z = W h + b` and :math:`L = -\log p_y`, :math:`p = \mathrm{softmax}(z)`:
    :math:`\nabla_h L = (p - e_y)^\top W`.

    Parameters
    ----------
    W: ``(K, d)`` weight of the linear head (``model.fc.weight``).
    p: ``(N, K)`` softmax probabilities.
    y: ``(N,)`` the class of the loss (true label for an untargeted attack, which ascends
        this gradient; the target for a targeted attack, which descends it).

    Returns ``(N, d)``.  For ``K = 2`` it equals :math:`(1 - p_y)(w_{1-y} - w_y)`.
    """
    _check_head(W)
    k = W.shape[0]
    if not isinstance(p, torch.Tensor) or p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"p must have shape (N, {k}), got {describe(p)}")
    check_finite(p, "p")
    y = _as_classes(y, p.shape[0], "y", k).to(p.device)
    return (p - F.one_hot(y, k).to(p.dtype)) @ W.to(p.dtype)


def delta_w(W: torch.Tensor, source, target) -> torch.Tensor:
    r""":math:`\Delta w = w_{\mathrm{target}} - w_{\mathrm{source}}`, the fixed direction.

    ``W`` ``(K, d)``; ``source``, ``target``: ints (returns ``(d,)``) or ``(N,)`` tensors
    (returns ``(N, d)``).
    """
    _check_head(W)
    s, t = (_class_index(v, name, W.shape[0]).to(W.device) for v, name in ((source, "source"), (target, "target")))
    return W[t] - W[s]


def _check_head(W) -> None:
    if not isinstance(W, torch.Tensor) or not W.is_floating_point() or W.ndim != 2:
        raise ValueError(f"W must be the (K, d) weight of the linear head (model.fc.weight), got {describe(W)}")
    check_finite(W, "W")


def _class_index(v, name: str, k: int) -> torch.Tensor:
    """An int or an integer tensor of class indices in ``[0, k)``, as an int64 tensor."""
    t = torch.as_tensor(v)
    if t.is_floating_point() or t.dtype == torch.bool or t.ndim > 1:
        raise TypeError(f"{name} must be a class index (int) or an (N,) integer tensor, got {describe(v)}")
    return check_labels(t.reshape(-1), t.numel(), name, k).long().reshape(t.shape)


def attack_direction(W: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    r"""Per-image fixed direction of a binary attack, ``(N, d)``.

    Untargeted (``y`` = true labels): :math:`w_{1-y} - w_y`; targeted (``y`` = targets):
    :math:`w_y - w_{1-y}`.  Only defined for two classes (``W`` of shape ``(2, d)``).
    """
    _check_head(W)
    if W.shape[0] != 2:
        raise ValueError(f"the fixed direction is defined for binary heads: W must be (2, d), got {tuple(W.shape)}")
    y = _class_index(y, "y", 2).to(W.device)
    return delta_w(W, 1 - y, y) if targeted else delta_w(W, y, 1 - y)


def _penultimate(aux) -> torch.Tensor:
    if isinstance(aux, Mapping) and "penultimate" in aux:
        return aux["penultimate"]
    raise ValueError("the attack's forward must return (logits, aux) with aux['penultimate'] "
                     "(use forward='forward_features' or leave forward unset)")


def _forward_penultimate(model, x):
    return model.forward_features(x, layers=["penultimate"])


class _Recorder:
    """Extra loss that records ``aux['penultimate']`` at every step and adds the wrapped term (if any)."""

    def __init__(self, inner):
        self.inner = inner
        self.steps: list[torch.Tensor] = []

    def bind(self, x, y):
        inner = self.inner
        if inner is not None and callable(getattr(inner, "bind", None)):
            inner = inner.bind(x, y)

        def term(xa, logits, aux):
            self.steps.append(_penultimate(aux).detach().clone())
            return logits.new_zeros(xa.shape[0]) if inner is None else inner(xa, logits, aux)

        return term


def pgd_feature_trajectory(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    attack_kwargs: Mapping[str, Any] | Attack | None = None,
    *,
    return_adv: bool = False,
):
    r"""Penultimate features at every iterate of a PGD attack: ``(T + 1, N, d)``.

    The attack runs once, on the package's loop (:func:`~medadv_tutorial.attacks.iterative_attack`):
    a recording extra term stores ``aux["penultimate"]`` of each forward pass, and the
    final iterate's features are computed after the attack.

    Parameters
    ----------
    model: a :class:`~medadv_tutorial.models.Classifier` (``forward_features``), on ``x.device``.
    x: ``(N, C, H, W)`` images in [0, 1].
    y: ``(N,)`` true labels, or targets if the attack is targeted.
    attack_kwargs: keyword arguments of :class:`~medadv_tutorial.attacks.PGD` (e.g.
        ``{"eps": 4/255, "steps": 20, "targeted": True}``; ``random_start`` defaults to
        ``False`` here so that step 0 is the clean image), or a configured
        :class:`~medadv_tutorial.attacks.Attack` (BIM, MIM, an HFC attack, ...).  An
        attack's own ``extra_loss`` is kept (and still acts); its ``forward``, if set,
        must provide ``aux["penultimate"]``.  ``early_stop`` is not supported.
    return_adv: also return the adversarial images.

    Returns
    -------
    ``traj`` ``(T + 1, N, d)`` detached, on ``x.device``: ``traj[0]`` the clean features,
    ``traj[t]`` the features after ``t`` steps (with a random start, ``traj[1]`` includes
    the random offset).  With ``return_adv``: ``(traj, x_adv)``.
    """
    if isinstance(attack_kwargs, Attack):
        attack = attack_kwargs
    elif attack_kwargs is not None and not isinstance(attack_kwargs, Mapping):
        raise TypeError(f"attack_kwargs must be a dict of PGD settings such as {{'eps': 4/255, 'steps': 10}} or an "
                        f"Attack, got {describe(attack_kwargs)}")
    else:
        kw = dict(random_start=False)
        kw.update(attack_kwargs or {})
        if "eps" not in kw:
            raise ValueError("attack_kwargs must give eps, e.g. {'eps': 4/255, 'steps': 10}")
        attack = PGD(**kw)
    if attack.early_stop:
        raise ValueError("early_stop drops finished samples from the batch; use early_stop=False for a trajectory")
    forward = attack.forward if attack.forward is not None else _forward_penultimate
    recorder = _Recorder(attack.extra_loss)
    x_adv = attack.replace(extra_loss=recorder, forward=forward)(model, x, y)
    run = resolve_forward(model, forward)
    with eval_mode(model), torch.no_grad():
        h_last = _penultimate(run(x_adv)[1]).detach()
        h_clean = _penultimate(run(x)[1]).detach() if attack.random_start else recorder.steps[0]
    if len(recorder.steps) != attack.steps:
        raise RuntimeError(f"recorded {len(recorder.steps)} steps, expected {attack.steps}")
    traj = torch.stack([h_clean] + recorder.steps[1:] + [h_last])
    return (traj, x_adv) if return_adv else traj


def direction_stats(traj: torch.Tensor, direction: torch.Tensor, n_random: int = 100, seed: int = 0) -> dict:
    r"""How closely a feature trajectory follows a direction (the fixed-direction test).

    Parameters
    ----------
    traj: ``(T + 1, N, d)`` features along an attack (``traj[0]`` clean), e.g. from
        :func:`pgd_feature_trajectory`.
    direction: ``(d,)`` one direction, or ``(N, d)`` one per image (e.g.
        :func:`attack_direction`); normalised here.
    n_random: number of random Gaussian directions for the baseline (seeded by ``seed``).

    Returns
    -------
    dict with

    * ``"projection"``: ``(T + 1,)`` mean over images of :math:`(h_t - h_0)\cdot u`
      (``u`` the unit direction);
    * ``"frac_increasing"``: fraction of (image, step) pairs whose projection grows;
    * ``"frac_increasing_per_step"``: ``(T,)`` the same fraction for each step ``t -> t+1``;
    * ``"cos_total_per_image"``: ``(N,)`` cosine between :math:`h_T - h_0` and ``u``;
    * ``"cos_total"``: its mean;
    * ``"cos_random"``: mean :math:`|\cos|` between :math:`h_T - h_0` and ``n_random``
      random directions (chance level, about :math:`\sqrt{2/(\pi d)}`);
    * ``"cos_random_expected"``: :math:`\sqrt{2/(\pi d)}`;
    * ``"cos_successive"``: ``(T - 1,)`` mean cosine between consecutive step
      displacements :math:`h_{t+1} - h_t` and :math:`h_t - h_{t-1}` (1 = a straight path).
    """
    if not isinstance(traj, torch.Tensor) or traj.ndim != 3 or traj.shape[0] < 2 or traj.shape[1] < 1:
        raise ValueError(f"traj must have shape (T + 1, N, d) with T >= 1, got {describe(traj)}")
    _, n, d = traj.shape
    if not isinstance(direction, torch.Tensor) or direction.shape not in ((d,), (n, d)):
        raise ValueError(f"direction must have shape ({d},) or ({n}, {d}), got {describe(direction)}")
    check_finite(traj, "traj")
    check_finite(direction, "direction")
    n_random, seed = check_int(n_random, "n_random", 0), check_seed(seed)
    traj = traj.to(torch.float64)
    u = direction.to(device=traj.device, dtype=torch.float64)
    norm = u.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("direction has zero length")
    u = (u / norm).expand(n, d)
    disp = traj - traj[0]
    proj = (disp * u).sum(dim=-1)  # (T+1, N)
    total = disp[-1]
    cos_total = F.cosine_similarity(total, u, dim=1, eps=1e-12)
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(n_random, d, generator=g, dtype=torch.float64).to(traj.device)
    rand = rand / rand.norm(dim=1, keepdim=True)
    tn = total / total.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos_random = (tn @ rand.T).abs().mean() if n_random > 0 else torch.tensor(float("nan"))
    steps = traj[1:] - traj[:-1]  # (T, N, d)
    cos_succ = F.cosine_similarity(steps[1:], steps[:-1], dim=-1, eps=1e-12).mean(dim=1)
    return {
        "projection": proj.mean(dim=1),
        "frac_increasing": float(((proj[1:] - proj[:-1]) > 0).to(torch.float64).mean()),
        "frac_increasing_per_step": ((proj[1:] - proj[:-1]) > 0).to(torch.float64).mean(dim=1).cpu(),
        "cos_total_per_image": cos_total,
        "cos_total": float(cos_total.mean()),
        "cos_random": float(cos_random),
        "cos_random_expected": math.sqrt(2 / (math.pi * d)),
        "cos_successive": cos_succ,
    }
