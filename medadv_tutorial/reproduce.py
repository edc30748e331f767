"""The seed papers' grid in one command: data sets x attacks x detectors, with 95% intervals.

Usage::

    python -m medadv_tutorial.reproduce --profile ci --datasets chest_xray fundus cifar10 --out results/
    python -m medadv_tutorial.reproduce --data my_data.npz --positive 1 2 3 4 --out results/

For each data set, under the book's protocol (:data:`BOOK`, Chapters 4 and 5):

1. the classifier, trained by the book's recipe and cached (:meth:`Experiment.model
   <medadv_tutorial.experiment.Experiment.model>`); the detector suite fitted on its clean
   training features (:class:`~medadv_tutorial.suite.DetectorSuite`, plus two-sided MGM and MAHA);
2. two disjoint draws of correctly classified test images: the *attack* set, on which every number
   of the table is measured, and the *selection* set, on which the adaptive attacks' weights are
   chosen (:meth:`Experiment.attack_sets <medadv_tutorial.experiment.Experiment.attack_sets>`);
3. the plain attacks (FGSM, BIM, PGD, MIM at ε, untargeted) on the attack set, and targeted PGD
   with the adaptive attacks' schedule (the baseline they are compared with);
4. for each adaptive attack (PGD+HFC and its two competitors), a sweep of its weight on the
   selection set and the rule fixed before it ran (:func:`~medadv_tutorial.protocol.select_weight`:
   success >= 95%, then the lowest worst AUROC over the detectors that catch targeted PGD there),
   then one run at the chosen weight on the attack set.  Targets: the other class in a binary
   task; in a multi-class one, each image's most probable wrong class (clean logits).

:func:`run_grid` returns one :class:`DatasetResult` per data set; :func:`write_outputs` writes
``table.md`` and ``table.csv`` (success with its 95% Wilson interval, AUROC per detector with its 95% bootstrap interval),
``summary.png`` (the AUROCs as a heat map per data set) and ``settings.json`` (the settings, the
chosen weights and the package's version).  The Python equivalent of ``--data``::

    from medadv_tutorial import data, reproduce
    from medadv_tutorial.experiment import Experiment
    ctx = Experiment("ci", datasets={"mine": data.load_npz("my_data.npz", positive=[1, 2, 3, 4])})
    results = reproduce.run_grid(ctx, ["mine", "chest_xray"])
    reproduce.write_outputs(results, "results/", ctx)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections import OrderedDict
from pathlib import Path

# Light imports only: the command pins the CPU numerics (main) before numpy and torch load.
from .experiment import EPS

def describe(value) -> str:
    from .checks import describe as _describe

    return _describe(value)


__all__ = ["PLAIN_ATTACKS", "TARGETED", "ADAPTIVE_ATTACKS", "ATTACKS", "DATASET_ALIASES", "BookProtocol", "BOOK", "DatasetResult",
           "run_dataset", "run_grid", "grid_table", "write_outputs", "main"]

PLAIN_ATTACKS = ("FGSM", "BIM", "PGD", "MIM")
"""Untargeted attacks at the budget ε, Chapter 4's line-up."""
TARGETED = "PGD (targeted)"
"""Targeted PGD with the adaptive attacks' schedule and no constraint: what they are compared with."""
ADAPTIVE_ATTACKS = ("PGD+HFC", "PGD+MGM-aware", "PGD+feature-match")
"""Targeted attacks that also keep the features clean-looking, each with a weight chosen on the selection set."""
ATTACKS = PLAIN_ATTACKS + (TARGETED,) + ADAPTIVE_ATTACKS

DATASET_ALIASES = {"chest_xray": "chest_xray", "fundus": "retinamnist", "retinamnist": "retinamnist",
                   "cifar10": "cifar10", "pneumoniamnist": "pneumoniamnist"}
"""Names the command takes -> the package's data-set names (``fundus`` is RetinaMNIST, grade 0 against >= 1)."""

