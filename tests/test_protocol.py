"""medadv_tutorial.protocol: evaluation, weight sweep and selection rule, and the chapters' tables.

The selection rule and the tables are tested on hand-made evaluations with known numbers;
evaluate_attack and sweep_weight on a toy classifier whose decision is the mean brightness of
a 4x4 image (class 1 above 0.5), so that an L-inf budget moves the decision by exactly eps and
which images an attack fools is known beforehand.
"""

import math
from collections import OrderedDict

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medadv_tutorial import detectors, metrics, protocol
from medadv_tutorial.attacks import PGD, run_attack
from medadv_tutorial.features import FeatureSet, extract_features
from medadv_tutorial.report import Table
from medadv_tutorial.suite import DetectorSuite

torch.set_num_threads(1)


# ----------------------------------------------------------------------- hand-made evaluations


def ev(success, name="run", **auroc):
    """An AttackEvaluation of 100 images with the given success and AUROCs (multiples of 0.01).

    Clean scores are all 0; a fraction p of the adversarial scores is 1 and the rest -1, so the
    AUROC is p exactly, and so is the TPR at 90% TNR (the threshold is 0)."""
    n = 100
    fs = FeatureSet(OrderedDict(penultimate=torch.zeros(1, 2)), torch.zeros(1, dtype=torch.long), torch.zeros(1, 2))
    adv = OrderedDict((k, torch.where(torch.arange(n) < round(v * n), 1.0, -1.0).double()) for k, v in auroc.items())
    clean = OrderedDict((k, torch.zeros(n, dtype=torch.float64)) for k in auroc)
    return protocol.AttackEvaluation(name, torch.zeros(1, 1, 2, 2), fs, success, 1.0, adv,
                                     OrderedDict((k, metrics.auroc(clean[k], s)) for k, s in adv.items()),
                                     OrderedDict((k, metrics.tpr_at_tnr(clean[k], s)) for k, s in adv.items()),
                                     clean, None if math.isnan(success) else torch.arange(n) < round(success * n))


def points(rows):
    """Table rows with each interval cell replaced by its estimate."""
    return [[c.estimate if isinstance(c, metrics.Interval) else c for c in r] for r in rows]


def test_one_weight_qualifies():
    sweep = {0.1: ev(0.90, MGM=0.2), 0.2: ev(0.96, MGM=0.7), 0.3: ev(0.50, MGM=0.1)}
    s = protocol.select_weight(sweep, ["MGM"])
    assert (s.weight, s.success, s.worst_auroc, s.qualified) == (0.2, 0.96, 0.7, True)
    assert "0.2" in s.reason and "1 of 3" in s.reason and s.detectors == ("MGM",) and s.bar == 0.95


def test_several_qualify_lowest_worst_case_over_detectors_wins():
    # 0.1 hides best from MGM but KD still sees it (worst 0.8); 0.3's worst case is lower (0.6)
    sweep = {0.1: ev(1.0, MGM=0.1, KD=0.8), 0.3: ev(0.97, MGM=0.6, KD=0.55), 1.0: ev(0.95, MGM=0.3, KD=0.7)}
    s = protocol.select_weight(sweep, ["MGM", "KD"])
    assert s.weight == 0.3 and s.worst_auroc == 0.6 and s.qualified
    # judged by MGM alone the choice changes: the rule depends on the detector list only
    assert protocol.select_weight(sweep, ["MGM"]).weight == 0.1


def test_success_exactly_at_the_bar_qualifies_and_the_bar_is_a_parameter():
    sweep = {0.1: ev(0.95, MGM=0.5), 0.2: ev(0.949, MGM=0.1)}
    assert protocol.select_weight(sweep, ["MGM"]).weight == 0.1
    assert protocol.select_weight(sweep, ["MGM"], bar=0.9).weight == 0.2


def test_ties_go_to_the_first_weight_of_the_sweep():
    sweep = {0.3: ev(1.0, MGM=0.4), 0.1: ev(1.0, MGM=0.4), 0.2: ev(1.0, MGM=0.5)}
    assert protocol.select_weight(sweep, ["MGM"]).weight == 0.3


def test_none_qualifies_falls_back_to_most_successful_then_stealthiest():
    sweep = {0.1: ev(0.80, MGM=0.2), 0.2: ev(0.90, MGM=0.6), 0.3: ev(0.90, MGM=0.4), 0.4: ev(0.5, MGM=0.0)}
    s = protocol.select_weight(sweep, ["MGM"])
    assert (s.weight, s.success, s.worst_auroc, s.qualified) == (0.3, 0.90, 0.4, False)
    assert s.reason.startswith("no weight reaches success >= 95%") and "0.3" in s.reason


