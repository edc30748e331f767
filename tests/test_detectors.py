"""Detectors against known answers: Gaussian data with shifted "adversarial" points, references.

Clean features: two classes of correlated Gaussians in d = 16 (class means 3 sigma apart
along the first axis).  "Adversarial" features: fresh draws of the same classes moved by
a fixed shift of Mahalanobis length 10 (2.5 sigma per whitened coordinate).  Every
detector must separate them (AUROC > 0.95) and must not separate two samples of the clean
distribution (AUROC 0.5 +- 0.07).  (LID with k = 20 is the weakest on a pure mean shift:
AUROC 0.95 at length 8, 0.99 at length 10.)
"""

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import cdist

from medadv_tutorial import detectors as D
from medadv_tutorial.metrics import auroc

torch.set_num_threads(1)

DIM = 16
N_TRAIN = 2000
N_TEST = 1000


def _draw(n, seed, shift=False):
    g = torch.Generator().manual_seed(1000)
    B = torch.eye(DIM, dtype=torch.float64) + 0.3 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    z = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    z[:, 0] += 3.0 * y
    if shift:
        z += 2.5
    return (z @ B.T).float(), y


@pytest.fixture(scope="module")
def data():
    train, y_train = _draw(N_TRAIN, 1)
    test, y_test = _draw(N_TEST, 2)
    adv_train, ya_train = _draw(N_TEST, 3, shift=True)  # the "training attack"
    adv, y_adv = _draw(N_TEST, 4, shift=True)  # the evaluated attack
    same_train, ys_train = _draw(N_TEST, 5)  # clean draws posing as attack
    same, y_same = _draw(N_TEST, 6)
    return dict(train=train, y_train=y_train, test=test, y_test=y_test,
                shifted=(adv_train, ya_train, adv, y_adv), same=(same_train, ys_train, same, y_same))


def _layers(x):
    return {"low": x[:, :8], "high": x[:, 8:]}


def _scores(name, data, kind):
    """Fit detector ``name`` and score the clean test set and the evaluated 'attack' set."""
    adv_train, _, adv, y_adv = data[kind]
    det = {
        "MGM": lambda: D.MGM(), "MAHA": lambda: D.Mahalanobis(), "KD": lambda: D.KD(bandwidth=1.0),
        "LID": lambda: D.LID(k=20), "OCSVM": lambda: D.OCSVM(), "ISO": lambda: D.ISO(),
        "MAHA-LR": lambda: D.MahaEnsemble(), "LID-LR": lambda: D.LIDDetector(k=20),
        "DNN": lambda: D.DNNDetector(epochs=5),
    }[name]()
    if name in ("MAHA-LR", "LID-LR"):
        det.fit(_layers(data["train"]), data["y_train"], adv_features=_layers(adv_train))
        return det, det.score(_layers(data["test"])), det.score(_layers(adv))
    if name == "DNN":
        det.fit(data["train"], adv_features=adv_train)
    else:
        det.fit(data["train"], data["y_train"])
    return det, det.score(data["test"], data["y_test"]), det.score(adv, y_adv)


FEATURE_DETECTORS = ["MGM", "MAHA", "KD", "LID", "OCSVM", "ISO", "MAHA-LR", "LID-LR", "DNN"]


@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_detector_separates_shifted_features_and_not_clean_ones(name, data):
    det, s_clean, s_adv = _scores(name, data, "shifted")
    assert s_clean.shape == (N_TEST,) and s_clean.dtype == torch.float64
    assert auroc(s_clean, s_adv) > 0.95
    _, s_clean, s_same = _scores(name, data, "same")
    assert abs(auroc(s_clean, s_same) - 0.5) < 0.07


@pytest.mark.parametrize("name", ["MGM", "MAHA", "KD", "LID", "ISO", "OCSVM"])
def test_threshold_keeps_95_percent_of_held_out_clean(name, data):
    det = {"MGM": D.MGM, "MAHA": D.Mahalanobis, "KD": D.KD, "LID": D.LID, "OCSVM": D.OCSVM, "ISO": D.ISO}[name]()
    det.fit(data["train"], data["y_train"])
    t = det.threshold(0.95)
    assert (det.reference_scores_ <= t).double().mean() >= 0.95  # the rule on the training scores
    if name == "OCSVM":  # in-sample SVM scores are optimistic (keeps ~92.5%): calibrate on held-out clean
        det.calibrate(*_draw(2000, 8))
    held_out, y = _draw(4000, 7)
    kept = 1.0 - det.predict(held_out, y).double().mean().item()
    assert abs(kept - 0.95) <= 0.02, kept