MIN_SET = 2
"""The fewest correctly classified images the attack set may hold (an AUROC of one clean against one
adversarial image says nothing); the selection set, when an adaptive attack's weight is chosen on it,
needs at least one."""


@dataclasses.dataclass(frozen=True)
class BookProtocol:
    """The book's protocol (Chapters 4 and 5), the settings :func:`run_dataset` runs under.

    ``eps``: the budget (pixel units, L-infinity); the plain attacks take ``profile.attack_steps``
    steps (step ε/4, PGD from a random start with seed 0), the adaptive ones ``adaptive_step_factor``
    times as many, at step ε/4 and no early stop; ``weights``: ``{attack: the weights swept on the
    selection set}``; ``catches``: the AUROC at which a detector "catches" targeted PGD and is read by
    the selection rule; ``hides``: the AUROC at or below which an attack "hides" from a detector (the
    book's verdicts; :func:`~medadv_tutorial.protocol.bypass`); ``bar``: the success the rule asks for; ``n_components``: K, the HFC mixtures'
    components per layer and class; ``max_width``: HFC constrains the taps with at most this many
    channels (``None``, the book's choice: every tap; the official HFC code skips layers wider than
    512).
    """

    name: str = "book"
    eps: float = EPS
    adaptive_step_factor: int = 4
    weights: tuple = (("PGD+HFC", (0.001, 0.003, 0.01, 0.03, 0.1, 1.0)),
                      ("PGD+MGM-aware", (1e-4, 1e-3, 1e-2)),
                      ("PGD+feature-match", (1.0, 100.0, 10000.0)))
    catches: float = 0.9
    hides: float = 0.60
    bar: float = 0.95  # protocol.SUCCESS_BAR (tests/test_reproduce.py checks they agree)
    n_components: int = 2
    max_width: int | None = None

    def weights_of(self, attack: str) -> tuple:
        return dict(self.weights)[attack]

    def describe(self) -> dict:
        """The settings as plain data (for ``settings.json``)."""
        out = dataclasses.asdict(self)
        out["weights"] = {a: list(w) for a, w in self.weights}
        out["eps_text"] = f"{self.eps * 255:g}/255"
        return out


BOOK = BookProtocol()
"""The book's protocol."""


@dataclasses.dataclass
class DatasetResult:
    """The grid's row block of one data set (see the module docstring).

    ``dataset``: its name; ``task``: the name in the text; ``accuracy``: the model's test accuracy;
    ``n_attack`` / ``n_select``: the sizes of the attack and selection sets; ``evaluations``:
    ``{attack: AttackEvaluation}`` on the attack set; ``selections``: ``{adaptive attack:
    Selection}`` made on the selection set; ``catching``: the detectors that catch targeted PGD on
    the selection set (those the rule read); ``detectors``: the table's detectors, in order;
    ``model_key``: the checkpoint's key; ``seconds``: the wall time of this data set;
    ``suite``: the fitted detector suite; ``clean_features``: the model's features of the clean
    attack set (with ``suite``, what :func:`~medadv_tutorial.protocol.li_zhu_table` reads);
    ``baseline``: targeted PGD with the adaptive attacks' schedule on the selection set (the run
    that decides which detectors the rule reads; ``None`` without adaptive attacks);
    ``sweeps``: ``{adaptive attack: {weight: AttackEvaluation}}`` on the selection set.
    """

    dataset: str
    task: str
    accuracy: float
    n_attack: int
    n_select: int
    evaluations: "OrderedDict"
    selections: dict
    catching: list
    detectors: list
    model_key: str
    seconds: float
    suite: object = dataclasses.field(default=None, repr=False)
    clean_features: object = dataclasses.field(default=None, repr=False)
    baseline: object = dataclasses.field(default=None, repr=False)
    sweeps: dict = dataclasses.field(default_factory=dict, repr=False)


