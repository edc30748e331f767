"""The capacity sweep's models (medadv_tutorial.capacity): shapes, sizes, bad inputs.

Training and measuring a sweep model is exercised by prepare (CI) and Chapter 7's smoke run."""

from __future__ import annotations

import pytest
import torch

from medadv_tutorial import capacity


def test_small_cnn_is_a_classifier_with_three_taps():
    model = capacity.small_cnn(4, 2, 1).eval()
    logits, feats = model.forward_features(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 2)
    assert list(feats) == ["block1", "block2", "penultimate"]
    assert [f.shape[1] for f in feats.values()] == [4, 8, 16]


def test_capacity_grows_along_the_sweep():
    sizes = [capacity.n_parameters(capacity.build_sweep_model(n, 2, 1)) for n in capacity.SWEEP]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    # a CNN's weights: conv 3x3 (no bias) + batch norm, then the linear head
    w = 4
    convs = [(3, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w)]
    expected = sum(9 * a * b + 2 * b for a, b in convs) + 4 * w * 2 + 2
    assert sizes[0] == expected
    assert sizes[-1] > 100 * sizes[0]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="width must be a positive int"):
        capacity.small_cnn(0)
    with pytest.raises(ValueError, match="one of the sweep's models"):
        capacity.build_sweep_model("cnn5", 2, 1)
    with pytest.raises(ValueError, match="unknown dataset"):
        capacity.sweep_model("mnist", "cnn4")
    with pytest.raises(ValueError, match="one of the sweep's models"):
        capacity.sweep_model("cifar10", "resnet50")
    with pytest.raises(TypeError, match="nn.Module"):
        capacity.n_parameters("cnn4")
