"""One experiment context: the settings of a run and the objects every chapter shares.

An :class:`Experiment` owns

* the profile (:mod:`~medadv_tutorial.profiles`) and the experiment seed, which it passes to
  every seeded step it makes (training, the attack-set draw, the detector suite's draws);
* the protocol's budget :attr:`Experiment.eps` and the size of the supervised detectors'
  training draw :attr:`Experiment.n_fgsm`, written here once instead of in each chapter;
* the models, data sets, features, attack / selection sets and the fitted detector suite of a
  data set, each made once per context and handed out again (``ctx.model("chest_xray")`` twice
  is one model), so that two chapters with the same settings work on the same objects;
* the process-wide settings a run fixes on purpose -- the CPU numerics pin, the seeds of
  Python's, NumPy's and torch's global generators, torch's thread count and matplotlib's figure
  resolution.  Nothing is changed when the context is made: :meth:`Experiment.enter` changes
  them, once, and returns the line that says what it changed.  No other function of the
  package touches them (``prepare`` pins the numerics and seeds inside its worker processes).

The chapters start with::

    from medadv_tutorial import book
    ctx = book.start()        # Experiment(get_profile()).enter(), plus the printed set-up
    profile = ctx.profile
    cxr = ctx.setup("chest_xray", features=("train",))   # model, record, data, cached features
    dets = ctx.suite("chest_xray")                         # the fitted detector line-up
    (x, y, idx), selection = ctx.attack_sets("chest_xray")

In a script, ``Experiment()`` without :meth:`~Experiment.enter` gives the same objects and
leaves the process alone.
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple

from . import allocator, numerics
from .profiles import Profile, as_profile

__all__ = ["EPS", "FGSM_PER_ATTACKED", "Experiment", "AttackSets", "ModelAndFeatures"]

EPS = 1 / 255
"""The budget of the detection and HFC experiments (Chapters 4 and 5), in pixel units."""

FGSM_PER_ATTACKED = 2
"""Training images drawn for the supervised detectors' clean/FGSM pairs, per attacked test image."""


@dataclasses.dataclass
class ModelAndFeatures:
    """What Chapters 3 to 5 start from (see :meth:`Experiment.setup`).

    ``model``: the fine-tuned classifier; ``record``: its training record (test accuracy,
    ...); ``model_key``: its checkpoint key (:func:`~medadv_tutorial.training.checkpoint_key`);
    ``train`` / ``test``: the profile's data sets;
    ``features``: ``{"train" | "test": FeatureSet}`` for the splits asked for.
    """

    model: object
    record: dict
    model_key: str
    train: object
    test: object
    features: dict


class AttackSets(NamedTuple):
    """The two disjoint draws of correctly classified test images (see
    :func:`~medadv_tutorial.training.attack_and_selection_sets`): ``attack`` is what an experiment
    evaluates on, ``selection`` where an attack's settings are chosen.  Each is ``(x, y, idx)``."""

    attack: tuple
    selection: tuple


def _check_own_datasets(datasets) -> dict:
    from .data import DATASETS, ImageDataset

    if datasets is None:
        return {}
    if not isinstance(datasets, dict):
        raise TypeError(f"datasets must be a dict {{name: {{'train': ImageDataset, 'test': ImageDataset}}}}, "
                        f"got {type(datasets).__name__}")
    for name, splits in datasets.items():
        if not isinstance(name, str) or not name or name in DATASETS:
            raise ValueError(f"datasets: each name must be a string other than the book's data sets {DATASETS}, "
                             f"got {name!r}")
        if not isinstance(splits, dict) or set(splits) != {"train", "test"} or \
                not all(isinstance(d, ImageDataset) for d in splits.values()):
            raise TypeError(f"datasets[{name!r}] must be {{'train': ImageDataset, 'test': ImageDataset}} "
                            "(data.load_npz returns one)")
    return dict(datasets)


def _check_backbone(backbone) -> str:
    from .models import BACKBONES

    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    return backbone


def _check_split(split) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