def targets_for(fs_clean, y):
    """Targets of the targeted attacks: ``1 - y`` in a binary task; with more classes, each image's most
    probable wrong class under the clean logits of ``fs_clean`` (the nearest target)."""
    import torch

    from .hfc import other_class

    logits = fs_clean.logits.detach().double().cpu()
    if logits.shape[1] == 2:
        return other_class(y)
    logits[torch.arange(len(y)), y.long().cpu()] = -math.inf
    return logits.argmax(1)


def _check_sets(dataset, att, sel, selection_needed: bool = True) -> None:
    """The attack set holds at least :data:`MIN_SET` images, and the selection set one when an adaptive attack
    needs it."""
    if len(att[0]) < MIN_SET or (selection_needed and len(sel[0]) < 1):
        raise ValueError(
            f"{dataset}: too few correctly classified test images: the attack set holds {len(att[0])} and the "
            f"selection set {len(sel[0])}; the attack set needs at least {MIN_SET} and the selection set 1. Use more test images (a larger test "
            f"split, or a profile with a larger n_test) or a task the model learns better.")


def _check_attacks(attacks) -> tuple:
    if isinstance(attacks, str) or not hasattr(attacks, "__iter__"):
        raise TypeError(f"attacks must be a list of attack names among {ATTACKS}, got {describe(attacks)}")
    attacks = tuple(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"unknown attack(s) {unknown} (choose among {ATTACKS})" if unknown else
                         f"attacks is empty: choose among {ATTACKS}")
    return attacks


def run_dataset(ctx, dataset: str, attacks=ATTACKS, *, protocol=BOOK, progress: bool = True) -> DatasetResult:
    """Run ``attacks`` on ``dataset`` under ``protocol`` in the experiment context ``ctx`` (module docstring)."""
    from . import adaptive, hfc
    from . import attacks as atk
    from . import protocol as proto
    from .data import TASKS
    from .experiment import Experiment
    from .suite import DETECTOR_NAMES

    if not isinstance(ctx, Experiment):
        raise TypeError(f"ctx must be an Experiment (medadv_tutorial.experiment), got {describe(ctx)}")
    if not isinstance(protocol, BookProtocol):
        raise TypeError(f"protocol must be a reproduce.BookProtocol (reproduce.BOOK), got {describe(protocol)}")
    attacks = _check_attacks(attacks)
    t0 = time.perf_counter()
    model, record = ctx.model(dataset, progress=progress)
    att, sel = ctx.attack_sets(dataset)
    _check_sets(dataset, att, sel, selection_needed=any(a in ADAPTIVE_ATTACKS for a in attacks))
    (x, y, _), (x_sel, y_sel, _) = att, sel
    fs_train = ctx.features(dataset, "train", progress=progress)  # before the suite, which fits on them
    dets = ctx.suite(dataset).with_two_sided()
    eps, steps = protocol.eps, ctx.profile.attack_steps
    fs_att, clean_att = proto.score_clean(model, x, y, dets)
    on_att = dict(model=model, x=x, y=y, suite=dets, clean_scores=clean_att, clean_features=fs_att)
    zoo = {"FGSM": atk.FGSM(eps), "BIM": atk.BIM(eps, steps=steps), "PGD": atk.PGD(eps, steps=steps, seed=0),
           "MIM": atk.MIM(eps, steps=steps)}
    evaluations = proto.evaluate_attacks({a: zoo[a] for a in attacks if a in zoo}, **on_att, progress=progress)
    selections, catching, sweeps, base = {}, [], {}, None
    adaptive_asked = [a for a in attacks if a in ADAPTIVE_ATTACKS]
    a_steps, alpha = protocol.adaptive_step_factor * steps, eps / 4
    targeted = atk.PGD(eps, steps=a_steps, alpha=alpha, seed=0, targeted=True)
    t_att = targets_for(fs_att, y) if adaptive_asked or TARGETED in attacks else None
    if TARGETED in attacks:
        evaluations[TARGETED] = proto.evaluate_attack(TARGETED, targeted, **on_att, targets=t_att)
    if adaptive_asked:
        fs_sel, clean_sel = proto.score_clean(model, x_sel, y_sel, dets)
        on_sel = dict(model=model, x=x_sel, y=y_sel, suite=dets, clean_scores=clean_sel, clean_features=fs_sel,
                      targets=targets_for(fs_sel, y_sel))
        mixtures = (hfc.fit_hfc_mixtures(fs_train, n_components=protocol.n_components, cache=True,
                                         exclude_wider_than=protocol.max_width, progress=progress)
                    if "PGD+HFC" in adaptive_asked else None)
        makers = {
            "PGD+HFC": lambda lam: hfc.PGD_HFC(mixtures, eps, lam=lam, steps=a_steps, alpha=alpha, seed=0),
            "PGD+MGM-aware": lambda lam: adaptive.PGD_DetectorAware(dets.detectors["MGM"], eps, lam=lam,
                                                                    steps=a_steps, alpha=alpha, seed=0),
            "PGD+feature-match": lambda lam: adaptive.PGD_FeatureMatch(fs_train, eps, lam=lam, steps=a_steps,
                                                                       alpha=alpha, seed=0),
        }
        base = proto.evaluate_attack(TARGETED, targeted, **on_sel)
        catching = proto.catching(base, DETECTOR_NAMES, protocol.catches) or list(DETECTOR_NAMES)
        for name in adaptive_asked:
            sweep = proto.sweep_weight(makers[name], list(protocol.weights_of(name)), **on_sel, name=name,
                                       desc=f"{dataset}: {name} weights", progress=progress)
            choice = proto.select_weight(sweep, catching, bar=protocol.bar)
            selections[name], sweeps[name] = choice, sweep
            evaluations[name] = proto.evaluate_attack(name, makers[name](choice.weight), **on_att, targets=t_att)
    task = TASKS.get(dataset, dataset)
    return DatasetResult(dataset, task, float(record["test"]["accuracy"]), len(y), len(y_sel), evaluations,
                         selections, catching, list(DETECTOR_NAMES) + ["MGM two-sided", "MAHA two-sided"],
                         ctx.model_key(dataset), time.perf_counter() - t0, dets, fs_att, base, sweeps)


