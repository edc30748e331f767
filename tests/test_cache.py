"""medadv_tutorial.cache: content keys with a code version, and results read back bit for bit (cold = warm)."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from medadv_tutorial import attacks, cache
from medadv_tutorial.attacks import PGD, run_attack

torch.set_num_threads(1)


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDADV_RESULT_CACHE", raising=False)
    return tmp_path


def toy():
    torch.manual_seed(0)
    # BatchNorm: its num_batches_tracked buffer is a 0-d integer tensor, which the key must hash too
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2)).eval()


def data(n=12):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 10, 10, generator=g), torch.arange(n) % 2


def entries(root):
    return sorted((root / "results").rglob("*.pt"))


def test_fingerprint_is_the_content():
    m, (x, y) = toy(), data()
    a = PGD(4 / 255, steps=3, seed=0)
    key = cache.fingerprint(attack=a, model=m, x=x, y=y)
    assert key == cache.fingerprint(attack=PGD(4 / 255, steps=3, seed=0), model=toy(), x=x.clone(), y=y.clone())
    x2 = x.clone()
    x2[3, 1, 2, 2] += 1e-7  # one pixel, by one float32 step or so
    m2 = toy()
    with torch.no_grad():
        m2[0].weight[0, 0, 0, 0] += 1e-6
    others = [cache.fingerprint(attack=a, model=m, x=x2, y=y), cache.fingerprint(attack=a, model=m2, x=x, y=y),
              cache.fingerprint(attack=a.replace(eps=5 / 255), model=m, x=x, y=y),
              cache.fingerprint(attack=a.replace(seed=1), model=m, x=x, y=y),
              cache.fingerprint(attack=PGD(4 / 255, steps=3, seed=0, targeted=True), model=m, x=x, y=y),
              cache.fingerprint(attack=a, model=m, x=x.double(), y=y)]
    m3 = toy()
    m3[1].num_batches_tracked += 1  # a 0-d buffer
    others.append(cache.fingerprint(attack=a, model=m3, x=x, y=y))
    assert len({key, *others}) == len(others) + 1


@pytest.mark.parametrize("bad", [lambda y: 1 - y, torch.Generator(), print])
def test_functions_and_generators_have_no_key(bad):
    with pytest.raises(cache.Uncacheable):
        cache.fingerprint(targets=bad)


def test_run_attack_cold_and_warm_are_identical(tmp_cache, monkeypatch):
    m, (x, y) = toy(), data()
    a = PGD(8 / 255, steps=4, seed=0)
    # a spy on the attack kernel: Attack.__call__ runs attacks._iterate once per batch (a global look-up, so the
    # patched name is the one called); the counts prove the spy is live and that a warm run never attacks
    calls = []
    real = attacks._iterate
    monkeypatch.setattr(attacks, "_iterate", lambda *args, **kw: calls.append(len(args[1])) or real(*args, **kw))
    cold = run_attack(a, m, (x, y), batch_size=5, progress=False, cache=True)
    assert not cold.from_cache and len(entries(tmp_cache)) == 1 and cold.seconds > 0
    assert calls == [5, 5, 2]  # live on the cold path: every batch of 12 images by 5 attacked once
    warm = run_attack(a, m, (x, y), batch_size=5, progress=False, cache=True)
    assert len(calls) == 3, "a warm cache must not run the attack"
    assert warm.from_cache and warm.seconds == cold.seconds
    for field in ("x_adv", "x", "y", "pred_clean", "pred_adv"):
        assert torch.equal(getattr(warm, field), getattr(cold, field)), field
    assert warm.x_adv.dtype == cold.x_adv.dtype
    # a different batch size or eps is another entry: computed, not read
    assert not run_attack(a, m, (x, y), batch_size=6, progress=False, cache=True).from_cache
    assert calls[3:] == [6, 6]
    assert not run_attack(a.replace(eps=4 / 255), m, (x, y), batch_size=5, progress=False, cache=True).from_cache
    assert calls[5:] == [5, 5, 2]
    assert len(entries(tmp_cache)) == 3
    # the same images computed without the cache are the cached ones
    assert torch.equal(run_attack(a, m, (x, y), batch_size=5, progress=False).x_adv, cold.x_adv)
    assert len(calls) == 11


def test_corrupt_entries_are_recomputed_with_a_warning(tmp_cache):
    m, (x, y) = toy(), data()
    a = PGD(8 / 255, steps=3, seed=0)
    cold = run_attack(a, m, (x, y), progress=False, cache=True)
    (path,) = entries(tmp_cache)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=f"{path.name}.*does not match its sha256"):
        again = run_attack(a, m, (x, y), progress=False, cache=True)
    assert not again.from_cache and torch.equal(again.x_adv, cold.x_adv)
    path.write_bytes(b"")  # truncated, sha256 beside it no longer matches
    with pytest.warns(RuntimeWarning, match="does not match its sha256"):
        run_attack(a, m, (x, y), progress=False, cache=True)
    path.with_suffix(".sha256").unlink()  # an interrupted write: the entry has no sha256
    with pytest.warns(RuntimeWarning, match="has no sha256"):
        assert not run_attack(a, m, (x, y), progress=False, cache=True).from_cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now a clean hit
        assert run_attack(a, m, (x, y), progress=False, cache=True).from_cache


def test_what_cannot_be_keyed_is_computed(tmp_cache, monkeypatch):
    m, (x, y) = toy(), data()
    a = PGD(8 / 255, steps=2, seed=0, targeted=True)
    res = run_attack(a, m, (x, y), targets=lambda t: 1 - t, progress=False, cache=True)  # a callable target
    assert not res.from_cache and entries(tmp_cache) == []
    monkeypatch.setenv("MEDADV_RESULT_CACHE", "0")
    run_attack(a, m, (x, y), targets=1 - y, progress=False, cache=True)
    assert entries(tmp_cache) == []
    monkeypatch.setenv("MEDADV_RESULT_CACHE", "1")
    run_attack(a, m, (x, y), targets=1 - y, progress=False, cache=True)
    assert len(entries(tmp_cache)) == 1


def test_source_key_follows_the_source_text():
    def f(x):
        return x + 1

    def g(x):
        return x + 2

    assert cache.source_key(f) == cache.source_key(f) and "return x + 1" in cache.source_key(f)
    assert cache.source_key(f) != cache.source_key(g)
    with pytest.raises(cache.Uncacheable, match="source"):
        cache.source_key(len)  # a built-in has no source


def test_cached_object_round_trip_and_corruption(tmp_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"model": nn.Linear(2, 1), "name": "x"}

    first, hit1 = cache.cached_object("things", dict(a=torch.ones(2)), compute, code="gaussian")
    second, hit2 = cache.cached_object("things", dict(a=torch.ones(2)), compute, code="gaussian")
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(first["model"].weight, second["model"].weight) and second["name"] == "x"
    (path,) = entries(tmp_cache)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # corrupt on disk
    with pytest.warns(RuntimeWarning, match="does not match its sha256"):
        third, hit3 = cache.cached_object("things", dict(a=torch.ones(2)), compute, code="gaussian")
    assert not hit3 and len(calls) == 2


# ------------------------------------------------------------------ the code version in every key

EDIT_SCRIPT = r"""
import sys, torch
from torch import nn
from medadv_tutorial import cache
from medadv_tutorial.attacks import PGD, run_attack
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
x, y = torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(1)), torch.arange(6) % 2
res = run_attack(PGD(8 / 255, steps=2, seed=0), m, (x, y), progress=False, cache=True)
print(res.from_cache, cache.code_version("attacks"), cache.__file__)
"""


def test_editing_a_kernel_invalidates_what_it_produced(tmp_path):
    """A copy of the package in a fresh process: an entry is read back until attacks.py (or a module it
    imports) is edited; editing a module the attacks do not import leaves it valid."""
    src = Path(cache.__file__).resolve().parent
    pkg = tmp_path / "pkg" / "medadv_tutorial"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(pkg.parent), MEDADV_CACHE=str(tmp_path / "cache"),
               MEDADV_RESULT_CACHE="1", PYTHONDONTWRITEBYTECODE="1")

    def run():
        out = subprocess.run([sys.executable, "-c", EDIT_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        hit, version, where = out.stdout.split()
        assert Path(where).resolve().parent == pkg  # the copy ran, not the installed package
        return hit == "True", version

    assert "plots" not in cache._package_imports("attacks")  # the premise of the last step
    hit0, v0 = run()
    hit1, v1 = run()
    assert (hit0, hit1) == (False, True) and v0 == v1
    with open(pkg / "attacks.py", "a") as fh:  # edit the kernel
        fh.write("\n\ndef _an_edit():\n    return 1\n")
    hit2, v2 = run()
    assert not hit2 and v2 != v1
    assert run()[0]
    with open(pkg / "checks.py", "a") as fh:  # edit a module the attacks import
        fh.write("\n_AN_EDIT = 1\n")
    assert not run()[0]
    with open(pkg / "plots.py", "a") as fh:  # edit a module they do not import
        fh.write("\n# an edit\n")
    assert run()[0]


def _versions_of_a_copy(tmp_path):
    """A copy of the package and a function that prints ``code_version(m)`` for each of its arguments, read
    by a fresh process from that copy's files."""
    src = Path(cache.__file__).resolve().parent
    pkg = tmp_path / "pkg" / "medadv_tutorial"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(pkg.parent), PYTHONDONTWRITEBYTECODE="1")

    def versions(*modules):
        script = "from medadv_tutorial import cache; print(*(cache.code_version(m) for m in %r))" % (modules,)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    return pkg, versions