def test_registry_names_and_flags():
    assert set(D.DETECTORS) == {"MGM", "MAHA", "MAHA-LR", "KD", "LID", "LID-LR", "BU", "OCSVM", "ISO", "DNN"}
    assert D.MAHA is D.Mahalanobis
    assert {k for k, c in D.DETECTORS.items() if c.supervised} == {"MAHA-LR", "LID-LR", "DNN"}
    assert D.DETECTORS["BU"].input_kind == "images"
    assert repr(D.MGM(reg=0.5)) == "MGM(reg=0.5, relative_reg=False)"


# ---- MGM and Mahalanobis: exact values -------------------------------------------------


def test_mgm_log_density_equals_scipy():
    x, _ = _draw(300, 11)
    x = x.double()
    det = D.MGM(reg=1e-3).fit(x)
    xn = x.numpy()
    ref = scipy.stats.multivariate_normal(xn.mean(0), np.cov(xn, rowvar=False) + 1e-3 * np.eye(DIM))
    q, _ = _draw(50, 12, shift=True)
    np.testing.assert_allclose(det.log_density(q.double()).numpy(), ref.logpdf(q.double().numpy()), rtol=1e-11)
    np.testing.assert_allclose(det.score(q).numpy(), -ref.logpdf(q.double().numpy()), rtol=1e-6)
    torch.testing.assert_close(det.covariance_, torch.as_tensor(ref.cov), rtol=1e-12, atol=1e-12)


def test_mgm_reg_zero_on_a_regular_covariance_and_relative_reg():
    x, _ = _draw(300, 11)
    xn = x.double().numpy()
    det = D.MGM(reg=0.0).fit(x.double())
    ref = scipy.stats.multivariate_normal(xn.mean(0), np.cov(xn, rowvar=False))
    np.testing.assert_allclose(det.log_density(x.double()[:20]).numpy(), ref.logpdf(xn[:20]), rtol=1e-11)
    rel = D.MGM(reg=1e-2, relative_reg=True).fit(x.double())
    assert rel.reg_ == pytest.approx(1e-2 * np.cov(xn, rowvar=False).diagonal().mean())


def test_mgm_singular_covariance_is_regularised_and_too_small_reg_explains():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(10, 40, generator=g, dtype=torch.float64)  # d > n
    dup = torch.randn(200, 8, generator=g, dtype=torch.float64)
    dup = torch.cat([dup, dup[:, :3], torch.ones(200, 1, dtype=torch.float64)], 1)  # duplicated + constant columns
    for x in (wide, dup):
        det = D.MGM(reg=1e-3).fit(x)
        xn = x.numpy()
        ref = scipy.stats.multivariate_normal(xn.mean(0), np.cov(xn, rowvar=False) + 1e-3 * np.eye(x.shape[1]))
        np.testing.assert_allclose(det.log_density(x).numpy(), ref.logpdf(xn), rtol=1e-9)
        for cls in (D.MGM, D.Mahalanobis):
            with pytest.raises(ValueError, match=r"reg=0 is too small.*Use a larger reg, e\.g\. reg=\d"):
                cls(reg=0.0).fit(x)


def test_gaussian_training_scores_are_exact_leave_one_out():
    x, y = _draw(60, 19)
    x = x.double()
    for make, lab in ((lambda: D.MGM(reg=0.05), None), (lambda: D.Mahalanobis(reg=0.05), y)):
        det = make().fit(x, lab)
        for i in (0, 7, 31):
            keep = torch.arange(60) != i
            other = make().fit(x[keep], None if lab is None else lab[keep])
            expected = other.score(x[i : i + 1]).item()
            assert det.reference_scores_[i].item() == pytest.approx(expected, rel=1e-9), (type(det), i)


