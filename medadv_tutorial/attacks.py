r"""L-infinity adversarial attacks: FGSM, BIM, PGD, MIM and CW-Linf on one shared loop.

Every attack here is the same projected sign-gradient loop, :func:`iterative_attack`,
with different settings; the classes only choose them::

    attack = PGD(eps=4/255, steps=20)          # configured once ...
    x_adv = attack(model, x, y)                # ... called on a batch
    result = run_attack(attack, model, test_set)   # ... or over a whole data set
    curve = success_rate(attack, model, test_set, eps=[1/255, 2/255, 4/255])

Conventions
-----------
* ``x``: float images in ``[0, 1]``, shape ``(N, C, H, W)`` (or ``(N, C, D, H, W)``);
  normalisation lives inside the model, so ``eps`` and ``alpha`` are in *pixel* space
  and are written as ``k/255``: a value above 1 raises (``8`` meant ``8/255``), a budget
  above 64/255 warns (:func:`medadv_tutorial.checks.check_eps`).
* ``y``: ``(N,)`` integer class indices.  For an untargeted attack they are the true
  labels; for a targeted attack (``targeted=True``) they are the *target* classes.
* The model maps ``x`` to logits ``(N, K)``, ``K >= 2`` (binary tasks use two logits).
* Everything runs on ``x.device``; the model must live there too.
* During an attack the model is put in eval mode and its parameters stop requiring
  gradients; both are restored afterwards, also when the attack raises.
* The returned ``x_adv`` is detached, lies in ``[0, 1]`` and satisfies
  ``(x_adv - x).abs().max() <= eps`` exactly (no round-off excess, see :func:`linf_box`).

The loop
--------
With :math:`\Pi` the projection onto the box
:math:`B = \{x' : \|x' - x\|_\infty \le \epsilon\} \cap [0, 1]^d`, and the per-sample
objective

.. math::

   J(x') = s \cdot L(f(x'), y) - E(x', f(x'), \mathrm{aux}),
   \qquad s = +1 \text{ (untargeted)}, \; s = -1 \text{ (targeted)},

each step ascends :math:`J`:

.. math::

   x^{0} = x \;\text{ or }\; \Pi\big(x + U[-\epsilon, \epsilon]^d\big) \quad (\text{random start}),\\
   g^{t} = \nabla_{x} J(x^{t}) \quad\text{or, with momentum } \mu:\quad
   g^{t} = \mu\, g^{t-1} + \frac{\nabla_{x} J(x^{t})}{\|\nabla_{x} J(x^{t})\|_1 / d},\\
   x^{t+1} = \Pi\big(x^{t} + \alpha\,\mathrm{sign}(g^{t})\big).

``L`` is the main loss (cross-entropy, or the Carlini-Wagner margin for
:class:`CWLinf`): large when the model does *not* predict ``y``.  ``E`` is an optional
*extra term* (``extra_loss``) that is **subtracted**: it is a penalty the attack keeps
small while it raises ``L``.  The Hierarchical Feature Constraint chapter plugs its
feature-space penalty in here; to let such a term see intermediate features computed in
the same forward pass, pass ``forward="forward_features"`` (or any callable
``forward(model, x) -> (logits, aux)``) and the extra term receives ``aux``.  A term
that needs the clean batch or the labels (HFC picks, per sample, a Gaussian of the
class it steers to) may define ``bind(x, y) -> callable``: it is called once per attack
call with the clean images and the labels (targets, if targeted), and the callable it
returns is used as the extra term for that batch.

Defaults (and why)
------------------
``steps = 10`` and ``alpha = eps / 4`` for every iterative attack, so that the steps
travel ``2.5 eps`` in total: enough to cross the box and come back.  (torchattacks uses
a fixed ``alpha = 2/255``; Kurakin et al. use ``alpha = 1/255`` and
``min(255 eps + 4, 1.25 * 255 eps)`` steps.)  When ``alpha`` is left at ``None`` it is
recomputed from ``eps``, so an eps sweep (:func:`success_rate`) keeps the ratio.

Evaluation
----------
*Success rate* is measured on the images the model classifies correctly when clean: an
image that is already misclassified is not a success of the attack.  Untargeted success
means the adversarial prediction differs from the true label; targeted success means it
equals the target (images whose target is their own true label are not counted).
*Adversarial accuracy* is the fraction of *all* images still classified correctly
after the attack.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F

from . import cache as result_cache
from .batching import (Forward, is_pair, iter_batches, labels_of, model_device, n_images,
                       resolve_batch_size, resolve_forward)
from .progress import progress as progress_bar
from .checks import (check_device, check_eps, check_images, check_input_dtype, check_int, check_labels,
                     check_model, check_real, check_seed, describe, eval_mode)

__all__ = [
    "Attack",
    "FGSM",
    "BIM",
    "PGD",
    "MIM",
    "CWLinf",
    "iterative_attack",
    "outcomes",
    "ce_loss",
    "cw_loss",
    "margin",
    "linf_box",
    "attack_mode",
    "AttackResult",
    "run_attack",
    "success_rate",
    "eps_at_success",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits (N, K), y (N,)) -> (N,)``: large when the model does not predict ``y``."""
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""``extra_loss(x_adv (N, ...), logits (N, K), aux) -> (N,)``: a penalty, subtracted."""
# ----------------------------------------------------------------------------- losses


# The public losses check their arguments; the attack loop, which has checked its labels once,
# calls the unchecked kernels (_ce_loss, _margin, _cw_loss) at every step.


def _check_loss_args(logits, y) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim != 2:
        raise ValueError(f"logits must be a floating tensor (N, K), got {describe(logits)}")
    check_labels(y, logits.shape[0], "y", logits.shape[1], of="the logits")


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per-sample cross-entropy :math:`-\log \mathrm{softmax}(z)_y`, shape ``(N,)``."""
    _check_loss_args(logits, y)
    return _ce_loss(logits, y)