def test_nan_success_never_qualifies_and_ranks_last_in_the_fallback():
    sweep = {0.1: ev(float("nan"), MGM=0.0), 0.2: ev(0.1, MGM=0.9)}
    s = protocol.select_weight(sweep, ["MGM"])
    assert s.weight == 0.2 and not s.qualified
    only_nan = protocol.select_weight({0.1: ev(float("nan"), MGM=0.3)}, ["MGM"])
    assert only_nan.weight == 0.1 and not only_nan.qualified and math.isnan(only_nan.success)


def test_weights_restrict_the_candidates():
    # the baseline at 0 (plain targeted PGD) is shown in the sweep but is no candidate
    sweep = {0.0: ev(1.0, MGM=1.0), 0.01: ev(1.0, MGM=0.3), 1.0: ev(1.0, MGM=0.1)}
    assert protocol.select_weight(sweep, ["MGM"], weights=[0.0, 0.01]).weight == 0.01
    assert protocol.select_weight(sweep, ["MGM"], weights=[1.0]).weight == 1.0


def test_tuple_weights():
    sweep = {(0.001, 4): ev(1.0, MGM=0.5), (0.001, 2): ev(1.0, MGM=0.4)}
    s = protocol.select_weight(sweep, ["MGM"])
    assert s.weight == (0.001, 2) and "(0.001, 2)" in s.reason


@pytest.mark.parametrize("call, exc, match", [
    (lambda: protocol.select_weight({}, ["MGM"]), ValueError, "sweep is empty"),
    (lambda: protocol.select_weight({0.1: ev(1.0, MGM=0.5)}, []), ValueError, "detectors is empty"),
    (lambda: protocol.select_weight({0.1: ev(1.0, MGM=0.5)}, ["KD"]), KeyError, r"unknown detector.*KD.*MGM"),
    (lambda: protocol.select_weight({0.1: ev(1.0, MGM=0.5)}, "MGM"), TypeError, "list of detector names"),
    (lambda: protocol.select_weight({0.1: ev(1.0, MGM=0.5)}, ["MGM"], bar=1.5), ValueError, r"bar must be <= 1"),
    (lambda: protocol.select_weight({0.1: ev(1.0, MGM=0.5)}, ["MGM"], weights=[0.2]), KeyError, "not in the sweep"),
    (lambda: protocol.select_weight({0.1: ev(1.0, MGM=0.5)}, ["MGM"], weights=[]), ValueError, "weights is empty"),
    (lambda: protocol.select_weight({0.1: 0.5}, ["MGM"]), TypeError, r"sweep\[0.1\] is float"),
    (lambda: protocol.select_weight([ev(1.0, MGM=0.5)], ["MGM"]), TypeError, "sweep must be a mapping"),
    (lambda: protocol.catching(ev(1.0, MGM=0.5), ["KD"]), KeyError, "unknown detector"),
    (lambda: protocol.catching({"MGM": 0.5}, ["MGM"]), TypeError, "AttackEvaluation"),
    (lambda: protocol.catching(ev(1.0, MGM=0.5), ["MGM"], level=2), ValueError, "level must be <= 1"),
])
def test_selection_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_catching_keeps_the_order_and_the_level_is_inclusive():
    e = ev(1.0, MGM=0.95, KD=0.9, LID=0.3, BU=0.91)
    assert protocol.catching(e, ["BU", "MGM", "KD", "LID"]) == ["BU", "MGM", "KD"]
    assert protocol.catching(e, ["MGM", "KD", "LID", "BU"], level=0.92) == ["MGM"]


# --------------------------------------------------------------------------------- tables


def test_sweep_table_rows_headers_and_worst_column():
    sweep = OrderedDict([(0.001, ev(1.0, MGM=0.3, KD=0.7)), (0.1, ev(0.97, MGM=0.1, KD=0.2))])
    t = protocol.sweep_table(sweep, ["MGM", "KD"])
    assert isinstance(t, Table)
    assert t.headers == ["λ", "success", "MGM AUROC", "KD AUROC"]
    assert points(t.rows) == [["0.001", 1.0, 0.3, 0.7], ["0.1", 0.97, 0.1, 0.2]]
    assert all(isinstance(c, metrics.Interval) for r in t.rows for c in r[1:])
    assert t.rows[1][1].low < 0.97 < t.rows[1][1].high  # 97 of 100: the interval is not a point
    t = protocol.sweep_table({(0.001, 4): sweep[0.001]}, ["MGM", "KD"], key_headers=("λ", "step"),
                             key_cells=lambda k: [f"{k[0]:g}", f"ε/{k[1]}"], suffix="", worst=True)
    assert t.headers == ["λ", "step", "success", "MGM", "KD", "worst"]
    assert points(t.rows) == [["0.001", "ε/4", 1.0, 0.3, 0.7, 0.7]]
    assert t.rows[0][-1] == t.rows[0][-2]  # the worst column is KD's interval


