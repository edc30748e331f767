"""The book's evaluation protocol, in one place: what Chapters 4 and 5 run and how they read it.

* :func:`evaluate_attack` runs one attack on one image set and scores its images with every
  detector of a :class:`~medadv_tutorial.suite.DetectorSuite` (AUROC and TPR at 90% TNR);
  :func:`evaluate_attacks` does it for several attacks, against the clean scores of
  :func:`score_clean`.  *Success* is defined once, by
  :class:`~medadv_tutorial.attacks.AttackResult`: the fraction of the images the model
  classifies correctly when clean that the attack fools (reaches the target, for a targeted
  attack).
* :func:`sweep_weight` evaluates an attack for each value of a weight (HFC's λ, say) and
  :func:`select_weight` chooses one by the rule fixed before the sweep ran: among the weights
  with success >= :data:`SUCCESS_BAR`, the one with the lowest worst-case AUROC over a given
  list of detectors.  When none qualifies the fallback is documented and reported
  (:class:`Selection`), never silent.
* The tables: :func:`success_table`, :func:`sweep_table`, :func:`detection_table`
  (AUROC / TPR@90 per detector and attack), :func:`timing_table`, and Li & Zhu's threshold
  tables, :func:`li_zhu_table` (F1 at the 95%-of-clean-training threshold and follow-up
  AUROC) and :func:`black_box_table` (the same detectors against transferred attacks).
  Each returns plain data: a :class:`~medadv_tutorial.report.Table` ``(rows, headers)``
  for :func:`~medadv_tutorial.report.show_table`, or a small dataclass holding the numbers
  and such a table.

Usage (Chapter 5)::

    fs_sel, clean = protocol.score_clean(model, x_sel, y_sel, suite)
    sweep = protocol.sweep_weight(lambda lam: PGD_HFC(mixtures, eps, lam=lam), [0.001, 0.01, 0.1],
                                  model, x_sel, y_sel, suite, clean, targets=other_class(y_sel))
    choice = protocol.select_weight(sweep, ["MGM", "KD"])     # choice.weight, choice.qualified
    show_table(*protocol.sweep_table(sweep, ["MGM", "KD"]))
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from . import attacks, features, metrics, training
from .checks import check_real, describe
from .progress import progress as progress_bar
from .report import Table

__all__ = ["SUCCESS_BAR", "AttackEvaluation", "evaluate_attack", "score_clean", "evaluate_attacks", "sweep_weight",
           "Selection", "select_weight", "catching", "success_table", "sweep_table", "DetectionTable",
           "detection_table", "timing_table", "LiZhuTable", "li_zhu_table", "BlackBoxTable", "black_box_table",
           "evaluate_transfer", "SetComparison", "compare_sets", "success_by_set_table", "Bypass", "bypass",
           "auroc_difference", "success_difference"]

SUCCESS_BAR = 0.95
"""The success an attack must reach on the selection set for its weight to qualify."""


# ------------------------------------------------------------------------------ evaluation


@dataclasses.dataclass
class AttackEvaluation:
    """One attack run on one image set, scored by a :class:`~medadv_tutorial.suite.DetectorSuite`.

    ``x_adv`` ``(N, C, H, W)`` in [0, 1]; ``fs`` their features (the evaluated model's);
    ``success`` in [0, 1] (NaN when no image is classified correctly when clean): the
    :attr:`~medadv_tutorial.attacks.AttackResult.success_rate` of the run, i.e. over the
    images the model classifies correctly when clean, the fraction that reach the target
    (targeted attack) or any wrong class; ``seconds`` the attack's wall time (the computed
    run's, also when read from the result cache); ``scores`` ``{detector: (N,) float64}``
    and ``auroc`` / ``tpr90`` ``{detector: float}`` with the clean images of the same set
    as negatives and the adversarial ones as positives (TPR at 90% TNR).
    ``clean_scores`` ``{detector: (N,) float64}``: those negatives' scores; ``outcomes``
    ``(n,)`` bool: per attacked image (the ``n`` classified correctly when clean), whether the
    attack succeeded.  From these two, the 95% bootstrap intervals over images
    (:mod:`~medadv_tutorial.metrics`): ``success_ci`` (an Interval), ``auroc_ci`` and
    ``tpr90_ci`` (``{detector: Interval}``), computed on first use.
    """

    name: str
    x_adv: torch.Tensor
    fs: features.FeatureSet
    success: float
    seconds: float
    scores: "OrderedDict[str, torch.Tensor]"
    auroc: "OrderedDict[str, float]"
    tpr90: "OrderedDict[str, float]"
    clean_scores: "Mapping[str, torch.Tensor] | None" = None
    outcomes: torch.Tensor | None = None

    def _needs(self, field: str, what: str):
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"AttackEvaluation {self.name!r} was built without {field}, so it has no {what} "
                             "interval: build it with evaluate_attack")
        return value

    @functools.cached_property
    def success_ci(self) -> metrics.Interval:
        """The success rate with its 95% Wilson interval over the attacked images."""
        return metrics.rate_interval(self._needs("outcomes", "success"))

    @functools.cached_property
    def auroc_ci(self) -> "OrderedDict[str, metrics.Interval]":
        """``{detector: AUROC with its 95% stratified bootstrap interval}``."""
        clean = self._needs("clean_scores", "AUROC")
        return OrderedDict((d, metrics.auroc_interval(clean[d], s)) for d, s in self.scores.items())

    @functools.cached_property
    def tpr90_ci(self) -> "OrderedDict[str, metrics.Interval]":
        """``{detector: TPR at 90% TNR with its 95% stratified bootstrap interval}``."""
        clean = self._needs("clean_scores", "TPR")
        return OrderedDict((d, metrics.tpr_interval(clean[d], s, 0.90)) for d, s in self.scores.items())


def _check_suite(suite) -> None:
    from .suite import DetectorSuite

    if not isinstance(suite, DetectorSuite):
        raise TypeError(f"suite must be a DetectorSuite (suite.DetectorSuite.fit), got {describe(suite)}")


def _check_clean_scores(suite, clean_scores) -> None:
    if not isinstance(clean_scores, Mapping):
        raise TypeError(f"clean_scores must be a mapping {{detector name: (N,) scores}} (suite.score(fs_clean, x)), "
                        f"got {type(clean_scores).__name__}")
    missing = [n for n in suite.detectors if n not in clean_scores]
    if missing:
        raise KeyError(f"clean_scores lacks {missing}: compute them with suite.score(fs_clean, x)")


def evaluate_attack(name: str, attack, model, x: torch.Tensor, y: torch.Tensor, suite,
                    clean_scores: Mapping[str, torch.Tensor], *, targets: torch.Tensor | None = None,
                    source_model=None, batch_size: int | None = None, cache: bool = True,
                    clean_features: features.FeatureSet | None = None) -> AttackEvaluation:
    """Run ``attack`` on ``(x, y)`` and score the result with every detector of ``suite``.

    Parameters
    ----------
    name: a label for the run.
    attack: a configured attack (:mod:`~medadv_tutorial.attacks`, :mod:`~medadv_tutorial.hfc`, ...).
    model: the deployed classifier: its features are scored and its predictions decide success.
    x, y: ``(N, C, H, W)`` clean images in [0, 1] and their ``(N,)`` labels.
    suite: a fitted :class:`~medadv_tutorial.suite.DetectorSuite`.
    clean_scores: ``suite.score(fs_clean, x)`` of the same clean images (the negatives).
    targets: ``(N,)`` target classes, for a targeted attack only.
    source_model: craft the perturbation on this model instead (a black-box transfer
        attack); success, features and scores are still ``model``'s.
    batch_size: images per attack call (default: the device's).
    cache: read the adversarial images of a run computed before from the result cache
        (bit-identical; see :func:`~medadv_tutorial.attacks.run_attack`).
    clean_features: the deployed model's features of ``(x, y)`` (:func:`score_clean` returns them):
        the clean predictions are read from their logits instead of running ``model`` on ``x``
        again.

    Every image goes through the deployed model once: the adversarial images in the feature
    pass, whose logits give their predictions; the clean ones in :func:`score_clean` (or once
    here, when ``clean_features`` is not given).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (a label for the run), got {describe(name)}")
    _check_suite(suite)
    _check_clean_scores(suite, clean_scores)
    if clean_features is not None:
        _check_clean_features(clean_features, y)
    res = attacks.run_attack(attack, model if source_model is None else source_model, (x, y),
                             batch_size=batch_size, progress=False, targets=targets, cache=cache, predict=False)
    fs = features.extract_features(model, (res.x_adv, y), progress=False)
    # success as the deployed model sees it (also for a transfer attack crafted on source_model)
    pred_clean = (clean_features.predictions if clean_features is not None
                  else training.predict_proba(model, (res.x, res.y))[0].argmax(1))
    res = dataclasses.replace(res, pred_clean=pred_clean.cpu(), pred_adv=fs.predictions.cpu())
    scores = suite.score(fs, res.x_adv)
    auroc = OrderedDict((n, metrics.auroc(clean_scores[n], s)) for n, s in scores.items())
    tpr = OrderedDict((n, metrics.tpr_at_tnr(clean_scores[n], s, 0.90)) for n, s in scores.items())
    return AttackEvaluation(name, res.x_adv, fs, res.success_rate, res.seconds, scores, auroc, tpr,
                            OrderedDict((n, clean_scores[n]) for n in scores), res.success[res.attacked])


def _check_clean_features(clean_features, y) -> None:
    if not isinstance(clean_features, features.FeatureSet):
        raise TypeError(f"clean_features must be the FeatureSet of the clean images (score_clean), "
                        f"got {describe(clean_features)}")
    if len(clean_features) != len(y) or not torch.equal(clean_features.labels.cpu(), torch.as_tensor(y).cpu().long()):
        raise ValueError(f"clean_features must be the features of the same {len(y)} images (x, y), in the same "
                         f"order: got {len(clean_features)} rows whose labels differ from y")


def score_clean(model, x: torch.Tensor, y: torch.Tensor, suite) -> "tuple[features.FeatureSet, OrderedDict]":
    """The clean half of an evaluation: ``(fs, suite.score(fs, x))`` with ``fs`` the model's
    features of ``(x, y)``; pass the scores to :func:`evaluate_attack` as ``clean_scores`` and
    ``fs`` as ``clean_features`` (the clean images then go through the model only here)."""
    _check_suite(suite)
    fs = features.extract_features(model, (x, y), progress=False)
    return fs, suite.score(fs, x)


def _check_mapping(value, name: str, what: str) -> None:
    if not isinstance(value, Mapping) or not value:
        raise (TypeError if not isinstance(value, Mapping) else ValueError)(
            f"{name} must be a non-empty mapping {what}, got {describe(value)}")


def evaluate_attacks(attack_zoo: Mapping[str, Any], model, x: torch.Tensor, y: torch.Tensor, suite,
                     clean_scores: Mapping[str, torch.Tensor], *, targets: torch.Tensor | None = None,
                     source_model=None, batch_size: int | None = None, cache: bool = True,
                     progress: bool = False,
                     clean_features: features.FeatureSet | None = None) -> "OrderedDict[str, AttackEvaluation]":
    """:func:`evaluate_attack` for each ``{name: attack}`` of ``attack_zoo``, in its order."""
    _check_mapping(attack_zoo, "attack_zoo", "{name: attack}")
    if clean_features is None:  # the clean pass once for all the attacks
        clean_features = features.extract_features(model, (x, y), progress=False)
    return OrderedDict((name, evaluate_attack(name, a, model, x, y, suite, clean_scores, targets=targets,
                                              source_model=source_model, batch_size=batch_size, cache=cache,
                                              clean_features=clean_features))
                       for name, a in progress_bar(list(attack_zoo.items()), desc="attacks", enabled=progress))


# ---------------------------------------------------------------------------- weight sweep


def _label(weight) -> str:
    """``0.001`` -> ``"0.001"``, ``(0.001, 4)`` -> ``"(0.001, 4)"``."""
    if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
        return f"{weight:g}"
    return str(weight)


def sweep_weight(make_attack: Callable[[Any], Any], weights: Sequence, model, x: torch.Tensor, y: torch.Tensor,
                 suite, clean_scores: Mapping[str, torch.Tensor], *, targets: torch.Tensor | None = None,
                 name: str = "", desc: str = "weight sweep", batch_size: int | None = None, cache: bool = True,
                 progress: bool = True,
                 clean_features: features.FeatureSet | None = None) -> "OrderedDict[Any, AttackEvaluation]":
    """Evaluate ``make_attack(w)`` for every weight ``w`` of ``weights`` (with a progress bar).

    ``weights``: distinct hashable values, usually numbers (HFC's λ); a tuple of settings
    works too.  The other arguments are :func:`evaluate_attack`'s; each run is named
    ``"<name> λ=<w>"``.  Returns ``{w: AttackEvaluation}`` in the order of ``weights``.
    """
    if not callable(make_attack) or isinstance(make_attack, attacks.Attack):
        raise TypeError(f"make_attack must be a function weight -> attack, got {describe(make_attack)}")
    if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a list of weights, got {describe(weights)}")
    if not weights:
        raise ValueError("weights is empty: a sweep needs at least one weight")
    if not all(isinstance(w, Hashable) for w in weights) or len(set(weights)) != len(weights):
        raise ValueError(f"weights must be distinct hashable values (they key the result), got {list(weights)!r}")
    _check_suite(suite)
    _check_clean_scores(suite, clean_scores)
    if clean_features is None:  # the clean pass once for the whole sweep
        clean_features = features.extract_features(model, (x, y), progress=False)
    return OrderedDict((w, evaluate_attack(f"{name} λ={_label(w)}".strip(), make_attack(w), model, x, y, suite,
                                           clean_scores, targets=targets, batch_size=batch_size, cache=cache,
                                           clean_features=clean_features))
                       for w in progress_bar(list(weights), desc=desc, enabled=progress))


# ------------------------------------------------------------------------------- selection


@dataclasses.dataclass(frozen=True)
class Selection:
    """The weight chosen by :func:`select_weight`.

    ``weight``: the chosen key of the sweep; ``success`` and ``worst_auroc`` (the largest
    AUROC over ``detectors``) its numbers; ``qualified``: whether it reached ``bar`` (when
    ``False``, no weight did and the fallback chose it); ``reason``: one line saying why.
    """

    weight: Any
    success: float
    worst_auroc: float
    qualified: bool
    reason: str
    detectors: tuple[str, ...]
    bar: float


def _check_detectors(detectors, evaluations, name: str = "detectors") -> tuple[str, ...]:
    if isinstance(detectors, (str, bytes)) or not isinstance(detectors, Sequence):
        raise TypeError(f"{name} must be a list of detector names, got {describe(detectors)}")
    if not detectors:
        raise ValueError(f"{name} is empty: the rule needs at least one detector to judge stealth by")
    known = list(next(iter(evaluations)).auroc)
    unknown = [d for d in detectors if not all(d in ev.auroc for ev in evaluations)]
    if unknown:
        raise KeyError(f"unknown detector(s) {unknown} in {name}; the evaluations score {known}")
    return tuple(detectors)


def _check_sweep(sweep, name: str = "sweep", keys: str = "weight") -> None:
    """``sweep`` is a non-empty mapping ``{key: AttackEvaluation}``; ``keys`` names the keys in messages."""
    source = "sweep_weight" if keys == "weight" else "evaluate_attacks"
    if not isinstance(sweep, Mapping):
        raise TypeError(f"{name} must be a mapping {{{keys}: AttackEvaluation}} ({source}), got {describe(sweep)}")
    if not sweep:
        raise ValueError(f"{name} is empty: there is no {keys} to " + ("select" if keys == "weight" else "show"))
    bad = [k for k, ev in sweep.items() if not isinstance(ev, AttackEvaluation)]
    if bad:
        raise TypeError(f"{name} must map each {keys} to an AttackEvaluation ({source}); {name}[{bad[0]!r}] is "
                        f"{describe(sweep[bad[0]])}")


def select_weight(sweep: Mapping[Any, AttackEvaluation], detectors: Sequence[str], *, bar: float = SUCCESS_BAR,
                  weights: Sequence | None = None) -> Selection:
    """Choose a weight of ``sweep`` by the rule fixed before it ran.

    Among the weights whose success is >= ``bar``, the one whose worst AUROC (the largest
    over ``detectors``) is lowest; on a tie, the first in the sweep's order.  When no weight
    reaches ``bar``: the most successful one, then (on a tie) the stealthiest, with
    ``qualified=False``.

    ``weights``: consider only these keys of ``sweep`` (e.g. leave out a baseline at 0).
    Raises ``ValueError`` for an empty sweep or detector list, ``KeyError`` for a detector
    the evaluations did not score or a weight not in the sweep.
    """
    _check_sweep(sweep)
    bar = check_real(bar, "bar", low=0.0, high=1.0, hint=" (a success rate in [0, 1])")
    if weights is None:
        weights = list(sweep)
    elif isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a list of keys of sweep, got {describe(weights)}")
    missing = [w for w in weights if w not in sweep]
    if missing:
        raise KeyError(f"weights {missing!r} are not in the sweep; it has {list(sweep)!r}")
    if not weights:
        raise ValueError("weights is empty: there is no weight to select")
    detectors = _check_detectors(detectors, [sweep[w] for w in weights])
    worst = {w: max(sweep[w].auroc[d] for d in detectors) for w in weights}
    success = {w: sweep[w].success for w in weights}
    ok = [w for w in weights if success[w] >= bar]  # NaN (no image attacked) never qualifies
    if ok:
        w = min(ok, key=worst.get)
        reason = (f"λ = {_label(w)}: the lowest worst AUROC ({worst[w]:.2f}) among the {len(ok)} of {len(weights)} "
                  f"weights with success >= {bar:.0%}")
    else:
        w = max(weights, key=lambda v: (success[v] if not math.isnan(success[v]) else -math.inf, -worst[v]))
        reason = (f"no weight reaches success >= {bar:.0%}; taking the most successful one, then the stealthiest: "
                  f"λ = {_label(w)} (success {success[w]:.2f}, worst AUROC {worst[w]:.2f})")
    return Selection(w, success[w], worst[w], bool(ok), reason, detectors, bar)


def catching(evaluation: AttackEvaluation, detectors: Sequence[str], level: float = 0.9) -> list[str]:
    """The names among ``detectors`` whose AUROC against ``evaluation`` is >= ``level``, in order."""
    if not isinstance(evaluation, AttackEvaluation):
        raise TypeError(f"evaluation must be an AttackEvaluation, got {describe(evaluation)}")
    level = check_real(level, "level", low=0.0, high=1.0, hint=" (an AUROC)")
    detectors = _check_detectors(detectors, [evaluation])
    return [d for d in detectors if evaluation.auroc[d] >= level]


def _scored(evaluation, detector: str, name: str):
    if not isinstance(evaluation, AttackEvaluation):
        raise TypeError(f"{name} must be an AttackEvaluation, got {describe(evaluation)}")
    _check_detectors([detector], [evaluation], f"the detector of {name}")
    if evaluation.clean_scores is None:
        raise ValueError(f"{name} ({evaluation.name!r}) was built without clean scores: build it with evaluate_attack")
    return evaluation.clean_scores[detector], evaluation.scores[detector]


def auroc_difference(first: AttackEvaluation, second: AttackEvaluation, detector: str,
                     second_detector: str | None = None, **bootstrap) -> metrics.Interval:
    """AUROC of ``detector`` against ``first`` minus that of ``second_detector`` (default the same
    detector) against ``second``, with its *paired* bootstrap interval
    (:func:`~medadv_tutorial.metrics.auroc_difference_interval`, ``paired=True``).

    Two attacks on the same clean images (``first`` and ``second`` evaluated on the same ``x``, the
    one detector), or two detectors on the same images (``first is second``): each replicate
    resamples the clean and the adversarial images once, for both.  ``bootstrap``: ``n_boot``,
    ``level``, ``seed``.
    """
    second_detector = detector if second_detector is None else second_detector
    return metrics.auroc_difference_interval(_scored(first, detector, "first"),
                                             _scored(second, second_detector, "second"), paired=True, **bootstrap)


def success_difference(first: AttackEvaluation, second: AttackEvaluation, **bootstrap) -> metrics.Interval:
    """Success rate of ``first`` minus that of ``second``, two attacks on the same images, with the
    paired bootstrap interval of the difference (:func:`~medadv_tutorial.metrics.difference_interval`
    on the per-image outcomes; ``bootstrap``: ``n_boot``, ``level``, ``seed``)."""
    outcomes = []
    for name, ev in (("first", first), ("second", second)):
        if not isinstance(ev, AttackEvaluation):
            raise TypeError(f"{name} must be an AttackEvaluation, got {describe(ev)}")
        outcomes.append(ev._needs("outcomes", "success"))
    return metrics.difference_interval(*outcomes, paired=True, **bootstrap)


# ---------------------------------------------------------------------------------- tables


def _pick(evaluations, attack_names, name: str = "evaluations") -> "OrderedDict[str, AttackEvaluation]":
    """``{name: AttackEvaluation}`` in the order of ``attack_names`` (default: all)."""
    _check_sweep(evaluations, name, keys="attack")
    if attack_names is None:
        return OrderedDict(evaluations)
    if isinstance(attack_names, (str, bytes)) or not isinstance(attack_names, Sequence):
        raise TypeError(f"attacks must be a list of names of {name}, got {describe(attack_names)}")
    missing = [a for a in attack_names if a not in evaluations]
    if missing:
        raise KeyError(f"attacks {missing} are not in {name}; it has {list(evaluations)}")
    return OrderedDict((a, evaluations[a]) for a in attack_names)


def success_table(evaluations: Mapping[str, AttackEvaluation], header: str = "attack", *,
                  attacks: Sequence[str] | None = None) -> Table:
    """One row ``[attack, success rate with its 95% interval]`` per evaluation (or per name of ``attacks``)."""
    evs = _pick(evaluations, attacks)
    return Table([[a, ev.success_ci] for a, ev in evs.items()], [header, "success rate [95% CI]"])


def sweep_table(sweeps: Mapping, detectors: Sequence[str], *, key_headers: Sequence[str] = ("λ",),
                key_cells: Callable[[Any], list] | None = None, suffix: str = " AUROC", worst: bool = False) -> Table:
    """The table of a weight sweep: per weight, its key cells, success and AUROC per detector,
    each with its 95% bootstrap interval (:class:`AttackEvaluation`'s ``success_ci``, ``auroc_ci``).

    ``sweeps``: one sweep ``{weight: AttackEvaluation}``, or several ``{name: sweep}``, shown
    one after the other with the name in a first column (``key_headers`` then names it too).
    ``key_cells(weight)``: the cells that show a weight (default: ``["0.001"]``).
    ``suffix``: appended to each detector's name in the headers.  ``worst``: add a last
    column, the largest AUROC over ``detectors`` (what :func:`select_weight` ranks by), with
    that detector's interval.
    """
    if not isinstance(sweeps, Mapping) or not sweeps:
        raise (TypeError if not isinstance(sweeps, Mapping) else ValueError)(
            "sweeps must be a non-empty mapping {weight: AttackEvaluation} or {name: sweep}, "
            f"got {describe(sweeps)}")
    nested = all(isinstance(v, Mapping) for v in sweeps.values())
    groups = sweeps if nested else {None: sweeps}
    for g, sw in groups.items():
        _check_sweep(sw, "sweeps" if g is None else f"sweeps[{g!r}]")
    key_cells = key_cells if key_cells is not None else (lambda w: [_label(w)])
    if not callable(key_cells):
        raise TypeError(f"key_cells must be a function weight -> list of cells, got {describe(key_cells)}")
    detectors = _check_detectors(detectors, [ev for sw in groups.values() for ev in sw.values()])
    rows = []
    for g, sw in groups.items():
        for w, ev in sw.items():
            aurocs = [ev.auroc_ci[d] for d in detectors]
            rows.append(([g] if nested else []) + list(key_cells(w)) + [ev.success_ci] + aurocs
                        + ([max(aurocs, key=lambda iv: iv.estimate)] if worst else []))
    headers = list(key_headers) + ["success"] + [f"{d}{suffix}" for d in detectors] + (["worst"] if worst else [])
    n_keys = len(rows[0]) - len(headers) + len(key_headers)
    if any(len(r) != len(headers) for r in rows):
        raise ValueError(f"key_headers {list(key_headers)} must name the {n_keys} key columns (the sweep's name "
                         "when there are several, then key_cells(weight))")
    return Table(rows, headers)


@dataclasses.dataclass
class DetectionTable:
    """AUROC and TPR at 90% TNR of each detector against each attack (see :func:`detection_table`).

    ``auroc[detector][attack]`` and ``tpr90[detector][attack]`` are floats in [0, 1];
    ``auroc_ci`` and ``tpr90_ci`` the same with their 95% bootstrap intervals
    (:class:`~medadv_tutorial.metrics.Interval`); ``detectors`` and ``attacks`` give the order
    of the rows and columns.
    """

    auroc: "OrderedDict[str, OrderedDict[str, float]]"
    tpr90: "OrderedDict[str, OrderedDict[str, float]]"
    detectors: list[str]
    attacks: list[str]
    auroc_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"
    tpr90_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"

    def table(self, kinds: Sequence[str] = ("AUROC", "TPR@90"), first_header: str = "detector", *,
              columns: Sequence[tuple[str, str]] | None = None) -> Table:
        """One row per detector; per attack, a column for each of ``kinds`` (``"AUROC"``,
        ``"TPR@90"``), headed ``"<attack> <kind>"`` (headed by the attack alone when there is
        one kind).  ``columns``: explicit ``(attack, kind)`` pairs instead.  Cells are
        intervals (estimate and 95% bootstrap interval)."""
        values = {"AUROC": self.auroc_ci, "TPR@90": self.tpr90_ci}
        if columns is None:
            if isinstance(kinds, str) or not kinds or any(k not in values for k in kinds):
                raise ValueError(f"kinds must list some of {list(values)}, got {kinds!r}")
            columns = [(a, k) for a in self.attacks for k in kinds]
            names = [a if len(kinds) == 1 else f"{a} {k}" for a, k in columns]
        else:
            bad = [c for c in columns if not (isinstance(c, tuple) and len(c) == 2 and c[0] in self.attacks
                                              and c[1] in values)]
            if isinstance(columns, str) or not columns or bad:
                raise ValueError(f"columns must be (attack, kind) pairs with an attack of {self.attacks} and a kind of "
                                 f"{list(values)}, got {bad[0] if bad else columns!r}")
            names = [f"{a} {k}" for a, k in columns]
        rows = [[d] + [values[k][d][a] for a, k in columns] for d in self.detectors]
        return Table(rows, [first_header] + names)


def detection_table(evaluations: Mapping[str, AttackEvaluation], *, detectors: Sequence[str] | None = None,
                    attacks: Sequence[str] | None = None) -> DetectionTable:
    """Collect the AUROC and TPR@90 of ``{attack: AttackEvaluation}`` per detector.

    ``detectors``: rows to keep, in this order (default: every detector the first evaluation
    scored, in the suite's order).  ``attacks``: columns to keep, in this order (default: all).
    """
    evs = _pick(evaluations, attacks)
    detectors = list(next(iter(evs.values())).auroc) if detectors is None else detectors
    detectors = list(_check_detectors(detectors, list(evs.values())))
    auroc = OrderedDict((d, OrderedDict((a, ev.auroc[d]) for a, ev in evs.items())) for d in detectors)
    tpr = OrderedDict((d, OrderedDict((a, ev.tpr90[d]) for a, ev in evs.items())) for d in detectors)
    auroc_ci = OrderedDict((d, OrderedDict((a, ev.auroc_ci[d]) for a, ev in evs.items())) for d in detectors)
    tpr_ci = OrderedDict((d, OrderedDict((a, ev.tpr90_ci[d]) for a, ev in evs.items())) for d in detectors)
    return DetectionTable(auroc, tpr, detectors, list(evs), auroc_ci, tpr_ci)


def timing_table(evaluations: Mapping[str, AttackEvaluation], baseline: str, *, attacks: Sequence[str] | None = None,
                 headers: Sequence[str] | None = None) -> Table:
    """Per attack: its wall time in seconds and that time relative to ``baseline``'s.

    ``headers``: the three column names (default ``["attack", "seconds", "relative to <baseline>"]``).
    """
    evs = _pick(evaluations, attacks)
    if baseline not in evaluations:
        raise KeyError(f"baseline {baseline!r} is not in evaluations; it has {list(evaluations)}")
    headers = ["attack", "seconds", f"relative to {baseline}"] if headers is None else list(headers)
    if len(headers) != 3:
        raise ValueError(f"headers must name the 3 columns (attack, seconds, relative), got {headers!r}")
    base = evaluations[baseline].seconds
    return Table([[a, ev.seconds, ev.seconds / base] for a, ev in evs.items()], headers)


# ---------------------------------------------------------------------- Li & Zhu's tables


def _threshold_inputs(suite, names, fs_clean, quantile):
    _check_suite(suite)
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
        raise (TypeError if not isinstance(names, Sequence) or isinstance(names, (str, bytes)) else ValueError)(
            f"names must be a non-empty list of detectors of the suite {list(suite.detectors)}, got {describe(names)}")
    unknown = [n for n in names if n not in suite.detectors]
    if unknown:
        raise KeyError(f"unknown detector(s) {unknown}; the suite has {list(suite.detectors)}")
    if not isinstance(fs_clean, features.FeatureSet):
        raise TypeError(f"fs_clean must be a FeatureSet (from extract_features), got {describe(fs_clean)}")
    quantile = check_real(quantile, "quantile", low=0.0, low_open=True, high=1.0,
                          hint=" (the fraction of clean training scores kept)")
    thresholds = OrderedDict((n, suite.detectors[n].threshold(quantile)) for n in names)
    return list(names), thresholds, suite.score(fs_clean, names=list(names)), quantile


def _feature_sets(adversarial) -> "OrderedDict[str, features.FeatureSet]":
    _check_mapping(adversarial, "adversarial", "{attack: AttackEvaluation or FeatureSet}")
    out = OrderedDict()
    for a, v in adversarial.items():
        fs = v.fs if isinstance(v, AttackEvaluation) else v
        if not isinstance(fs, features.FeatureSet):
            raise TypeError(f"adversarial[{a!r}] must be an AttackEvaluation or a FeatureSet, got {describe(v)}")
        out[a] = fs
    return out


def _estimates(intervals) -> "OrderedDict[str, OrderedDict[str, float]]":
    """``{detector: {attack: Interval}}`` -> the same nesting of their point estimates."""
    return OrderedDict((d, OrderedDict((a, iv.estimate) for a, iv in row.items())) for d, row in intervals.items())


@dataclasses.dataclass
class LiZhuTable:
    """Li & Zhu's threshold table (see :func:`li_zhu_table`).

    ``f1[detector][attack]``, ``followup[detector][attack]`` and
    ``followup_no_defence[attack]`` (floats in [0, 1]; a follow-up AUROC is NaN when the
    accepted images hold one class only); ``thresholds[detector]``; ``n_kept[detector]``:
    how many clean images the detector lets through; ``n_clean``; ``f1_ci``, ``followup_ci``
    and ``followup_no_defence_ci``: the same numbers with their 95% bootstrap intervals over
    images; ``table``: the rows for :func:`~medadv_tutorial.report.show_table` (interval
    cells), with a last row ``no defence``.
    """

    f1: "OrderedDict[str, OrderedDict[str, float]]"
    followup: "OrderedDict[str, OrderedDict[str, float]]"
    followup_no_defence: "OrderedDict[str, float]"
    thresholds: "OrderedDict[str, float]"
    n_kept: "OrderedDict[str, int]"
    n_clean: int
    table: Table
    f1_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"
    followup_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"
    followup_no_defence_ci: "OrderedDict[str, metrics.Interval]"

    def kept(self, name: str, level: float = 0.95) -> metrics.Interval:
        """The fraction of the clean images that detector ``name`` lets through, with its Wilson
        score interval (:func:`~medadv_tutorial.metrics.rate_interval`).  The threshold keeps 95%
        of the *training* scores; this is what it keeps of new images."""
        if name not in self.n_kept:
            raise KeyError(f"unknown detector {name!r}; the table has {list(self.n_kept)}")
        return metrics.rate_interval(torch.arange(self.n_clean) < self.n_kept[name], level=level)


def li_zhu_table(suite, names: Sequence[str], fs_clean: features.FeatureSet, adversarial: Mapping, *,
                 quantile: float = 0.95) -> LiZhuTable:
    """F1 and follow-up AUROC of detectors at their pre-set threshold (Li & Zhu, ISBI 2020).

    Each detector of ``names`` (in ``suite``; detectors that read features, not images)
    flags an image when its score exceeds :meth:`~medadv_tutorial.detectors.Detector.threshold`
    ``(quantile)``, the score that keeps ``quantile`` of its clean training scores.  On the
    balanced set of the clean images ``fs_clean`` and each attack's adversarial images
    (``adversarial``: ``{attack: AttackEvaluation or FeatureSet}``), F1 counts adversarial
    images as positives (:func:`~medadv_tutorial.metrics.f1_at_threshold`); the follow-up
    AUROC is the classifier's AUROC on the images the detector lets through, clean and
    adversarial together, from the softmax of the features' logits and the true labels
    (:func:`~medadv_tutorial.metrics.followup_auroc`).  The ``no defence`` row lets every
    image through.  Intervals: F1 by :func:`~medadv_tutorial.metrics.f1_interval` (clean and
    adversarial images resampled apart), follow-up AUROC by
    :func:`~medadv_tutorial.metrics.followup_auroc_interval` (all images resampled together).
    """
    names, thr, s_clean, _ = _threshold_inputs(suite, names, fs_clean, quantile)
    fs_adv = _feature_sets(adversarial)
    f1, fu = OrderedDict((n, OrderedDict()) for n in names), OrderedDict((n, OrderedDict()) for n in names)
    nodef = OrderedDict()
    for a, fsa in fs_adv.items():
        s_adv = suite.score(fsa, names=names)
        probs = torch.cat([fs_clean.logits.softmax(1), fsa.logits.softmax(1)])
        labels = torch.cat([fs_clean.labels, fsa.labels])
        for n in names:
            f1[n][a] = metrics.f1_interval(s_clean[n], s_adv[n], thr[n])
            fu[n][a] = metrics.followup_auroc_interval(probs, labels,
                                                       torch.cat([s_clean[n] <= thr[n], s_adv[n] <= thr[n]]))
        nodef[a] = metrics.followup_auroc_interval(probs, labels, torch.ones(len(labels), dtype=torch.bool))
    rows = [[n] + [v for a in fs_adv for v in (f1[n][a], fu[n][a])] for n in names]
    rows.append(["no defence"] + [v for a in fs_adv for v in ("–", nodef[a])])
    headers = ["detector"] + [f"{a} {k}" for a in fs_adv for k in ("F1", "follow-up AUROC")]
    kept = OrderedDict((n, int((s_clean[n] <= thr[n]).sum())) for n in names)
    return LiZhuTable(_estimates(f1), _estimates(fu), OrderedDict((a, iv.estimate) for a, iv in nodef.items()), thr, kept,
                      len(fs_clean), Table(rows, headers), f1, fu, nodef)


@dataclasses.dataclass
class BlackBoxTable:
    """Li & Zhu's black-box table (see :func:`black_box_table`).

    ``success[attack]`` on the deployed model; ``f1[detector][attack]`` at the pre-set
    threshold and ``auroc[detector][attack]``; ``success_ci``, ``f1_ci``, ``auroc_ci``: the
    same with their 95% bootstrap intervals; ``table`` for
    :func:`~medadv_tutorial.report.show_table` (interval cells).
    """

    success: "OrderedDict[str, float]"
    f1: "OrderedDict[str, OrderedDict[str, float]]"
    auroc: "OrderedDict[str, OrderedDict[str, float]]"
    table: Table
    success_ci: "OrderedDict[str, metrics.Interval]"
    f1_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"
    auroc_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"


def black_box_table(suite, names: Sequence[str], fs_clean: features.FeatureSet,
                    evaluations: Mapping[str, AttackEvaluation], *, quantile: float = 0.95) -> BlackBoxTable:
    """Success, F1 at the pre-set threshold and AUROC of transferred attacks, per detector.

    ``evaluations``: ``{attack: AttackEvaluation}`` from :func:`evaluate_attacks` with
    ``source_model`` (crafted on a substitute, evaluated on the deployed model);
    ``fs_clean``: the deployed model's features of the same clean images.  F1 as in
    :func:`li_zhu_table`; AUROC threshold-free (:func:`~medadv_tutorial.metrics.auroc`).
    """
    names, thr, s_clean, _ = _threshold_inputs(suite, names, fs_clean, quantile)
    evs = _pick(evaluations, None)
    f1 = OrderedDict((n, OrderedDict((a, metrics.f1_interval(s_clean[n], ev.scores[n], thr[n]))
                                     for a, ev in evs.items())) for n in names)
    auroc = OrderedDict((n, OrderedDict((a, metrics.auroc_interval(s_clean[n], ev.scores[n]))
                                        for a, ev in evs.items())) for n in names)
    success = OrderedDict((a, ev.success_ci) for a, ev in evs.items())
    rows = [[a, success[a]] + [v for n in names for v in (f1[n][a], auroc[n][a])] for a in evs]
    headers = ["attack (black-box)", "success on deployed model"] + [f"{n} {k}" for n in names for k in ("F1", "AUROC")]
    return BlackBoxTable(OrderedDict((a, ev.success) for a, ev in evs.items()), _estimates(f1), _estimates(auroc),
                         Table(rows, headers), success, f1, auroc)


# ------------------------------------------------------------------------------ across substitutes and data sets


def evaluate_transfer(attack_zoo: Mapping[str, Any], substitutes: Mapping[str, Any], model, x: torch.Tensor,
                      y: torch.Tensor, suite, clean_scores: Mapping[str, torch.Tensor], *,
                      clean_features: features.FeatureSet | None = None,
                      progress: bool = False) -> "OrderedDict[str, AttackEvaluation]":
    """Black-box runs: every attack of ``attack_zoo`` crafted on each model of ``substitutes``
    (``{name: substitute}``) and evaluated on the deployed ``model`` (:func:`evaluate_attacks` with
    ``source_model``); keys ``"<attack>, <substitute name>"``, substitutes in the outer loop."""
    _check_mapping(substitutes, "substitutes", "{name: substitute model}")
    out = OrderedDict()
    for sub_name, sub in substitutes.items():
        runs = evaluate_attacks(attack_zoo, model, x, y, suite, clean_scores, clean_features=clean_features,
                                source_model=sub, progress=progress)
        out.update((f"{a}, {sub_name}", ev) for a, ev in runs.items())
    return out


@dataclasses.dataclass
class SetComparison:
    """One attack's AUROCs on several image sets (data sets), and their differences from a reference set
    (see :func:`compare_sets`).

    ``auroc_ci[set][detector]``: AUROC with its 95% bootstrap interval; ``difference_ci[set][detector]``:
    ``AUROC(set) - AUROC(reference)`` with the 95% interval of the difference, for every set but the
    reference; ``paired``: whether the difference was resampled as paired (the same images).
    """

    attack: str
    reference: str
    detectors: list
    auroc_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"
    difference_ci: "OrderedDict[str, OrderedDict[str, metrics.Interval]]"
    paired: bool

    def better(self, name: str, *, above_chance: bool = False) -> list[str]:
        """Detectors whose difference interval for set ``name`` lies wholly above 0 (a higher AUROC than on the
        reference).  ``above_chance``: keep only those whose AUROC interval on ``name`` also lies wholly above
        0.5 -- a detector that *catches* the attack better there; two AUROCs below chance can differ too, when
        the score moves less in the wrong direction on one set."""
        return [d for d, iv in self._diff(name).items()
                if iv.low > 0 and (not above_chance or self.auroc_ci[name][d].low > 0.5)]

    def worse(self, name: str, *, above_chance: bool = False) -> list[str]:
        """Detectors whose difference interval for set ``name`` lies wholly below 0; ``above_chance``: only
        those whose AUROC interval on the *reference* lies wholly above 0.5 (they catch the attack better there)."""
        return [d for d, iv in self._diff(name).items()
                if iv.high < 0 and (not above_chance or self.auroc_ci[self.reference][d].low > 0.5)]

    def below_both(self, name: str) -> list[str]:
        """Detectors whose difference interval for set ``name`` excludes 0 but which catch the attack on neither
        side (not in :meth:`better` or :meth:`worse` with ``above_chance``): differences between AUROCs that do
        not lie above chance, which say how far a score moved the wrong way, not which set is easier."""
        caught = self.better(name, above_chance=True) + self.worse(name, above_chance=True)
        return [d for d in self.better(name) + self.worse(name) if d not in caught]

    def _diff(self, name):
        if name not in self.difference_ci:
            raise KeyError(f"unknown set {name!r}; the comparison has {list(self.difference_ci)} against "
                           f"{self.reference!r}")
        return self.difference_ci[name]

    def table(self) -> Table:
        """One row per detector: the AUROC on each set, then each difference from the reference (intervals)."""
        rows = [[d] + [self.auroc_ci[s][d] for s in self.auroc_ci] + [self.difference_ci[s][d]
                                                                       for s in self.difference_ci]
                for d in self.detectors]
        return Table(rows, [f"detector ({self.attack})"] + [f"AUROC {s}" for s in self.auroc_ci]
                     + [f"{s} − {self.reference}" for s in self.difference_ci])


def compare_sets(evaluations_by_set: Mapping[str, Mapping[str, AttackEvaluation]], attack: str, reference: str, *,
                 detectors: Sequence[str] | None = None, paired: bool = False, seed: int = 0) -> SetComparison:
    """Compare one attack's AUROCs across image sets, each against ``reference``.

    ``evaluations_by_set``: ``{set name: {attack: AttackEvaluation}}`` (one :func:`evaluate_attacks`
    per data set, say); ``attack``: the attack compared; ``reference``: the set every other is compared
    with.  Each difference ``AUROC(set) - AUROC(reference)`` gets the interval of
    :func:`~medadv_tutorial.metrics.auroc_difference_interval`: independent resampling of each set
    (``paired=False``, different data sets), or paired (the same images in every set).
    ``detectors``: default, those the reference's evaluation scored, in its order.
    """
    _check_mapping(evaluations_by_set, "evaluations_by_set", "{set name: {attack: AttackEvaluation}}")
    if reference not in evaluations_by_set or len(evaluations_by_set) < 2:
        raise ValueError(f"reference must be one of the sets {list(evaluations_by_set)}, and there must be another "
                         f"to compare with it; got reference={reference!r}")
    runs = OrderedDict()
    for name, evs in evaluations_by_set.items():
        _check_sweep(evs, f"evaluations_by_set[{name!r}]", keys="attack")
        if attack not in evs:
            raise KeyError(f"attack {attack!r} is not among the evaluations of {name!r}: {list(evs)}")
        runs[name] = evs[attack]
    detectors = list(runs[reference].auroc) if detectors is None else list(detectors)
    detectors = list(_check_detectors(detectors, list(runs.values())))
    ref = runs[reference]
    auroc = OrderedDict((s, OrderedDict((d, ev.auroc_ci[d]) for d in detectors)) for s, ev in runs.items())
    diff = OrderedDict(
        (s, OrderedDict((d, metrics.auroc_difference_interval((ev.clean_scores[d], ev.scores[d]),
                                                              (ref.clean_scores[d], ref.scores[d]),
                                                              paired=paired, seed=seed)) for d in detectors))
        for s, ev in runs.items() if s != reference)
    return SetComparison(attack, reference, detectors, auroc, diff, paired)


def success_by_set_table(evaluations_by_set: Mapping[str, Mapping[str, AttackEvaluation]], *,
                         accuracy: Mapping[str, float] | None = None) -> Table:
    """One row per set: its model's test accuracy (when given), the images attacked and each attack's
    success with its 95% interval; the attacks are the first set's, in its order."""
    _check_mapping(evaluations_by_set, "evaluations_by_set", "{set name: {attack: AttackEvaluation}}")
    attacks_ = list(next(iter(evaluations_by_set.values())))
    rows = []
    for name, evs in evaluations_by_set.items():
        evs = _pick(evs, attacks_, f"evaluations_by_set[{name!r}]")
        n = len(next(iter(evs.values()))._needs("outcomes", "success"))
        rows.append([name] + ([accuracy[name]] if accuracy is not None else []) + [n]
                    + [ev.success_ci for ev in evs.values()])
    return Table(rows, ["data set"] + (["test accuracy"] if accuracy is not None else []) + ["images attacked"]
                 + [f"{a} success" for a in attacks_])


@dataclasses.dataclass(frozen=True)
class Bypass:
    """Which detectors an adaptive attack hides from (see :func:`bypass`): lists of detector names, in order.

    ``caught``: those that catch the plain attack (AUROC >= ``catches``); of those, ``hidden``: the
    adaptive attack's AUROC is <= ``hides`` and its interval does not lie above 0.5; ``still``: the
    rest of ``caught``; ``below``: of ``caught``, those whose interval against the adaptive attack
    lies wholly below 0.5 (its images look *more* typical than clean ones: over-hiding).
    """

    caught: list
    hidden: list
    still: list
    below: list


def bypass(plain: AttackEvaluation, adaptive: AttackEvaluation, detectors: Sequence[str], *, catches: float = 0.9,
           hides: float = 0.60) -> Bypass:
    """The verdicts of Chapter 5 for one data set: of ``detectors``, those that catch ``plain`` (AUROC >=
    ``catches``), and which of them ``adaptive`` hides from (AUROC <= ``hides`` and a 95% interval not above
    chance), does not hide from, or over-hides from (interval below chance).  Both evaluations must score
    the same images against the same clean scores (one :func:`evaluate_attacks` context)."""
    for name, value in (("plain", plain), ("adaptive", adaptive)):
        if not isinstance(value, AttackEvaluation):
            raise TypeError(f"{name} must be an AttackEvaluation, got {describe(value)}")
    catches = check_real(catches, "catches", low=0.0, high=1.0, hint=" (an AUROC)")
    hides = check_real(hides, "hides", low=0.0, high=1.0, hint=" (an AUROC)")
    detectors = _check_detectors(detectors, [plain, adaptive])
    caught = [d for d in detectors if plain.auroc[d] >= catches]
    hidden = [d for d in caught if adaptive.auroc[d] <= hides and adaptive.auroc_ci[d].low <= 0.5]
    return Bypass(caught, hidden, [d for d in caught if d not in hidden],
                  [d for d in caught if adaptive.auroc_ci[d].high < 0.5])