def _ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per-sample logit margin :math:`\max_{j \ne y} z_j - z_y`, shape ``(N,)``.

    Positive exactly when the model does not predict ``y`` (ties aside).
    """
    _check_loss_args(logits, y)
    return _margin(logits, y)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - z_y


def cw_loss(logits: torch.Tensor, y: torch.Tensor, *, kappa: float = 0.0, targeted: bool = False) -> torch.Tensor:
    r"""Carlini-Wagner margin loss with confidence :math:`\kappa`, shape ``(N,)``.

    With :math:`m = \max_{j \ne y} z_j - z_y` (see :func:`margin`):

    * untargeted (``y`` = true label): :math:`\min(m, \kappa)`, ascended by the loop; it
      stops pushing once another class beats ``y`` by :math:`\kappa`;
    * targeted (``y`` = target): :math:`\max(m, -\kappa)`, descended by the loop; it stops
      once the target beats every other class by :math:`\kappa`.
    """
    _check_loss_args(logits, y)
    return _cw_loss(logits, y, check_real(kappa, "kappa", low=0.0), targeted)


def _cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float, targeted: bool) -> torch.Tensor:
    m = _margin(logits, y)
    return m.clamp(min=-kappa) if targeted else m.clamp(max=kappa)


# ----------------------------------------------------------------------- model handling


attack_mode = eval_mode
"""Context manager: eval mode and no parameter gradients, restored on exit (every submodule's
``training`` flag and every parameter's ``requires_grad``, also when the body raises); see
:func:`medadv_tutorial.checks.eval_mode`."""


# --------------------------------------------------------------------------- validation


def _check_settings(eps, alpha, steps, momentum) -> tuple[float, float, int, float | None]:
    """Validate the budget; ``alpha=None`` becomes ``eps / 4``."""
    eps = check_eps(eps, "eps")
    alpha = eps / 4 if alpha is None else check_real(alpha, "alpha", low=0.0, low_open=True, high=1.0,
                                                     hint=" (the step size in pixel units, e.g. 1/255)")
    steps = check_int(steps, "steps")
    if momentum is not None:
        momentum = check_real(momentum, "momentum", low=0.0, hint=" (decay)")
    return eps, alpha, steps, momentum


def _check_extra(extra_loss) -> None:
    if extra_loss is not None and not (callable(extra_loss) or callable(getattr(extra_loss, "bind", None))):
        raise TypeError(f"extra_loss must be callable or have a bind(x, y) method, got {type(extra_loss).__name__}")


def _check_logits(logits, y: torch.Tensor, name: str = "model") -> None:
    n = y.shape[0]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"{name} must return logits of shape (N, K) = ({n}, K), got {shape} "
            "(for models returning (logits, features) pass forward='forward_features')"
        )
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"{name} returns {k} logit per image; use K >= 2 logits (two for binary tasks)")
    check_labels(y, n, "y", num_classes=k)


def _make_generator(seed: int | None, generator: torch.Generator | None, device: torch.device):
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but x is on {device}")
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(check_seed(seed, "seed"))


def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise bounds ``(lo, hi)`` of the feasible set ``|x' - x| <= eps``, ``x'`` in [0, 1].

    ``lo = max(x - eps, 0)`` and ``hi = min(x + eps, 1)``, then nudged by one ulp toward
    ``x`` wherever float round-off made ``hi - x`` or ``x - lo`` (computed in
    ``x.dtype``) exceed ``eps`` (as a real number).  Clamping to ``[lo, hi]`` is
    therefore an exact projection: ``(x_adv - x).abs().max() <= eps`` holds without
    tolerance, in ``x.dtype`` and in float64.
    """
    return _linf_box(check_images(x, "x", ndim=None), check_eps(eps, "eps"))


def _linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`linf_box` without the checks (the attack loop has validated its inputs)."""
    # The largest number of x's dtype that is <= eps: compare in x.dtype without excess.
    e = torch.tensor(eps, dtype=x.dtype)
    if float(e) > eps:
        e = torch.nextafter(e, torch.zeros_like(e))
    e = float(e)
    lo = (x - e).clamp_(min=0.0)
    hi = (x + e).clamp_(max=1.0)
    for _ in range(4):  # one ulp is enough in practice; bounded for safety
        bad_lo, bad_hi = (x - lo) > e, (hi - x) > e
        if not (bool(bad_lo.any()) or bool(bad_hi.any())):
            break
        lo = torch.where(bad_lo, torch.nextafter(lo, x), lo)
        hi = torch.where(bad_hi, torch.nextafter(hi, x), hi)
    return lo, hi


# ----------------------------------------------------------------------------- the loop


def iterative_attack(
    model: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = False,
    momentum: float | None = None,
    loss_fn: LossFn = ce_loss,
    targeted: bool = False,
    extra_loss: ExtraLoss | None = None,
    forward: Forward = None,
    early_stop: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The projected sign-gradient loop under every attack of this module.

    Ascends, per sample, :math:`J = s\,L(f(x'), y) - E(x', f(x'), \mathrm{aux})` with
    :math:`s = +1` (untargeted) or :math:`-1` (targeted); see the module docstring for
    the update rule.

    Parameters
    ----------
    model: ``nn.Module`` (or callable) mapping ``x`` to logits ``(N, K)``.
    x: ``(N, C, H, W)`` float images in ``[0, 1]`` (``(N, C, D, H, W)`` for volumes).
    y: ``(N,)`` integer labels: true labels, or target classes when ``targeted``.
    eps: L-inf radius in pixel units (``4/255``), in ``[0, 1]``; ``eps = 0`` returns ``x``.
    alpha: step size ``> 0``; ``None`` means ``eps / 4``.
    steps: number of gradient steps, ``>= 1``.
    random_start: start from ``x + U[-eps, eps]`` (whole ball), clipped to ``[0, 1]``.
    momentum: ``None`` for plain sign steps; a decay ``mu >= 0`` for MIM's momentum on
        the per-sample L1-normalised gradient (``mu = 0`` gives exactly BIM's steps).
    loss_fn: ``loss_fn(logits, y) -> (N,)``, large when ``y`` is *not* predicted; ascended
        if untargeted, descended if targeted.  Default :func:`ce_loss`.
    targeted: see ``y`` and ``loss_fn``.
    extra_loss: optional ``extra_loss(x_adv, logits, aux) -> (N,)``, a penalty that is
        **subtracted** from the objective (the attack keeps it small).  ``x_adv`` and
        ``logits`` carry gradients, as does ``aux`` when ``forward`` provides it.  If the
        object has a ``bind(x, y)`` method, ``extra_loss.bind(x, y)`` (clean ``x``, the
        ``y`` given here) is called once first and its result is used instead.
    forward: how to run the model: ``None`` -> ``logits = model(x)``, ``aux = None``;
        a method name (``"forward_features"``) -> ``logits, aux = model.<name>(x)``; or a
        callable ``forward(model, x) -> (logits, aux)``.  One forward pass per step
        serves both the loss and the extra term.
    early_stop: freeze each sample (keep its current ``x_adv``) as soon as it is
        misclassified (untargeted) or classified as its target (targeted); the loop
        ends when all are frozen.  Success is judged by ``argmax`` only (not by ``kappa``).
    seed, generator: make the random start reproducible (a fresh generator on
        ``x.device`` seeded with ``seed``, or your own ``torch.Generator`` on that device).
        Without either, the global RNG is used.

    Returns
    -------
    ``x_adv``: detached tensor shaped like ``x``, in ``[0, 1]``, with
    ``(x_adv - x).abs().max() <= eps``.
    """
    eps, alpha, steps, momentum = _check_settings(eps, alpha, steps, momentum)
    return _iterate(model, x, y, eps, alpha, steps, random_start, momentum, loss_fn, targeted, extra_loss, forward,
                    early_stop, seed, generator)


def _iterate(model, x, y, eps, alpha, steps, random_start, momentum, loss_fn, targeted, extra_loss, forward,
             early_stop, seed, generator) -> torch.Tensor:
    """:func:`iterative_attack` with validated settings (``eps``, ``alpha``, ``steps``, ``momentum``)."""
    check_model(model)
    check_images(x, "x")
    check_labels(y, x.shape[0], "y")
    check_input_dtype(model, x, "x")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    loss_fn = _ce_loss if loss_fn is ce_loss else loss_fn  # labels are checked once below, not at every step
    _check_extra(extra_loss)
    device = model_device(model)
    if device is not None and device != x.device:
        raise ValueError(f"x is on {x.device} but the model's parameters are on {device}; move one of them")
    gen = _make_generator(seed, generator, x.device) if random_start else None
    run = resolve_forward(model, forward)

    if x.shape[0] == 0:
        return x.detach().clone()
    x = x.detach()
    if x.is_inference():
        x = x.clone()
    y = y.to(device=x.device, dtype=torch.long)
    binder = extra_loss if extra_loss is not None and callable(getattr(extra_loss, "bind", None)) else None

    def bound_extra(xc: torch.Tensor, yc: torch.Tensor):
        if binder is None:
            return extra_loss
        fn = binder.bind(xc, yc)
        if not callable(fn):
            raise TypeError(f"extra_loss.bind(x, y) must return a callable, got {type(fn).__name__}")
        return fn

    extra_all = bound_extra(x, y)
    sign = -1.0 if targeted else 1.0
    n = x.shape[0]
    with eval_mode(model), torch.enable_grad():
        lo, hi = _linf_box(x, eps)
        if random_start:
            noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            x_adv = torch.clamp(x + (2 * noise - 1) * eps, lo, hi)
        else:
            x_adv = x.clone()
        g = torch.zeros_like(x) if momentum is not None else None
        active = torch.ones(n, dtype=torch.bool, device=x.device)

        for step in range(steps):
            # With early stop, only the samples that have not yet succeeded are computed.
            idx = torch.nonzero(active).flatten() if early_stop else None
            full = idx is None or idx.numel() == n

            def sub(t):
                return t if full else t[idx]

            xa = sub(x_adv).detach().requires_grad_(True)
            ys = sub(y)
            logits, aux = run(xa)
            if step == 0:
                _check_logits(logits, ys)
            objective = sign * loss_fn(logits, ys)
            if extra_loss is not None:
                fn = extra_all if full else bound_extra(x[idx], ys)
                extra = fn(xa, logits, aux)
                if not isinstance(extra, torch.Tensor) or extra.shape != (xa.shape[0],):
                    got = tuple(extra.shape) if isinstance(extra, torch.Tensor) else type(extra).__name__
                    raise ValueError(f"extra_loss must return a per-sample tensor of shape ({xa.shape[0]},), got {got}")
                objective = objective - extra
            (grad,) = torch.autograd.grad(objective.sum(), xa)

            if momentum is not None:  # MIM: accumulate L1-normalised gradients
                l1 = grad.abs().mean(dim=tuple(range(1, grad.ndim)), keepdim=True)
                gs = momentum * sub(g) + grad / l1.clamp_min(torch.finfo(grad.dtype).tiny)
                if full:
                    g = gs
                else:
                    g[idx] = gs
                grad = gs
            update = alpha * grad.sign()

            if early_stop:
                pred = logits.detach().argmax(dim=1)
                done = pred == ys if targeted else pred != ys
                if bool(done.all()):
                    break
                update = update * (~done).to(update.dtype).view((-1,) + (1,) * (x.ndim - 1))
                active[idx[done]] = False
            stepped = torch.clamp(xa.detach() + update, sub(lo), sub(hi))
            if full:
                x_adv = stepped
            else:
                x_adv[idx] = stepped
    return x_adv.detach()


# ---------------------------------------------------------------------- attack classes


def _fmt_eps(v: float) -> str:
    q = v * 255 * 4  # the book's k/255 notation when k is a multiple of 1/4
    return f"{round(q) / 4:g}/255" if abs(q - round(q)) < 1e-7 else f"{v:.4g}"


class Attack:
    r"""Base class: an L-inf attack configured once, then called on batches.

    ``attack(model, x, y) -> x_adv`` validates its inputs, runs on ``x.device`` and
    delegates to :func:`iterative_attack`.  Subclasses only choose settings and the loss;
    every attack takes the parameters below.

    Parameters
    ----------
    eps: L-inf radius in pixel units (``4/255``), in ``[0, 1]``.
    alpha: step size; ``None`` = ``eps / 4`` (recomputed when ``eps`` changes).
    steps: number of steps (default 10).
    random_start: start from a uniform point of the eps-ball.
    targeted: if ``True``, ``y`` passed to the call holds *target* classes.
    early_stop: freeze samples that already succeeded (see :func:`iterative_attack`).
    seed: seed of the random start; each call re-seeds, so equal inputs give equal outputs.
    extra_loss: penalty ``(x_adv, logits, aux) -> (N,)``, **subtracted** from the loss.
    forward: ``None``, a method name (``"forward_features"``) or ``(model, x) -> (logits, aux)``.
    """

    name = "Attack"
    _momentum: float | None = None

    def __init__(
        self,
        eps: float,
        *,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = False,
        targeted: bool = False,
        early_stop: bool = False,
        seed: int | None = None,
        extra_loss: ExtraLoss | None = None,
        forward: Forward = None,
    ):
        self.eps, self._alpha, self.steps = eps, alpha, steps
        self.random_start, self.targeted, self.early_stop = bool(random_start), bool(targeted), bool(early_stop)
        self.seed, self.extra_loss, self.forward = seed, extra_loss, forward
        self._validate()

    def _validate(self) -> None:
        self.eps, _, self.steps, self._momentum = _check_settings(self.eps, self._alpha, self.steps, self._momentum)
        if self._alpha is not None:
            self._alpha = float(self._alpha)
        if self.seed is not None:
            self.seed = check_seed(self.seed, "seed")
        _check_extra(self.extra_loss)

    @property
    def alpha(self) -> float:
        """The step size actually used (``eps / 4`` unless given)."""
        return self.eps / 4 if self._alpha is None else self._alpha

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Main loss ``(N,)``, large when ``y`` is not predicted (cross-entropy here)."""
        return _ce_loss(logits, y)

    def replace(self, **changes) -> "Attack":
        """A copy with some settings changed, e.g. ``attack.replace(eps=8/255)``."""
        new = copy.copy(self)
        for key, value in changes.items():
            attr = "_alpha" if key == "alpha" else "_momentum" if key in ("momentum", "decay") else key
            if not hasattr(new, attr):
                raise TypeError(f"{type(self).__name__} has no setting {key!r}")
            setattr(new, attr, value)
        new._validate()
        return new

    def __call__(
        self, model: Callable, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Attack a batch: ``x (N, C, H, W)`` in [0, 1], ``y (N,)`` -> ``x_adv`` like ``x``.

        ``generator`` (optional) overrides ``seed`` for the random start, e.g. to draw
        different starts for consecutive batches of one reproducible run.
        """
        self._validate()  # once per call (settings may have been assigned since), never per step
        return _iterate(model, x, y, self.eps, self.alpha, self.steps, self.random_start, self._momentum, self.loss,
                        self.targeted, self.extra_loss, self.forward, self.early_stop,
                        None if generator is not None else self.seed, generator)

    def _settings(self) -> dict[str, Any]:
        return {"eps": _fmt_eps(self.eps), "alpha": _fmt_eps(self.alpha), "steps": self.steps,
                "random_start": self.random_start}

    def __repr__(self) -> str:
        s = dict(self._settings(), targeted=self.targeted)
        if self.early_stop:
            s["early_stop"] = True
        if self.extra_loss is not None:
            s["extra_loss"] = getattr(self.extra_loss, "__name__", type(self.extra_loss).__name__)
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v}" for k, v in s.items()) + ")"