def run_grid(ctx, datasets, attacks=ATTACKS, *, protocol=BOOK, progress: bool = True) -> "OrderedDict[str, DatasetResult]":
    """:func:`run_dataset` for each of ``datasets`` (names of the book's data sets, their aliases in
    :data:`DATASET_ALIASES`, or data sets given to ``ctx``), in order."""
    if isinstance(datasets, str) or not hasattr(datasets, "__iter__"):
        raise TypeError(f"datasets must be a list of data-set names, got {describe(datasets)}")
    datasets = list(datasets)
    if not datasets:
        raise ValueError("datasets is empty: name at least one data set")
    out = OrderedDict()
    for name in datasets:
        dataset = DATASET_ALIASES.get(name, name)
        if progress:
            print(f"== {name}", file=sys.stderr, flush=True)
        out[dataset] = run_dataset(ctx, dataset, attacks, protocol=protocol, progress=progress)
    return out


# ------------------------------------------------------------------------------ outputs


def grid_table(results, *, detectors=None):
    """The paper-style table: one row per data set and attack (the weight chosen, the images, the success
    rate, with its 95% Wilson interval), and the AUROC of each detector, with its 95% bootstrap interval."""
    from .report import Table

    results = _check_results(results)
    detectors = list(next(iter(results.values())).detectors) if detectors is None else list(detectors)
    rows = []
    for r in results.values():
        for attack, ev in r.evaluations.items():
            weight = f"{r.selections[attack].weight:g}" if attack in r.selections else ""
            rows.append([r.task, attack, weight, r.n_attack, ev.success_ci] + [ev.auroc_ci[d] for d in detectors])
    return Table(rows, ["data set", "attack", "λ", "images", "success"] + [f"AUROC {d}" for d in detectors])