def test_editing_a_detector_module_changes_the_suite_code_version(tmp_path):
    """A detector lives in a sub-package module: its edit must reach the suite's code version."""
    pkg, versions = _versions_of_a_copy(tmp_path)
    suite0, attacks0 = versions("suite", "attacks")
    with open(pkg / "detectors" / "gaussians.py", "a") as fh:
        fh.write("\n_AN_EDIT_OF_MGMS_MODULE = 1\n")
    suite1, attacks1 = versions("suite", "attacks")
    assert suite1 != suite0 and attacks1 == attacks0


def test_prose_edits_keep_the_code_version(tmp_path):
    """Docstrings, comments and blank lines are not code: editing them keeps every entry valid."""
    pkg, versions = _versions_of_a_copy(tmp_path)

    def version():
        return versions("attacks")[0]

    v0 = version()
    path = pkg / "checks.py"
    text = path.read_text(encoding="utf-8")
    assert text.startswith('"""')
    edited = text.replace('"""', '"""An edited module docstring.\n\n', 1).replace("\ndef ", "\n# a comment\n\ndef ", 1)
    assert "\n    \"\"\"" in edited  # a function's docstring
    edited = edited.replace('\n    """', '\n    """An edited function docstring. ', 1)
    path.write_text(edited, encoding="utf-8")
    assert version() == v0
    path.write_text(edited + "\n_AN_EDIT = 1\n", encoding="utf-8")
    assert version() != v0


