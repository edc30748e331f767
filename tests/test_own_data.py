"""A user's own data: the MedMNIST-layout .npz reader, and an Experiment made on it."""

import numpy as np
import pytest
import torch

from medadv_tutorial import data, training
from medadv_tutorial.experiment import Experiment


def write_npz(path, *, n_train=12, n_test=8, size=9, rgb=False, labels=(0, 1, 2), **override):
    rng = np.random.default_rng(0)
    shape = (size, size, 3) if rgb else (size, size)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": np.resize(np.asarray(labels), n_train).reshape(-1, 1),
        "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": np.resize(np.asarray(labels), n_test).reshape(-1, 1),
        "val_images": np.zeros((1, *shape), np.uint8),  # ignored
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_load_npz_reads_grey_and_rgb_with_labels_as_given_or_mapped(tmp_path):
    grey = data.load_npz(write_npz(tmp_path / "grey.npz"))
    assert set(grey) == {"train", "test"}
    tr = grey["train"]
    assert tr.name == "grey" and tr.split == "train" and tr.image_size is None
    assert tr.native.shape == (12, 1, 9, 9) and tr.classes == ["label 0", "label 1", "label 2"]
    assert tr.labels.tolist() == [0, 1, 2] * 4
    rgb = data.load_npz(write_npz(tmp_path / "rgb.npz", rgb=True, labels=(3, 7)), positive=[7], name="mine")
    assert rgb["test"].native.shape == (8, 3, 9, 9) and rgb["test"].name == "mine"
    assert rgb["test"].classes == ["label not in {7}", "label in {7}"]
    assert rgb["test"].labels.tolist() == [0, 1] * 4
    # the pixels are the file's (N, H, W, C) -> (N, C, H, W)
    with np.load(tmp_path / "rgb.npz") as f:
        assert torch.equal(rgb["test"].native, torch.from_numpy(f["test_images"]).permute(0, 3, 1, 2))
    # a positive list maps several labels to one class (RetinaMNIST's grade 0 against >= 1)
    fundus = data.load_npz(write_npz(tmp_path / "f.npz", labels=(0, 1, 2, 3, 4)), positive=[1, 2, 3, 4])
    assert fundus["train"].labels.tolist() == [0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1]


def test_subset_is_stratified_and_read_at_the_asked_size(tmp_path):
    tr = data.load_npz(write_npz(tmp_path / "g.npz", n_train=30, labels=(0, 1)))["train"]
    sub = data.subset(tr, 10, seed=0, image_size=16)
    assert len(sub) == 10 and sub.class_counts() == {"label 0": 5, "label 1": 5}
    assert sub[0][0].shape == (1, 16, 16)
    assert torch.equal(data.subset(tr, 10, seed=0).native, sub.native)
    assert not torch.equal(data.subset(tr, 10, seed=1).native, sub.native)
    with pytest.raises(TypeError, match="ds must be an ImageDataset"):
        data.subset("images", 3)


@pytest.mark.parametrize("override, positive, message", [
    ({"test_labels": None}, None, r"lacks the array\(s\) test_labels"),
    ({"train_images": np.zeros((12, 9, 9), np.float32)}, None, r"train_images must hold uint8 .* got dtype float32"),
    ({"train_images": np.zeros((12, 9, 9, 4), np.uint8)}, None, r"train_images must be \(N, H, W\) grey .* shape"),
    ({"train_labels": np.zeros((11,), np.int64)}, None, r"train_labels must hold one integer class label per image"),
    ({"train_labels": np.zeros((12, 3), np.int64)}, None, r"multi-label"),
    ({"test_labels": np.full((8,), 0.5)}, None, r"test_labels must be integer class labels"),
    ({"train_labels": np.zeros((12, 1), np.int64)}, None, r"the train split has a single class"),
    ({"test_images": np.zeros((8, 5, 5), np.uint8)}, None, r"same image shape"),
    ({}, [9], r"positive names label\(s\) \[9\] that no image"),
    ({}, [0, 1, 2], r"the train split has a single class \('label in \{0, 1, 2\}'\)"),
    ({}, "one", r"positive must be a label or a list of labels"),
])
def test_load_npz_refuses_bad_files_naming_what_is_wrong(tmp_path, override, positive, message):
    path = write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(ValueError, match=message):
        data.load_npz(path, positive=positive)


def test_load_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_npz(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        data.load_npz(tmp_path / "junk.npz")


def test_experiment_uses_own_data_with_the_profiles_sizes_and_keys_the_model_by_its_pixels(tmp_path, monkeypatch):
    own = data.load_npz(write_npz(tmp_path / "mine.npz", n_train=40, n_test=20, labels=(0, 1)))
    calls = []
    monkeypatch.setattr(training, "get_model", lambda ds, profile, seed, backbone, device, progress, data:
                        calls.append((ds, {s: len(d) for s, d in data.items()})) or ("MODEL", {}))
    ctx = Experiment("smoke", datasets={"mine": own})
    test = ctx.data("mine", "test")
    assert len(test) == 20 and test.image_size == ctx.profile.image_size  # smoke: n_test = 32 >= 20
    assert len(ctx.data("mine", "train")) == ctx.profile.n_train
    assert ctx.model("mine")[0] == "MODEL" and calls == [("mine", {"train": 32, "test": 20})]
    other = data.load_npz(write_npz(tmp_path / "mine2.npz", n_train=40, n_test=20, labels=(1, 0)))
    key = ctx.model_key("mine")
    assert key.startswith("mine-efficientnet_lite0-smoke-seed0-")
    assert key == Experiment("smoke", datasets={"mine": own}).model_key("mine")
    assert key != Experiment("smoke", datasets={"mine": other}).model_key("mine")  # other labels, other model
    with pytest.raises(ValueError, match="dataset must be one of .*'mine'"):
        ctx.data("yours", "test")
    with pytest.raises(ValueError, match="other than the book's data sets"):
        Experiment("ci", datasets={"chest_xray": own})
    with pytest.raises(TypeError, match=r"datasets\['x'\] must be"):
        Experiment("ci", datasets={"x": own["train"]})


def test_get_model_refuses_data_that_is_not_two_image_datasets(tmp_path):
    own = data.load_npz(write_npz(tmp_path / "m.npz", labels=(0, 1)))
    with pytest.raises(TypeError, match=r"data must be \{'train': ImageDataset, 'test': ImageDataset\}"):
        training.get_model("m", profile="smoke", data={"train": own["train"]})
    grey_vs_rgb = {"train": own["train"], "test": data.load_npz(write_npz(tmp_path / "r.npz", rgb=True,
                                                                          labels=(0, 1)))["test"]}
    with pytest.raises(ValueError, match="same classes and channels"):
        training.get_model("m", profile="smoke", data=grey_vs_rgb)
