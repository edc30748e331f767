"""Models: offline pretrained weights, normalisation inside, hierarchical taps."""

import copy

import pytest
import torch

from medadv_tutorial.models import build_model, layer_widths


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=64).eval()


def test_pretrained_weights_load_offline_and_differ_from_random():
    a = build_model("efficientnet_lite0", 2, 3, 64, pretrained=True)
    b = build_model("efficientnet_lite0", 2, 3, 64, pretrained=False)
    wa = a.stages[0].conv.weight
    wb = b.stages[0].conv.weight
    assert wa.shape == wb.shape == (32, 3, 3, 3)
    assert not torch.allclose(wa, wb)
    # ImageNet stem filters are structured: much larger norm than the random init
    assert wa.norm() > 2 * wb.norm()


def test_forward_features_shapes_and_names(lite):
    x = torch.rand(3, 1, 64, 64)
    logits, feats = lite.forward_features(x)
    assert logits.shape == (3, 2)
    assert list(feats) == lite.feature_names
    assert lite.feature_names[0] == "stem" and lite.feature_names[-1] == "penultimate"
    assert len(lite.feature_names) == 18
    assert feats["penultimate"].shape == (3, 1280)
    widths = layer_widths(lite, 64)
    assert all(feats[k].shape == (3, c) for k, c in widths.items())


def test_logits_from_forward_equal_forward_features_and_penultimate_feeds_fc(lite):
    x = torch.rand(4, 1, 64, 64)
    logits, feats = lite.forward_features(x)
    torch.testing.assert_close(lite(x), logits)
    torch.testing.assert_close(lite.fc(feats["penultimate"]), logits)


def test_layer_subset_and_unknown_layer(lite):
    x = torch.rand(2, 1, 64, 64)
    _, feats = lite.forward_features(x, layers=["block3", "penultimate"])
    assert list(feats) == ["block3", "penultimate"]
    logits, shallow = lite.forward_features(x, layers=["block3"], logits=False)
    assert logits is None and list(shallow) == ["block3"]
    torch.testing.assert_close(shallow["block3"], feats["block3"])
    with pytest.raises(KeyError, match="block99"):
        lite.forward_features(x, layers=["block99"])


def test_grayscale_equals_rgb_with_repeated_channel():
    torch.manual_seed(0)
    gray = build_model("efficientnet_lite0", 2, 1, 64).eval()
    rgb = build_model("efficientnet_lite0", 2, 3, 64).eval()
    rgb.load_state_dict(gray.state_dict())
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)))


def test_normalisation_inside_model(lite):
    # The model takes [0, 1] images: a constant image at the Lite mean maps to 0 after normalising.
    x = torch.full((1, 1, 8, 8), 127.0 / 255.0)
    assert lite.normalize(x).abs().max() < 1e-6
    with pytest.raises(ValueError, match="channels"):
        lite.normalize(torch.rand(1, 3, 8, 8))


def test_deepcopy_is_independent(lite):
    twin = copy.deepcopy(lite)
    with torch.no_grad():
        twin.stages[1].block._project_conv.weight.zero_()
    x = torch.rand(2, 1, 64, 64)
    assert not torch.allclose(twin(x), lite(x))


def test_predict_rejects_out_of_range(lite):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lite.predict(torch.rand(2, 1, 64, 64) * 255)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone"):
        build_model("vgg", 2, 3, 64)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("efficientnet_lite0", 2, 4, 64)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("efficientnet_lite0", 1, 3, 64)


def test_lite2_loads_its_own_offline_weights_with_more_blocks_than_lite0():
    lite2 = build_model("efficientnet_lite2", 2, 1, 64, pretrained=True).eval()
    random2 = build_model("efficientnet_lite2", 2, 1, 64, pretrained=False)
    lite0 = build_model("efficientnet_lite0", 2, 1, 64, pretrained=True)
    assert lite2.backbone_name == "efficientnet_lite2"
    assert lite2.feature_names[0] == "stem" and lite2.feature_names[-1] == "penultimate"
    assert len(lite2.feature_names) == 23  # stem, 21 MBConv blocks, penultimate
    # another network than Lite0: the same stem shape with other weights, and a deeper body
    w2, w0 = lite2.stages[0].conv.weight, lite0.stages[0].conv.weight
    assert w2.shape == w0.shape and not torch.allclose(w2, w0)
    assert w2.norm() > 2 * random2.stages[0].conv.weight.norm()  # ImageNet filters, not the random init
    logits, feats = lite2.forward_features(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 2) and feats["penultimate"].shape == (2, 1280)