def _check_results(results):
    if not isinstance(results, dict) or not results or not all(isinstance(r, DatasetResult) for r in results.values()):
        raise TypeError(f"results must be run_grid's {{dataset: DatasetResult}}, got {describe(results)}")
    return results


def _csv_rows(results, detectors):
    header = ["dataset", "task", "attack", "weight", "images", "success", "success_low", "success_high"]
    for d in detectors:
        header += [f"auroc_{d}", f"auroc_{d}_low", f"auroc_{d}_high"]
    rows = []
    for r in results.values():
        for attack, ev in r.evaluations.items():
            row = [r.dataset, r.task, attack, r.selections[attack].weight if attack in r.selections else "",
                   r.n_attack, *(round(v, 4) for v in ev.success_ci)]
            for d in detectors:
                row += [round(v, 4) for v in ev.auroc_ci[d]]
            rows.append(row)
    return header, rows


def summary_figure(results, detectors):
    """One heat map per data set: AUROC of each detector (columns) against each attack (rows)."""
    from matplotlib.figure import Figure

    from .plots import MIN_FONT

    n = len(results)
    fig = Figure(figsize=(min(10.0, 2.2 + 0.62 * len(detectors)), 1.2 + 2.9 * n), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, r in zip(axes, results.values()):
        names = list(r.evaluations)
        grid = [[r.evaluations[a].auroc[d] for d in detectors] for a in names]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdBu_r", aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=MIN_FONT,
                        color="white" if abs(v - 0.5) > 0.35 else "black")
        ax.set_yticks(range(len(names)), [f"{a} (λ={r.selections[a].weight:g})" if a in r.selections else a
                                          for a in names], fontsize=MIN_FONT)
        ax.set_xticks(range(len(detectors)), detectors, rotation=60, ha="right", fontsize=MIN_FONT)
        ax.set_title(f"{r.task}: AUROC, {r.n_attack} attacked images (0.5 = chance)", fontsize=MIN_FONT + 1)
    fig.colorbar(im, ax=list(axes), shrink=0.6, label="AUROC")
    return fig


