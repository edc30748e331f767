"""Detection metrics on tiny hand-made examples with known answers."""

import math

import numpy as np
import pytest
import torch

from medadv_tutorial import metrics


def test_auroc_perfect_identical_and_reversed():
    assert metrics.auroc([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0
    assert metrics.auroc([0.5, 0.5, 0.5], [0.5, 0.5]) == 0.5
    assert metrics.auroc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0])) == 0.0
    # one of the 2 x 2 pairs is mis-ordered: 3/4
    assert metrics.auroc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == 0.75


def test_auroc_accepts_infinite_scores_but_not_nan():
    assert metrics.auroc([0.0, 1.0], [math.inf, 2.0]) == 1.0
    assert metrics.auroc([-math.inf, 1.0], [math.inf, 0.5]) == 0.75
    with pytest.raises(ValueError, match="scores_adv contains 1 NaN"):
        metrics.auroc([0.0, 1.0], [float("nan"), 2.0])


def test_score_validation_names_the_argument():
    with pytest.raises(ValueError, match=r"scores_clean must be a 1-D .*\(n,\)"):
        metrics.auroc(np.zeros((2, 2)), [1.0])
    with pytest.raises(ValueError, match="scores_adv is empty"):
        metrics.tpr_at_tnr([1.0, 2.0], [])


def test_quantile_threshold_rule():
    s = np.arange(1.0, 11.0)  # 1..10
    assert metrics.quantile_threshold(s, 0.9) == 9.0  # 0.9 * 10 counts as 9, not 10
    assert metrics.quantile_threshold(s, 0.95) == 10.0
    assert metrics.quantile_threshold(s, 1.0) == 10.0
    assert metrics.quantile_threshold(s, 0.01) == 1.0
    assert metrics.quantile_threshold(np.arange(100.0), 0.95) == 94.0  # 95 of 100 are <= 94
    with pytest.raises(ValueError, match="quantile"):
        metrics.quantile_threshold(s, 0.0)


def test_tpr_at_tnr_known_value_and_ties():
    clean = np.arange(1.0, 11.0)  # threshold at 90% TNR: 9
    assert metrics.tpr_at_tnr(clean, [5.5, 9.5, 10.5, 11.0, 12.0], tnr=0.90) == pytest.approx(0.8)
    # an adversarial score tied with the threshold is not detected
    assert metrics.tpr_at_tnr(clean, [9.0, 9.0, 10.0, 3.0], tnr=0.90) == pytest.approx(0.25)
    assert metrics.tpr_at_tnr(clean, [100.0], tnr=1.0) == 1.0


def test_f1_at_threshold_known_value():
    # TP = 2 (0.8, 0.9), FN = 1 (0.5), FP = 2 (0.6, 0.7): F1 = 4 / 7
    assert metrics.f1_at_threshold([0.1, 0.2, 0.6, 0.7], [0.5, 0.8, 0.9], 0.55) == pytest.approx(4 / 7)
    assert metrics.f1_at_threshold([0.1, 0.2], [0.8, 0.9], 0.5) == 1.0
    assert metrics.f1_at_threshold([0.1, 0.2], [0.8, 0.9], 0.8) == pytest.approx(2 / 3)  # strict >: 0.8 missed
    assert metrics.f1_at_threshold([0.1], [0.2], 1.0) == 0.0


def test_roc_curve_passthrough():
    fpr, tpr, thr = metrics.roc_curve([0.1, 0.4], [0.35, 0.8])
    assert fpr.shape == tpr.shape == thr.shape
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc([0.1, 0.4], [0.35, 0.8]))


def test_followup_auroc_binary():
    probs = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0, 1])  # the last image: a successful attack on a positive
    everything = np.ones(5, dtype=bool)
    assert metrics.followup_auroc(probs, labels, everything) == pytest.approx(4 / 6)
    rejected_attack = np.array([True, True, True, True, False])
    assert metrics.followup_auroc(probs, labels, rejected_attack) == 1.0
    two_column = torch.tensor(np.stack([1 - probs, probs], 1))
    assert metrics.followup_auroc(two_column, torch.tensor(labels), torch.tensor(rejected_attack)) == 1.0


