"""Known answers and properties of medadv_tutorial.metrics that the mutation run showed untested.

Each test pins a documented rule -- a tie at a threshold, a boundary of a range, the branch of
an input shape, the bookkeeping of an interval -- so that a change of the maths fails a test
(``python benchmarks/mutation.py metrics``).
"""

import math
import warnings

import numpy as np
import pytest
import torch

from medadv_tutorial import metrics


# ----------------------------------------------------------------------------- helpers

class _DrawRecorder:
    """A numpy Generator that records the shape of every ``integers`` draw."""

    def __init__(self, rng, shapes):
        self._rng, self._shapes = rng, shapes

    def integers(self, *args, size=None, **kwargs):
        self._shapes.append(tuple(np.atleast_1d(size)))
        return self._rng.integers(*args, size=size, **kwargs)

    def __getattr__(self, name):
        return getattr(self._rng, name)


class _Numpy:
    """numpy, as the metrics module sees it, with ``random.default_rng`` replaced."""

    def __init__(self, default_rng):
        self.random = type("random", (), {"default_rng": staticmethod(default_rng)})

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def spy(monkeypatch):
    """Records the replicates each interval is built from and the shapes of the resample draws."""
    record = {"replicates": [], "draws": []}
    real_interval, real_rng = metrics._percentile_interval, np.random.default_rng

    def interval(estimate, replicates, level, n_boot):
        record["replicates"].append(np.asarray(replicates))
        return real_interval(estimate, replicates, level, n_boot)

    monkeypatch.setattr(metrics, "_percentile_interval", interval)
    monkeypatch.setattr(metrics, "np", _Numpy(lambda seed=None: _DrawRecorder(real_rng(seed), record["draws"])))
    return record


_RNG = np.random.default_rng(3)
_C, _A = _RNG.normal(size=11), _RNG.normal(1.0, 1.0, size=7)
_V1, _V2 = _RNG.normal(size=11), _RNG.normal(size=7)

# name -> (call with n_boot, the number of values a replicate resamples)
_BOOTSTRAPS = {
    "auroc_interval": (lambda n_boot: metrics.auroc_interval(_C, _A, n_boot=n_boot), len(_C) + len(_A)),
    "tpr_interval": (lambda n_boot: metrics.tpr_interval(_C, _A, 0.8, n_boot=n_boot), len(_C) + len(_A)),
    "mean_interval": (lambda n_boot: metrics.mean_interval(_V1, n_boot=n_boot), len(_V1)),
    "difference_interval": (lambda n_boot: metrics.difference_interval(_V1, _V2, paired=False, n_boot=n_boot),
                            len(_V1) + len(_V2)),
    # four lengths such that dropping any one of them from the sum halves it at least
    "auroc_difference_interval": (lambda n_boot: metrics.auroc_difference_interval(
        (_C[:1], _A[:5]), (_C[:5], _V2[:5]), paired=False, n_boot=n_boot), 16),
}


# ----------------------------------------------------------------------------- chunks and bookkeeping

@pytest.mark.parametrize("name", list(_BOOTSTRAPS))
@pytest.mark.parametrize("per_chunk", [1, 3])
def test_bootstrap_chunks_hold_at_most_the_budget_and_add_up_to_n_boot(name, per_chunk, spy, monkeypatch):
    call, values = _BOOTSTRAPS[name]
    monkeypatch.setattr(metrics, "_BOOT_CHUNK", per_chunk * values)  # room for exactly per_chunk replicates
    iv = call(7)  # 7 replicates: chunks of 3, 3 and 1 (or seven of 1)
    assert iv.n_boot == 7 and iv.level == 0.95
    assert len(spy["replicates"][-1]) == 7  # one replicate each, no more, no fewer
    assert spy["draws"] and max(shape[0] for shape in spy["draws"]) <= per_chunk  # the memory bound
    assert max(shape[0] for shape in spy["draws"]) == per_chunk  # ... and the chunks are filled


