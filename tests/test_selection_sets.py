"""training.attack_and_selection_sets: disjoint, never empty, and the old two-call recipe when it fits."""

import pytest
import torch
from torch import nn

from medadv_tutorial import training
from medadv_tutorial.data import ImageDataset


class _Lookup(nn.Module):
    """Logits looked up by the image's index, which the toy images carry as grey level i / 255 of pixel (0, 0, 0)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[(x[:, 0, 0, 0] * 255).round().long()]


def _toy(n, wrong=()):
    """``n <= 256`` 1x2x2 images (image i has grey level i), labels alternating 0/1, and a model that
    classifies every image correctly except those in ``wrong``."""
    x = (torch.arange(n).float() / 255).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n) % 2
    pred = y.clone()
    pred[list(wrong)] = 1 - pred[list(wrong)]
    logits = torch.nn.functional.one_hot(pred, 2).float() * 4 - 2
    return _Lookup(logits), (x, y)


def _index_of(x):
    return (x[:, 0, 0, 0] * 255).round().long()


def _check_sets(sets, data, wrong=()):
    (xa, ya, ia), (xs, ys, is_) = sets
    x, y = data
    for xx, yy, ii in ((xa, ya, ia), (xs, ys, is_)):
        assert len(ii) >= 1 and xx.shape == (len(ii),) + tuple(x.shape[1:]) and yy.shape == (len(ii),)
        assert ii.dtype == torch.int64 and yy.dtype == torch.int64
        assert torch.equal(_index_of(xx), ii) and torch.equal(yy, y[ii])  # images, labels, indices agree
        assert ii.tolist() == sorted(ii.tolist())
        assert not set(ii.tolist()) & set(wrong)  # only correctly classified images
    assert set(ia.tolist()).isdisjoint(is_.tolist())


def test_equals_the_two_call_recipe_when_there_are_enough_images():
    wrong = (3, 10, 11, 40, 77)
    model, data = _toy(120, wrong)
    for n_attack, n_select, seed in [(50, 30, 0), (20, 10, 3), (60, 55, 0), (114, 1, 2)]:
        sets = training.attack_and_selection_sets(model, data, n_attack, n_select, seed=seed)
        _check_sets(sets, data, wrong)
        xa, ya, ia = training.correctly_classified(model, data, n=n_attack, seed=seed, return_indices=True)
        xs, ys, is_ = training.correctly_classified(model, data, n=n_select, seed=seed + 1, exclude=ia,
                                                    return_indices=True)
        for got, want in zip(sets[0] + sets[1], (xa, ya, ia, xs, ys, is_)):
            assert torch.equal(got, want)
        assert len(ia) == n_attack and len(is_) == n_select


def test_select_seed_is_the_selection_draw():
    model, data = _toy(100)
    (_, _, ia), (_, _, is_) = training.attack_and_selection_sets(model, data, 50, 30, select_seed=1)
    want = training.correctly_classified(model, data, n=30, seed=1, exclude=ia, return_indices=True)[2]
    assert torch.equal(is_, want)


def test_the_book_recipe_on_a_real_dataset_object():
    """Chapter 5's call on an ImageDataset equals its former two calls (n=50, seed 0; n=30, seed 1)."""
    model, (x, y) = _toy(200, wrong=(0, 5, 99))
    ds = ImageDataset((x * 255).round().to(torch.uint8), y, ["a", "b"], name="toy", split="test")
    sets = training.attack_and_selection_sets(model, ds, 50, 30)
    _, _, ia = training.correctly_classified(model, ds, n=50, return_indices=True)
    _, _, is_ = training.correctly_classified(model, ds, n=30, seed=1, exclude=ia, return_indices=True)
    assert torch.equal(sets[0][2], ia) and torch.equal(sets[1][2], is_)


@pytest.mark.parametrize("n,wrong", [(40, ()), (40, (1, 2, 3)), (25, ()), (12, (0,)), (3, ()), (2, ())])
def test_never_empty_when_the_test_set_is_smaller_than_n_attack(n, wrong):
    # the smoke and full profiles: n_attack=1000, n_select=300, far more than the test set holds
    model, data = _toy(n, wrong)
    n_correct = n - len(wrong)
    sets = training.attack_and_selection_sets(model, data, 1000, 300)
    _check_sets(sets, data, wrong)
    n_att, n_sel = len(sets[0][2]), len(sets[1][2])
    assert n_att + n_sel == n_correct  # every correctly classified image is used
    floor = min(10, n_correct // 2)
    assert n_att >= floor and n_sel >= floor
    # the old recipe took every correct image for the attack set and left the selection set empty
    _, _, ia = training.correctly_classified(model, data, n=1000, return_indices=True)
    assert len(ia) == n_correct


def test_proportional_split_known_answer():
    model, data = _toy(130)
    # exactly enough -> the wanted sizes
    assert [len(s[2]) for s in training.attack_and_selection_sets(model, data, 100, 30)] == [100, 30]
    # 104 correct for 100 + 30 wanted: 30/130 of 104 = 24 for selection, 80 for attack
    model, data = _toy(130, wrong=tuple(range(26)))
    assert [len(s[2]) for s in training.attack_and_selection_sets(model, data, 100, 30)] == [80, 24]
    # a floor of min_each per set when the proportion would give fewer
    model, data = _toy(60)
    assert [len(s[2]) for s in training.attack_and_selection_sets(model, data, 1000, 10)] == [50, 10]
    assert [len(s[2]) for s in training.attack_and_selection_sets(model, data, 1000, 10, min_each=3)] == [57, 3]


def test_deterministic_and_seeded():
    model, data = _toy(40)
    a = training.attack_and_selection_sets(model, data, 1000, 300, seed=4)
    b = training.attack_and_selection_sets(model, data, 1000, 300, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a[0] + a[1], b[0] + b[1]))
    seen = {tuple(training.attack_and_selection_sets(model, data, 1000, 300, seed=s)[1][2].tolist())
            for s in range(10)}
    assert len(seen) > 1


@pytest.mark.parametrize("n,wrong", [(5, (0, 1, 2, 3, 4)), (5, (0, 1, 2, 3)), (1, ())])
def test_too_few_correct_images_is_an_error_naming_the_data(n, wrong):
    model, (x, y) = _toy(n, wrong)
    ds = ImageDataset((x * 255).round().to(torch.uint8), y, ["a", "b"], name="chest_xray", split="test")
    with pytest.raises(ValueError, match=r"'chest_xray' \(test split\) has [01] correctly classified"):
        training.attack_and_selection_sets(model, ds, 50, 30)
    with pytest.raises(ValueError, match="TensorDataset|tuple|at least 2"):
        training.attack_and_selection_sets(model, (x, y), 50, 30)


def test_bad_sizes_are_an_error():
    model, data = _toy(10)
    with pytest.raises(ValueError, match="at least 1"):
        training.attack_and_selection_sets(model, data, 0, 3)
    with pytest.raises(ValueError, match="at least 1"):
        training.attack_and_selection_sets(model, data, 3, 0)