def test_followup_auroc_one_class_missing_is_nan():
    probs = np.array([0.9, 0.8, 0.3])
    labels = np.array([1, 1, 0])
    assert math.isnan(metrics.followup_auroc(probs, labels, np.array([True, True, False])))
    assert math.isnan(metrics.followup_auroc(probs, labels, np.zeros(3, dtype=bool)))


def test_followup_auroc_multiclass_matches_sklearn_and_skips_missing_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + 2.0 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    every = np.ones(60, dtype=bool)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert metrics.followup_auroc(probs, labels, every) == pytest.approx(expected)
    no_class_2 = labels != 2
    expected = np.mean([roc_auc_score(labels[no_class_2] == c, probs[no_class_2, c]) for c in (0, 1)])
    assert metrics.followup_auroc(probs, labels, no_class_2) == pytest.approx(expected)


def test_followup_auroc_validates_mask():
    with pytest.raises(ValueError, match="accepted_mask must be a bool"):
        metrics.followup_auroc(np.array([0.1, 0.9]), np.array([0, 1]), np.array([1, 1]))


# ----------------------------------------------------------------------- bootstrap intervals


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95% for the default z)."""
    p, d = k / n, 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return centre - half, centre + half


def test_interval_formats_as_a_table_cell_and_unpacks():
    iv = metrics.Interval(0.93, 0.89, 0.96)
    assert str(iv) == f"{iv}" == "0.93 [0.89, 0.96]"
    assert f"{iv:.1%}" == "93.0% [89.0%, 96.0%]"
    estimate, low, high = iv
    assert (estimate, low, high) == (0.93, 0.89, 0.96)
    assert iv.half_width == pytest.approx(0.035)
    from medadv_tutorial.report import interval_cell, markdown_table

    assert interval_cell(iv) == "0.93 [0.89, 0.96]"
    assert interval_cell((0.9312, 0.8871, 0.9649), digits=3) == "0.931 [0.887, 0.965]"
    assert "| PGD | 0.93 [0.89, 0.96] |" in markdown_table([["PGD", interval_cell(iv)]], ["attack", "success"])
    with pytest.raises(TypeError, match="interval must be a metrics.Interval or an"):
        interval_cell(0.93)


@pytest.mark.parametrize("n, k", [(10_000, 3_000), (50, 50), (50, 0), (7, 3), (1, 1)])
def test_rate_interval_is_the_wilson_score_interval(n, k):
    iv = metrics.rate_interval(torch.arange(n) < k)
    assert iv.estimate == k / n and (iv.level, iv.n_boot, iv.method) == (0.95, 0, "Wilson score")
    lo, hi = wilson(k, n)  # the closed form, by hand
    assert (iv.low, iv.high) == pytest.approx((lo, hi), abs=1e-12)


def test_rate_interval_does_not_collapse_at_zero_or_one():
    # 50 of 50: the interval reaches well below 1 (Wilson: about 0.929), where a percentile
    # bootstrap would give [1, 1]; and it reaches 1, the estimate.
    all_of = metrics.rate_interval(np.ones(50, dtype=bool))
    assert all_of.high == pytest.approx(1.0) and 0.92 < all_of.low < 0.94
    none_of = metrics.rate_interval(np.zeros(50, dtype=bool))
    assert none_of.low == pytest.approx(0.0, abs=1e-12) and 0.06 < none_of.high < 0.08
    assert none_of.low == pytest.approx(1 - all_of.high, abs=1e-12) and none_of.high == pytest.approx(1 - all_of.low)


def test_rate_interval_among_mask_lists_and_degenerate_cases():
    succ = np.array([True, True, False, True, False, False])
    attacked = np.array([1, 1, 1, 1, 0, 0])
    assert metrics.rate_interval(succ, attacked).estimate == 0.75
    assert metrics.rate_interval([1, 1, 0, 1]).estimate == 0.75
    assert metrics.rate_interval(np.ones(30, dtype=bool)).estimate == 1.0
    assert metrics.rate_interval(torch.zeros(30)).estimate == 0.0
    narrow = metrics.rate_interval(np.arange(100) < 50, level=0.5)
    wide = metrics.rate_interval(np.arange(100) < 50, level=0.99)
    assert wide.low < narrow.low < 0.5 < narrow.high < wide.high


def test_rate_interval_covers_the_true_rate_95_percent_of_the_time():
    rng, p, n, reps = np.random.default_rng(1), 0.8, 200, 400
    hits = sum(lo <= p <= hi for lo, hi in
               (tuple(metrics.rate_interval(rng.random(n) < p))[1:] for _ in range(reps)))
    assert 0.91 <= hits / reps <= 0.98  # nominal 0.95; 400 runs: standard error 0.011


def test_auroc_interval_estimate_and_replicates_match_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    c, a = np.round(rng.normal(size=40), 1), np.round(rng.normal(0.8, 1, size=30), 1)  # with ties
    iv = metrics.auroc_interval(c, a, n_boot=500)
    assert iv.estimate == metrics.auroc(c, a)
    assert iv.low < iv.estimate < iv.high
    # each replicate is the AUROC of the resampled images (ties count one half)
    w_c = metrics._resample_counts(rng, len(c), 5)
    w_a = metrics._resample_counts(rng, len(a), 5)
    assert (w_c.sum(1) == len(c)).all() and (w_a.sum(1) == len(a)).all()  # stratified: sizes kept
    reps = metrics._weighted_auroc(c, a, w_c, w_a)
    for b in range(5):
        cc, aa = np.repeat(c, w_c[b]), np.repeat(a, w_a[b])
        y = np.r_[np.zeros(len(cc)), np.ones(len(aa))]
        assert reps[b] == pytest.approx(roc_auc_score(y, np.r_[cc, aa]), abs=1e-12)


def test_auroc_interval_degenerate_and_infinite_scores():
    assert tuple(metrics.auroc_interval([0.1, 0.2, 0.3], [0.7, 0.8])) == (1.0, 1.0, 1.0)
    assert tuple(metrics.auroc_interval([0.5] * 4, [0.5] * 3)) == (0.5, 0.5, 0.5)
    iv = metrics.auroc_interval(torch.tensor([-math.inf, 1.0, 2.0]), torch.tensor([math.inf, 0.5]))
    assert iv.estimate == metrics.auroc([-math.inf, 1.0, 2.0], [math.inf, 0.5])


def test_auroc_interval_covers_the_analytic_auroc_of_two_gaussians():
    # Clean ~ N(0, 1), adversarial ~ N(d, 1): AUROC = Phi(d / sqrt 2) = 0.760 for d = 1.
    from scipy.stats import norm

    d, n, reps = 1.0, 60, 300
    truth = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(123)
    hits = 0
    for r in range(reps):
        iv = metrics.auroc_interval(rng.normal(size=n), rng.normal(d, 1, size=n), n_boot=1000, seed=r)
        hits += iv.low <= truth <= iv.high
    assert 0.91 <= hits / reps <= 0.98  # nominal 0.95 (measured 0.953); 300 runs: standard error 0.013


def test_auroc_interval_is_fast_and_deterministic():
    import time

    rng = np.random.default_rng(0)
    c, a = rng.normal(size=200), rng.normal(1.0, 1.0, size=200)
    first = metrics.auroc_interval(c, a)
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        again = metrics.auroc_interval(c, a)
        seconds.append(time.perf_counter() - t0)
    assert min(seconds) < 1.0, f"2 x 200 images, 2000 replicates took {min(seconds):.2f} s"
    assert again == first  # same seed: identical interval
    assert metrics.auroc_interval(c, a, seed=1) != first
    assert metrics.rate_interval(c > 0) == metrics.rate_interval(c > 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: metrics.rate_interval([]), ValueError, r"successes is empty"),
    (lambda: metrics.rate_interval([True, False], [False, False]), ValueError, r"successes is empty after the among"),
    (lambda: metrics.rate_interval([True, False], [True]), ValueError, r"among must have one entry per image.*2.*1"),
    (lambda: metrics.rate_interval([0, 2, 1]), ValueError, r"successes must hold bool or 0/1.*1 other value"),
    (lambda: metrics.rate_interval(np.zeros((2, 2))), ValueError, r"successes must be a 1-D array"),
    (lambda: metrics.rate_interval(["a"]), TypeError, r"successes must hold bool or 0/1"),
    (lambda: metrics.difference_interval([True], [True], paired=True, n_boot=0), ValueError,
     r"n_boot \(bootstrap replicates\) must be an int >= 1"),
    (lambda: metrics.difference_interval([True], [True], paired=True, n_boot=10.0), TypeError,
     r"n_boot .* must be an int"),
    (lambda: metrics.rate_interval([True], level=0.0), ValueError, r"level must be > 0"),
    (lambda: metrics.rate_interval([True], level=1.0), ValueError, r"level must be < 1"),
    (lambda: metrics.rate_interval([True], level=95), ValueError, r"level must be <= 1"),
    (lambda: metrics.difference_interval([True], [True], paired=True, seed=-1), ValueError, r"seed must be an int"),
    (lambda: metrics.auroc_interval([], [0.3]), ValueError, r"scores_clean is empty"),
    (lambda: metrics.auroc_interval([0.1], []), ValueError, r"scores_adv is empty"),
    (lambda: metrics.auroc_interval([0.1], [float("nan")]), ValueError, r"scores_adv contains 1 NaN"),
    (lambda: metrics.auroc_interval([0.1], [0.3], n_boot=0), ValueError, r"n_boot"),
    (lambda: metrics.auroc_interval([0.1], [0.3], level=-0.5), ValueError, r"level must be > 0"),
    (lambda: metrics.auroc_interval(np.zeros((3, 1)), [0.3]), ValueError, r"scores_clean must be a 1-D"),
])
def test_interval_bad_inputs_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_auroc_interval_in_chunks_of_replicates(monkeypatch):
    rng = np.random.default_rng(3)
    c, a = rng.normal(size=30), rng.normal(1.0, 1.0, size=20)
    whole = metrics.auroc_interval(c, a, n_boot=999)
    monkeypatch.setattr(metrics, "_BOOT_CHUNK", 120)  # 2 replicates per chunk, the last one alone
    chunked = metrics.auroc_interval(c, a, n_boot=999)
    assert chunked.n_boot == 999 and chunked.estimate == whole.estimate
    assert chunked.low == pytest.approx(whole.low, abs=0.03) and chunked.high == pytest.approx(whole.high, abs=0.03)
    assert chunked == metrics.auroc_interval(c, a, n_boot=999)  # deterministic in chunks too


# ------------------------------------------------- TPR, F1 and follow-up AUROC intervals


def test_tpr_interval_replicates_are_tpr_at_tnr_of_the_resampled_images():
    rng = np.random.default_rng(0)
    c, a = rng.normal(size=50), rng.normal(1.5, 1, size=40)
    iv = metrics.tpr_interval(c, a, 0.9, n_boot=200, seed=7)
    assert iv.estimate == metrics.tpr_at_tnr(c, a, 0.9)
    # the same draws, one replicate at a time through tpr_at_tnr (clean indices first, then adversarial)
    r = np.random.default_rng(7)
    ic, ia = r.integers(0, len(c), size=(200, len(c))), r.integers(0, len(a), size=(200, len(a)))
    reps = [metrics.tpr_at_tnr(c[ic[b]], a[ia[b]], 0.9) for b in range(200)]
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])), abs=1e-12)
    assert iv.low < iv.estimate < iv.high


def test_tpr_interval_covers_the_analytic_tpr_of_two_gaussians():
    # Clean ~ N(0, 1), adversarial ~ N(2, 1): at 90% TNR the threshold is z = 1.2816, TPR = Phi(2 - z) = 0.764.
    from scipy.stats import norm

    truth = norm.cdf(2 - norm.ppf(0.9))
    rng = np.random.default_rng(5)
    hits = sum(iv.low <= truth <= iv.high for iv in (
        metrics.tpr_interval(rng.normal(size=100), rng.normal(2, 1, size=100), n_boot=500, seed=r) for r in range(200)))
    assert 0.88 <= hits / 200 <= 0.99  # nominal 0.95; 200 runs: standard error 0.015


def test_f1_interval_known_cases_and_resampling():
    assert tuple(metrics.f1_interval([0.0] * 5, [1.0] * 4, 0.5)) == (1.0, 1.0, 1.0)  # perfect: no spread
    assert tuple(metrics.f1_interval([1.0] * 5, [0.0] * 4, 0.5)) == (0.0, 0.0, 0.0)  # nothing flagged
    rng = np.random.default_rng(1)
    c, a = rng.normal(size=200), rng.normal(1, 1, size=200)
    iv = metrics.f1_interval(c, a, 1.0)
    assert iv.estimate == metrics.f1_at_threshold(c, a, 1.0)
    # the binomial shortcut against resampling the images themselves
    reps = [metrics.f1_at_threshold(c[rng.integers(0, 200, 200)], a[rng.integers(0, 200, 200)], 1.0)
            for _ in range(2000)]
    assert iv.low == pytest.approx(np.quantile(reps, 0.025), abs=0.02)
    assert iv.high == pytest.approx(np.quantile(reps, 0.975), abs=0.02)


def test_followup_auroc_interval_and_its_undefined_cases():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(size=120))))
    keep = np.ones(120, bool)
    iv = metrics.followup_auroc_interval(p, y, keep, n_boot=300)
    assert iv.estimate == metrics.followup_auroc(p, y, keep)
    assert iv.low < iv.estimate < iv.high
    reps = [metrics.auroc(p[i][y[i] == 0], p[i][y[i] == 1]) for i in
            np.random.default_rng(0).integers(0, 120, size=(300, 120))]
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])), abs=1e-12)
    only_one = metrics.followup_auroc_interval(p, y, y == 1, n_boot=50)  # one class accepted: undefined
    assert math.isnan(only_one.estimate) and math.isnan(only_one.low) and math.isnan(only_one.high)
    from medadv_tutorial.report import interval_cell
    assert interval_cell(only_one) == "n/a" and interval_cell((0.5, math.nan, math.nan)) == "0.50 [n/a]"


def test_interval_side_and_exclusion():
    a = metrics.Interval(0.6, 0.5, 0.7)
    assert a.side() == 1 and a.side(0.45) == 1 and a.side(0.5) == 0 and a.side(0.7) == 0 and a.side(0.71) == -1
    assert metrics.Interval(-0.2, -0.3, -0.1).side() == -1 and metrics.Interval(0.0, -0.1, 0.1).side() == 0
    assert not hasattr(a, "overlaps")  # overlap of two intervals is no verdict on a difference
    assert a.excludes(0.45) and not a.excludes(0.5) and metrics.Interval(0.3, 0.2, 0.4).excludes(0.5)
    with pytest.raises(TypeError, match="value"):
        a.excludes("0.5")
    with pytest.raises(TypeError, match="value"):
        a.side("0")


def test_difference_interval_paired_equals_resampling_image_pairs():
    rng = np.random.default_rng(3)
    x = rng.normal(size=80)
    y = x + rng.normal(0.3, 0.2, size=80)  # shares most of its spread with x
    iv = metrics.difference_interval(y, x, paired=True, n_boot=3000, seed=1)
    idx = np.random.default_rng(1).integers(0, 80, size=(3000, 80))
    naive = y[idx].mean(1) - x[idx].mean(1)  # the same image drawn for both
    assert iv.estimate == pytest.approx(y.mean() - x.mean(), abs=1e-12)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(naive, [0.025, 0.975])), abs=0.01)
    # pairing cancels the shared spread: the paired interval is several times narrower
    unpaired = metrics.difference_interval(y, x, paired=False, n_boot=3000, seed=1)
    assert unpaired.half_width > 3 * iv.half_width and iv.side() == 1
    # unpaired equals resampling the two samples apart: its half-width is near 1.96 sqrt(s1^2/n1 + s2^2/n2)
    se = math.sqrt(y.var(ddof=1) / 80 + x.var(ddof=1) / 80)
    assert unpaired.half_width == pytest.approx(1.96 * se, rel=0.1)


def test_difference_interval_of_rates_known_answers():
    # two attacks on 10 images: A fools 8, B fools 5, and B's successes are A's too
    a = np.arange(10) < 8
    b = np.arange(10) < 5
    iv = metrics.difference_interval(a, b, paired=True, n_boot=2000)
    assert iv.estimate == pytest.approx(0.3)
    assert iv.low >= 0  # no image where B succeeds and A fails: no resample has A below B
    same = metrics.difference_interval(a, a, paired=True)
    assert tuple(same) == (0.0, 0.0, 0.0)  # identical outcomes: the degenerate point the docstring names
    swapped = metrics.difference_interval(b, a, paired=True, n_boot=2000)
    assert (swapped.estimate, swapped.low, swapped.high) == pytest.approx((-iv.estimate, -iv.high, -iv.low))
    assert metrics.difference_interval(torch.tensor([1.0, 2.0]), [0.0, 0.0, 0.0], paired=False).estimate == 1.5


def test_difference_interval_paired_covers_the_true_difference():
    rng, reps, hits = np.random.default_rng(7), 300, 0
    for r in range(reps):
        base = rng.random(60)
        first, second = base < 0.7, base < 0.6  # paired outcomes, true difference 0.1
        iv = metrics.difference_interval(first, second, paired=True, n_boot=500, seed=r)
        hits += iv.low <= 0.1 <= iv.high
    assert 0.89 <= hits / reps <= 0.99  # nominal 0.95; 300 runs: standard error 0.013


def test_difference_interval_bad_inputs():
    with pytest.raises(TypeError, match="paired must be True"):
        metrics.difference_interval([1.0], [1.0], paired="yes")
    with pytest.raises(ValueError, match="paired=True needs one value per image in both: first has 2, second 3"):
        metrics.difference_interval([1.0, 2.0], [1.0, 2.0, 3.0], paired=True)
    with pytest.raises(ValueError, match="second contains 1 NaN"):
        metrics.difference_interval([1.0], [np.nan], paired=False)
    with pytest.raises(ValueError, match="first must be finite"):
        metrics.difference_interval([np.inf], [1.0], paired=False)
    with pytest.raises(ValueError, match="n_boot"):
        metrics.difference_interval([1.0], [1.0], paired=False, n_boot=0)


def test_markdown_table_stacks_intervals_of_wide_rows():
    from medadv_tutorial.report import markdown_table

    iv = metrics.Interval(0.72, 0.65, 0.79)
    assert "| 0.72 [0.65, 0.79] |" in markdown_table([["x", iv]], ["d", "AUROC"])
    wide = markdown_table([["x"] + [iv] * 4], ["d", "a", "b", "c", "e"])
    assert "| 0.72<br>[0.65,\u00a00.79] |" in wide and "0.72 [" not in wide


@pytest.mark.parametrize("call, error, message", [
    (lambda: metrics.tpr_interval([], [0.3]), ValueError, r"scores_clean is empty"),
    (lambda: metrics.tpr_interval([0.1], [0.3], tnr=1.5), ValueError, r"tnr must be <= 1"),
    (lambda: metrics.tpr_interval([0.1], [0.3], n_boot=0), ValueError, r"n_boot"),
    (lambda: metrics.f1_interval([0.1], [0.3], "high"), TypeError, r"threshold"),
    (lambda: metrics.f1_interval([0.1], [float("nan")], 0.2), ValueError, r"scores_adv contains 1 NaN"),
    (lambda: metrics.followup_auroc_interval([0.1, 0.9], [0, 1], [True]), ValueError, r"accepted_mask"),
    (lambda: metrics.followup_auroc_interval([0.1, 0.9], [0, 1], [True, True], level=1.0), ValueError, r"level"),
])
def test_new_interval_bad_inputs_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_auroc_difference_interval_paired_and_independent():
    rng = np.random.default_rng(3)
    c, a = rng.normal(size=50), rng.normal(1.0, 1, size=50)
    # a second detector on the same images: the first's scores plus a little noise
    c2, a2 = c + rng.normal(0, 0.3, size=50), a + rng.normal(0, 0.3, size=50)
    paired = metrics.auroc_difference_interval((c, a), (c2, a2), paired=True)
    unpaired = metrics.auroc_difference_interval((c, a), (c2, a2), paired=False)
    assert paired.estimate == unpaired.estimate == pytest.approx(metrics.auroc(c, a) - metrics.auroc(c2, a2))
    assert paired.low <= paired.estimate <= paired.high
    # what the two share cancels: the paired interval is much narrower than the independent one
    assert paired.half_width < 0.5 * unpaired.half_width, (paired, unpaired)
    # a detector against itself: paired, exactly zero; independent samples, an interval around zero
    assert tuple(metrics.auroc_difference_interval((c, a), (c, a), paired=True)) == (0.0, 0.0, 0.0)
    same = metrics.auroc_difference_interval((c, a), (c, a), paired=False)
    assert same.low < -0.05 and same.high > 0.05
    # independent samples: the spread of the difference is that of two independent AUROCs
    one = metrics.auroc_interval(c, a, n_boot=4000)
    assert same.half_width == pytest.approx(np.sqrt(2) * one.half_width, rel=0.2)
    # order matters: first minus second
    flipped = metrics.auroc_difference_interval((c2, a2), (c, a), paired=True)
    assert tuple(flipped) == pytest.approx((-paired.estimate, -paired.high, -paired.low), abs=1e-12)


def test_auroc_difference_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="paired=True needs the same images"):
        metrics.auroc_difference_interval(([0.1, 0.2], [0.3]), ([0.1], [0.3]), paired=True)
    with pytest.raises(TypeError, match="paired must be True"):
        metrics.auroc_difference_interval(([0.1], [0.3]), ([0.1], [0.3]), paired="yes")
    with pytest.raises(TypeError, match=r"second must be a \(scores_clean, scores_adv\) pair"):
        metrics.auroc_difference_interval(([0.1], [0.3]), [0.1, 0.2, 0.3], paired=False)
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc_difference_interval(([0.1], [float("nan")]), ([0.1], [0.3]), paired=False)


@pytest.mark.parametrize("k1, n1, k2, n2, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (5, 56, 0, 29, -0.0381, 0.1926)])
def test_rate_difference_interval_newcombe_known_answers(k1, n1, k2, n2, low, high):
    iv = metrics.rate_difference_interval(np.arange(n1) < k1, torch.arange(n2) < k2)
    assert iv.estimate == pytest.approx(k1 / n1 - k2 / n2)
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=5e-5)
    assert iv.method == "Newcombe hybrid score" and iv.n_boot == 0


def test_rate_difference_interval_does_not_collapse_and_is_antisymmetric():
    both = metrics.rate_difference_interval(np.ones(50, bool), np.ones(50, bool))
    assert both.estimate == 0 and 0.06 < both.high < 0.08 and both.high == pytest.approx(-both.low)
    a, b = np.arange(40) < 30, np.arange(60) < 20
    ab, ba = metrics.rate_difference_interval(a, b), metrics.rate_difference_interval(b, a)
    assert (ab.estimate, ab.low, ab.high) == pytest.approx((-ba.estimate, -ba.high, -ba.low))
    with pytest.raises(ValueError, match="successes must hold bool or 0/1"):
        metrics.rate_difference_interval([0.5], [1])


def test_rate_difference_interval_at_another_level():
    # Newcombe's bounds from the two Wilson intervals at the same level (here 50%): narrower than at 95%
    a, b = np.arange(70) < 56, np.arange(80) < 48
    half = metrics.rate_difference_interval(a, b, level=0.5)
    wa, wb = metrics.rate_interval(a, level=0.5), metrics.rate_interval(b, level=0.5)
    d = wa.estimate - wb.estimate
    assert half.level == 0.5
    assert (half.low, half.high) == pytest.approx((d - math.hypot(wa.estimate - wa.low, wb.high - wb.estimate),
                                                   d + math.hypot(wa.high - wa.estimate, wb.estimate - wb.low)))
    full = metrics.rate_difference_interval(a, b)
    assert full.low < half.low < half.high < full.high
