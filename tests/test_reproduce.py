"""The reproduce command: a tiny grid on a data set the test writes itself, and its refusals."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from medadv_tutorial import reproduce
from medadv_tutorial.features import FeatureSet


def tiny_npz(path, n_train=48, n_test=30, size=16):
    """Three labels; 1 and 2 are bright images, 0 dark ones (a task a one-epoch model learns)."""
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 3
        x = np.clip(np.where(y[:, None, None] > 0, 170, 70) + rng.normal(0, 30, (n, size, size)), 0, 255)
        return x.astype(np.uint8), y.reshape(-1, 1)

    (tx, ty), (sx, sy) = make(n_train), make(n_test)
    np.savez(path, train_images=tx, train_labels=ty, test_images=sx, test_labels=sy)
    return path


def test_command_on_a_users_file_writes_table_figure_and_settings(tmp_path):
    data = tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medadv_tutorial.reproduce", "--profile", "smoke", "--data", str(data),
           "--positive", "1", "2", "--attacks", "FGSM", "PGD", "PGD+HFC", "--out", str(out), "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Markdown object" not in run.stdout and "wall time" in run.stdout
    assert set(os.listdir(out)) == {"table.md", "table.csv", "summary.png", "settings.json"}
    with open(out / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["attack"] for r in rows] == ["FGSM", "PGD", "PGD+HFC"]
    assert all(r["dataset"] == "tiny" for r in rows)
    assert float(rows[2]["weight"]) in reproduce.BOOK.weights_of("PGD+HFC") and rows[0]["weight"] == ""
    for r in rows:  # every AUROC and its interval are numbers in [0, 1], low <= high
        for d in ("MGM", "MAHA two-sided"):
            lo, est, hi = (float(r[f"auroc_{d}{s}"]) for s in ("_low", "", "_high"))
            assert 0 <= lo <= hi <= 1 and 0 <= est <= 1
    md = (out / "table.md").read_text()
    assert "| data set | attack | λ | images | success | AUROC MGM |" in md and md.count("\n| tiny |") == 3
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["package_version"] and settings["protocol"]["name"] == "book"
    assert settings["profile"]["name"] == "smoke" and settings["wall_seconds"] > 0
    tiny = settings["datasets"]["tiny"]
    assert tiny["attack_set"] == int(rows[0]["images"]) >= reproduce.MIN_SET
    assert set(tiny["selections"]) == {"PGD+HFC"} and tiny["rule_detectors"]


@pytest.mark.parametrize("args, message", [
    (["--datasets", "mnist"], r"--datasets: unknown data set\(s\) \['mnist'\]"),
    (["--positive", "1"], r"--positive maps the labels of --data"),
    (["--attacks", "CW"], r"unknown attack\(s\) \['CW'\]"),
    (["--backbone", "vgg16"], r"backbone must be one of"),
    (["--profile", "fast"], r"unknown profile 'fast'"),
    (["--data", "{missing}"], r"does not exist"),
    (["--data", "{nolabels}"], r"lacks the array\(s\) test_labels"),
    (["--data", "{tiny}", "--positive", "7"], r"positive names label\(s\) \[7\]"),
    (["--data", "{tiny}", "--name", "cifar10"], r"the name 'cifar10' is taken .* choose another with --name"),
    (["--data", "{tiny}", "--name", "a", "--name", "b"], r"--name: give one name per --data file \(1\), got 2"),
])
def test_command_refuses_bad_arguments_naming_them(tmp_path, capsys, args, message):
    tiny = tiny_npz(tmp_path / "tiny.npz")
    with np.load(tiny) as f:
        np.savez(tmp_path / "nolabels.npz", **{k: f[k] for k in f.files if k != "test_labels"})
    paths = {"missing": tmp_path / "none.npz", "nolabels": tmp_path / "nolabels.npz", "tiny": tiny}
    args = [a.format(**paths) for a in args]
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(args + ["--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "out").exists()  # nothing written


def test_targets_are_the_other_class_or_the_most_probable_wrong_one():
    y2 = torch.tensor([0, 1, 1])
    fs2 = FeatureSet({"penultimate": torch.zeros(3, 4)}, y2, torch.zeros(3, 2))
    assert reproduce.targets_for(fs2, y2).tolist() == [1, 0, 0]
    y = torch.tensor([0, 2, 1])
    logits = torch.tensor([[5.0, 1.0, 3.0], [0.0, 9.0, 8.0], [7.0, 6.0, -1.0]])
    fs = FeatureSet({"penultimate": torch.zeros(3, 4)}, y, logits)
    # image 0: true 0, wrong classes 1 (1.0) and 2 (3.0) -> 2; image 1: true 2 -> 1 (9.0); image 2: true 1 -> 0
    assert reproduce.targets_for(fs, y).tolist() == [2, 1, 0]


def test_too_few_correctly_classified_images_is_an_error_naming_the_sets():
    def images(n):
        return torch.zeros(n, 1, 4, 4), torch.zeros(n), torch.zeros(n)

    with pytest.raises(ValueError, match=r"mine: too few correctly classified test images: the attack set holds 1 "
                                         r"and the selection set 2"):
        reproduce._check_sets("mine", images(1), images(2))
    with pytest.raises(ValueError, match=r"the selection set 0; the attack set needs at least 2"):
        reproduce._check_sets("mine", images(5), images(0))
    reproduce._check_sets("mine", images(2), images(1))
    reproduce._check_sets("mine", images(2), images(0), selection_needed=False)  # plain attacks: no selection set
    with pytest.raises(ValueError, match="the attack set holds 1"):
        reproduce._check_sets("mine", images(1), images(2), selection_needed=False)


def test_run_dataset_and_outputs_refuse_wrong_types():
    with pytest.raises(TypeError, match="ctx must be an Experiment"):
        reproduce.run_dataset("ci", "chest_xray")
    with pytest.raises(TypeError, match="results must be run_grid's"):
        reproduce.grid_table({"chest_xray": 1})
    with pytest.raises(ValueError, match="attacks is empty"):
        reproduce._check_attacks([])
    from medadv_tutorial.experiment import Experiment

    with pytest.raises(TypeError, match="datasets must be a list of data-set names"):
        reproduce.run_grid(Experiment("ci"), "chest_xray")
    with pytest.raises(ValueError, match="datasets is empty"):
        reproduce.run_grid(Experiment("ci"), iter([]))


def test_the_book_protocol_agrees_with_the_package_and_the_command_pins_before_numpy_loads():
    from medadv_tutorial import experiment, protocol

    assert reproduce.BOOK.bar == protocol.SUCCESS_BAR and reproduce.BOOK.eps == experiment.EPS
    assert reproduce.BOOK.describe()["eps_text"] == "1/255" and reproduce.BOOK.max_width is None
    code = "import sys, medadv_tutorial.reproduce; print('numpy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # so main() can pin the numerics first