@pytest.mark.parametrize("make", [D.MGM, D.Mahalanobis], ids=["MGM", "MAHA"])
def test_threshold_holds_when_dimension_is_comparable_to_n(make):
    # In-sample distances would put the threshold far too low here (an in-sample 95%
    # threshold keeps ~5% of held-out clean features at d=256, n=1000); leave-one-out keeps 95%.
    g = torch.Generator().manual_seed(0)
    train, held_out = torch.randn(1000, 256, generator=g), torch.randn(3000, 256, generator=g)
    det = make().fit(train)
    kept = 1.0 - det.predict(held_out).double().mean().item()
    assert abs(kept - 0.95) <= 0.02, kept


def test_mahalanobis_equals_numpy_reference():
    x, y = _draw(400, 13)
    x = x.double()
    det = D.Mahalanobis(reg=1e-2).fit(x, y)
    xn, yn = x.numpy(), y.numpy()
    means = np.stack([xn[yn == c].mean(0) for c in (0, 1)])
    centred = xn - means[yn]
    sigma = centred.T @ centred / len(xn) + 1e-2 * np.eye(DIM)
    q = _draw(30, 14, shift=True)[0].double().numpy()
    d2 = np.stack([np.einsum("ij,ij->i", q - m, np.linalg.solve(sigma, (q - m).T).T) for m in means], 1)
    np.testing.assert_allclose(det.class_distances(torch.as_tensor(q)).numpy(), d2, rtol=1e-10)
    np.testing.assert_allclose(det.score(torch.as_tensor(q)).numpy(), d2.min(1), rtol=1e-10)
    # without labels: one class, the plain Mahalanobis distance to the overall mean
    one = D.Mahalanobis(reg=1e-2).fit(x)
    c = xn - xn.mean(0)
    s1 = c.T @ c / len(xn) + 1e-2 * np.eye(DIM)
    np.testing.assert_allclose(one.score(torch.as_tensor(q)).numpy(),
                               np.einsum("ij,ij->i", q - xn.mean(0), np.linalg.solve(s1, (q - xn.mean(0)).T).T),
                               rtol=1e-10)


def test_mgm_score_is_differentiable():
    x, _ = _draw(300, 11)
    det = D.MGM(reg=1e-3).fit(x.double())
    q = _draw(5, 12)[0].double().requires_grad_(True)
    det.score(q).sum().backward()
    expected = torch.linalg.solve(det.covariance_, (q.detach() - det.mean_).T).T  # d(-log p)/dy = Sigma^-1 (y - mu)
    torch.testing.assert_close(q.grad, expected, rtol=1e-9, atol=1e-12)


# ---- KD and LID: equal to the reference implementations --------------------------------


def _kde_reference(q, x, h):
    """Brute-force normalised Gaussian KDE log density (what KernelDensity computes)."""
    from scipy.special import logsumexp

    d = x.shape[1]
    return (logsumexp(-cdist(q, x, "sqeuclidean") / (2 * h * h), axis=1)
            - np.log(len(x)) - 0.5 * d * np.log(2 * np.pi) - d * np.log(h))


def test_kd_equals_sklearn_kernel_density():
    from sklearn.neighbors import KernelDensity

    x, y = _draw(300, 15)
    q, yq = _draw(40, 16)
    h = 2.0
    det = D.KD(bandwidth=h).fit(x, y)
    got = det.score(q, yq).numpy()
    xn, qn = x.double().numpy(), q.double().numpy()
    for c in (0, 1):
        kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(xn[y.numpy() == c])
        np.testing.assert_allclose(got[yq.numpy() == c], -kde.score_samples(qn[yq.numpy() == c]), rtol=1e-10)
    # training scores are leave-one-out: a KDE over the other points of the class
    members = np.flatnonzero(y.numpy() == 1)
    i = members[3]
    kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(xn[np.setdiff1d(members, [i])])
    assert det.reference_scores_[i].item() == pytest.approx(-kde.score_samples(xn[i : i + 1])[0], rel=1e-10)
    # fitted without labels: one KDE over everything, score-time labels ignored
    kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(xn)
    np.testing.assert_allclose(D.KD(bandwidth=h).fit(x).score(q, yq).numpy(), -kde.score_samples(qn), rtol=1e-10)