def test_sweep_table_of_several_sweeps_names_each():
    sweeps = {"A": {1.0: ev(1.0, MGM=0.2)}, "B": {10.0: ev(0.5, MGM=0.9), 100.0: ev(0.6, MGM=0.8)}}
    t = protocol.sweep_table(sweeps, ["MGM"], key_headers=("attack", "λ"))
    assert points(t.rows) == [["A", "1", 1.0, 0.2], ["B", "10", 0.5, 0.9], ["B", "100", 0.6, 0.8]]
    with pytest.raises(ValueError, match="key_headers"):
        protocol.sweep_table(sweeps, ["MGM"])  # the name column has no header


def test_detection_success_and_timing_tables():
    runs = OrderedDict([("PGD", ev(1.0, MGM=0.9, KD=0.8)), ("HFC", ev(0.96, MGM=0.2, KD=0.6))])
    runs["HFC"].seconds = 3.0
    d = protocol.detection_table(runs)
    assert d.detectors == ["MGM", "KD"] and d.attacks == ["PGD", "HFC"]
    assert d.auroc["KD"] == {"PGD": 0.8, "HFC": 0.6} and d.tpr90["MGM"] == {"PGD": 0.9, "HFC": 0.2}
    assert d.auroc_ci["KD"]["HFC"] == metrics.auroc_interval(runs["HFC"].clean_scores["KD"], runs["HFC"].scores["KD"])
    assert d.tpr90_ci["MGM"]["HFC"] == metrics.tpr_interval(runs["HFC"].clean_scores["MGM"], runs["HFC"].scores["MGM"])
    t = d.table()
    assert t.headers == ["detector", "PGD AUROC", "PGD TPR@90", "HFC AUROC", "HFC TPR@90"]
    assert t.rows[0] == ["MGM", d.auroc_ci["MGM"]["PGD"], d.tpr90_ci["MGM"]["PGD"], d.auroc_ci["MGM"]["HFC"],
                         d.tpr90_ci["MGM"]["HFC"]]
    assert points(t.rows) == [["MGM", 0.9, 0.9, 0.2, 0.2], ["KD", 0.8, 0.8, 0.6, 0.6]]
    t = protocol.detection_table(runs, detectors=["KD"], attacks=["HFC"]).table(("AUROC",), "detector (AUROC)")
    assert t.headers == ["detector (AUROC)", "HFC"] and points(t.rows) == [["KD", 0.6]]
    t = d.table(columns=[("PGD", "AUROC"), ("HFC", "TPR@90")])
    assert t.headers == ["detector", "PGD AUROC", "HFC TPR@90"] and points(t.rows)[1] == ["KD", 0.8, 0.6]
    t = protocol.success_table(runs, "attack (ε = 1/255)")
    assert t.headers == ["attack (ε = 1/255)", "success rate [95% CI]"] and points(t.rows) == [["PGD", 1.0], ["HFC", 0.96]]
    assert t.rows[1][1] == metrics.rate_interval(torch.arange(100) < 96)
    assert protocol.timing_table(runs, "PGD").rows == [["PGD", 1.0, 1.0], ["HFC", 3.0, 3.0]]
    assert protocol.timing_table(runs, "PGD").headers[2] == "relative to PGD"


@pytest.mark.parametrize("call, exc, match", [
    (lambda r: protocol.detection_table(r, attacks=["CW"]), KeyError, r"attacks \['CW'\] are not in"),
    (lambda r: protocol.detection_table(r, detectors=["LID"]), KeyError, "unknown detector"),
    (lambda r: protocol.detection_table(r).table(("F1",)), ValueError, "kinds must list"),
    (lambda r: protocol.detection_table(r).table(columns=[("CW", "AUROC")]), ValueError, "columns must be"),
    (lambda r: protocol.detection_table({}), ValueError, "empty"),
    (lambda r: protocol.success_table(r, attacks="PGD"), TypeError, "attacks must be a list"),
    (lambda r: protocol.timing_table(r, "CW"), KeyError, "baseline 'CW'"),
    (lambda r: protocol.timing_table(r, "PGD", headers=["a"]), ValueError, "3 columns"),
    (lambda r: protocol.sweep_table({}, ["MGM"]), ValueError, "non-empty mapping"),
    (lambda r: protocol.sweep_table(r, ["MGM"], key_cells="λ"), TypeError, "key_cells must be a function"),
])
def test_table_bad_inputs(call, exc, match):
    runs = OrderedDict([("PGD", ev(1.0, MGM=0.9))])
    with pytest.raises(exc, match=match):
        call(runs)


# ----------------------------------------------------------------- Li & Zhu's threshold table