class FGSM(Attack):
    r"""Fast Gradient Sign Method (Goodfellow et al., 2015): one step of size ``eps``.

    .. math:: x_{adv} = \mathrm{clip}_{[0,1]}\big(x + s\,\epsilon\,\mathrm{sign}\,\nabla_x L(f(x), y)\big)

    (:math:`s = -1` when targeted).  No random start, ``steps = 1``, ``alpha = eps``.
    """

    def __init__(self, eps: float, *, targeted: bool = False, extra_loss: ExtraLoss | None = None,
                 forward: Forward = None):
        super().__init__(eps, alpha=None, steps=1, random_start=False, targeted=targeted,
                         extra_loss=extra_loss, forward=forward)

    @property
    def alpha(self) -> float:
        return self.eps

    def _settings(self):
        return {"eps": _fmt_eps(self.eps)}


class BIM(Attack):
    r"""Basic Iterative Method (Kurakin et al., 2017): iterated FGSM, projected, no random start.

    .. math:: x^{0} = x,\quad x^{t+1} = \Pi_{B}\big(x^{t} + \alpha\,\mathrm{sign}\,\nabla_x J(x^{t})\big)

    Defaults: ``steps = 10``, ``alpha = eps / 4``.
    """

    def __init__(self, eps: float, *, alpha: float | None = None, steps: int = 10, targeted: bool = False,
                 early_stop: bool = False, extra_loss: ExtraLoss | None = None, forward: Forward = None):
        super().__init__(eps, alpha=alpha, steps=steps, random_start=False, targeted=targeted,
                         early_stop=early_stop, extra_loss=extra_loss, forward=forward)