@pytest.mark.parametrize("name, call, default", [
    ("auroc_interval", lambda **k: metrics.auroc_interval(_C, _A, **k), 2000),
    ("tpr_interval", lambda **k: metrics.tpr_interval(_C, _A, **k), 2000),
    ("f1_interval", lambda **k: metrics.f1_interval(_C, _A, 0.5, **k), 2000),
    ("mean_interval", lambda **k: metrics.mean_interval(_V1, **k), 2000),
    ("difference_interval", lambda **k: metrics.difference_interval(_V1, _V2, paired=False, **k), 2000),
    ("auroc_difference_interval", lambda **k: metrics.auroc_difference_interval((_C, _A), (_C + 1, _A), paired=True,
                                                                                  **k), 2000),
    ("followup_auroc_interval", lambda **k: metrics.followup_auroc_interval(
        np.linspace(0, 1, 12), np.arange(12) % 2, np.ones(12, bool), **k), 1000),
])
def test_documented_defaults_and_what_the_interval_records(name, call, default, spy):
    iv = call()
    assert iv.n_boot == default and iv.level == 0.95  # n_boot = 2000 (1000 for the follow-up AUROC)
    assert len(spy["replicates"][-1]) == default or name == "followup_auroc_interval"
    again = call(n_boot=50, level=0.8, seed=5)
    assert (again.n_boot, again.level) == (50, 0.8)
    assert again == call(n_boot=50, level=0.8, seed=5)  # seeded: reproducible
    # the default seed is 0: the same replicates as seed=0, not those of seed=1
    replicates = [spy["replicates"][-1]]
    for seed in (None, 0, 1):
        call(n_boot=50, **({} if seed is None else {"seed": seed}))
        replicates.append(spy["replicates"][-1])
    assert np.array_equal(replicates[1], replicates[2]) and not np.array_equal(replicates[1], replicates[3])


def test_a_resample_can_draw_every_image():
    # [1, 0]: a resample draws image 0 twice with probability 1/4, so among 200 replicates some mean is 1
    iv = metrics.mean_interval([1.0, 0.0], n_boot=200, level=0.99)
    assert (iv.low, iv.high) == (0.0, 1.0)
    iv = metrics.auroc_interval([0.0, 1.0], [0.5, 0.5], n_boot=200, level=0.99)
    assert (iv.low, iv.high) == (0.0, 1.0)  # both clean resamples [0, 0] and [1, 1] occur


# ----------------------------------------------------------------------------- ties at a threshold

def test_f1_ties_at_the_threshold_are_not_flagged():
    # a clean score equal to the threshold is not a false positive; an adversarial one is not detected
    assert metrics.f1_at_threshold([0.5, 0.2], [0.9], 0.5) == 1.0
    assert metrics.f1_at_threshold([0.1], [0.5, 0.9], 0.5) == pytest.approx(2 / 3)
    # the interval resamples the same flags: every replicate equals the estimate here
    assert tuple(metrics.f1_interval([0.5, 0.1], [0.9, 0.9], 0.5, n_boot=50)) == (1.0, 1.0, 1.0)
    assert tuple(metrics.f1_interval([0.1], [0.5, 0.5], 0.5, n_boot=50)) == (0.0, 0.0, 0.0)


def test_f1_interval_resamples_the_false_positives():
    # half the clean images flagged, every adversarial one detected: the F1 of a resample varies with
    # the number of false positives it draws
    iv = metrics.f1_interval([0.9, 0.1] * 5, [0.9] * 10, 0.5, n_boot=200)
    assert iv.estimate == pytest.approx(20 / 25)
    assert iv.low < iv.estimate < iv.high


def test_f1_at_an_infinite_threshold_flags_nothing():
    assert metrics.f1_at_threshold([0.1], [0.9], math.inf) == 0.0
    assert tuple(metrics.f1_interval([0.1], [0.9], math.inf, n_boot=20)) == (0.0, 0.0, 0.0)
    assert metrics.f1_at_threshold([0.1], [0.9], -math.inf) == pytest.approx(2 / 3)


def test_tpr_interval_ties_at_the_threshold_are_not_detected():
    iv = metrics.tpr_interval([0.5] * 10, [0.5] * 10, 0.9, n_boot=50)
    assert tuple(iv) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("tnr", [0.05, 0.5 + 1e-11, 0.42])
def test_tpr_interval_replicates_use_the_rank_of_quantile_threshold(tnr, spy):
    # tnr * n just above an integer (rounded to 9 decimals first) and tnr * n < 1 (the smallest score)
    c, a = np.arange(10.0), np.arange(10.0) + 0.5
    iv = metrics.tpr_interval(c, a, tnr, n_boot=100, seed=4)
    assert iv.estimate == metrics.tpr_at_tnr(c, a, tnr)
    r = np.random.default_rng(4)
    ic, ia = r.integers(0, len(c), size=(100, len(c))), r.integers(0, len(a), size=(100, len(a)))
    expected = [metrics.tpr_at_tnr(c[ic[b]], a[ia[b]], tnr) for b in range(100)]
    np.testing.assert_array_equal(spy["replicates"][-1], expected)


