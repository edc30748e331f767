"""The experiment context, and library calls that leave the process's global state alone.

* importing the package (every module) changes no environment variable, thread count, random
  generator or matplotlib setting (a fresh process, without the pin in its environment);
* ``get_model`` -- loading and training -- gives the caller back torch's global generator and
  thread count as they were;
* an :class:`Experiment` changes nothing until :meth:`~Experiment.enter`, which changes what it
  says it changes; it hands out each shared object once (the same model, attack sets and suite
  to every chapter), and the chapters that share them copy none of its settings.
"""

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medadv_tutorial import experiment, numerics, rng, suite, training
from medadv_tutorial.experiment import Experiment

REPO = Path(__file__).resolve().parents[1]

IMPORT_SCRIPT = r"""
import json, os, pkgutil, importlib, random, sys
import numpy as np
import torch
import matplotlib
before = dict(env=dict(os.environ), threads=torch.get_num_threads(), torch_rng=torch.get_rng_state().tolist(),
              np_rng=repr(np.random.get_state()), py_rng=repr(random.getstate()),
              rc={k: repr(v) for k, v in matplotlib.rcParams.items()})
import medadv_tutorial
names = [m.name for m in pkgutil.iter_modules(medadv_tutorial.__path__) if m.name not in ("prepare",)]
for name in names:
    importlib.import_module(f"medadv_tutorial.{name}")
importlib.import_module("medadv_tutorial.prepare")
after = dict(env=dict(os.environ), threads=torch.get_num_threads(), torch_rng=torch.get_rng_state().tolist(),
             np_rng=repr(np.random.get_state()), py_rng=repr(random.getstate()),
             rc={k: repr(v) for k, v in matplotlib.rcParams.items()})
changed = {k: [(kk, before[k].get(kk), after[k].get(kk)) for kk in set(before[k]) | set(after[k])
               if before[k].get(kk) != after[k].get(kk)] if isinstance(before[k], dict) else before[k] != after[k]
           for k in before}
print(json.dumps({"modules": len(names) + 1, "changed": changed}))
"""


def test_importing_the_package_changes_no_global_state():
    env = {k: v for k, v in os.environ.items() if k not in numerics.PIN}
    env["OMP_NUM_THREADS"] = "2"  # a thread count the package would have to change to show
    out = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["modules"] >= 20
    changed = result["changed"]
    assert changed["env"] == [], f"importing the package wrote environment variables: {changed['env']}"
    assert changed["rc"] == [], f"importing the package changed matplotlib's rcParams: {changed['rc']}"
    for what in ("threads", "torch_rng", "np_rng", "py_rng"):
        assert changed[what] is False, f"importing the package changed {what}"


# ------------------------------------------------------------------ get_model and the global state