def _fs(pen, labels, p1):
    """A FeatureSet with penultimate features ``pen`` and logits giving P(class 1) = ``p1``."""
    p1 = torch.as_tensor(p1, dtype=torch.float32)
    logits = torch.stack([torch.zeros_like(p1), torch.log(p1 / (1 - p1))], 1)
    return FeatureSet(OrderedDict(penultimate=pen), torch.as_tensor(labels), logits)


@pytest.fixture(scope="module")
def li_zhu_case():
    g = torch.Generator().manual_seed(0)
    mgm = detectors.MGM().fit(torch.randn(400, 2, generator=g))
    suite = DetectorSuite({"MGM": mgm})
    typical, far = torch.zeros(2), torch.full((2,), 50.0)
    y = torch.arange(10) % 2
    right, wrong = torch.where(y == 1, 0.9, 0.1), torch.where(y == 1, 0.1, 0.9)  # confident, right or wrong
    # clean: 8 typical (kept), 2 far (flagged: 2 false positives)
    fs_clean = _fs(torch.stack([typical] * 8 + [far] * 2), y, right)
    # adversarial: 6 far (flagged: 6 true positives), 4 typical (missed); every one confidently wrong
    fs_adv = _fs(torch.stack([far] * 6 + [typical] * 4), y, wrong)
    return suite, fs_clean, fs_adv, y, (right, wrong)


def test_li_zhu_table_known_f1_and_followup(li_zhu_case):
    suite, fs_clean, fs_adv, y, (right, wrong) = li_zhu_case
    t = protocol.li_zhu_table(suite, ["MGM"], fs_clean, {"PGD": fs_adv})
    # F1 = 2 TP / (2 TP + FP + FN) = 12 / (12 + 2 + 4)
    assert t.f1["MGM"]["PGD"] == pytest.approx(2 / 3)
    # accepted: 8 clean (4 per class, ranked right) and 4 adversarial (2 per class, ranked wrong):
    # of 6 x 6 pairs, 16 won, 8 ties (4) and 4 ties (4) counted one half, 4 lost -> 24 / 36
    assert t.followup["MGM"]["PGD"] == pytest.approx(2 / 3)
    everything = roc_auc_score(torch.cat([y, y]).numpy(), torch.cat([right, wrong]).numpy())
    assert t.followup_no_defence["PGD"] == pytest.approx(everything)
    assert t.n_kept == {"MGM": 8} and t.n_clean == 10
    assert t.thresholds["MGM"] == suite.detectors["MGM"].threshold(0.95)
    assert t.table.headers == ["detector", "PGD F1", "PGD follow-up AUROC"]
    assert t.table.rows == [["MGM", t.f1_ci["MGM"]["PGD"], t.followup_ci["MGM"]["PGD"]],
                            ["no defence", "–", t.followup_no_defence_ci["PGD"]]]
    assert points(t.table.rows) == [["MGM", t.f1["MGM"]["PGD"], t.followup["MGM"]["PGD"]],
                                    ["no defence", "–", t.followup_no_defence["PGD"]]]
    lo, hi = t.f1_ci["MGM"]["PGD"].low, t.f1_ci["MGM"]["PGD"].high
    assert lo < 2 / 3 < hi and hi - lo > 0.2  # 10 + 10 images: a wide interval


def test_black_box_table_reads_success_and_scores_of_the_evaluations(li_zhu_case):
    suite, fs_clean, fs_adv, _, _ = li_zhu_case
    clean = suite.score(fs_clean)
    s_adv = suite.score(fs_adv)
    run = protocol.AttackEvaluation("BIM", torch.zeros(10, 1, 2, 2), fs_adv, 0.4, 1.0, s_adv,
                                    OrderedDict(MGM=0.0), OrderedDict(MGM=0.0), clean, torch.arange(10) < 4)
    t = protocol.black_box_table(suite, ["MGM"], fs_clean, {"BIM": run})
    assert t.success == {"BIM": 0.4} and t.f1["MGM"]["BIM"] == pytest.approx(2 / 3)
    assert t.auroc["MGM"]["BIM"] == metrics.auroc(clean["MGM"], s_adv["MGM"])  # from the scores, not run.auroc
    assert t.table.headers == ["attack (black-box)", "success on deployed model", "MGM F1", "MGM AUROC"]
    assert points(t.table.rows) == [["BIM", 0.4, t.f1["MGM"]["BIM"], t.auroc["MGM"]["BIM"]]]
    assert t.success_ci["BIM"] == metrics.rate_interval(torch.arange(10) < 4) == run.success_ci


