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