@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    """A fresh cache folder for smoke-profile models (trained here: a few seconds)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MEDADV_CACHE")
    os.environ["MEDADV_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MEDADV_CACHE", None)
    else:
        os.environ["MEDADV_CACHE"] = old


def _global_state():
    return (torch.get_rng_state().clone(), torch.get_num_threads(), repr(np.random.get_state()), random.getstate())


def _same(a, b):
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("phase", ["train", "load"])
def test_get_model_leaves_global_state_alone(smoke_cache, phase):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # not the profile's 1: get_model must give it back
    try:
        torch.manual_seed(12345)
        before = _global_state()
        _, record = training.get_model("retinamnist", profile="smoke", seed=0, device="cpu", progress=False)
        assert record["cached"] is (phase == "load")
        assert _same(before, _global_state()), "get_model changed torch's generator or thread count"
    finally:
        torch.set_num_threads(threads)


def test_scoped_state_is_given_back_when_the_block_raises():
    threads = torch.get_num_threads()
    before = _global_state()
    with pytest.raises(RuntimeError, match="inside"):
        with rng.seeded_global_rng(7), rng.scoped_threads(threads + 1):
            torch.rand(3)
            assert torch.get_num_threads() == threads + 1
            raise RuntimeError("inside")
    assert _same(before, _global_state())


def test_seeded_global_rng_seeds_inside():
    with rng.seeded_global_rng(3):
        a = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(a, torch.rand(4))


# ------------------------------------------------------------------ the context


def test_making_a_context_changes_nothing_and_entering_it_says_what_it_changes(smoke_cache):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        before = _global_state()
        ctx = Experiment("smoke", seed=3)
        assert _same(before, _global_state()) and not ctx.entered
        line = ctx.enter(dpi=50)
        import matplotlib

        assert matplotlib.rcParams["figure.dpi"] == 50
        assert torch.get_num_threads() == ctx.profile.num_threads == 1
        assert line.startswith("this run sets (on purpose): seeds of Python, NumPy and torch = 3")
        assert "torch threads = 1" in line and "figure.dpi = 50" in line
        assert all(os.environ.get(k) for k in numerics.PIN) or not numerics.enabled()
        a = torch.rand(2)
        torch.manual_seed(3)
        assert torch.equal(a, torch.rand(2))
    finally:
        matplotlib.rcParams["figure.dpi"] = 72
        torch.set_num_threads(threads)


def test_the_context_hands_out_each_object_once(smoke_cache):
    ctx = Experiment("smoke")
    m1, r1 = ctx.model("retinamnist")
    m2, r2 = ctx.model("retinamnist")
    assert m1 is m2 and r1 is r2
    assert ctx.data("retinamnist", "test") is ctx.data("retinamnist", "test")
    sets = ctx.attack_sets("retinamnist")
    assert sets is ctx.attack_sets("retinamnist")
    # the draw every experiment makes: attack_and_selection_sets with the profile's sizes and the context's seed
    (xa, ya, ia), (xs, ys, isel) = training.attack_and_selection_sets(
        m1, ctx.data("retinamnist", "test"), ctx.profile.n_attack, ctx.profile.n_select, seed=0)
    assert torch.equal(sets.attack[2], ia) and torch.equal(sets.selection[2], isel)
    assert torch.equal(sets.attack[0], xa) and not set(ia.tolist()) & set(isel.tolist())
    # another context with the same settings gets equal objects (from the caches), not the same ones
    other = Experiment("smoke")
    assert torch.equal(other.attack_sets("retinamnist").attack[2], ia)


def test_the_suite_is_fitted_once_with_the_protocol_settings(monkeypatch):
    calls = []
    monkeypatch.setattr(suite.DetectorSuite, "fit", classmethod(lambda cls, *a, **k: calls.append((a, k)) or object()))
    ctx = Experiment("ci", seed=0)
    monkeypatch.setattr(ctx, "model", lambda dataset, **k: ("MODEL", {}))
    monkeypatch.setattr(ctx, "data", lambda dataset, split: f"{split} set")
    monkeypatch.setattr(ctx, "features", lambda dataset, split: f"{split} features")
    first = ctx.suite("chest_xray")
    assert ctx.suite("chest_xray") is first and len(calls) == 1
    # the context's own model, data and features (the patched methods, so they are live) with the protocol's settings
    assert calls[0] == (("MODEL", "train set", "train features"),
                        dict(eps=experiment.EPS, n_fgsm=experiment.FGSM_PER_ATTACKED * ctx.profile.n_attack, seed=0,
                             cache=True))
    assert ctx.eps == 1 / 255 and ctx.n_fgsm == 2 * ctx.profile.n_attack


def test_setup_makes_each_object_once_in_the_chapters_order(monkeypatch):
    from medadv_tutorial import data
    from medadv_tutorial import features as feats

    calls = []
    monkeypatch.setattr(training, "get_model", lambda ds, profile, seed, backbone, device, progress:
                        calls.append(("model", ds, seed)) or ("MODEL", {"test": {}}))
    monkeypatch.setattr(data, "load_dataset", lambda ds, split, profile: calls.append(("data", ds, split))
                        or list(range(7 if split == "train" else 3)))
    monkeypatch.setattr(feats, "extract_features", lambda model, ds, cache, progress:
                        calls.append(("features", len(ds), cache)) or f"FS{len(ds)}")
    ctx = Experiment("ci")
    out = ctx.setup("chest_xray", features=("train", "test"))
    key = training.checkpoint_key("chest_xray", ctx.profile.backbone, ctx.profile, 0)
    assert calls == [("model", "chest_xray", 0), ("data", "chest_xray", "train"), ("data", "chest_xray", "test"),
                     ("features", 7, True), ("features", 3, True)]
    assert (out.model, out.model_key, out.train, out.test) == ("MODEL", key, list(range(7)), list(range(3)))
    assert out.features == {"train": "FS7", "test": "FS3"}
    ctx.setup("chest_xray", features=("train",))  # a second chapter: nothing made again
    assert len(calls) == 5


# ------------------------------------------------------------------ chapters 4 and 5 copy no experiment constant

COPIED = {
    "1 / 255": "the experiments' budget: ctx.eps",
    "1/255": "the experiments' budget: ctx.eps",
    "2 * profile.n_attack": "the suite's training draw: ctx.n_fgsm",
    "DetectorSuite.fit(": "the fitted suite: ctx.suite",
    "correctly_classified(": "the attack set: ctx.attack_sets",
    "attack_and_selection_sets(": "the attack set: ctx.attack_sets",
    "get_model(": "the models: ctx.model / ctx.setup",
}


def _code_lines(path: Path) -> list[str]:
    """The code of a py:percent chapter without its comments and Markdown cells."""
    import jupytext

    nb = jupytext.read(path)
    lines = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            code = line.split("#", 1)[0]  # good enough here: no '#' inside the chapters' strings of interest
            if code.strip():
                lines.append(code)
    return lines


@pytest.mark.parametrize("chapter", ["04_detection.py", "05_hfc.py"])
def test_chapters_4_and_5_take_their_settings_from_the_context(chapter):
    lines = _code_lines(REPO / "book" / chapter)
    assert any("ctx.attack_sets(" in line for line in lines) and any("ctx.suite(" in line for line in lines)
    found = [(text, why, line.strip()) for line in lines for text, why in COPIED.items() if text in line]
    assert not found, f"{chapter} copies experiment settings; take them from the context: {found}"


def test_the_copy_check_catches_a_copy(tmp_path):
    chapter = tmp_path / "ch.py"
    chapter.write_text("# %%\neps = 1 / 255  # budget\nx = ctx.attack_sets('a')\ns = ctx.suite('a')\n")
    lines = _code_lines(chapter)
    assert any("1 / 255" in line for line in lines)
    ast.parse("\n".join(lines))


def test_model_of_another_backbone_is_its_own_object_and_key(monkeypatch):
    calls = []
    monkeypatch.setattr(training, "get_model", lambda ds, profile, seed, backbone, device, progress:
                        calls.append((ds, seed, backbone)) or (f"MODEL-{backbone}-{seed}", {}))
    ctx = Experiment("ci")
    assert ctx.model("chest_xray")[0] == "MODEL-efficientnet_lite0-0"
    assert ctx.model("chest_xray", backbone="efficientnet_lite2")[0] == "MODEL-efficientnet_lite2-0"
    assert ctx.model("chest_xray", backbone="efficientnet_lite2")[0] == "MODEL-efficientnet_lite2-0"  # made once
    assert calls == [("chest_xray", 0, "efficientnet_lite0"), ("chest_xray", 0, "efficientnet_lite2")]
    assert ctx.model_key("chest_xray", backbone="efficientnet_lite2") != ctx.model_key("chest_xray")
    assert "efficientnet_lite2" in ctx.model_key("chest_xray", backbone="efficientnet_lite2")
    with pytest.raises(ValueError, match=r"backbone must be one of .*'vgg16'"):
        ctx.model("chest_xray", backbone="vgg16")
    with pytest.raises(ValueError, match=r"backbone must be one of .*'vgg16'"):
        Experiment("ci", backbone="vgg16")
