"""Image sets in batches, the model's device and forward function, and the progress helper."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medadv_tutorial import batching
from medadv_tutorial.progress import progress


def _set(n=7):
    return torch.rand(n, 1, 4, 4), torch.arange(n) % 2


@pytest.mark.parametrize("form", ["pair", "dataset", "loader"])
def test_iter_batches_covers_every_image_once_in_order(form):
    x, y = _set()
    data = {"pair": (x, y), "dataset": TensorDataset(x, y),
            "loader": DataLoader(TensorDataset(x, y), batch_size=3)}[form]
    it, total = batching.iter_batches(data, 3)
    batches = list(it)
    assert total == 3 and [len(b[0]) for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert batching.n_images(data) == 7


def test_labels_of_flattens_medmnist_labels_to_int64():
    y = batching.labels_of(torch.tensor([[1], [0]], dtype=torch.int32))
    assert y.dtype == torch.int64 and y.tolist() == [1, 0]


def test_iter_batches_refuses_bad_data():
    x, y = _set()
    with pytest.raises(ValueError, match="7 images but 6 labels"):
        batching.iter_batches((x, y[:6]), 3)
    with pytest.raises(TypeError, match="x a tensor"):
        batching.iter_batches(([1, 2], y), 3)
    with pytest.raises(TypeError, match="Dataset, a DataLoader or a pair"):
        batching.iter_batches(42, 3)
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        batching.iter_batches((x, y), 0)


def test_model_device_and_forward():
    net = nn.Linear(3, 2)
    assert batching.model_device(net) == torch.device("cpu")
    assert batching.model_device(lambda x: x) is None
    x = torch.rand(4, 3)
    logits, aux = batching.resolve_forward(net, None)(x)
    assert torch.equal(logits, net(x)) and aux is None
    logits, aux = batching.resolve_forward(net, lambda m, v: (m(v), "aux"))(x)
    assert aux == "aux"
    with pytest.raises(ValueError, match="no method 'nope'"):
        batching.resolve_forward(net, "nope")
    with pytest.raises(TypeError, match="forward must be None"):
        batching.resolve_forward(net, 3)
    with pytest.raises(ValueError, match="logits or a pair"):
        batching.resolve_forward(net, lambda m, v: (1, 2, 3))(x)


def test_progress_is_transparent():
    items = [1, 2, 3]
    assert progress(items, desc="x", enabled=False) is items
    assert list(progress(items, desc="x")) == items