class PGD(Attack):
    r"""Projected Gradient Descent (Madry et al., 2018): BIM from a random point of the ball.

    .. math:: x^{0} = \Pi_{B}\big(x + u\big),\; u \sim U[-\epsilon, \epsilon]^d,\quad
              x^{t+1} = \Pi_{B}\big(x^{t} + \alpha\,\mathrm{sign}\,\nabla_x J(x^{t})\big)

    Defaults: ``steps = 10``, ``alpha = eps / 4``, ``random_start = True``; ``seed``
    makes the start reproducible.
    """

    def __init__(self, eps: float, *, alpha: float | None = None, steps: int = 10, random_start: bool = True,
                 targeted: bool = False, early_stop: bool = False, seed: int | None = None,
                 extra_loss: ExtraLoss | None = None, forward: Forward = None):
        super().__init__(eps, alpha=alpha, steps=steps, random_start=random_start, targeted=targeted,
                         early_stop=early_stop, seed=seed, extra_loss=extra_loss, forward=forward)


class MIM(Attack):
    r"""Momentum Iterative Method (Dong et al., 2018).

    .. math:: g^{t} = \mu\,g^{t-1} + \frac{\nabla_x J(x^{t})}{\mathrm{mean}\,|\nabla_x J(x^{t})|},\quad
              x^{t+1} = \Pi_{B}\big(x^{t} + \alpha\,\mathrm{sign}(g^{t})\big)

    The gradient is normalised per sample by its mean absolute value (its L1 norm over
    the number of pixels, as in torchattacks' ``MIFGSM``).  ``decay`` is :math:`\mu`
    (default 1.0); ``decay = 0`` gives exactly :class:`BIM`.  No random start by default.
    """

    def __init__(self, eps: float, *, alpha: float | None = None, steps: int = 10, decay: float = 1.0,
                 random_start: bool = False, targeted: bool = False, early_stop: bool = False,
                 seed: int | None = None, extra_loss: ExtraLoss | None = None, forward: Forward = None):
        self._momentum = decay
        super().__init__(eps, alpha=alpha, steps=steps, random_start=random_start, targeted=targeted,
                         early_stop=early_stop, seed=seed, extra_loss=extra_loss, forward=forward)

    @property
    def decay(self) -> float:
        return self._momentum

    def _settings(self):
        return dict(super()._settings(), decay=self.decay)