def test_kd_is_exact_where_sklearn_trees_are_not():
    # Far from the data (log density < about -50) scikit-learn's tree-based KernelDensity
    # is off by up to tens of nats even with rtol=atol=0 (scikit-learn issue #7492);
    # the torch logsumexp matches the brute-force sum there too.
    x, y = _draw(300, 15)
    q, _ = _draw(40, 16, shift=True)
    for h in (0.7, 2.0):
        got = D.gaussian_kde_log_density(q, x, h).numpy()
        np.testing.assert_allclose(got, _kde_reference(q.double().numpy(), x.double().numpy(), h), rtol=1e-10)
        assert got.min() < -50


def test_kd_needs_predicted_labels_for_known_classes():
    x, y = _draw(100, 15)
    det = D.KD().fit(x, y)
    with pytest.raises(ValueError, match=r"needs labels \(N,\)"):
        det.score(x)
    with pytest.raises(ValueError, match=r"classes \[5\]"):
        det.score(x[:2], torch.tensor([0, 5]))


def _numpy_lid(q, ref, k, exclude_self=False):
    d = cdist(q, ref)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    r = np.sort(d, axis=1)[:, :k]
    return -k / np.sum(np.log(r / r[:, -1:]), axis=1)


def test_lid_equals_numpy_reference():
    ref, _ = _draw(500, 17)
    q, _ = _draw(60, 18, shift=True)
    ref, q = ref.double(), q.double()
    np.testing.assert_allclose(D.lid_mle(q, ref, k=10).numpy(), _numpy_lid(q.numpy(), ref.numpy(), 10), rtol=1e-9)
    det = D.LID(k=10).fit(ref)
    np.testing.assert_allclose(det.score(q).numpy(), _numpy_lid(q.numpy(), ref.numpy(), 10), rtol=1e-9)
    np.testing.assert_allclose(det.reference_scores_.numpy(),
                               _numpy_lid(ref.numpy(), ref.numpy(), 10, exclude_self=True), rtol=1e-9)


def test_lid_validates_k_and_edge_cases():
    ref = torch.randn(15, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"needs at least k\+1=21"):
        D.LID(k=20).fit(ref)
    with pytest.raises(ValueError, match="k must be an int"):
        D.lid_mle(ref, ref, k=16)
    lid = D.lid_mle(ref[:2], ref, k=3)  # exact duplicates of reference points: r_1 = 0 -> LID 0
    assert torch.equal(lid, torch.zeros(2, dtype=torch.float64))


# ---- supervised ensembles ---------------------------------------------------------------


def test_layer_ensembles_check_layers_and_expose_layer_scores(data):
    det = D.MahaEnsemble().fit(_layers(data["train"]), data["y_train"], adv_features=_layers(data["shifted"][0]))
    s = det.layer_scores(_layers(data["test"]))
    assert set(s) == {"low", "high"} and s["low"].shape == (N_TEST,)
    with pytest.raises(ValueError, match=r"missing \['high'\]"):
        det.score({"low": data["test"][:, :8]})
    with pytest.raises(ValueError, match=r"features\['high'\] must have shape \(N, 8\)"):
        det.score({"low": data["test"][:, :8], "high": data["test"]})
    with pytest.raises(TypeError, match="adv_features"):
        D.LIDDetector().fit(_layers(data["train"]))


def test_dnn_detector_is_seeded_and_accepts_layers(data):
    a = D.DNNDetector(epochs=2, seed=3).fit(data["train"], adv_features=data["shifted"][0])
    b = D.DNNDetector(epochs=2, seed=3).fit(_layers(data["train"]), adv_features=_layers(data["shifted"][0]))
    torch.testing.assert_close(a.score(data["test"][:50]), b.score(_layers(data["test"][:50])))
    with pytest.raises(TypeError, match="fitted on one tensor"):
        a.score(_layers(data["test"]))


# ---- API contract ----------------------------------------------------------------------


def _unfitted():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(DIM, 2))
    return [D.MGM(), D.Mahalanobis(), D.KD(), D.LID(), D.OCSVM(), D.ISO(), D.MahaEnsemble(),
            D.LIDDetector(), D.DNNDetector(), D.BU(model)]


@pytest.mark.parametrize("det", _unfitted(), ids=lambda d: type(d).__name__)
def test_scoring_before_fit_raises_not_fitted(det):
    x = torch.zeros(3, DIM)
    for call in (lambda: det.score(x), lambda: det.threshold(), lambda: det.predict(x)):
        with pytest.raises(D.NotFittedError, match=r"not fitted yet: call \.fit"):
            call()
    assert issubclass(D.NotFittedError, RuntimeError) and issubclass(D.NotFittedError, ValueError)


