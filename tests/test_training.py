"""Training: seeded determinism, evaluation with known answers, the checkpoint cache."""

import dataclasses

import pytest
import torch
from torch import nn

from medadv_tutorial import training
from medadv_tutorial.models import build_model
from medadv_tutorial.rng import seeded_global_rng
from medadv_tutorial.profiles import PROFILES, get_profile

TINY = dataclasses.replace(PROFILES["ci"], name="tiny", image_size=32, n_train=64, n_test=40, epochs=1, batch_size=16)


def _synthetic(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.5
    x[y == 1, :, :16] += 0.5  # class 1: bright upper half
    return x.clamp(0, 1), y


class _Fixed(nn.Module):
    """Logits given directly by a lookup (for known-answer evaluation)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 1000).round().long()
        return self.logits[idx]


def test_evaluate_known_answer():
    x = (torch.arange(6).float() / 1000).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    # scores for class 1: 0.1 0.4 0.35 0.8 0.7 0.2 -> AUROC = 7/9; predictions 0 0 0 1 1 0
    p1 = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    logits = torch.stack([torch.log(1 - p1), torch.log(p1)], 1)
    m = _Fixed(logits)
    out = training.evaluate(m, (x, y))
    assert out["accuracy"] == pytest.approx(5 / 6)
    assert out["auroc"] == pytest.approx(7 / 9)
    assert out["confusion"] == [[3, 0], [1, 2]]
    assert out["n"] == 6


def test_class_weights_known_answer():
    w = training.class_weights(torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(w, torch.tensor([4 / 6, 2.0]))
    torch.testing.assert_close(training.class_weights(torch.tensor([0, 1, 2, 0, 1, 2])), torch.ones(3))


def _train_once(seed, progress=False):
    with seeded_global_rng(seed):  # the head's initialisation and dropout draw from torch's global generator
        model = build_model("efficientnet_lite0", 2, 3, 32)
        model.fc.reset_parameters()
        hist = training.fit(model, _synthetic(96), epochs=4, batch_size=16, lr=3e-3, seed=seed, progress=progress)
    return model, hist


def test_training_is_bit_identical_with_and_without_a_progress_bar():
    m1, h1 = _train_once(0, progress=False)
    m2, h2 = _train_once(0, progress=True)
    assert h1 == h2
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_a_progress_bar_over_a_loader_leaves_its_generator_alone():
    # tqdm.auto's class made a second iterator of what it shows, and a DataLoader iterator draws its
    # base seed from the loader's generator when it is made: a bar moved every later shuffle
    from medadv_tutorial.progress import progress, tqdm

    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=2, shuffle=True, generator=gen)
    before = gen.get_state().clone()
    progress(loader, desc="p", enabled=True).close()
    tqdm(loader, desc="t", disable=True)
    assert torch.equal(gen.get_state(), before)


def test_the_epoch_draw_keeps_the_stored_shuffle():
    # fit draws once from its generator before each epoch's loader iterator: the draw the book's
    # models were trained with (a tqdm.auto bar's extra iterator). The first batch is then this one:
    data = torch.arange(40.0).view(40, 1)
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=gen)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    expected = next(iter(loader))
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2, 1))

        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :1] @ self.w.T

    xs = torch.arange(40.0).view(40, 1, 1, 1) / 40
    training.fit(Spy(), (xs, torch.zeros(40, dtype=torch.long)), epochs=1, batch_size=8, lr=1e-3, seed=0,
                 hflip=False, progress=False)
    torch.testing.assert_close(seen[0].flatten() * 40, expected.flatten())


def test_fit_is_deterministic_and_learns():
    m1, h1 = _train_once(0)
    m2, h2 = _train_once(0)
    assert [e["epoch"] for e in h1["epochs"]] == [1, 2, 3, 4]
    assert len(h1["step_loss"]) == 4 * (96 // 16)
    assert h1 == h2
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    x, y = _synthetic(64, seed=1)
    assert training.evaluate(m1, (x, y))["accuracy"] >= 0.9
    assert not m1.training  # fit leaves the model in eval mode


def test_checkpoint_roundtrip_is_atomic_and_weights_only(tmp_path):
    model = build_model("efficientnet_lite0", 2, 1, 32, pretrained=False)
    path = tmp_path / "sub" / "m.pt"
    training.save_checkpoint(path, model, {"history": [{"epoch": 1, "loss": 0.5}], "classes": ["a", "b"]})
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    other = build_model("efficientnet_lite0", 2, 1, 32, pretrained=False)
    meta = training.load_checkpoint(path, other)
    assert meta["classes"] == ["a", "b"]
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_key_depends_on_every_setting():
    ci = get_profile("ci")
    k = training.checkpoint_key("chest_xray", "efficientnet_lite0", ci, 0)
    assert k.startswith("chest_xray-efficientnet_lite0-ci-seed0-")
    assert k != training.checkpoint_key("chest_xray", "efficientnet_lite0", ci, 1)
    assert k != training.checkpoint_key("chest_xray", "efficientnet_lite0", dataclasses.replace(ci, epochs=3), 0)
    assert k != training.checkpoint_key("chest_xray", "efficientnet_lite0", dataclasses.replace(ci, lr=1e-4), 0)
    # settings that do not change the weights do not change the key
    assert k == training.checkpoint_key("chest_xray", "efficientnet_lite0", dataclasses.replace(ci, n_attack=7), 0)
    # a per-data-set epoch count changes only that data set's key
    more = dataclasses.replace(ci, dataset_epochs=(("cifar10", 9),))
    assert k == training.checkpoint_key("chest_xray", "efficientnet_lite0", more, 0)
    assert training.checkpoint_key("cifar10", "efficientnet_lite0", ci, 0) != training.checkpoint_key(
        "cifar10", "efficientnet_lite0", more, 0)


def test_get_model_trains_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    m1, rec1 = training.get_model("pneumoniamnist", profile=TINY, progress=False)
    assert rec1["cached"] is False
    assert rec1["n_train"] == 64 and rec1["n_test"] == 40
    assert rec1["classes"] == ["normal", "pneumonia"]
    assert 0.0 <= rec1["test"]["accuracy"] <= 1.0 and len(rec1["history"]["epochs"]) == 1
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    m2, rec2 = training.get_model("pneumoniamnist", profile=TINY, progress=False)
    assert rec2["cached"] is True
    assert rec2["test"] == rec1["test"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_a_corrupt_checkpoint_is_reported_deleted_and_trained_again(tmp_path, monkeypatch):
    """A checkpoint whose bytes no longer match its sha256 is never loaded: a warning names the file,
    the entry is deleted, and the model is trained again (bit-identical to the first training)."""
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    m1, rec1 = training.get_model("pneumoniamnist", profile=TINY, progress=False)
    (path,) = list(tmp_path.rglob("*.pt"))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    path.write_bytes(bytes(blob))
    with pytest.warns(RuntimeWarning, match=f"{path.name} does not match its sha256"):
        m2, rec2 = training.get_model("pneumoniamnist", profile=TINY, progress=False)
    assert rec2["cached"] is False, "the corrupt checkpoint was loaded instead of trained again"
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    m3, rec3 = training.get_model("pneumoniamnist", profile=TINY, progress=False)
    assert rec3["cached"] is True  # the new entry is sound


def test_correctly_classified_known_answer():
    x = (torch.arange(6).float() / 1000).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    p1 = torch.tensor([0.1, 0.4, 0.7, 0.8, 0.2, 0.9])  # wrong: index 2 and 4
    logits = torch.stack([torch.log(1 - p1), torch.log(p1)], 1)
    xs, ys = training.correctly_classified(_Fixed(logits), (x, y))
    assert ys.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(xs[:, 0, 0, 0] * 1000, torch.tensor([0.0, 1.0, 3.0, 5.0]))
    # a sample of 2: only correct images, in data-set order, the same for the same seed
    a = training.correctly_classified(_Fixed(logits), (x, y), n=2, seed=3)
    b = training.correctly_classified(_Fixed(logits), (x, y), n=2, seed=3)
    idx = (a[0][:, 0, 0, 0] * 1000).round().long().tolist()
    assert len(idx) == 2 and set(idx) <= {0, 1, 3, 5} and idx == sorted(idx)
    assert torch.equal(a[0], b[0])
    seen = {tuple((training.correctly_classified(_Fixed(logits), (x, y), n=2, seed=s)[0][:, 0, 0, 0] * 1000)
                  .round().long().tolist()) for s in range(20)}
    assert len(seen) > 2  # the sample varies with the seed (not always the first two)


def test_correctly_classified_exclude_gives_a_disjoint_set():
    x = (torch.arange(6).float() / 1000).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    p1 = torch.tensor([0.1, 0.4, 0.7, 0.8, 0.2, 0.9])  # correct: 0, 1, 3, 5
    logits = torch.stack([torch.log(1 - p1), torch.log(p1)], 1)
    xa, ya, ia = training.correctly_classified(_Fixed(logits), (x, y), n=2, seed=0, return_indices=True)
    assert torch.equal((xa[:, 0, 0, 0] * 1000).round().long(), ia)
    xb, yb, ib = training.correctly_classified(_Fixed(logits), (x, y), n=2, seed=1, exclude=ia, return_indices=True)
    assert set(ia.tolist()).isdisjoint(ib.tolist()) and set(ia.tolist()) | set(ib.tolist()) == {0, 1, 3, 5}
    assert torch.equal(yb, y[ib])
    # the default call is unchanged by the new arguments
    assert torch.equal(training.correctly_classified(_Fixed(logits), (x, y), n=2)[0], xa)