def test_quantile_threshold_rounds_to_nine_decimals_only():
    s = np.arange(1.0, 11.0)
    assert metrics.quantile_threshold(s, 0.5 + 1e-11) == 5.0  # 5.0000000001 -> 5 (9 decimals)
    assert metrics.quantile_threshold(s, 0.5 + 1e-8) == 6.0  # 5.0000001 stays above 5 -> the 6th score
    assert metrics.quantile_threshold(s, 0.91) == 10.0  # ceil(9.1) = 10, not round(9.1) = 9
    assert metrics.quantile_threshold(s, 0.01) == 1.0  # ceil(0.1) = 1


# ----------------------------------------------------------------------------- boundaries of the arguments

def test_tnr_must_lie_in_zero_one():
    for f in (lambda t: metrics.tpr_at_tnr([0.0, 1.0], [2.0], t),
              lambda t: metrics.tpr_interval([0.0, 1.0], [2.0], t, n_boot=5).estimate):
        assert f(1.0) == 1.0  # tnr = 1 is allowed: the largest clean score
        for bad in (0.0, -0.1, 1.5):
            with pytest.raises(ValueError, match=r"tnr must be"):
                f(bad)


def test_interval_excludes_and_side_at_its_bounds():
    iv = metrics.Interval(0.5, 0.2, 0.8)
    assert not iv.excludes(0.8) and not iv.excludes(0.2) and iv.excludes(0.8000001)
    assert iv.side(0.2) == 0 and iv.side(0.8) == 0 and iv.side(0.19) == 1 and iv.side(0.81) == -1


def test_an_undefined_interval_prints_lowercase_nan():
    assert f"{metrics.Interval(math.nan, math.nan, math.nan)}" == "nan [nan, nan]"
    assert str(metrics.Interval(0.5, 0.25, 0.75)) == "0.50 [0.25, 0.75]"


# ----------------------------------------------------------------------------- infinite scores

def test_infinite_scores_rank_beyond_every_finite_score():
    # -inf below a finite score smaller than -1, +inf above one larger than +1
    assert metrics.auroc([-math.inf], [-5.0]) == 1.0
    assert metrics.auroc([5.0], [math.inf]) == 1.0
    assert metrics.auroc([-math.inf], [math.inf]) == 1.0  # no finite score at all
    assert metrics.auroc_interval([-math.inf], [math.inf], n_boot=5).estimate == 1.0


def test_roc_curve_maps_infinities_one_beyond_the_finite_range():
    _, _, thr = metrics.roc_curve([0.0, math.inf], [1.0])
    np.testing.assert_array_equal(thr, [math.inf, 2.0, 1.0, 0.0])  # +inf -> max + 1
    _, _, thr = metrics.roc_curve([-math.inf, 3.0], [4.0])
    assert thr[-1] == 2.0  # -inf -> min - 1
    _, _, thr = metrics.roc_curve([-math.inf], [math.inf])
    np.testing.assert_array_equal(thr, [math.inf, 1.0, -1.0])  # nothing finite: +-1


# ----------------------------------------------------------------------------- tensors of any dtype

def test_scores_and_probabilities_in_half_precision_and_with_gradients():
    c = torch.tensor([0.1, 0.4], dtype=torch.bfloat16)
    a = torch.tensor([0.3, 0.9], dtype=torch.float16, requires_grad=True)
    assert metrics.auroc(c, a) == 0.75
    p = torch.tensor([0.2, 0.8, 0.6, 0.3], dtype=torch.bfloat16)
    y, m = torch.tensor([0, 1, 1, 0]), torch.ones(4, dtype=torch.bool)
    assert metrics.followup_auroc(p, y, m) == 1.0
    probs = torch.tensor([0.2, 0.8, 0.6, 0.3, 0.1, 0.7], requires_grad=True)  # a softmax output, say
    iv = metrics.followup_auroc_interval(probs, torch.tensor([0, 1, 1, 0, 0, 1]), torch.ones(6, dtype=torch.bool),
                                         n_boot=20)
    assert iv.estimate == 1.0


# ----------------------------------------------------------------------------- follow-up AUROC