def test_inputs_are_validated_with_named_shapes(data):
    det = D.MGM().fit(data["train"])
    with pytest.raises(ValueError, match=r"features must have shape \(N, 16\)"):
        det.score(data["test"][0])
    with pytest.raises(ValueError, match=r"features must have shape \(N, 16\) as the features the detector"):
        det.score(data["test"][:, :8])
    with pytest.raises(TypeError, match="features must be a torch.Tensor"):
        det.score(data["test"].numpy())
    with pytest.raises(TypeError, match="floating"):
        det.score(data["test"].long())
    with pytest.raises(ValueError, match="NaN or infinite"):
        det.score(torch.full((2, DIM), float("nan")))
    with pytest.raises(ValueError, match=r"clean_features must have shape \(N, d\)"):
        D.MGM().fit(torch.zeros(DIM))
    with pytest.raises(TypeError, match="labels must hold integer"):
        D.Mahalanobis().fit(data["train"], data["y_train"].float())
    with pytest.raises(ValueError, match=r"labels must have shape \(2000,\)"):
        D.KD().fit(data["train"], data["y_train"][:10])
    with pytest.raises(ValueError, match="reg must be"):
        D.MGM(reg=-1.0)


def test_calibrate_replaces_the_reference_scores(data):
    det = D.MGM().fit(data["train"])
    det.calibrate(data["test"])
    torch.testing.assert_close(det.reference_scores_, det.score(data["test"]))
    assert det.threshold(1.0) == det.score(data["test"]).max().item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_scores_match_cpu(data):
    for det in (D.MGM(), D.Mahalanobis(), D.KD(), D.LID()):
        cpu = det.fit(data["train"], data["y_train"]).score(data["test"], data["y_test"])
        det.fit(data["train"].cuda(), data["y_train"].cuda())
        gpu = det.score(data["test"].cuda(), data["y_test"].cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-7)


# ---- BU: MC-dropout variance -----------------------------------------------------------


def test_mc_dropout_variance_known_answer():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    model = torch.nn.Dropout(0.5)  # logits = dropout(x)
    got = D.mc_dropout_variance(model, x, n_samples=6, seed=123)
    torch.manual_seed(123)
    p = torch.stack([torch.softmax(torch.nn.functional.dropout(x, 0.5, True), 1) for _ in range(6)]).double()
    torch.testing.assert_close(got, p.var(0, unbiased=False).sum(1))
    flat = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(3, 4))
    torch.nn.init.zeros_(flat[1].weight)  # constant softmax: zero variance
    assert D.mc_dropout_variance(flat, x).abs().max() < 1e-12


def test_mc_dropout_only_enables_dropout_and_restores_modes():
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 3)).eval()
    bn_mean = model[1].running_mean.clone()
    rng = torch.get_rng_state()
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    u = D.mc_dropout_variance(model, x, n_samples=5, seed=1)
    assert u.shape == (32,) and (u > 0).all() and (u < 1).all()
    assert torch.equal(model[1].running_mean, bn_mean) and not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(u, D.mc_dropout_variance(model, x, n_samples=5, seed=1))
    with pytest.raises(ValueError, match="no dropout layer"):
        D.mc_dropout_variance(torch.nn.Linear(4, 3), x)


def test_bu_detector_flags_inputs_near_the_decision_boundary():
    # confident logits far from the boundary (clean) vs near it (the "attack"): dropout
    # changes the prediction only near the boundary.
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(DIM, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.ones(DIM), -torch.ones(DIM)]) * 0.5)
        model[1].bias.zero_()
    g = torch.Generator().manual_seed(0)
    clean = 1.5 + torch.randn(500, DIM, generator=g)
    near = 0.25 * torch.randn(500, DIM, generator=g)
    det = D.BU(model, n_samples=10).fit(clean)
    assert auroc(det.score(1.5 + torch.randn(500, DIM, generator=g)), det.score(near)) > 0.95
    assert abs(auroc(det.score(1.5 + torch.randn(500, DIM, generator=g)), det.score(clean)) - 0.5) < 0.07
    with pytest.raises(ValueError, match=r"must have shape \(N, 16\)"):
        det.score(torch.zeros(3, 4))