def test_code_version_covers_the_import_closure():
    closure = cache._package_imports("attacks")
    assert "checks" in closure and "attacks" not in closure
    assert cache.code_version("attacks") == cache.code_version("attacks")
    assert cache.code_version("attacks") != cache.code_version("plots")
    assert cache.code_version("attacks", "hfc") == cache.code_version("hfc", "attacks")
    for bad in ((), ("medadv_tutorial.attacks",), ("",), (3,)):
        with pytest.raises(ValueError, match="names below medadv_tutorial"):
            cache.code_version(*bad)
    with pytest.raises(ValueError, match="not a module"):
        cache._package_imports("no_such_module")
    # a sub-package: the suite's closure holds every detector module, and the parent __init__ of each
    suite_closure = cache._package_imports("suite")
    assert {"detectors", "attacks", "features"} <= suite_closure
    assert {"detectors.base", "detectors.gaussians", "detectors.ensembles"} <= cache._package_imports("detectors")
    assert {"checks", "metrics"} <= cache._package_imports("detectors.base")


def test_every_kind_of_entry_names_its_code(tmp_cache):
    # the same inputs under another module's code are another entry
    k1 = cache.store_key("things", dict(a=1), "attacks")
    assert k1 == cache.store_key("things", dict(a=1), ("attacks",))
    assert k1 != cache.store_key("things", dict(a=1), "hfc") and k1 != cache.store_key("other", dict(a=1), "attacks")


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from medadv_tutorial.io import atomic_write, atomic_write_text

    path = tmp_path / "sub" / "table.md"
    assert atomic_write_text(path, "first ü\n") == path and path.read_text(encoding="utf-8") == "first ü\n"

    def dies(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, dies)
    assert path.read_text(encoding="utf-8") == "first ü\n" and sorted(p.name for p in path.parent.iterdir()) == ["table.md"]
