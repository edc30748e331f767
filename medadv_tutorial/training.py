"""Fine-tuning, evaluation and the cached checkpoints.

Later chapters call :func:`get_model`, which loads the model's checkpoint from the result store
(:mod:`~medadv_tutorial.cache`: keyed by data set, backbone, training settings, seed and the
version of the training code) and trains (then stores) the model when it is absent -- so every
chapter also runs on its own in a fresh runtime.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import cache as result_cache
from .checks import (CorruptFileError, as_labels, check_device, check_images, check_input_dtype, check_int,
                     check_labels, check_real, check_seed, describe, eval_mode)
from .batching import resolve_batch_size
from .models import Classifier, build_model
from .io import atomic_torch_save
from .profiles import Profile, as_profile
from .progress import tqdm
from .rng import scoped_threads, seeded_global_rng

def _as_dataset(data, name: str = "data") -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"{name} as a pair must be (x, y) tensors, got ({type(x).__name__}, {type(y).__name__})")
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} images but {len(y)} labels")
        return TensorDataset(x, y)
    raise TypeError(f"{name} must be a torch Dataset or an (x, y) tensor pair, got {type(data).__name__}")



def _labels_of(dataset) -> torch.Tensor:
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1]
    if labels is None:
        labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return torch.as_tensor(labels).long()


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K N_k)`` for integer labels (N,) -> (K,) float32."""
    labels = check_labels(torch.as_tensor(labels), len(labels), "labels")
    if len(labels) == 0:
        raise ValueError("labels is empty: no class to weight")
    counts = torch.bincount(labels.long()).float()
    return len(labels) / (len(counts) * counts.clamp_min(1))


def _device_of(model: nn.Module) -> torch.device:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module (a Classifier), got {type(model).__name__}")
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_proba(model: nn.Module, data, batch_size: int | None = None, progress: bool = False):
    """Softmax probabilities and labels over a dataset, in eval mode.

    Parameters
    ----------
    model: maps (N, C, H, W) images in [0, 1] to logits (N, K).
    data: Dataset yielding (image (C, H, W) in [0, 1], label) or an (x, y) tensor pair.
    batch_size: images per forward pass (default: the device's,
        :func:`~medadv_tutorial.batching.default_batch_size`).

    Returns
    -------
    probs: float tensor (N, K) on the CPU.
    labels: int64 tensor (N,) on the CPU.
    """
    device = _device_of(model)
    # A generator of its own: a DataLoader iterator draws a base seed when it is made, from torch's
    # global generator unless given one, and library calls leave the global generator alone.
    loader = DataLoader(_as_dataset(data), batch_size=resolve_batch_size(batch_size, device), shuffle=False,
                        generator=torch.Generator())
    if len(loader.dataset) == 0:
        raise ValueError("data is empty: no image to predict")
    probs, labels = [], []
    with eval_mode(model):
        for x, y in tqdm(loader, desc="predict", disable=not progress, leave=False):
            x = check_images(x.to(device), "the images of data")
            check_input_dtype(model, x, "the images of data")
            logits = model(x)
            check_labels(as_labels(y), len(x), "the labels of data", logits.shape[1])
            probs.append(logits.softmax(1).float().cpu())
            labels.append(as_labels(y).long())
    return torch.cat(probs), torch.cat(labels)