class CWLinf(Attack):
    r"""Carlini-Wagner L-inf attack: PGD on the CW margin loss with confidence ``kappa``.

    Untargeted, it ascends :math:`\min(\max_{j\ne y} z_j - z_y, \kappa)`; targeted, it
    ascends :math:`\min(z_t - \max_{j\ne t} z_j, \kappa)` (see :func:`cw_loss`).  Each
    sample stops moving once its margin reaches ``kappa``, so larger ``kappa`` gives
    higher-confidence adversarial examples.  Defaults as :class:`PGD`; ``kappa = 0``.
    """

    def __init__(self, eps: float, *, alpha: float | None = None, steps: int = 10, kappa: float = 0.0,
                 random_start: bool = True, targeted: bool = False, early_stop: bool = False,
                 seed: int | None = None, extra_loss: ExtraLoss | None = None, forward: Forward = None):
        self.kappa = kappa
        super().__init__(eps, alpha=alpha, steps=steps, random_start=random_start, targeted=targeted,
                         early_stop=early_stop, seed=seed, extra_loss=extra_loss, forward=forward)

    def _validate(self) -> None:
        super()._validate()
        self.kappa = check_real(self.kappa, "kappa", low=0.0)

    def loss(self, logits, y):
        return _cw_loss(logits, y, self.kappa, self.targeted)

    def _settings(self):
        return dict(super()._settings(), kappa=self.kappa)