class Experiment:
    """The settings of one run, and the shared objects made under them (see the module docstring).

    Parameters
    ----------
    profile: a :class:`~medadv_tutorial.profiles.Profile` or its name; default the active one
        (``$MEDADV_PROFILE``, else ``ci``).
    seed: the experiment seed: the models' training seed, the seed of the attack-set draw and of
        the detector suite's draws, and (through :meth:`enter`) of the global generators.
    backbone: the models' backbone (default ``profile.backbone``).
    device: where models live and attacks run (default: CUDA if available, else CPU).
    datasets: data sets of your own, ``{name: {"train": ImageDataset, "test": ImageDataset}}`` (from
        :func:`~medadv_tutorial.data.load_npz`, say), used like the book's: subset and read at the
        profile's sizes (:func:`~medadv_tutorial.data.subset`), a model trained and cached for each.
    """

    def __init__(self, profile: Profile | str | None = None, *, seed: int = 0, backbone: str | None = None,
                 device=None, datasets=None):
        from .checks import check_device, check_seed

        self.profile = as_profile(profile)
        self.seed = check_seed(seed, "seed")
        self.backbone = self.profile.backbone if backbone is None else _check_backbone(backbone)
        self._device = None if device is None else check_device(device)
        self.own_datasets = _check_own_datasets(datasets)
        self._memo: dict = {}
        self.entered = False

    # ------------------------------------------------------------------ settings
    @property
    def device(self):
        """Where models live: the ``device`` argument, else CUDA if available, else the CPU."""
        import torch

        if self._device is None:
            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return self._device

    @property
    def eps(self) -> float:
        """The budget of the detection and HFC experiments, :data:`EPS`."""
        return EPS

    @property
    def n_fgsm(self) -> int:
        """Training images drawn for the supervised detectors: :data:`FGSM_PER_ATTACKED` per attacked image."""
        return FGSM_PER_ATTACKED * self.profile.n_attack

    def __repr__(self) -> str:
        return (f"Experiment(profile={self.profile.name!r}, seed={self.seed}, backbone={self.backbone!r}, "
                f"entered={self.entered})")

    def enter(self, *, dpi: int = 72) -> str:
        """Fix the process-wide settings of this run, on purpose, and return one line saying what was set.

        * the CPU numerics pin (:func:`~medadv_tutorial.numerics.pin`; call this before numpy is
          imported for it to reach OpenBLAS);
        * Python's, NumPy's and torch's global generators seeded with :attr:`seed` (for code in a
          notebook that draws from them; the package itself draws from its own generators);
        * torch's CPU thread count, ``profile.num_threads`` (when set);
        * the memory allocator: freed memory kept in the process
          (:func:`~medadv_tutorial.allocator.retain_freed_memory`; glibc only);
        * matplotlib's ``figure.dpi`` (``dpi``), where matplotlib is installed.
        """
        from .checks import check_int

        dpi = check_int(dpi, "dpi (figure resolution in dots per inch)")
        numerics.pin()
        import numpy as np
        import torch

        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        changed = [f"seeds of Python, NumPy and torch = {self.seed}"]
        if self.profile.num_threads is not None:
            torch.set_num_threads(self.profile.num_threads)
            changed.append(f"torch threads = {self.profile.num_threads}")
        changed.append(allocator.retain_freed_memory())
        try:
            import matplotlib

            matplotlib.rcParams["figure.dpi"] = dpi
            changed.append(f"matplotlib figure.dpi = {dpi}")
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            pass
        self.entered = True
        return "this run sets (on purpose): " + ", ".join(changed)

    # ------------------------------------------------------------------ shared objects
    def _once(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def _check_dataset(self, dataset) -> str:
        from .data import DATASETS

        if not isinstance(dataset, str) or (dataset not in DATASETS and dataset not in self.own_datasets):
            raise ValueError(f"dataset must be one of {sorted(DATASETS) + sorted(self.own_datasets)}, got {dataset!r}")
        return dataset

    def _own_data(self, dataset: str, split: str, seed: int = 0):
        """The profile's subset of a data set given to the context (its ``n_train`` / ``n_test`` images, drawn
        with ``seed`` like :func:`~medadv_tutorial.data.load_dataset`), read at the profile's size."""
        from . import data

        n = self.profile.n_train if split == "train" else self.profile.n_test
        return data.subset(self.own_datasets[dataset][split], n, seed=seed, image_size=self.profile.image_size)

    def data(self, dataset: str, split: str):
        """The profile's ``split`` of ``dataset`` (:func:`~medadv_tutorial.data.load_dataset`), made once."""
        from . import data

        dataset, split = self._check_dataset(dataset), _check_split(split)
        if dataset in self.own_datasets:
            return self._once(("data", dataset, split), lambda: self._own_data(dataset, split))
        return self._once(("data", dataset, split), lambda: data.load_dataset(dataset, split, profile=self.profile))

    def _training_data(self, dataset: str, seed: int):
        """``get_model``'s ``data`` argument: ``None`` for the book's data sets (it loads them itself)."""
        if dataset not in self.own_datasets:
            return None
        return {split: self._own_data(dataset, split, seed) for split in ("train", "test")}

    def model(self, dataset: str, *, seed: int | None = None, backbone: str | None = None, progress: bool = True):
        """``(model, record)``: the classifier of ``dataset`` trained with ``seed`` (default :attr:`seed`) on
        ``backbone`` (default :attr:`backbone`; another one makes, say, a black-box substitute of another
        architecture), loaded from the checkpoint cache or trained and cached
        (:func:`~medadv_tutorial.training.get_model`)."""
        from . import training
        from .checks import check_seed

        dataset = self._check_dataset(dataset)
        seed = self.seed if seed is None else check_seed(seed, "seed")
        backbone = self.backbone if backbone is None else _check_backbone(backbone)
        given = {} if dataset not in self.own_datasets else {"data": self._training_data(dataset, seed)}
        return self._once(("model", dataset, seed, backbone), lambda: training.get_model(
            dataset, profile=self.profile, seed=seed, backbone=backbone, device=self.device, progress=progress,
            **given))

    def model_key(self, dataset: str, *, seed: int | None = None, backbone: str | None = None) -> str:
        """The checkpoint key of :meth:`model` in the result store."""
        from . import training

        seed = self.seed if seed is None else seed
        backbone = self.backbone if backbone is None else _check_backbone(backbone)
        dataset = self._check_dataset(dataset)
        return training.checkpoint_key(dataset, backbone, self.profile, seed, self._training_data(dataset, seed))

    def features(self, dataset: str, split: str, *, progress: bool = True):
        """The :class:`~medadv_tutorial.features.FeatureSet` of :meth:`model` on :meth:`data` ``(dataset, split)``,
        through the result store (keyed by the weights, the images and the feature code); ``progress``: a
        progress bar while they are computed."""
        from . import features as feats

        dataset, split = self._check_dataset(dataset), _check_split(split)

        def make():
            model, _ = self.model(dataset)
            return feats.extract_features(model, self.data(dataset, split), cache=True, progress=progress)

        return self._once(("features", dataset, split), make)

    def setup(self, dataset: str, *, features=("train",)) -> ModelAndFeatures:
        """The model of ``dataset``, its record and key, both data splits, and the features of ``features``."""
        if isinstance(features, str) or not isinstance(features, (tuple, list)) or \
                any(s not in ("train", "test") for s in features) or len(set(features)) != len(features):
            raise ValueError(f"features must be a tuple of distinct splits among ('train', 'test'), got {features!r}")
        model, record = self.model(dataset)
        key = self.model_key(dataset)
        sets = {split: self.data(dataset, split) for split in ("train", "test")}
        fs = {split: self.features(dataset, split) for split in features}
        return ModelAndFeatures(model, record, key, sets["train"], sets["test"], fs)

    def attack_sets(self, dataset: str) -> AttackSets:
        """The attack set (``profile.n_attack`` correctly classified test images, drawn with :attr:`seed`)
        and the disjoint selection set (``profile.n_select``, drawn with ``seed + 1``) of ``dataset``."""
        from . import training

        def make():
            model, _ = self.model(dataset)
            att, sel = training.attack_and_selection_sets(model, self.data(dataset, "test"), self.profile.n_attack,
                                                          self.profile.n_select, seed=self.seed)
            return AttackSets(att, sel)

        return self._once(("attack_sets", self._check_dataset(dataset)), make)

    def suite(self, dataset: str):
        """The detector line-up fitted on ``dataset``'s clean training features with :attr:`eps` and
        :attr:`n_fgsm` (:meth:`~medadv_tutorial.suite.DetectorSuite.fit`, through the result cache)."""
        from . import suite

        def make():
            model, _ = self.model(dataset)
            return suite.DetectorSuite.fit(model, self.data(dataset, "train"), self.features(dataset, "train"),
                                           eps=self.eps, n_fgsm=self.n_fgsm, seed=self.seed, cache=True)

        return self._once(("suite", self._check_dataset(dataset)), make)


def environment_note() -> str:
    """Where data and caches come from, naming the variables, not their paths (stored outputs must not
    depend on the machine)."""
    from . import environ
    from .data import cache_dir, data_dir

    data_note = f"offline copies in ${environ.DATA}" if data_dir() else "downloaded on first use"
    cache_note = f"${environ.CACHE}" if environ.value(environ.CACHE) else str(cache_dir())
    return f"data: {data_note}; models and caches: {cache_note}"