def evaluate(model: nn.Module, data, batch_size: int | None = None, progress: bool = False) -> dict:
    """Accuracy, AUROC and confusion matrix of ``model`` on ``data``.

    Returns a dict with ``accuracy`` (float in [0, 1]), ``auroc`` (binary: of the
    class-1 probability; multi-class: one-vs-rest macro average), ``confusion``
    (K x K nested list, rows = true class, columns = predicted) and ``n``.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    probs, labels = predict_proba(model, data, batch_size, progress)
    k = probs.shape[1]
    pred = probs.argmax(1)
    if len(torch.unique(labels)) < 2:
        auroc = float("nan")
    elif k == 2:
        auroc = roc_auc_score(labels.numpy(), probs[:, 1].numpy())
    else:
        auroc = roc_auc_score(labels.numpy(), probs.numpy(), multi_class="ovr", labels=list(range(k)))
    return {
        "accuracy": float((pred == labels).float().mean()),
        "auroc": float(auroc),
        "confusion": confusion_matrix(labels.numpy(), pred.numpy(), labels=list(range(k))).tolist(),
        "n": int(len(labels)),
    }


def fit(
    model: nn.Module,
    train_data,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    weight_decay: float = 1e-4,
    hflip: bool = True,
    class_weighted: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` with AdamW and a one-cycle (warm-up + cosine) learning-rate schedule.

    Deterministic for a given ``seed`` (shuffling and augmentation use their own
    generator).  Augmentation: random horizontal flips (``hflip``).  With
    ``class_weighted`` the cross-entropy weights class ``k`` by ``N / (K N_k)``, the
    inverse of its frequency in ``train_data`` (weights are 1 for a balanced set).

    Returns the history: ``{"epochs": [...], "step_loss": [...], "step_accuracy": [...]}``
    where each epoch entry has ``epoch``, ``loss`` and ``accuracy`` (averages over that
    epoch's training batches) and the ``step_*`` lists hold one value per batch.
    """
    dataset = _as_dataset(train_data, "train_data")
    device = _device_of(model)
    epochs, batch_size = check_int(epochs, "epochs"), check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", low=0.0, low_open=True, hint=" (the learning rate)")
    weight_decay = check_real(weight_decay, "weight_decay", low=0.0)
    if len(dataset) == 0:
        raise ValueError("train_data is empty: no image to train on")
    gen = torch.Generator().manual_seed(check_seed(seed, "seed"))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(dataset) > batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, epochs * len(loader)), pct_start=0.15, anneal_strategy="cos"
    )
    weight = class_weights(_labels_of(dataset)).to(device) if class_weighted else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    history = {"epochs": [], "step_loss": [], "step_accuracy": []}
    model.train()
    for epoch in range(1, epochs + 1):
        tot_loss, tot_correct, tot_n = 0.0, 0, 0
        # One draw of the generator per epoch before the loader's own draws.  The book's models were
        # trained through a progress bar (tqdm.auto) that made a second iterator of the loader, and a
        # DataLoader iterator draws its base seed from the loader's generator when it is made; the
        # draw is made here, explicitly, so that the stored models stay those of the book while the
        # bar (which now never touches the loader) cannot move a batch.
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for x, y in loader:
            x, y = check_images(x.to(device), "the images of train_data"), as_labels(y)
            check_input_dtype(model, x, "the images of train_data")
            check_labels(y, len(x), "the labels of train_data")
            y = y.long().to(device)
            if hflip:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(-1), x)
            logits = model(x)
            check_labels(y, len(x), "the labels of train_data", logits.shape[1])
            loss = loss_fn(logits, y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training diverged: the loss is {loss_value} in epoch {epoch} (the model "
                                         f"was not updated with it); lower lr (now {lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct = int((logits.argmax(1) == y).sum())
            tot_loss += loss_value * len(x)
            tot_correct += correct
            tot_n += len(x)
            history["step_loss"].append(loss_value)
            history["step_accuracy"].append(correct / len(x))
            bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}", acc=f"{tot_correct / tot_n:.3f}", refresh=False)
            bar.update(1)
        bar.close()
        history["epochs"].append({"epoch": epoch, "loss": tot_loss / tot_n, "accuracy": tot_correct / tot_n})
    model.eval()
    return history


# ----------------------------------------------------------------------------- cache


def checkpoint_key(dataset: str, backbone: str, profile: Profile, seed: int, data=None) -> str:
    """Key of a cached model in the result store (:mod:`~medadv_tutorial.cache`): readable parts, then the
    store's hash of every setting that shapes the weights and of the training code's version.

    ``data``: the ``{"train", "test"}`` data sets of a data set that is not one of the book's (see
    :func:`get_model`); their pixels and labels are hashed into the key."""
    from . import cache as result_cache

    profile, seed = as_profile(profile), check_seed(seed, "seed")
    parts = dict(dataset=dataset, backbone=backbone, seed=seed, settings=profile.training_settings(dataset))
    if data is not None:
        parts["data"] = {s: data[s] for s in ("train", "test")}
    digest = result_cache.store_key("checkpoints", parts, code="training")[:16]
    return f"{dataset}-{backbone}-{profile.name}-seed{seed}-{digest}"


def save_checkpoint(path: Path, model: Classifier, meta: dict) -> None:
    """Write ``{"state_dict", "meta"}`` atomically (temp file in the same folder + rename)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    atomic_torch_save({"state_dict": model.state_dict(), "meta": meta}, path)


def load_checkpoint(path: Path, model: Classifier) -> dict:
    """Load weights into ``model`` (``weights_only=True``) and return the stored metadata.

    Raises :class:`~medadv_tutorial.checks.CorruptFileError` (naming the file and what to do) when
    the file cannot be read or holds no weights for this model; nothing is changed on disk.
    """
    device = _device_of(model)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoding error means the checkpoint is unusable
        raise _corrupt(path, err) from err
    return _load_state(model, blob, path)


def _corrupt(path, err) -> CorruptFileError:
    return CorruptFileError.of(
        "checkpoint", path, err, "it is corrupt, truncated or from another model. Delete it to have the model "
        "trained again (get_model does that when the file is missing), or call get_model(..., retrain=True).")


def _load_state(model: Classifier, blob, path) -> dict:
    """Put the weights of a checkpoint ``blob`` into ``model`` (eval mode); returns its metadata."""
    try:
        if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
            raise ValueError(f"it holds {describe(blob)}, not a dict with 'state_dict' and 'meta'")
        model.load_state_dict(blob["state_dict"])
    except Exception as err:  # noqa: BLE001 - a blob without this model's weights is unusable
        raise _corrupt(path, err) from err
    model.eval()
    return blob["meta"]


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock on ``path`` (POSIX ``flock``; a no-op where unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def get_model(
    dataset: str,
    *,
    profile: Profile | None = None,
    seed: int = 0,
    backbone: str | None = None,
    device: torch.device | str | None = None,
    retrain: bool = False,
    progress: bool = True,
    data=None,
) -> tuple[Classifier, dict]:
    """A fine-tuned classifier for ``dataset``: loaded from the cache, or trained and cached.

    Parameters
    ----------
    dataset: a name from :data:`medadv_tutorial.data.DATASETS`.
    profile: settings (image size, subset sizes, epochs, ...); default :func:`get_profile`.
    seed: seeds the data subset, the head initialisation, shuffling and augmentation.
    backbone: default ``profile.backbone``.
    device: where the model lives (default: CUDA if available, else CPU).
    retrain: ignore an existing checkpoint.
    data: for a data set that is not one of the book's (a user's own, say from
        :func:`~medadv_tutorial.data.load_npz`): ``{"train": ImageDataset, "test": ImageDataset}``,
        used as given (already subset and read at the profile's size); ``dataset`` is then only its
        name, and the checkpoint key hashes the images and labels.

    Returns
    -------
    model: :class:`~medadv_tutorial.models.Classifier` in eval mode.
    record: dict with ``dataset``, ``backbone``, ``profile``, ``seed``, ``classes``,
        ``history`` (per-epoch loss/accuracy), ``test`` (see :func:`evaluate`),
        ``n_train``, ``n_test``, ``train_seconds`` and ``cached`` (True when loaded).
    """
    from .data import load_dataset

    profile = as_profile(profile)
    backbone = backbone or profile.backbone
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device is None else check_device(device)
    seed = check_seed(seed, "seed")
    if data is not None:
        _check_given_data(data)
    path = result_cache.entry_path("checkpoints", checkpoint_key(dataset, backbone, profile, seed, data))

    test = load_dataset(dataset, "test", profile=profile, seed=seed) if data is None else data["test"]
    in_channels, num_classes = test.channels, len(test.classes)
    # One process trains a given checkpoint; others (e.g. a second chapter run in parallel) wait.
    # A new model's layers draw their initial weights from torch's global generator (then replaced
    # by the ImageNet weights or a checkpoint): seeded here, and the caller's state given back.
    with _file_lock(path.with_suffix(".lock")), seeded_global_rng(seed):
        # read only after its sha256 matched; a corrupt entry is reported, deleted and trained again
        blob = None if retrain else result_cache.read_entry(path)
        model = build_model(backbone, num_classes, in_channels, profile.image_size, pretrained=blob is None)
        model.to(device)
        if blob is not None:
            meta = _load_state(model, blob, path)
            meta["cached"] = True
            return model, meta
        train = None if data is None else data["train"]
        return model, _train_and_cache(model, path, dataset, backbone, profile, seed, test, progress, train)


def _check_given_data(data) -> None:
    from .data import ImageDataset

    if not isinstance(data, Mapping) or set(data) != {"train", "test"} or \
            not all(isinstance(d, ImageDataset) for d in data.values()):
        raise TypeError(f"data must be {{'train': ImageDataset, 'test': ImageDataset}} (a data set of your own), "
                        f"got {describe(data)}")
    if data["train"].classes != data["test"].classes or data["train"].channels != data["test"].channels:
        raise ValueError("data['train'] and data['test'] must have the same classes and channels")


def _train_and_cache(model, path, dataset, backbone, profile, seed, test, progress, train=None) -> dict:
    import time

    from .data import load_dataset

    if train is None:
        train = load_dataset(dataset, "train", profile=profile, seed=seed)
    # The head's initialisation and dropout / stochastic depth draw from torch's global generator
    # (they take no generator): seeded for training only, and the caller's state given back after.
    with seeded_global_rng(seed), scoped_threads(profile.num_threads):
        model.fc.reset_parameters()
        t0 = time.perf_counter()
        history = fit(model, train, epochs=profile.epochs_for(dataset), batch_size=profile.batch_size, lr=profile.lr,
                      seed=seed, class_weighted=profile.class_weighted, progress=progress)
        seconds = time.perf_counter() - t0
        test_record = evaluate(model, test, progress=progress)
    meta = {
        "dataset": dataset,
        "backbone": backbone,
        "profile": profile.name,
        "seed": seed,
        "classes": list(test.classes),
        "history": history,
        "test": test_record,
        "n_train": len(train),
        "n_test": len(test),
        "train_seconds": seconds,
    }
    result_cache.write_entry(path, {"state_dict": model.state_dict(), "meta": meta})
    meta["cached"] = False
    return meta


@torch.no_grad()
def correctly_classified(model: nn.Module, data, n: int | None = None, batch_size: int | None = None, seed: int = 0,
                         *, exclude=None, return_indices: bool = False):
    """A seeded random sample of ``n`` images of ``data`` that ``model`` classifies correctly.

    Attacks are evaluated on these: an image the model already gets wrong is no success of
    an attack.  The sample is drawn uniformly (seeded) from the correctly classified images,
    so it is representative of them (taking the *first* ``n`` would, in a data set stored
    class by class, pick one class only); the chosen images are returned in data-set order.

    ``exclude``: data-set indices that must not be drawn (e.g. the attack set, when a
    disjoint *selection* set is wanted for choosing an attack's settings).
    ``return_indices``: also return the chosen data-set indices ``(n,)`` int64.

    Returns ``(x (n, C, H, W) in [0, 1], y (n,) int64)`` on the CPU (fewer than ``n`` if the
    data set has fewer correctly classified images; ``n=None`` = all of them), plus the
    indices when asked.
    """
    n = None if n is None else check_int(n, "n (the number of images, or None for all)")
    seed = check_seed(seed, "seed")
    probs, labels = predict_proba(model, data, batch_size)
    correct = torch.nonzero(probs.argmax(1) == labels).flatten()
    if exclude is not None:
        try:
            drop = torch.as_tensor(exclude)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"exclude must hold data-set indices (ints), got {describe(exclude)}") from err
        if drop.numel() and (drop.is_floating_point() or drop.dtype == torch.bool):
            raise TypeError(f"exclude must hold data-set indices (ints), got dtype {drop.dtype}")
        correct = correct[~torch.isin(correct, drop.long().flatten())]
    if len(correct) == 0:
        raise ValueError(f"data ({_describe_data(data)}) has no correctly classified image"
                         f"{' outside exclude' if exclude is not None else ''} (of {len(labels)}): "
                         "the model gets every one wrong, so there is nothing to select")
    if n is not None and n < len(correct):
        pick = torch.randperm(len(correct), generator=torch.Generator().manual_seed(seed))[:n]
        correct = correct[pick.sort().values]
    ds = _as_dataset(data)
    x = torch.stack([ds[int(i)][0] for i in correct])
    if return_indices:
        return x, labels[correct], correct
    return x, labels[correct]


def _describe_data(data) -> str:
    name, split = getattr(data, "name", None), getattr(data, "split", None)
    if name is not None:
        return f"{name!r}" + (f" ({split} split)" if split else "")
    return f"the {type(data).__name__} of {len(_as_dataset(data))} images"


def _draw(candidates: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` of ``candidates`` (sorted data-set indices) drawn as :func:`correctly_classified` draws."""
    if n < len(candidates):
        pick = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:n]
        candidates = candidates[pick.sort().values]
    return candidates


@torch.no_grad()
def attack_and_selection_sets(model: nn.Module, data, n_attack: int, n_select: int, seed: int = 0, *,
                              select_seed: int | None = None, min_each: int = 10, batch_size: int | None = None):
    """Two disjoint, seeded samples of the images of ``data`` that ``model`` classifies correctly.

    The *attack* set is what an experiment evaluates on; the *selection* set, disjoint from it,
    is where an attack's settings (e.g. HFC's weight λ) are chosen, so that the evaluation never
    sees the images the choice was made on.  Neither set is ever empty:

    * if ``data`` has at least ``n_attack + n_select`` correctly classified images, the attack
      set is exactly ``correctly_classified(model, data, n=n_attack, seed=seed)`` (the images every
      chapter attacks) and the selection set exactly
      ``correctly_classified(model, data, n=n_select, seed=select_seed, exclude=<attack set>)``;
    * otherwise all ``N`` correctly classified images are split between the two in proportion
      ``n_attack : n_select``, each set getting at least ``min(min_each, N // 2)`` images; the
      attack set is a seeded draw (as above) of its share and the selection set is the rest.

    Parameters
    ----------
    model: classifier mapping (B, C, H, W) images in [0, 1] to logits (B, K).
    data: Dataset yielding (image (C, H, W) in [0, 1], label), or an (x, y) tensor pair.
    n_attack, n_select: wanted sizes (>= 1) of the attack and selection sets.
    seed: seed of the attack-set draw; ``select_seed`` (default ``seed + 1``) that of the
        selection-set draw.
    min_each: smallest size of either set when the images are split in proportion.

    Returns
    -------
    ``((x_att, y_att, idx_att), (x_sel, y_sel, idx_sel))``: images (n, C, H, W) float in [0, 1],
    labels (n,) int64 and data-set indices (n,) int64 (ascending), on the CPU, with
    ``n_att + n_sel <= N`` and no index in both.

    Raises
    ------
    ValueError: if ``n_attack`` or ``n_select`` is below 1, or ``data`` has fewer than two
        correctly classified images (the message names the data set).
    """
    n_attack = check_int(n_attack, "n_attack (the attack-set size, at least 1)")
    n_select = check_int(n_select, "n_select (the selection-set size, at least 1)")
    min_each, seed = check_int(min_each, "min_each", 0), check_seed(seed, "seed")
    select_seed = seed + 1 if select_seed is None else check_seed(select_seed, "select_seed")
    probs, labels = predict_proba(model, data, batch_size)
    correct = torch.nonzero(probs.argmax(1) == labels).flatten()
    n_correct = len(correct)
    if n_correct < 2:
        raise ValueError(
            f"{_describe_data(data)} has {n_correct} correctly classified image(s) of {len(labels)}; "
            f"disjoint attack and selection sets need at least 2")
    if n_correct >= n_attack + n_select:
        n_att, n_sel = n_attack, n_select
    else:
        floor = min(min_each, n_correct // 2)
        n_sel = round(n_correct * n_select / (n_attack + n_select))
        n_sel = min(max(n_sel, floor), n_correct - floor)
        n_att = n_correct - n_sel
    idx_att = _draw(correct, n_att, seed)
    idx_sel = _draw(correct[~torch.isin(correct, idx_att)], n_sel, select_seed)
    ds = _as_dataset(data)
    sets = []
    for idx in (idx_att, idx_sel):
        sets.append((torch.stack([ds[int(i)][0] for i in idx]), labels[idx], idx))
    return tuple(sets)