def write_outputs(results, out, ctx, *, protocol=BOOK, wall_seconds: float | None = None) -> dict:
    """Write ``table.md``, ``table.csv``, ``summary.png`` and ``settings.json`` into the folder ``out``
    (created); returns ``{name: path}``.  Each file is written to a temporary name and renamed."""
    import torch

    from . import __version__
    from .io import atomic_write, atomic_write_text
    from .report import markdown_table

    results = _check_results(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    detectors = list(next(iter(results.values())).detectors)
    table = grid_table(results, detectors=detectors)
    paths = {k: out / f for k, f in (("markdown", "table.md"), ("csv", "table.csv"), ("figure", "summary.png"),
                                     ("settings", "settings.json"))}
    intro = (f"Success rate (95% Wilson interval) and AUROC (clean attacked images against their adversarial versions; "
             f"95% bootstrap interval over images); protocol {protocol.name!r}, profile {ctx.profile.name!r}, "
             f"ε = {protocol.eps * 255:g}/255, λ chosen on each data set's selection set.\n\n")
    atomic_write_text(paths["markdown"], intro + markdown_table(*table, digits=2) + "\n")
    import io

    header, rows = _csv_rows(results, detectors)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(paths["csv"], buf.getvalue())
    fig = summary_figure(results, detectors)
    atomic_write(paths["figure"], lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    settings = {
        "package_version": __version__, "torch_version": torch.__version__, "profile": dataclasses.asdict(ctx.profile),
        "seed": ctx.seed, "backbone": ctx.backbone, "device": str(ctx.device), "protocol": protocol.describe(),
        "wall_seconds": wall_seconds,
        "datasets": {d: {"task": r.task, "test_accuracy": r.accuracy, "attack_set": r.n_attack,
                         "selection_set": r.n_select, "model_key": r.model_key, "seconds": r.seconds,
                         "rule_detectors": r.catching,
                         "selections": {a: {"weight": s.weight, "success": s.success, "worst_auroc": s.worst_auroc,
                                            "qualified": s.qualified, "reason": s.reason}
                                        for a, s in r.selections.items()}}
                     for d, r in results.items()},
    }
    atomic_write_text(paths["settings"], json.dumps(settings, indent=2, default=str) + "\n")
    return paths


# ------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medadv_tutorial.reproduce", description=__doc__.split("\n\n")[0],
                                epilog="Writes table.md, table.csv, summary.png and settings.json into --out.")
    p.add_argument("--profile", default=None, help="ci, full or smoke (default: $MEDADV_PROFILE, else ci)")
    p.add_argument("--datasets", nargs="*", default=None,
                   help=f"the book's data sets: {', '.join(DATASET_ALIASES)} (default: chest_xray fundus cifar10, "
                        "or none when --data is given)")
    p.add_argument("--data", action="append", default=[], metavar="FILE.npz",
                   help="a data set of your own in the MedMNIST layout (train_images, train_labels, test_images, "
                        "test_labels; uint8 grey (N, H, W) or RGB (N, H, W, 3)); may be given more than once")
    p.add_argument("--positive", type=int, nargs="+", default=None, metavar="LABEL",
                   help="map --data's labels to a binary task: these labels are class 1, the others class 0 "
                        "(default: the labels as they are)")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="the name of each --data set in the outputs, in the same order (default: the file's stem)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), help=f"among {', '.join(ATTACKS)} (default: all)")
    p.add_argument("--backbone", default=None, help="the models' backbone (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="experiment seed (models, draws; default 0)")
    p.add_argument("--out", required=True, help="folder for the outputs (created)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    """The command; returns 0 and prints the table, or exits with a message naming the bad argument."""
    from . import numerics

    numerics.pin()  # on purpose, before numpy and torch load (the context's enter() below says so)
    from . import data
    from .experiment import Experiment
    from .report import show_table

    parser = _parser()
    args = parser.parse_args(argv)
    datasets = args.datasets if args.datasets is not None else ([] if args.data else ["chest_xray", "fundus", "cifar10"])
    unknown = [d for d in datasets if d not in DATASET_ALIASES]
    if unknown:
        parser.error(f"--datasets: unknown data set(s) {unknown}; choose among {', '.join(DATASET_ALIASES)}, or give "
                     "your own with --data FILE.npz")
    if args.positive is not None and not args.data:
        parser.error("--positive maps the labels of --data; give --data FILE.npz too")
    own = {}
    try:
        if args.name and len(args.name) != len(args.data):
            raise ValueError(f"--name: give one name per --data file ({len(args.data)}), got {len(args.name)}")
        for i, path in enumerate(args.data):
            splits = data.load_npz(path, positive=args.positive, name=args.name[i] if args.name else None)
            name = splits["train"].name
            if name in own or name in DATASET_ALIASES:
                raise ValueError(f"--data {path}: the name {name!r} is taken (by another --data file or one of the "
                                 "book's data sets); choose another with --name")
            own[name] = splits
        if not datasets and not own:
            parser.error("nothing to run: give --datasets or --data")
        ctx = Experiment(args.profile, seed=args.seed, backbone=args.backbone, datasets=own)
        attacks = _check_attacks(args.attacks)
    except (ValueError, TypeError, FileNotFoundError) as err:
        parser.error(str(err))
    print(ctx.enter(), flush=True)
    t0 = time.perf_counter()
    results = run_grid(ctx, datasets + list(own), attacks, progress=not args.quiet)
    wall = time.perf_counter() - t0
    paths = write_outputs(results, args.out, ctx, wall_seconds=wall)
    show_table(*grid_table(results))
    print(f"wall time {wall:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
