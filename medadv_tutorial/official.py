"""The official HFC code's protocol, as a named protocol beside the book's (:mod:`~medadv_tutorial.reproduce`).

The public code of the HFC paper makes choices the book does not share.  :data:`OFFICIAL` holds them
and :func:`run_official` runs them on one data set:

* **budget** ε in units of 1/256 (ε = 1/256 here), **BIM** as the base attack with step 0.5/256 and
  ``steps = 2 ε / step`` (4 steps);
* **detectors fitted on the test images**: the correctly classified test images are split 70 / 30
  (seeded); the supervised detectors are trained on the 70% -- BIM at ε as the positives, the clean
  images *and* random-noise versions of them (each pixel moved by ±2/256) as the negatives -- and
  every detector is evaluated on the other 30%;
* the line-up of that code: **KD+BU** (a logistic regression on the kernel density of the
  penultimate features and the MC-dropout variance, 50 passes), **LID** (per-layer LID, k = 20,
  logistic regression) and **MAHA** (per-layer Mahalanobis distances to the class means, each read
  after Lee et al.'s input pre-processing -- the image moved 0.0005 towards its closest class mean
  in that layer, :func:`~medadv_tutorial.detectors.input_preprocessing` -- and a logistic
  regression; every image it is trained or evaluated on is pre-processed the same way);
* **HFC** with one Gaussian per class and layer (K = 1), on the layers of at most 512 channels only,
  λ = 1, on BIM (targeted at the other class; in a multi-class task, the most probable wrong class).

What the book does differently, and why (Chapter 5 shows both side by side): ε = 1/255 and PGD from
a random start; detectors fitted on *training* images only, the supervised ones on FGSM, so that no
detector sees the images it is evaluated on; clean images as the only negatives; K = 2 on all 18
taps, the penultimate layer included, with λ chosen on a selection set by a rule fixed in advance.

Left out: the official code's LID references (mini-batches of the evaluated images, so that a
score depends on which images share its batch): LID's reference batch here is clean training
features, as in the book.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict

__all__ = ["OfficialProtocol", "OFFICIAL", "OfficialResult", "noisy_images", "run_official"]


@dataclasses.dataclass(frozen=True)
class OfficialProtocol:
    """The official HFC code's settings (see the module docstring); :attr:`steps` = ``2 eps / step``."""

    name: str = "official"
    eps: float = 1 / 256
    step: float = 0.5 / 256
    fit_fraction: float = 0.7
    noise: float = 2 / 256
    maha_magnitude: float = 0.0005
    k: int = 20
    bu_samples: int = 50
    lam: float = 1.0
    n_components: int = 1
    max_width: int = 512
    seed: int = 0

    @property
    def steps(self) -> int:
        return round(2 * self.eps / self.step)

    def describe(self) -> dict:
        out = dataclasses.asdict(self)
        out["steps"] = self.steps
        out["eps_text"] = f"{self.eps * 256:g}/256"
        return out


OFFICIAL = OfficialProtocol()


@dataclasses.dataclass
class OfficialResult:
    """What :func:`run_official` measured on the evaluation part (30%) of the correctly classified test images.

    ``n_fit`` / ``n_eval``: the images of the two parts; ``success``: ``{attack: Interval}`` (BIM, and
    BIM+HFC reaching its target); ``auroc``: ``{detector: {attack: Interval}}`` (clean evaluation images
    against their adversarial versions); ``hfc_layers``: the layers HFC constrained; ``seconds``: wall time.
    """

    dataset: str
    n_fit: int
    n_eval: int
    success: "OrderedDict"
    auroc: "OrderedDict"
    hfc_layers: list
    seconds: float

    def table(self):
        """One row per detector: the AUROC against each attack, with its 95% interval."""
        from .report import Table

        attacks = list(self.success)
        return Table([[d] + [row[a] for a in attacks] for d, row in self.auroc.items()],
                     ["detector (official protocol)"] + [f"AUROC {a}" for a in attacks])


def noisy_images(x, noise: float, generator):
    """``x`` with every pixel moved by ``+noise`` or ``-noise`` (a fair coin per pixel, from ``generator``),
    clipped to [0, 1]: the official code's random-noise negatives."""
    import torch

    signs = torch.randint(0, 2, x.shape, generator=generator, dtype=torch.int64).to(x.dtype) * 2 - 1
    return (x + noise * signs).clamp(0, 1)


def _kd_bu(model, fs_train, clean_images, protocol):
    """KD on the penultimate features (bandwidth: the book's rule) and BU (``protocol.bu_samples`` passes; its
    reference scores from ``clean_images``)."""
    from . import detectors
    from .suite import DetectorSuite, kd_bandwidth

    kd = detectors.KD(bandwidth=kd_bandwidth(fs_train.penultimate)).fit(fs_train.penultimate, fs_train.labels)
    bu = detectors.BU(model, n_samples=protocol.bu_samples, seed=protocol.seed).fit(clean_images)
    return DetectorSuite({"KD": kd, "BU": bu})