@pytest.mark.parametrize("call, exc, match", [
    (lambda s, c, a: protocol.li_zhu_table(s, ["KD"], c, {"PGD": a}), KeyError, r"unknown detector.*KD"),
    (lambda s, c, a: protocol.li_zhu_table(s, [], c, {"PGD": a}), ValueError, "names must be a non-empty list"),
    (lambda s, c, a: protocol.li_zhu_table(s, "MGM", c, {"PGD": a}), TypeError, "names must be a non-empty list"),
    (lambda s, c, a: protocol.li_zhu_table(s, ["MGM"], c.penultimate, {"PGD": a}), TypeError, "fs_clean must be"),
    (lambda s, c, a: protocol.li_zhu_table(s, ["MGM"], c, {}), ValueError, "adversarial must be a non-empty"),
    (lambda s, c, a: protocol.li_zhu_table(s, ["MGM"], c, {"PGD": a.penultimate}), TypeError, r"adversarial\['PGD'\]"),
    (lambda s, c, a: protocol.li_zhu_table(s, ["MGM"], c, {"PGD": a}, quantile=0), ValueError, "quantile must be > 0"),
    (lambda s, c, a: protocol.li_zhu_table({"MGM": 1}, ["MGM"], c, {"PGD": a}), TypeError, "suite must be"),
    (lambda s, c, a: protocol.black_box_table(s, ["MGM"], c, {"PGD": a}), TypeError, "AttackEvaluation"),
])
def test_li_zhu_bad_inputs(li_zhu_case, call, exc, match):
    suite, fs_clean, fs_adv, _, _ = li_zhu_case
    with pytest.raises(exc, match=match):
        call(suite, fs_clean, fs_adv)


# ------------------------------------------------------------------- evaluate_attack on a toy


class Brightness(nn.Module):
    """Class 1 when the mean pixel exceeds ``cut``; features: the mean and the largest pixel."""

    feature_names = ["penultimate"]

    def __init__(self, cut=0.5):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(40.0))
        self.cut = cut

    def forward_features(self, x, layers=None, logits=True):
        m = x.mean((1, 2, 3))
        h = torch.stack([m, x.amax((1, 2, 3))], 1)
        z = self.gain * (m - self.cut)
        return torch.stack([-z, z], 1) / 2, OrderedDict(penultimate=h)

    def forward(self, x):
        return self.forward_features(x)[0]


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(300, generator=g) * 0.6 + 0.2
    x_train = (b[:, None, None, None] + 0.05 * torch.randn(300, 1, 4, 4, generator=g)).clamp(0, 1)
    model = Brightness().eval()
    fs_train = extract_features(model, (x_train, (b > 0.5).long()), progress=False)
    suite = DetectorSuite({"MGM": detectors.MGM().fit(fs_train.penultimate)})
    # uniform images; the last is misclassified (label 1, mean 0.45 -> class 0)
    bright = torch.tensor([0.40, 0.35, 0.60, 0.70, 0.45])
    x = bright[:, None, None, None].expand(5, 1, 4, 4).clone()
    y = torch.tensor([0, 0, 1, 1, 1])
    clean = suite.score(extract_features(model, (x, y), progress=False), x)
    return model, suite, x, y, clean


def test_evaluate_attack_counts_success_as_attack_result_does(toy):
    # targeted at the other class with eps = 0.12: 0.40 -> 0.52 and 0.60 -> 0.48 reach it, 0.35 and
    # 0.70 cannot; the misclassified image already sits at its "target" but was never attacked.
    model, suite, x, y, clean = toy
    attack = PGD(0.12, steps=10, seed=0, targeted=True)
    e = protocol.evaluate_attack("PGD", attack, model, x, y, suite, clean, targets=1 - y, cache=False)
    res = run_attack(attack, model, (x, y), targets=1 - y, progress=False)
    assert e.success == res.success_rate == 0.5  # 2 of the 4 correctly classified images
    assert int((e.fs.predictions == 1 - y).sum()) == 3  # counting every image would give 3 / 5
    assert torch.equal(e.x_adv, res.x_adv) and (e.x_adv - x).abs().max() <= 0.12 + 1e-6
    assert list(e.auroc) == ["MGM"] and e.auroc["MGM"] == metrics.auroc(clean["MGM"], e.scores["MGM"])
    assert e.tpr90["MGM"] == metrics.tpr_at_tnr(clean["MGM"], e.scores["MGM"], 0.90) and e.seconds > 0


def test_evaluate_attack_transfer_counts_success_on_the_deployed_model(toy):
    model, suite, x, y, clean = toy
    substitute = Brightness(cut=0.42).eval()  # a different boundary: crafted there, judged here
    e = protocol.evaluate_attack("PGD", PGD(0.07, steps=10, seed=0), model, x, y, suite, clean,
                                 source_model=substitute, cache=False)
    correct = model(x).argmax(1) == y
    fooled = model(e.x_adv).argmax(1) != y
    assert e.success == float((correct & fooled).sum() / correct.sum())
    assert torch.equal(e.fs.predictions, model(e.x_adv).argmax(1))
    # 0.40 and 0.35 are pushed down (away from the deployed boundary); 0.60 -> 0.53 stays class 1
    assert e.success == 0.0


