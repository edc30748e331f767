"""Run settings in one place: the ``ci``, ``full`` and ``smoke`` profiles.

* ``ci`` (the default everywhere, CPU or GPU): what the book's stored outputs show; minutes
  on a 2-core CPU, less on a GPU.
* ``full`` (opt-in): paper-scale settings for a GPU: 224 px, every image, ten epochs.
* ``smoke``: the ``full`` code path (224 px, whole-split sampling rules, batch logic) on a
  few dozen images and one epoch; CI executes chapters 1, 3, 4, 5 and 6 under it and makes
  chapter 2's package calls under it (``tests/test_full_path.py``) to keep ``full`` runnable.  Its numbers mean nothing, so chapters skip their claims under it
  (:attr:`Profile.check_claims`).

Every chapter calls :func:`get_profile` once; the profile is chosen by, in order,

1. the ``name`` argument,
2. the environment variable ``MEDADV_PROFILE`` (``ci``, ``full`` or ``smoke``),
3. ``ci``.
"""

from __future__ import annotations

import dataclasses


from .environ import PROFILE as PROFILE_ENV, value as _env_value


@dataclasses.dataclass(frozen=True)
class Profile:
    """Settings shared by data loading, training and the experiments.

    Attributes
    ----------
    name: ``"ci"``, ``"full"`` or ``"smoke"``.
    image_size: side length (pixels) every dataset is resized to.
    n_train: training images per dataset (a seeded, class-stratified subset;
        ``None`` = all).
    n_test: test images per dataset (``None`` = all).
    epochs: fine-tuning epochs.
    dataset_epochs: per-data-set exceptions to ``epochs`` (see :meth:`epochs_for`).
    batch_size: training batch size.
    n_attack: correctly classified test images attacked per data set in the experiments
        (fewer when a test set has fewer; see :func:`medadv_tutorial.training.attack_and_selection_sets`).
    n_stress: images of each attack set the stress test runs on (a seeded subset; it runs two
        attacks per layer, so it costs more per image than the other experiments).
    n_select: images of the *selection* set on which an attack's weight is chosen, disjoint
        from the attacked ones (Chapter 5).
    attack_steps: iterations of the iterative attacks (BIM, PGD, MIM, CW).
    lr: AdamW learning rate for fine-tuning.
    class_weighted: weight the cross-entropy by inverse class frequency of the training
        subset (medical training sets are imbalanced: Kermany's is 74% pneumonia).
    backbone: default backbone name (see :mod:`medadv_tutorial.models`).
    num_threads: CPU threads for torch (fixed so results repeat; ``None`` = torch default).
    check_claims: whether the chapters assert their scientific claims under this profile
        (``False`` for ``smoke``, whose few dozen images support no claim).
    """

    name: str
    image_size: int
    n_train: int | None
    n_test: int | None
    epochs: int
    dataset_epochs: tuple[tuple[str, int], ...]
    batch_size: int
    n_attack: int
    n_stress: int
    n_select: int
    attack_steps: int
    lr: float
    class_weighted: bool
    backbone: str
    num_threads: int | None
    check_claims: bool = True

    def epochs_for(self, dataset: str) -> int:
        """Fine-tuning epochs for ``dataset`` (``dataset_epochs`` entry or ``epochs``)."""
        return dict(self.dataset_epochs).get(dataset, self.epochs)

    def training_settings(self, dataset: str) -> dict:
        """Every setting that changes the trained weights of ``dataset``'s model."""
        return {
            "image_size": self.image_size, "n_train": self.n_train, "n_test": self.n_test,
            "epochs": self.epochs_for(dataset), "batch_size": self.batch_size, "lr": self.lr,
            "class_weighted": self.class_weighted, "backbone": self.backbone,
        }

    def describe(self) -> str:
        """One line stating the settings, for the chapters' printouts."""
        fields = dataclasses.asdict(self)
        return ", ".join(f"{k}={v}" for k, v in fields.items())


_CI = Profile(
    name="ci",
    image_size=128,
    n_train=2000,
    n_test=1000,
    epochs=2,
    # Ten classes with 200 images each still underfit after two epochs (a two-epoch run: training
    # accuracy 0.77 in epoch 2, loss still halving); the binary medical sets reach
    # 0.97 training accuracy in two.
    dataset_epochs=(("cifar10", 4),),
    batch_size=32,
    n_attack=50,
    n_stress=32,
    n_select=30,
    attack_steps=10,
    lr=1e-3,
    class_weighted=True,
    backbone="efficientnet_lite0",
    # One thread per process: CI runs two processes on two cores, and more threads than
    # cores makes OpenMP spin (measured: 4x slower training steps).
    num_threads=1,
)

PROFILES: dict[str, Profile] = {
    "ci": _CI,
    # Full size: every image at 224 px, the paper-scale attack and selection sets; what differs from ci.
    "full": dataclasses.replace(
        _CI, name="full", image_size=224, n_train=None, n_test=None, epochs=10, dataset_epochs=(), batch_size=64,
        n_attack=1000, n_stress=200, n_select=300, attack_steps=20, lr=3e-4, num_threads=None),
    # As few images as keep every step defined (CIFAR-10 still gets a few correct ones): smoke runs
    # every chapter in CI, and at 224 px on a CPU each image costs. n_attack asks for more than a
    # small test set can give (exercises the split that caps the attack set); n_stress is fewer
    # than the attack set, as in full (a seeded subset is drawn).
    "smoke": dataclasses.replace(
        _CI, name="smoke", image_size=224, n_train=32, n_test=32, epochs=1, dataset_epochs=(), batch_size=16,
        n_attack=1000, n_stress=4, n_select=300, attack_steps=2, lr=3e-4, check_claims=False),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the active :class:`Profile`.

    Parameters
    ----------
    name: ``"ci"``, ``"full"`` or ``"smoke"``; if ``None``, read ``$MEDADV_PROFILE``, and
        if that is unset, ``"ci"`` on every device (readers see what the book shows; a GPU
        runs it in minutes).  ``full`` is opt-in: ``MEDADV_PROFILE=full``.
    """
    if name is None:
        name = _env_value(PROFILE_ENV) or "ci"
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a string such as 'ci', 'full' or 'smoke' (the argument name of "
                        f"get_profile, or profile=), got {type(name).__name__} {name!r}")
    name = name.strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (from the argument or ${PROFILE_ENV}); "
            f"choose one of {sorted(PROFILES)}"
        )
    return PROFILES[name]


def as_profile(profile: Profile | str | None) -> Profile:
    """``profile`` itself, or :func:`get_profile` of a name (``None``: the active profile)."""
    return profile if isinstance(profile, Profile) else get_profile(profile)
