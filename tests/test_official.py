"""The official HFC code's protocol (medadv_tutorial.official): its settings, its noise, and a run."""

import dataclasses

import pytest
import torch

from medadv_tutorial import data, official
from medadv_tutorial.experiment import Experiment
from medadv_tutorial.metrics import Interval


def test_settings_are_the_official_codes():
    p = official.OFFICIAL
    assert p.eps == 1 / 256 and p.step == 0.5 / 256 and p.steps == 4  # steps = 2 eps / step
    assert (p.fit_fraction, p.noise, p.k, p.lam, p.n_components, p.max_width) == (0.7, 2 / 256, 20, 1.0, 1, 512)
    assert p.maha_magnitude == 0.0005 and p.bu_samples == 50
    assert p.describe()["eps_text"] == "1/256" and p.describe()["steps"] == 4
    assert dataclasses.replace(p, eps=2 / 256).steps == 8


def test_noisy_images_move_every_pixel_by_the_noise_either_way_and_clip():
    x = torch.rand(4, 3, 8, 8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    a = official.noisy_images(x, 2 / 256, torch.Generator().manual_seed(0))
    b = official.noisy_images(x, 2 / 256, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    moved = (a - x).abs()
    inside = (x > 2 / 256) & (x < 1 - 2 / 256)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 2 / 256), atol=1e-6)
    up = (a - x)[inside] > 0
    assert 0.4 < up.double().mean() < 0.6  # a fair coin per pixel
    assert not torch.equal(a, official.noisy_images(x, 2 / 256, torch.Generator().manual_seed(1)))


def test_run_official_on_a_small_data_set(tmp_path):
    from test_reproduce import tiny_npz

    ctx = Experiment("smoke", datasets={"tiny": data.load_npz(tiny_npz(tmp_path / "tiny.npz"), positive=[1, 2])})
    res = official.run_official(ctx, "tiny", protocol=dataclasses.replace(official.OFFICIAL, bu_samples=4),
                                progress=False)
    assert res.n_fit + res.n_eval >= 4 and res.n_fit == round(0.7 * (res.n_fit + res.n_eval))
    assert list(res.success) == ["BIM", "BIM+HFC"] and list(res.auroc) == ["KD+BU", "LID", "MAHA"]
    assert all(isinstance(iv, Interval) and 0 <= iv.low <= iv.high <= 1 for row in res.auroc.values()
               for iv in row.values())
    assert "penultimate" not in res.hfc_layers and len(res.hfc_layers) == 17  # the taps of <= 512 channels
    rows, headers = res.table()
    assert headers == ["detector (official protocol)", "AUROC BIM", "AUROC BIM+HFC"] and len(rows) == 3


def test_run_official_refuses_wrong_types():
    with pytest.raises(TypeError, match="ctx must be an Experiment"):
        official.run_official("ci", "chest_xray")
    with pytest.raises(TypeError, match="protocol must be an official.OfficialProtocol"):
        official.run_official(Experiment("ci"), "chest_xray", protocol="official")