def test_evaluate_attacks_and_sweep_keep_the_order_and_match_single_runs(toy):
    model, suite, x, y, clean = toy
    zoo = {"weak": PGD(0.02, steps=5, seed=0), "strong": PGD(0.25, steps=5, seed=0)}
    runs = protocol.evaluate_attacks(zoo, model, x, y, suite, clean, cache=False)
    assert list(runs) == ["weak", "strong"] and runs["weak"].success == 0.0 and runs["strong"].success == 1.0
    sweep = protocol.sweep_weight(lambda eps: PGD(eps, steps=5, seed=0), [0.25, 0.02], model, x, y, suite, clean,
                                  name="PGD", cache=False, progress=False)
    assert list(sweep) == [0.25, 0.02] and sweep[0.25].name == "PGD λ=0.25"
    assert torch.equal(sweep[0.02].x_adv, runs["weak"].x_adv) and sweep[0.02].auroc == runs["weak"].auroc


def test_evaluate_attack_reads_the_result_cache(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    model, suite, x, y, clean = toy
    cold, warm = (protocol.evaluate_attack("PGD", PGD(0.12, steps=4, seed=0), model, x, y, suite, clean)
                  for _ in range(2))
    assert len(list((tmp_path / "results").rglob("*.pt"))) == 1
    assert torch.equal(cold.x_adv, warm.x_adv) and cold.seconds == warm.seconds and cold.auroc == warm.auroc


@pytest.mark.parametrize("call, exc, match", [
    (lambda m, s, x, y, c: protocol.evaluate_attack("PGD", PGD(0.1), m, x, y, s, {"KD": c["MGM"]}),
     KeyError, r"clean_scores lacks \['MGM'\]"),
    (lambda m, s, x, y, c: protocol.evaluate_attack("PGD", PGD(0.1), m, x, y, s, [c["MGM"]]),
     TypeError, "clean_scores must be a mapping"),
    (lambda m, s, x, y, c: protocol.evaluate_attack("PGD", PGD(0.1), m, x, y, {"MGM": None}, c),
     TypeError, "suite must be a DetectorSuite"),
    (lambda m, s, x, y, c: protocol.evaluate_attack(3, PGD(0.1), m, x, y, s, c), TypeError, "name must be a str"),
    (lambda m, s, x, y, c: protocol.evaluate_attack("PGD", PGD(0.1, targeted=True), m, x, y, s, c, cache=False),
     ValueError, "targets is required"),
    (lambda m, s, x, y, c: protocol.evaluate_attacks({}, m, x, y, s, c), ValueError, "attack_zoo must be a non-empty"),
    (lambda m, s, x, y, c: protocol.sweep_weight(lambda e: PGD(e), [], m, x, y, s, c), ValueError, "weights is empty"),
    (lambda m, s, x, y, c: protocol.sweep_weight(lambda e: PGD(e), [0.1, 0.1], m, x, y, s, c), ValueError,
     "distinct"),
    (lambda m, s, x, y, c: protocol.sweep_weight(lambda e: PGD(e), 0.1, m, x, y, s, c), TypeError,
     "weights must be a list"),
    (lambda m, s, x, y, c: protocol.sweep_weight(PGD(0.1), [0.1], m, x, y, s, c), TypeError,
     "make_attack must be a function"),
])
def test_evaluation_bad_inputs(toy, call, exc, match):
    model, suite, x, y, clean = toy
    with pytest.raises(exc, match=match):
        call(model, suite, x, y, clean)


class Counting(Brightness):
    """Brightness that counts the images it classifies without a gradient (not attack steps)."""

    _derived_attributes = ("seen",)  # a counter, not content: the result store's key skips it

    def __init__(self, cut=0.5):
        super().__init__(cut)
        self.seen = 0

    def forward_features(self, x, layers=None, logits=True):
        if not x.requires_grad:
            self.seen += len(x)
        return super().forward_features(x, layers, logits)


def test_every_image_goes_through_the_deployed_model_once(toy):
    _, suite, x, y, clean = toy
    model = Counting().eval()
    fs_clean, clean = protocol.score_clean(model, x, y, suite)
    assert model.seen == len(x)  # the clean pass
    zoo = {"PGD": PGD(0.12, steps=3, seed=0), "PGD 2": PGD(0.08, steps=3, seed=1)}
    evals = protocol.evaluate_attacks(zoo, model, x, y, suite, clean, clean_features=fs_clean, cache=False)
    assert model.seen == len(x) + len(zoo) * len(x)  # one pass per adversarial set, none for the clean images
    # the predictions come from the features' logits, and success agrees with run_attack's own passes
    for name, e in evals.items():
        res = run_attack(zoo[name], Brightness().eval(), (x, y), progress=False)
        assert e.success == res.success_rate and torch.equal(e.fs.predictions, res.pred_adv)
    # without the clean features, evaluate_attacks runs the clean pass once for all its attacks
    model.seen = 0
    protocol.evaluate_attacks(zoo, model, x, y, suite, clean, cache=False)
    assert model.seen == len(x) + len(zoo) * len(x)


def test_clean_features_must_be_those_of_the_images(toy):
    model, suite, x, y, clean = toy
    fs = extract_features(model, (x, y), progress=False)
    with pytest.raises(TypeError, match="clean_features must be the FeatureSet"):
        protocol.evaluate_attack("PGD", PGD(0.1, steps=2), model, x, y, suite, clean, clean_features=clean)
    with pytest.raises(ValueError, match="same 4 images"):
        protocol.evaluate_attack("PGD", PGD(0.1, steps=2), model, x[:4], y[:4], suite,
                                 {k: v[:4] for k, v in clean.items()}, clean_features=fs)


# ----------------------------------------------------------------------- across substitutes and data sets


def test_evaluate_transfer_names_runs_by_attack_and_substitute_and_matches_single_runs(toy):
    model, suite, x, y, clean = toy
    zoo = {"weak": PGD(0.02, steps=5, seed=0), "strong": PGD(0.25, steps=5, seed=0)}
    subs = {"low": Brightness(cut=0.42).eval(), "same": Brightness().eval()}
    runs = protocol.evaluate_transfer(zoo, subs, model, x, y, suite, clean)
    assert list(runs) == ["weak, low", "strong, low", "weak, same", "strong, same"]
    one = protocol.evaluate_attack("strong", zoo["strong"], model, x, y, suite, clean, source_model=subs["low"])
    assert torch.equal(runs["strong, low"].x_adv, one.x_adv) and runs["strong, low"].success == one.success
    # the substitute equal to the deployed model is a white-box attack
    white = protocol.evaluate_attack("strong", zoo["strong"], model, x, y, suite, clean)
    assert torch.equal(runs["strong, same"].x_adv, white.x_adv)
    with pytest.raises(ValueError, match="substitutes must be a non-empty mapping"):
        protocol.evaluate_transfer(zoo, {}, model, x, y, suite, clean)


def test_compare_sets_differences_and_verdicts():
    sets = {"A": {"PGD": ev(1.0, MGM=0.99, KD=0.60, BU=0.50)},
            "B": {"PGD": ev(1.0, MGM=0.70, KD=0.60, BU=0.90)},
            "ref": {"PGD": ev(1.0, MGM=0.70, KD=0.58, BU=0.50)}}
    cmp = protocol.compare_sets(sets, "PGD", "ref")
    assert cmp.detectors == ["MGM", "KD", "BU"] and list(cmp.difference_ci) == ["A", "B"] and not cmp.paired
    for s in ("A", "B"):
        for d in cmp.detectors:
            iv = cmp.difference_ci[s][d]
            assert iv.estimate == pytest.approx(sets[s]["PGD"].auroc[d] - sets["ref"]["PGD"].auroc[d], abs=1e-12)
            assert iv.low <= iv.estimate <= iv.high
    assert cmp.better("A") == ["MGM"] and cmp.worse("A") == []  # 0.99 vs 0.70 on 100 images each: apart
    assert cmp.better("B") == ["BU"] and "KD" not in cmp.better("B") + cmp.worse("B")  # 0.60 vs 0.58: noise
    # two AUROCs below chance differ too: better, but not catching the attack
    low = protocol.compare_sets({"A": {"PGD": ev(1.0, BU=0.30, MGM=0.95)}, "ref": {"PGD": ev(1.0, BU=0.05, MGM=0.60)}},
                                "PGD", "ref")
    assert low.better("A") == ["BU", "MGM"] and low.better("A", above_chance=True) == ["MGM"]
    assert low.below_both("A") == ["BU"] and cmp.below_both("A") == []
    high = protocol.compare_sets({"A": {"PGD": ev(1.0, BU=0.05, MGM=0.60)}, "ref": {"PGD": ev(1.0, BU=0.30, MGM=0.95)}},
                                 "PGD", "ref")
    assert high.worse("A") == ["BU", "MGM"] and high.worse("A", above_chance=True) == ["MGM"]
    assert high.below_both("A") == ["BU"]
    rows, headers = cmp.table()
    assert headers == ["detector (PGD)", "AUROC A", "AUROC B", "AUROC ref", "A − ref", "B − ref"]
    assert points(rows)[0][:4] == ["MGM", 0.99, 0.70, 0.70]
    assert protocol.compare_sets(sets, "PGD", "ref", detectors=["BU"]).detectors == ["BU"]
    with pytest.raises(KeyError, match="unknown set 'ref'"):
        cmp.better("ref")
    with pytest.raises(ValueError, match="reference must be one of the sets"):
        protocol.compare_sets(sets, "PGD", "C")
    with pytest.raises(KeyError, match="attack 'FGSM' is not among the evaluations of 'A'"):
        protocol.compare_sets(sets, "FGSM", "ref")
    with pytest.raises(KeyError, match=r"unknown detector\(s\) \['LID'\]"):
        protocol.compare_sets(sets, "PGD", "ref", detectors=["LID"])


def test_success_by_set_table():
    sets = {"A": {"FGSM": ev(0.5, MGM=0.9), "PGD": ev(1.0, MGM=0.9)}, "B": {"PGD": ev(0.25, MGM=0.9),
                                                                            "FGSM": ev(0.75, MGM=0.9)}}
    rows, headers = protocol.success_by_set_table(sets, accuracy={"A": 0.8, "B": 0.7})
    assert headers == ["data set", "test accuracy", "images attacked", "FGSM success", "PGD success"]
    assert points(rows) == [["A", 0.8, 100, 0.5, 1.0], ["B", 0.7, 100, 0.75, 0.25]]  # the first set's attack order
    assert protocol.success_by_set_table(sets).headers[1] == "images attacked"
    with pytest.raises(KeyError, match=r"attacks \['FGSM'\] are not in evaluations_by_set\['C'\]"):
        protocol.success_by_set_table({**sets, "C": {"PGD": ev(1.0, MGM=0.9)}})


def test_bypass_verdicts():
    plain = ev(1.0, MGM=0.99, KD=0.95, LID=0.40, BU=0.90)
    adaptive = ev(1.0, MGM=0.10, KD=0.55, LID=0.20, BU=0.80)
    v = protocol.bypass(plain, adaptive, ["MGM", "KD", "LID", "BU"])
    assert v.caught == ["MGM", "KD", "BU"]  # LID never caught PGD
    assert v.hidden == ["MGM", "KD"] and v.still == ["BU"]  # 0.55 (interval around 0.5) hides; 0.80 does not
    assert v.below == ["MGM"]  # 0.10 on 100 images: the interval lies below 0.5
    strict = protocol.bypass(plain, adaptive, ["MGM", "KD", "BU"], catches=0.96, hides=0.5)
    assert strict.caught == ["MGM"] and strict.hidden == ["MGM"]
    # an AUROC at or under `hides` whose interval lies above 0.5 does not count as hidden
    v2 = protocol.bypass(ev(1.0, MGM=0.99), ev(1.0, MGM=0.70), ["MGM"], hides=0.75)
    assert v2.hidden == [] and v2.still == ["MGM"]
    with pytest.raises(TypeError, match="adaptive must be an AttackEvaluation"):
        protocol.bypass(plain, {"MGM": 0.1}, ["MGM"])
    with pytest.raises(KeyError, match=r"unknown detector\(s\) \['DNN'\]"):
        protocol.bypass(plain, adaptive, ["DNN"])


def test_paired_differences_of_two_attacks_and_two_detectors():
    strong, weak = ev(0.9, "PGD", MGM=0.8, KD=0.6), ev(0.5, "FGSM", MGM=0.3, KD=0.3)
    d = protocol.auroc_difference(strong, weak, "MGM", n_boot=500)
    assert d == metrics.auroc_difference_interval((strong.clean_scores["MGM"], strong.scores["MGM"]),
                                                  (weak.clean_scores["MGM"], weak.scores["MGM"]), paired=True,
                                                  n_boot=500)
    assert d.estimate == pytest.approx(0.5) and d.side() == 1
    # two detectors on the same images: MGM minus KD against PGD
    two = protocol.auroc_difference(strong, strong, "MGM", "KD", n_boot=500)
    assert two.estimate == pytest.approx(0.2) and two.side() == 1
    assert protocol.auroc_difference(strong, strong, "MGM").estimate == 0.0
    s = protocol.success_difference(strong, weak, n_boot=500)
    # ev() makes the first 50 outcomes successes in both: paired, the 40 extra are the whole difference
    assert s.estimate == pytest.approx(0.4) and s.low > 0.25
    with pytest.raises(KeyError, match="unknown detector"):
        protocol.auroc_difference(strong, weak, "LID")
    with pytest.raises(TypeError, match="second must be an AttackEvaluation"):
        protocol.success_difference(strong, 0.5)
    with pytest.raises(ValueError, match="built without outcomes"):
        protocol.success_difference(strong, ev(float("nan"), MGM=0.5))
    with pytest.raises(ValueError, match="built without clean scores"):
        import dataclasses
        protocol.auroc_difference(strong, dataclasses.replace(weak, clean_scores=None), "MGM")
