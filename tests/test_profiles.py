import pytest

from medadv_tutorial.profiles import get_profile


def test_env_var_and_argument(monkeypatch):
    monkeypatch.setenv("MEDADV_PROFILE", "full")
    assert get_profile().name == "full"
    assert get_profile("ci").name == "ci"
    monkeypatch.delenv("MEDADV_PROFILE")
    # ci on every device: a reader with a GPU sees what the book shows; full is opt-in
    assert get_profile().name == "ci"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MEDADV_PROFILE", "fast")
    with pytest.raises(ValueError, match="unknown profile 'fast'.*MEDADV_PROFILE"):
        get_profile()
    with pytest.raises(TypeError, match="profile name must be a string"):
        get_profile(3)


def test_ci_settings_are_the_documented_ones():
    ci = get_profile("ci")
    assert (ci.image_size, ci.n_train, ci.epochs, ci.backbone) == (128, 2000, 2, "efficientnet_lite0")
    assert "image_size=128" in ci.describe()


def test_smoke_runs_the_full_code_path_small():
    full, smoke = get_profile("full"), get_profile("smoke")
    assert smoke.image_size == full.image_size == 224
    assert smoke.n_train <= 64 and smoke.n_test <= 64 and smoke.epochs == 1
    # the attack set asks for more images than a smoke test set has: the capped split is exercised
    assert smoke.n_attack > smoke.n_test
    # ... while the stress test draws a subset of the attack set, as in full
    assert smoke.n_stress < smoke.n_test and full.n_stress < full.n_attack
    assert not smoke.check_claims and full.check_claims and get_profile("ci").check_claims
