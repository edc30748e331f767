import pytest

from medadv_tutorial.profiles import get_profile


def test_env_var_and_argument(monkeypatch):
    monkeypatch.setenv("MEDADV_PROFILE", "full")
    assert get_profile().name == "full"
    assert get_profile("ci").name == "ci"
    monkeypatch.delenv("MEDADV_PROFILE")
    import torch

    assert get_profile().name == ("full" if torch.cuda.is_available() else "ci")


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MEDADV_PROFILE", "fast")
    with pytest.raises(ValueError, match="unknown profile 'fast'.*MEDADV_PROFILE"):
        get_profile()


def test_ci_settings_are_the_documented_ones():
    ci = get_profile("ci")
    assert (ci.image_size, ci.n_train, ci.epochs, ci.backbone) == (128, 2000, 2, "efficientnet_lite0")
    assert "image_size=128" in ci.describe()