def run_official(ctx, dataset: str, *, protocol: OfficialProtocol = OFFICIAL, progress: bool = True) -> OfficialResult:
    """Run the official code's protocol on ``dataset`` in the experiment context ``ctx`` (module docstring)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from . import attacks, detectors, features, hfc, metrics, training
    from .checks import describe
    from .experiment import Experiment
    from .reproduce import targets_for
    from .suite import DetectorSuite, ensemble_layers

    if not isinstance(ctx, Experiment):
        raise TypeError(f"ctx must be an Experiment (medadv_tutorial.experiment), got {describe(ctx)}")
    if not isinstance(protocol, OfficialProtocol):
        raise TypeError(f"protocol must be an official.OfficialProtocol, got {describe(protocol)}")
    t0 = time.perf_counter()
    model, _ = ctx.model(dataset, progress=progress)
    fs_train = ctx.features(dataset, "train", progress=progress)
    x, y = training.correctly_classified(model, ctx.data(dataset, "test"), n=None, seed=ctx.seed)
    g = torch.Generator().manual_seed(protocol.seed)
    order = torch.randperm(len(y), generator=g)
    n_fit = round(protocol.fit_fraction * len(y))
    fit, ev = order[:n_fit].sort().values, order[n_fit:].sort().values
    if n_fit < 2 or len(ev) < 2:
        raise ValueError(f"{dataset}: {len(y)} correctly classified test images are too few to split "
                         f"{protocol.fit_fraction:.0%} / {1 - protocol.fit_fraction:.0%} for the official protocol")
    noisy = noisy_images(x, protocol.noise, g)
    bim = attacks.BIM(protocol.eps, alpha=protocol.step, steps=protocol.steps)
    fs_clean = features.extract_features(model, (x, y), progress=False)
    targets = targets_for(fs_clean, y)
    mixtures = hfc.fit_hfc_mixtures(fs_train, n_components=protocol.n_components, exclude_wider_than=protocol.max_width,
                                    cache=True, progress=progress)
    hfc_attack = hfc.BIM_HFC(mixtures, protocol.eps, lam=protocol.lam, alpha=protocol.step, steps=protocol.steps)
    runs = OrderedDict([
        ("BIM", attacks.run_attack(bim, model, (x, y), progress=progress, cache=True)),
        ("BIM+HFC", attacks.run_attack(hfc_attack, model, (x, y), targets=targets, progress=progress, cache=True)),
    ])
    fs_noisy = features.extract_features(model, (noisy, y), progress=False)
    fs_adv = {a: features.extract_features(model, (r.x_adv, y), progress=False) for a, r in runs.items()}
    layers = ensemble_layers(model)

    def view(fs, rows):
        return {l: fs[l][rows] for l in layers}

    # the supervised detectors: BIM on the fit part against its clean and noisy images
    negatives = {l: torch.cat([fs_clean[l][fit], fs_noisy[l][fit]]) for l in layers}
    lid = DetectorSuite({"LID": detectors.LIDDetector(k=protocol.k, seed=protocol.seed).fit(
        {l: fs_train[l] for l in layers}, adv_features=view(fs_adv["BIM"], fit), clean_val_features=negatives)},
        layers=layers)
    # MAHA reads every image after the input pre-processing of each layer's Mahalanobis detector (the same fits
    # as the ensemble's own: class means and tied covariance of the clean training features)
    maha = detectors.MahaEnsemble(seed=protocol.seed)
    maha_layers = {l: detectors.Mahalanobis(maha.reg).fit(fs_train[l], fs_train.labels) for l in layers}

    def preprocessed(images):
        return detectors.input_preprocessing(model, images, maha_layers, protocol.maha_magnitude)

    maha.fit({l: fs_train[l] for l in layers}, fs_train.labels, adv_features=preprocessed(runs["BIM"].x_adv[fit]),
        clean_val_features=preprocessed(torch.cat([x[fit], noisy[fit]])))
    kd_bu = _kd_bu(model, fs_train, x[fit], protocol)

    def kd_bu_scores(fs, images, rows):
        s = kd_bu.score(fs.subset(rows), images[rows])
        return np.stack([s["KD"].numpy(), s["BU"].numpy()], axis=1)

    neg = np.concatenate([kd_bu_scores(fs_clean, x, fit), kd_bu_scores(fs_noisy, noisy, fit)])
    pos = kd_bu_scores(fs_adv["BIM"], runs["BIM"].x_adv, fit)
    regression = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=protocol.seed))
    regression.fit(np.concatenate([neg, pos]), np.r_[np.zeros(len(neg)), np.ones(len(pos))])

    def scores(fs, images):
        out = OrderedDict(KD_BU=torch.as_tensor(regression.decision_function(kd_bu_scores(fs, images, ev))))
        out.update(lid.score(fs.subset(ev), images[ev]))
        out["MAHA"] = maha.score(preprocessed(images[ev]))
        return out

    clean_scores = scores(fs_clean, x)
    auroc = OrderedDict((d.replace("_", "+"), OrderedDict()) for d in clean_scores)
    success = OrderedDict()
    for a, r in runs.items():
        adv_scores = scores(fs_adv[a], r.x_adv)
        for d, s in adv_scores.items():
            auroc[d.replace("_", "+")][a] = metrics.auroc_interval(clean_scores[d], s)
        success[a] = metrics.rate_interval(r.success[ev])
    return OfficialResult(dataset, len(fit), len(ev), success, auroc, list(mixtures.layers), time.perf_counter() - t0)