def test_followup_auroc_two_columns_use_column_one_only():
    rng = np.random.default_rng(0)
    p1 = rng.random(40)
    y = (rng.random(40) < p1).astype(np.int64)
    m = rng.random(40) < 0.8
    junk = rng.random(40)  # column 0 is not 1 - p1: scores, not probabilities
    assert metrics.followup_auroc(np.c_[junk, p1], y, m) == metrics.followup_auroc(p1, y, m)
    assert metrics.followup_auroc(np.c_[junk, p1], y, m) != pytest.approx(
        0.5 * (metrics.auroc(p1[m & (y == 0)], p1[m & (y == 1)]) + metrics.auroc(junk[m & (y == 1)],
                                                                                 junk[m & (y == 0)])))


def test_followup_auroc_label_range_boundaries():
    p = np.array([0.2, 0.8, 0.6])
    m = np.ones(3, bool)
    assert metrics.followup_auroc(p, [0, 1, 1], m) == 1.0  # the range's ends: 0 and C - 1 = 1
    for labels in ([0, 1, 2], [-1, 1, 1]):  # 2 = C for a binary task; -1 below 0
        with pytest.raises(ValueError, match=r"labels must be classes in \[0, 2\)"):
            metrics.followup_auroc(p, labels, m)
    probs3 = np.eye(3)[[0, 1, 2]] * 0.8 + 0.1
    assert metrics.followup_auroc(probs3, [0, 1, 2], m) == 1.0
    with pytest.raises(ValueError, match=r"labels must be classes in \[0, 3\)"):
        metrics.followup_auroc(probs3, [0, 1, 3], m)


def test_followup_auroc_refuses_float_labels_and_three_dimensional_probabilities():
    m = np.ones(2, bool)
    with pytest.raises(ValueError, match="labels must be an integer array of shape"):
        metrics.followup_auroc([0.2, 0.8], np.array([0.0, 1.0]), m)
    with pytest.raises(ValueError, match=r"classifier_probs must have shape \(N,\) or \(N, C\)"):
        metrics.followup_auroc(np.zeros((2, 2, 2)), [0, 1], m)


def test_followup_auroc_of_one_image_is_undefined_not_an_error():
    assert math.isnan(metrics.followup_auroc([0.7], [1], [True]))


def test_followup_auroc_without_a_qualifying_class_is_nan_without_a_warning():
    probs3 = np.full((4, 3), 1 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(metrics.followup_auroc(probs3, [0, 0, 0, 0], np.ones(4, bool)))  # one class only
        assert math.isnan(metrics.followup_auroc(probs3, [0, 1, 2, 0], np.zeros(4, bool)))  # nothing accepted


def test_followup_auroc_interval_needs_half_of_the_replicates(monkeypatch):
    # the estimate first, then one value per replicate (nan = undefined)
    def stub(values):
        it = iter(values)
        return lambda *args: next(it)

    data = (np.linspace(0, 1, 6), np.arange(6) % 2, np.ones(6, bool))
    nan = math.nan
    monkeypatch.setattr(metrics, "followup_auroc", stub([0.9] + [nan, 0.7] * 3))
    iv = metrics.followup_auroc_interval(*data, n_boot=6)  # exactly half defined: an interval
    assert (iv.estimate, iv.low, iv.high) == (0.9, 0.7, 0.7)
    monkeypatch.setattr(metrics, "followup_auroc", stub([0.9] + [nan, nan, 0.7] * 2))
    iv = metrics.followup_auroc_interval(*data, n_boot=6, level=0.9)  # a third defined: NaN bounds
    assert iv.estimate == 0.9 and math.isnan(iv.low) and math.isnan(iv.high)
    assert (iv.n_boot, iv.level) == (6, 0.9)


# ----------------------------------------------------------------------------- messages that name the argument

def test_auroc_difference_interval_messages_name_the_pair():
    with pytest.raises(ValueError, match=r"first\[0\] \(clean scores\) is empty"):
        metrics.auroc_difference_interval(([], [1.0]), ([0.0], [1.0]), paired=False)
    with pytest.raises(ValueError, match=r"second\[1\] \(adversarial scores\) contains 1 NaN"):
        metrics.auroc_difference_interval(([0.0], [1.0]), ([0.0], [math.nan]), paired=False)
    for bad in ("ab", 3, ([0.0],)):
        with pytest.raises(TypeError, match=r"second must be a \(scores_clean, scores_adv\) pair"):
            metrics.auroc_difference_interval(([0.0], [1.0]), bad, paired=False)
