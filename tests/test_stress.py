"""The stress test pushes features in the requested direction, inside the budget."""

import numpy as np
import pytest
import torch

from medadv_tutorial import stress
from medadv_tutorial.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", num_classes=2, in_channels=3, image_size=32).eval()


def test_feature_deviation_known_answer():
    h_clean = torch.zeros(2, 3)
    h_adv = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(stress.feature_deviation(h_adv, h_clean, torch.tensor(2.0)), torch.tensor([2.5, 1.0]))
    # clean cloud: points at +-1 on each of 2 axes -> RMS radius 1
    cloud = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    torch.testing.assert_close(stress.clean_radius(cloud), torch.tensor(1.0))


def test_push_features_moves_the_mean_activation_both_ways():
    model = _model()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    eps = 4 / 255
    clean = stress.pooled_features(model, x, ["block5"])["block5"].mean(1)
    up = stress.push_features(model, x, "block5", eps=eps, direction=+1, steps=5)
    down = stress.push_features(model, x, "block5", eps=eps, direction=-1, steps=5)
    for xa in (up, down):
        assert (xa - x).abs().max() <= eps + 1e-7 and xa.min() >= 0 and xa.max() <= 1
    hu = stress.pooled_features(model, up, ["block5"])["block5"].mean(1)
    hd = stress.pooled_features(model, down, ["block5"])["block5"].mean(1)
    assert (hu > clean).all() and (hd < clean).all()


def test_stress_test_grows_with_eps():
    model = _model()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    small = stress.stress_test(model, x, ["block3", "penultimate"], eps=0.5 / 255, steps=3, progress=False)
    large = stress.stress_test(model, x, ["block3", "penultimate"], eps=8 / 255, steps=3, progress=False)
    assert set(small) == {"block3", "penultimate"}
    for layer in small:
        assert set(small[layer]) == {"max", "min", "mean", "per_image", "mean_ci"}
        assert large[layer]["mean"] > small[layer]["mean"] > 0
        per = small[layer]["per_image"]
        assert per.shape == (6,) and float(per.mean()) == pytest.approx(small[layer]["mean"], rel=1e-6)
        ci = small[layer]["mean_ci"]
        assert ci.low <= small[layer]["mean"] <= ci.high and ci.low >= float(per.min()) and ci.high <= float(per.max())


def test_class_radii_known_answer_and_the_ten_class_yardstick():
    # two classes, each a tight cloud (radius 0.1) around centres 2 apart: the pooled radius
    # is about 1 (the centres' spread), each class's radius 0.1
    offsets = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [0.0, -0.1]])
    h = torch.cat([offsets + torch.tensor([1.0, 0.0]), offsets - torch.tensor([1.0, 0.0])])
    y = torch.tensor([0] * 4 + [1] * 4)
    radii = stress.class_radii(h, y)
    assert set(radii) == {0, 1}
    torch.testing.assert_close(radii[0], torch.tensor(0.1))
    torch.testing.assert_close(radii[1], torch.tensor(0.1))
    torch.testing.assert_close(stress.clean_radius(h), torch.tensor(1.01).sqrt())
    with pytest.raises(ValueError, match="class 1 has 1 image"):
        stress.class_radii(h[:5], y[:5])
    with pytest.raises(ValueError, match="y must have shape \\(3,\\)"):
        stress.class_radii(h[:3], y)


def test_stress_test_per_class_radius():
    model = _model()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    ref = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y_ref = torch.tensor([0, 1] * 4)
    dev = stress.stress_test(model, x, ["penultimate"], eps=1 / 255, steps=2, reference=ref, labels=y,
                             reference_labels=y_ref, progress=False)["penultimate"]
    # the same displacement, in units of the image's class radius instead of the pooled one
    h_ref = stress.pooled_features(model, ref, ["penultimate"])["penultimate"]
    radii, pooled = stress.class_radii(h_ref, y_ref), stress.clean_radius(h_ref)
    expected = dev["per_image"] * torch.tensor([float(pooled / radii[int(c)]) for c in y], dtype=torch.float64)
    torch.testing.assert_close(dev["per_image_class"], expected, rtol=1e-5, atol=0)
    assert dev["mean_class_ci"].estimate == pytest.approx(float(expected.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="reference_labels must be given"):
        stress.stress_test(model, x, ["penultimate"], eps=1 / 255, steps=1, reference=ref, labels=y, progress=False)
    with pytest.raises(ValueError, match="reference_labels needs labels"):
        stress.stress_test(model, x, ["penultimate"], eps=1 / 255, steps=1, reference_labels=y, progress=False)
    with pytest.raises(ValueError, match=r"classes \[3\] that reference_labels does not"):
        stress.stress_test(model, x, ["penultimate"], eps=1 / 255, steps=1, reference=ref, labels=y + 2 * (y == 1),
                           reference_labels=y_ref, progress=False)


def test_mean_interval_known_answers():
    from medadv_tutorial import metrics

    assert tuple(metrics.mean_interval([2.0, 2.0, 2.0])) == (2.0, 2.0, 2.0)  # no spread, no interval
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 2.0, size=400)
    iv = metrics.mean_interval(v)
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))  # the normal approximation for a large sample
    assert iv.estimate == pytest.approx(v.mean()) and iv.half_width == pytest.approx(half, rel=0.1)
    with pytest.raises(ValueError, match="values must be finite"):
        metrics.mean_interval([1.0, np.inf])
    with pytest.raises(ValueError, match="values is empty"):
        metrics.mean_interval([])


def test_input_gradient_l1_matches_linear_model_known_answer():
    # For a linear model the CE gradient wrt x is (p - e_y)^T W, so its L1 norm is known.
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    x = torch.rand(5, 3, 2, 2)
    y = torch.tensor([0, 1, 0, 1, 1])
    p = lin(x).softmax(1)
    e = torch.nn.functional.one_hot(y, 2).float()
    expect = ((p - e) @ lin[1].weight).abs().sum(1)
    torch.testing.assert_close(stress.input_gradient_l1(lin, x, y), expect.detach())
