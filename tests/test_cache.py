"""medadv_tutorial.cache: content keys, and attack results read back bit for bit (cold = warm)."""

import warnings

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
    cold = run_attack(a, m, (x, y), batch_size=5, progress=False, cache=True)
    assert not cold.from_cache and len(entries(tmp_cache)) == 1 and cold.seconds > 0

    def no_attack(*args, **kwargs):
        raise AssertionError("a warm cache must not run the attack")

    with monkeypatch.context() as patch:
        patch.setattr(attacks, "iterative_attack", no_attack)
        warm = run_attack(a, m, (x, y), batch_size=5, progress=False, cache=True)
    assert warm.from_cache and warm.seconds == cold.seconds
    for field in ("x_adv", "x", "y", "pred_clean", "pred_adv"):
        assert torch.equal(getattr(warm, field), getattr(cold, field)), field
    assert warm.x_adv.dtype == cold.x_adv.dtype
    # a different batch size or eps is another entry: computed, not read
    assert not run_attack(a, m, (x, y), batch_size=6, progress=False, cache=True).from_cache
    assert not run_attack(a.replace(eps=4 / 255), m, (x, y), batch_size=5, progress=False, cache=True).from_cache
    assert len(entries(tmp_cache)) == 3
    # the same images computed without the cache are the cached ones
    assert torch.equal(run_attack(a, m, (x, y), batch_size=5, progress=False).x_adv, cold.x_adv)


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

    first, hit1 = cache.cached_object("things", dict(a=torch.ones(2)), compute)
    second, hit2 = cache.cached_object("things", dict(a=torch.ones(2)), compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(first["model"].weight, second["model"].weight) and second["name"] == "x"
    (path,) = entries(tmp_cache)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # corrupt on disk
    with pytest.warns(RuntimeWarning, match="does not match its sha256"):
        third, hit3 = cache.cached_object("things", dict(a=torch.ones(2)), compute)
    assert not hit3 and len(calls) == 2