# ------------------------------------------------------------------ data-set helpers


def _targets_for(targets, y: torch.Tensor, start: int) -> torch.Tensor:
    if callable(targets):
        t = targets(y)
    else:
        t = torch.as_tensor(targets)[start:start + len(y)]
    t = labels_of(t).to(y.device)
    if t.is_floating_point():
        raise TypeError(f"targets must hold integer class indices, got dtype {t.dtype}")
    if t.shape != y.shape:
        raise ValueError(f"targets must give one class per image: expected shape {tuple(y.shape)}, got {tuple(t.shape)}")
    return t


def _predict(run, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = run(x)
    return logits.argmax(dim=1)


def outcomes(y, pred_clean, pred_adv, target=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one definition of an attack's success, per image: ``(attacked, success)``, two ``(N,)`` bools.

    ``attacked``: the image counts for a success rate -- classified correctly when clean (and, for
    a targeted attack, with a target other than its label).  ``success``: attacked, and the
    adversarial image is classified as the target (targeted) or as any wrong class (untargeted).
    """
    correct = pred_clean == y
    if target is None:
        attacked, hit = correct, pred_adv != y
    else:
        attacked, hit = correct & (target != y), pred_adv == target
    return attacked, attacked & hit


def _stats(y, pred_clean, pred_adv, target=None) -> dict[str, float]:
    n = len(y)
    correct = pred_clean == y
    attacked, success = outcomes(y, pred_clean, pred_adv, target)
    n_att = int(attacked.sum())
    return {
        "success_rate": int(success.sum()) / n_att if n_att else float("nan"),
        "adv_accuracy": int((pred_adv == y).sum()) / n if n else float("nan"),
        "clean_accuracy": int(correct.sum()) / n if n else float("nan"),
        "n_attacked": n_att,
        "n": n,
    }


@dataclasses.dataclass
class AttackResult:
    """Outcome of :func:`run_attack` (tensors on the CPU, in data-set order).

    Unpacks as ``x_adv, x, y, pred_clean, pred_adv = result``.

    Attributes
    ----------
    x_adv, x: ``(N, C, H, W)`` adversarial and clean images in [0, 1].
    y: ``(N,)`` true labels.
    pred_clean, pred_adv: ``(N,)`` predicted classes on ``x`` and ``x_adv`` (``None`` from
        ``run_attack(..., predict=False)`` until the caller fills them in).
    target: ``(N,)`` target classes of a targeted attack, else ``None``.
    seconds: wall time of the attack when it was computed (also when read from the cache).
    from_cache: ``True`` when the result was read from the result cache (:mod:`~medadv_tutorial.cache`).
    """

    x_adv: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    pred_clean: torch.Tensor | None
    pred_adv: torch.Tensor | None
    target: torch.Tensor | None = None
    seconds: float = float("nan")
    from_cache: bool = False

    def __iter__(self):
        return iter((self.x_adv, self.x, self.y, self.pred_clean, self.pred_adv))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def attacked(self) -> torch.Tensor:
        """``(N,)`` bool: the images a success rate is taken over: classified correctly when
        clean (and, for a targeted attack, with a target other than the label); see :func:`outcomes`."""
        return outcomes(self.y, self.pred_clean, self.pred_adv, self.target)[0]

    @property
    def success(self) -> torch.Tensor:
        """``(N,)`` bool: attacked (clean-correct, target != y) and fooled (wrong / at target); see :func:`outcomes`."""
        return outcomes(self.y, self.pred_clean, self.pred_adv, self.target)[1]

    def summary(self) -> dict[str, float]:
        """``success_rate`` (over clean-correct images), ``adv_accuracy``, ``clean_accuracy``,
        ``n_attacked``, ``n``."""
        return _stats(self.y, self.pred_clean, self.pred_adv, self.target)

    @property
    def success_rate(self) -> float:
        """Fraction of the clean-correct images that the attack fools."""
        return self.summary()["success_rate"]

    @property
    def adv_accuracy(self) -> float:
        """Accuracy on the adversarial images, over all images."""
        return self.summary()["adv_accuracy"]


def _setup(attack, model, device, targets, data):
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be an Attack (FGSM, BIM, PGD, MIM, CWLinf), got {type(attack).__name__}")
    if attack.targeted and targets is None:
        raise ValueError("targets is required for a targeted attack: a tensor (N,) or a callable y -> target")
    if not attack.targeted and targets is not None:
        raise ValueError("targets was given but the attack is untargeted (targeted=False)")
    check_model(model)
    if targets is not None and not callable(targets):
        t, n = labels_of(targets), n_images(data)
        if t.is_floating_point():
            raise TypeError(f"targets must hold integer class indices, got dtype {t.dtype}")
        if n is not None and t.shape != (n,):
            raise ValueError(f"targets must have shape ({n},), one target class per image of data, got "
                             f"{tuple(t.shape)}")
    device = check_device(device) if device is not None else (model_device(model) or torch.device("cpu"))
    return device, resolve_forward(model, attack.forward)


def run_attack(
    attack: Attack,
    model: Callable,
    data,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    targets=None,
    cache: bool = False,
    predict: bool = True,
) -> AttackResult:
    """Attack every image of a data set, batch by batch, with a progress bar.

    Parameters
    ----------
    attack: a configured attack, e.g. ``PGD(eps=4/255)``.
    model: the classifier (already on ``device``).
    data: a torch ``Dataset`` yielding ``(image (C, H, W) in [0, 1], int label)``, a
        ``DataLoader`` of such batches (its own batch size is used), or a pair
        ``(x (N, C, H, W), y (N,))`` of tensors.  Labels of shape ``(1,)`` (MedMNIST)
        are accepted.
    batch_size: images per attack call (ignored for a ``DataLoader``); default
        :func:`~medadv_tutorial.batching.default_batch_size` of ``device``.
    device: where to attack; default: the model's device.
    progress: show a tqdm bar.
    targets: for targeted attacks only: a ``(N,)`` tensor of target classes in data-set
        order, or a callable ``y -> target`` applied per batch (e.g. ``lambda y: 1 - y``).
    cache: read the result from the result cache when this exact run (attack and every
        setting, model weights, images, labels, targets, batch size, device type) was
        computed before, else compute it and store it (:mod:`~medadv_tutorial.cache`).
        Only runs on a pair of tensors with tensor (or no) targets are cached; others are
        computed.  The cached result is bit-identical to the computed one.
    predict: classify the clean and the adversarial images (``pred_clean``, ``pred_adv``).
        With ``False`` neither pass runs and both are ``None``: for a caller that runs the
        model on the images anyway (:func:`~medadv_tutorial.protocol.evaluate_attack` takes
        them from the features' logits), so that no image goes through the model twice.

    Returns
    -------
    :class:`AttackResult` with tensors on the CPU.  ``result.success_rate`` is
    measured on the images the model classifies correctly when clean.
    """
    device, run = _setup(attack, model, device, targets, data)
    batch_size = resolve_batch_size(batch_size, device)
    it, total = iter_batches(data, batch_size)

    def compute() -> dict:
        t0 = time.perf_counter()
        gen = _make_generator(attack.seed, None, device) if attack.random_start else None
        out = {k: [] for k in ("x_adv", "x", "y", "pred_clean", "pred_adv", "target")}
        start = 0
        with eval_mode(model):
            for xb, yb in progress_bar(it, total=total, enabled=progress, desc=type(attack).__name__):
                xb, yb = xb.to(device), yb.to(device)
                tb = _targets_for(targets, yb, start) if attack.targeted else None
                x_adv = attack(model, xb, tb if tb is not None else yb, generator=gen)
                if predict:
                    out["pred_clean"].append(_predict(run, xb).cpu())
                    out["pred_adv"].append(_predict(run, x_adv).cpu())
                out["x_adv"].append(x_adv.cpu())
                out["x"].append(xb.cpu())
                out["y"].append(yb.cpu())
                if tb is not None:
                    out["target"].append(tb.cpu())
                start += len(yb)
        if not out["y"]:
            raise ValueError("data is empty")
        return dict({k: torch.cat(v) if v else None for k, v in out.items()}, seconds=time.perf_counter() - t0)

    keyable = is_pair(data) and isinstance(data[1], torch.Tensor)  # x is a tensor (checked by _batches)
    if cache and keyable and (targets is None or isinstance(targets, torch.Tensor)):
        key = dict(attack=attack, model=model, x=data[0], y=labels_of(data[1]), targets=targets,
                   batch_size=batch_size, device=device.type, predict=bool(predict))
        entry, hit = result_cache.cached_tensors("attacks", key, compute, code="attacks")
        return AttackResult(**entry, from_cache=hit)
    return AttackResult(**compute())


def success_rate(
    attack: Attack,
    model: Callable,
    data,
    eps: Sequence[float],
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    targets=None,
) -> dict[float, dict[str, float]]:
    """Success rate and adversarial accuracy for several budgets, in one pass over the data.

    For each value ``e`` of ``eps`` the attack runs as ``attack.replace(eps=e)`` (its
    ``alpha`` follows ``eps / 4`` unless it was set explicitly).  Clean predictions are
    computed once per batch.

    Returns
    -------
    ``{e: {"success_rate", "adv_accuracy", "clean_accuracy", "n_attacked", "n"}}`` in the
    order of ``eps``.  ``success_rate`` is the fraction of the ``n_attacked`` images the
    model classifies correctly when clean (and, if targeted, whose target differs from
    the label) that the attack fools; ``adv_accuracy`` is over all ``n`` images.
    See :func:`run_attack` for ``data``, ``batch_size``, ``device``, ``targets``.
    """
    device, run = _setup(attack, model, device, targets, data)
    if isinstance(eps, (numbers.Real, torch.Tensor)) and not getattr(eps, "ndim", 0):
        eps = [eps]
    if isinstance(eps, (str, bytes)) or not isinstance(eps, Iterable):
        raise TypeError(f"eps must be a budget or a list of budgets in pixel units (e.g. [1/255, 2/255]), "
                        f"got {describe(eps)}")
    attacks = {}
    for e in eps:
        att = attack.replace(eps=e)  # validates e
        attacks[att.eps] = att
    if not attacks:
        raise ValueError("eps must list at least one budget, got an empty list")
    eps = list(attacks)
    gens = {e: _make_generator(attack.seed, None, device) if attack.random_start else None for e in eps}
    ys, clean, tgts, adv = [], [], [], {e: [] for e in eps}
    it, total = iter_batches(data, resolve_batch_size(batch_size, device))
    start = 0
    with eval_mode(model):
        for xb, yb in progress_bar(it, total=total, enabled=progress, desc=f"{type(attack).__name__} x {len(eps)} eps"):
            xb, yb = xb.to(device), yb.to(device)
            tb = _targets_for(targets, yb, start) if attack.targeted else None
            clean.append(_predict(run, xb).cpu())
            ys.append(yb.cpu())
            if tb is not None:
                tgts.append(tb.cpu())
            for e, att in attacks.items():
                x_adv = att(model, xb, tb if tb is not None else yb, generator=gens[e])
                adv[e].append(_predict(run, x_adv).cpu())
            start += len(yb)
    if not ys:
        raise ValueError("data is empty")
    y, pc, t = torch.cat(ys), torch.cat(clean), (torch.cat(tgts) if tgts else None)
    return {e: _stats(y, pc, torch.cat(adv[e]), t) for e in eps}


def eps_at_success(
    curve: Mapping[float, Union[float, Mapping[str, float]]], level: float = 0.5, *, interpolate: bool = True
) -> float | None:
    """Smallest ``eps`` at which the success rate reaches ``level`` (e.g. 0.5 or 0.95).

    Parameters
    ----------
    curve: ``{eps: success_rate}`` or the output of :func:`success_rate`
        (``{eps: {"success_rate": ...}}``).  NaN entries are skipped.
    level: target success rate in ``(0, 1]``.
    interpolate: if ``True``, interpolate linearly between the last grid point below
        ``level`` and the first one at or above it; otherwise return that grid point.

    Returns
    -------
    The first crossing along increasing ``eps`` (the first grid point itself if it
    already reaches ``level``), or ``None`` if no point reaches it.
    """
    level = check_real(level, "level", low=0.0, low_open=True, high=1.0)
    if not isinstance(curve, Mapping):
        raise TypeError(f"curve must be a mapping {{eps: success rate}} (the output of success_rate), "
                        f"got {describe(curve)}")
    points = []
    for e, v in curve.items():
        s = v.get("success_rate") if isinstance(v, Mapping) else v
        s = check_real(s, f"curve[{e!r}]", low=0.0, high=1.0, finite=False) if s == s else math.nan
        if not math.isnan(s):
            points.append((check_real(e, "an eps of curve"), s))
    points.sort()
    for i, (e, s) in enumerate(points):
        if s >= level:
            if i == 0 or not interpolate:
                return e
            e0, s0 = points[i - 1]
            return e0 + (level - s0) * (e - e0) / (s - s0)
    return None
