"""Detectors against known answers: Gaussian data with shifted "adversarial" points, references.

Clean features: two classes of correlated Gaussians in d = 16 (class means 3 sigma apart
along the first axis).  "Adversarial" features: fresh draws of the same classes moved by
a fixed shift of Mahalanobis length 10 (2.5 sigma per whitened coordinate).  Every
detector must separate them (AUROC > 0.95) and must not separate two samples of the clean
distribution (AUROC 0.5 +- 0.07).  (LID with k = 20 is the weakest on a pure mean shift:
AUROC 0.95 at length 8, 0.99 at length 10.)
"""

import dataclasses
import math

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


MAKE = {
    "MGM": lambda: D.MGM(), "MAHA": lambda: D.Mahalanobis(), "KD": lambda: D.KD(bandwidth=1.0),
    "LID": lambda: D.LID(k=20), "OCSVM": lambda: D.OCSVM(), "ISO": lambda: D.ISO(),
    "MAHA-LR": lambda: D.MahaEnsemble(), "LID-LR": lambda: D.LIDDetector(k=20),
    "DNN": lambda: D.DNNDetector(epochs=5),
}


def _view(det, x):
    """What ``det`` reads, by its declared inputs: the features, or their two halves as layers."""
    return _layers(x) if det.inputs.view == "layers" else x


def _scores(name, data, kind):
    """Fit detector ``name`` and score the clean test set and the evaluated 'attack' set.

    Every detector is fed from its ``inputs`` alone (labels are passed to all: the ones
    that do not declare them ignore them).
    """
    adv_train, _, adv, y_adv = data[kind]
    det = MAKE[name]()
    sets = {"adv_features": _view(det, adv_train)} if det.inputs.adversarial else {}
    det.fit(_view(det, data["train"]), data["y_train"], **sets)
    return det, det.score(_view(det, data["test"]), data["y_test"]), det.score(_view(det, adv), y_adv)


FEATURE_DETECTORS = list(MAKE)


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


def test_each_detector_declares_its_inputs():
    I = D.Inputs  # noqa: E741
    for cls in (D.MGM, D.LID, D.OCSVM, D.ISO):
        assert cls.inputs == I(view="penultimate", fit_labels=False, score_labels=None, adversarial=False)
    assert D.Mahalanobis.inputs == I(fit_labels=True)  # true labels at fit, none at score
    assert D.KD.inputs == I(fit_labels=True, score_labels="predicted")
    assert D.MahaEnsemble.inputs == I(view="layers", fit_labels=True, adversarial=True)
    assert D.LIDDetector.inputs == I(view="layers", adversarial=True)
    assert D.DNNDetector.inputs == I(adversarial=True)
    assert D.BU.inputs == I(view="images")
    assert D.TwoSided(D.KD()).inputs == D.KD.inputs
    with pytest.raises(dataclasses.FrozenInstanceError):
        D.KD.inputs.view = "layers"
    assert D.KD.inputs.fit_call() == ".fit(clean_features, labels)"
    assert D.MahaEnsemble.inputs.fit_call() == ".fit(clean_features, labels, adv_features=...)"
    assert D.MAHA is D.Mahalanobis


def test_repr_lists_the_parameters():
    assert repr(D.MGM(reg=0.5)) == "MGM(reg=0.5)"
    assert repr(D.MahaEnsemble()) == "MahaEnsemble(reg=0.001, C=1.0, seed=0)"


# ---- MGM and Mahalanobis: exact values -------------------------------------------------


def _ridge(cov, reg):
    """The relative ridge: reg times the mean variance trace(cov) / d."""
    return reg * np.trace(cov) / cov.shape[0]


def test_mgm_log_density_equals_scipy():
    x, _ = _draw(300, 11)
    x = x.double()
    det = D.MGM(reg=1e-3).fit(x)
    xn = x.numpy()
    cov = np.cov(xn, rowvar=False)
    assert det.ridge_ == pytest.approx(_ridge(cov, 1e-3), rel=1e-12)
    ref = scipy.stats.multivariate_normal(xn.mean(0), cov + _ridge(cov, 1e-3) * np.eye(DIM))
    q, _ = _draw(50, 12, shift=True)
    np.testing.assert_allclose(det.log_density(q.double()).numpy(), ref.logpdf(q.double().numpy()), rtol=1e-11)
    np.testing.assert_allclose(det.score(q).numpy(), -ref.logpdf(q.double().numpy()), rtol=1e-6)
    torch.testing.assert_close(det.covariance_, torch.as_tensor(ref.cov), rtol=1e-12, atol=1e-12)


def test_mgm_reg_zero_on_a_regular_covariance_and_the_ridge_is_relative():
    x, _ = _draw(300, 11)
    xn = x.double().numpy()
    det = D.MGM(reg=0.0).fit(x.double())
    assert det.ridge_ == 0.0
    ref = scipy.stats.multivariate_normal(xn.mean(0), np.cov(xn, rowvar=False))
    np.testing.assert_allclose(det.log_density(x.double()[:20]).numpy(), ref.logpdf(xn[:20]), rtol=1e-11)
    # features scaled by s: the ridge scales by s^2, MAHA's distances do not move, MGM's -log p moves by d log s
    q = _draw(20, 12, shift=True)[0].double()
    for s in (1e-3, 50.0):
        mgm, mgm_s = D.MGM(reg=1e-2).fit(x.double()), D.MGM(reg=1e-2).fit(s * x.double())
        assert mgm_s.ridge_ == pytest.approx(s * s * mgm.ridge_, rel=1e-12)
        np.testing.assert_allclose(mgm_s.score(s * q).numpy(), mgm.score(q).numpy() + DIM * math.log(s), rtol=1e-10)
        maha, maha_s = D.Mahalanobis(reg=1e-2).fit(x.double()), D.Mahalanobis(reg=1e-2).fit(s * x.double())
        np.testing.assert_allclose(maha_s.score(s * q).numpy(), maha.score(q).numpy(), rtol=1e-10)
        np.testing.assert_allclose(maha_s.reference_scores_.numpy(), maha.reference_scores_.numpy(), rtol=1e-9)


def test_mgm_singular_covariance_is_regularised_and_too_small_reg_explains():
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(10, 40, generator=g, dtype=torch.float64)  # d > n
    dup = torch.randn(200, 8, generator=g, dtype=torch.float64)
    dup = torch.cat([dup, dup[:, :3], torch.ones(200, 1, dtype=torch.float64)], 1)  # duplicated + constant columns
    for x in (wide, dup):
        det = D.MGM(reg=1e-3).fit(x)
        xn = x.numpy()
        cov = np.cov(xn, rowvar=False)
        ref = scipy.stats.multivariate_normal(xn.mean(0), cov + _ridge(cov, 1e-3) * np.eye(x.shape[1]))
        np.testing.assert_allclose(det.log_density(x).numpy(), ref.logpdf(xn), rtol=1e-9)
        for cls in (D.MGM, D.Mahalanobis):
            with pytest.raises(ValueError, match=r"reg=0 is too small.*Use a larger reg, e\.g\. reg=\d"):
                cls(reg=0.0).fit(x)


def test_gaussian_training_scores_are_exact_leave_one_out():
    # leave-one-out with the ridge lambda of the full fit: the Gaussian of the other N - 1
    # points plus the same lambda I, computed here directly in numpy / scipy
    x, y = _draw(60, 19)
    x = x.double()
    xn, yn = x.numpy(), y.numpy()
    mgm, maha = D.MGM(reg=0.05).fit(x), D.Mahalanobis(reg=0.05).fit(x, y)
    for i in (0, 7, 31):
        keep = np.arange(60) != i
        o, oy = xn[keep], yn[keep]
        ref = scipy.stats.multivariate_normal(o.mean(0), np.cov(o, rowvar=False) + mgm.ridge_ * np.eye(DIM))
        assert mgm.reference_scores_[i].item() == pytest.approx(-ref.logpdf(xn[i]), rel=1e-9), i
        means = np.stack([o[oy == c].mean(0) for c in (0, 1)])
        sigma = (o - means[oy]).T @ (o - means[oy]) / len(o) + maha.ridge_ * np.eye(DIM)
        d2 = [(xn[i] - m) @ np.linalg.solve(sigma, xn[i] - m) for m in means]
        assert maha.reference_scores_[i].item() == pytest.approx(min(d2), rel=1e-9), i
        # the same as a refit on the N - 1 points whose relative reg gives that lambda
        other = D.MGM(reg=0.05 * mgm.ridge_ / _ridge(np.cov(o, rowvar=False), 0.05)).fit(x[keep])
        assert other.ridge_ == pytest.approx(mgm.ridge_, rel=1e-12)
        assert mgm.reference_scores_[i].item() == pytest.approx(other.score(x[i : i + 1]).item(), rel=1e-9), i


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
    cov = centred.T @ centred / len(xn)
    sigma = cov + _ridge(cov, 1e-2) * np.eye(DIM)
    q = _draw(30, 14, shift=True)[0].double().numpy()
    d2 = np.stack([np.einsum("ij,ij->i", q - m, np.linalg.solve(sigma, (q - m).T).T) for m in means], 1)
    np.testing.assert_allclose(det.class_distances(torch.as_tensor(q)).numpy(), d2, rtol=1e-10)
    np.testing.assert_allclose(det.score(torch.as_tensor(q)).numpy(), d2.min(1), rtol=1e-10)
    # without labels: one class, the plain Mahalanobis distance to the overall mean
    one = D.Mahalanobis(reg=1e-2).fit(x)
    c = xn - xn.mean(0)
    s1 = c.T @ c / len(xn) + _ridge(c.T @ c / len(xn), 1e-2) * np.eye(DIM)
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
    # clean_val_features: other clean rows as the negative class; the reference scores stay the training rows'
    same = D.DNNDetector(epochs=2, seed=3).fit(data["train"], adv_features=data["shifted"][0],
                                               clean_val_features=data["train"])
    assert torch.equal(same.score(data["test"][:50]), a.score(data["test"][:50]))
    other = D.DNNDetector(epochs=2, seed=3).fit(data["train"], adv_features=data["shifted"][0],
                                                clean_val_features=data["test"])
    assert other.reference_scores_.shape == (N_TRAIN,)
    assert not torch.equal(other.score(data["test"][:50]), a.score(data["test"][:50]))


def test_layer_detectors_keep_their_own_clean_training_scores(data):
    ens = D.LIDDetector(k=20).fit(_layers(data["train"]), adv_features=_layers(data["shifted"][0]))
    for layer, x in _layers(data["train"]).items():
        assert torch.equal(ens.layer_detectors_[layer].reference_scores_, D.LID(k=20).fit(x).reference_scores_)


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


def test_not_fitted_error_names_the_method_and_the_declared_fit_call():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(DIM, 2))
    for det, call in ((D.KD(), r"\.fit\(clean_features, labels\)"),
                      (D.MahaEnsemble(), r"\.fit\(clean_features, labels, adv_features=\.\.\.\)"),
                      (D.BU(model), r"\.fit\(clean_images\)")):
        with pytest.raises(D.NotFittedError, match=rf"{type(det).__name__} is not fitted yet: call {call} "
                                                   r"before \.threshold\(\)"):
            det.threshold()
    with pytest.raises(D.NotFittedError, match=r"MGM is not fitted yet: call \.fit\(clean_features\) before "
                                               r"\.log_density\(\)"):
        D.check_is_fitted(D.MGM(), "log_density")


def test_fitted_state_is_the_trailing_underscore_attributes(data):
    def fitted_attributes(det):
        return [k for k, v in vars(det).items() if k.endswith("_") and v is not None]

    det = D.KD(bandwidth=1.0)
    assert not det.is_fitted and fitted_attributes(det) == []
    det.fit(data["train"], data["y_train"])
    assert det.is_fitted and {"classes_", "class_features_", "n_features_in_", "reference_scores_"} <= set(
        fitted_attributes(det))
    assert det.reference_scores_.shape == (N_TRAIN,)  # the clean training scores, never a placeholder
    # a failed refit leaves neither half a fit nor the old one (KD needs 2 rows per class; _fit fails
    # after it has set classes_)
    with pytest.raises(ValueError, match="at least 2 clean training features per class"):
        det.fit(data["train"][:3], torch.tensor([0, 0, 1]))
    assert not det.is_fitted and fitted_attributes(det) == []
    with pytest.raises(D.NotFittedError, match=r"before \.score\(\)"):
        det.score(data["test"], data["y_test"])


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


# ---- two-sided detection ---------------------------------------------------------------


def test_two_sided_detector(data):
    base = D.MGM().fit(data["train"])
    two = D.TwoSided(base)
    med = float(np.median(base.reference_scores_.numpy()))
    assert two.center_ == pytest.approx(med)
    feats = data["test"][:10]
    torch.testing.assert_close(two.score(feats), (base.score(feats) - med).abs())
    assert (two.reference_scores_ <= two.threshold(0.95)).double().mean() >= 0.95
    # a feature at the mean (too typical: lowest MGM score) is flagged by the two-sided detector only
    typical = data["train"].mean(0, keepdim=True)
    assert not bool(base.predict(typical)[0]) and bool(two.predict(typical)[0])
    assert D.TwoSided(D.MGM()).fit(data["train"]).center_ == pytest.approx(med)
    two.calibrate(data["test"])
    assert two.center_ == pytest.approx(float(np.median(base.score(data["test"]).numpy())))
    # it declares, and is fitted on, what the wrapped detector is
    with pytest.raises(D.NotFittedError, match=r"TwoSided is not fitted yet: call \.fit\(clean_features, labels\)"):
        D.TwoSided(D.KD()).score(feats, data["y_test"][:10])
    sup = D.TwoSided(D.LIDDetector(k=20)).fit(_layers(data["train"]), adv_features=_layers(data["shifted"][0]))
    assert sup.inputs.view == "layers" and sup.reference_scores_.shape == (N_TRAIN,)
    with pytest.raises(TypeError, match="Detector"):
        D.TwoSided(base.score)


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


def test_bu_runs_the_backbone_once_and_gives_the_numbers_of_whole_passes():
    """With only the head's dropout active, MC dropout may run the backbone once per batch: same masks from
    the same generator, so the same variances as T whole forward passes (a wrapper hides the Classifier)."""
    from medadv_tutorial.detectors import mc_dropout_variance
    from medadv_tutorial.models import build_model
    from medadv_tutorial.rng import seeded_global_rng

    with seeded_global_rng(0):
        model = build_model("efficientnet_lite0", 2, 1, 32, pretrained=False).eval()
    x = torch.rand(7, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a head whose logits vary by about 1 over the (tiny, untrained) features
        pooled = model.forward_features(x, layers=["penultimate"], logits=False)[1]["penultimate"]
        w = torch.randn(model.fc.weight.shape, generator=torch.Generator().manual_seed(2))
        model.fc.weight.copy_(w / pooled.std() / pooled.shape[1] ** 0.5)

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    fast = mc_dropout_variance(model, x, 6, batch_size=3, seed=0)
    slow = mc_dropout_variance(Hidden(model), x, 6, batch_size=3, seed=0)
    assert float(fast.max()) > 1e-3, "the test needs dropout to change the softmax"
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    assert not torch.equal(fast, mc_dropout_variance(model, x, 6, batch_size=3, seed=1))  # the masks matter


# ------------------------------------------------------------------ MAHA's input pre-processing (Lee et al.)

class _PooledImage(torch.nn.Module):
    """A 'model' whose taps are the image's channel means, plus a squared tap: the gradient is known by hand."""

    feature_names = ["pooled", "squared", "penultimate"]

    def __init__(self):
        super().__init__()
        self.dropout = torch.nn.Dropout(0.5)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward_features(self, x, layers=None, logits=True):
        pooled = x.mean(dim=(2, 3)) * self.scale
        feats = {"pooled": pooled, "squared": pooled ** 2, "penultimate": pooled}
        return (pooled if logits else None), {k: feats[k] for k in (layers or self.feature_names)}

    def forward(self, x):
        return self.forward_features(x)[0]


def _maha_toy():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 3, generator=g, dtype=torch.float64) + 0.5
    labels = torch.arange(40) % 2
    f[labels == 1] += 0.2
    return f, labels, D.Mahalanobis(1e-3).fit(f, labels)


def test_input_preprocessing_moves_each_feature_against_the_gradient_of_the_closest_class_distance():
    """Taps = channel means of the image: the step moves feature c by -magnitude * sign(dM/df_c), with
    dM/df = 2 Sigma^-1 (f - mu_closest) by hand."""
    _, _, maha = _maha_toy()
    model = _PooledImage()
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    out = D.input_preprocessing(model, x, {"pooled": maha}, 0.01)
    assert list(out) == ["pooled"] and out["pooled"].shape == (6, 3) and out["pooled"].dtype == torch.float32
    f = x.mean(dim=(2, 3)).double()
    d = maha.class_distances(f)
    mu = maha.means_[d.argmin(dim=1)]
    grad = 2 * (f - mu) @ torch.linalg.inv(maha.covariance_)
    expected = f - 0.01 * grad.sign()
    assert torch.allclose(out["pooled"].double(), expected, atol=1e-6)
    assert (maha.score(out["pooled"]) < maha.score(f)).all()  # closer to the class mean: a lower score
    wrong_sign = f + 0.01 * grad.sign()  # a step the wrong way must not pass the check above
    assert not torch.allclose(out["pooled"].double(), wrong_sign, atol=1e-6)
    # the moved image stays in [0, 1]: an all-white image cannot move up, an all-black one not down
    edge = torch.stack([torch.ones(3, 5, 5), torch.zeros(3, 5, 5)])
    moved = D.input_preprocessing(model, edge, {"pooled": maha}, 0.01)["pooled"].double()
    step = -0.01 * (2 * (edge.mean(dim=(2, 3)).double() - maha.means_[maha.class_distances(
        edge.mean(dim=(2, 3)).double()).argmin(1)]) @ torch.linalg.inv(maha.covariance_)).sign()
    assert torch.allclose(moved, (edge.mean(dim=(2, 3)).double() + step).clamp(0, 1), atol=1e-6)


def test_input_preprocessing_takes_each_layer_separately_and_leaves_the_model_as_it_was():
    _, _, maha = _maha_toy()
    squared = D.Mahalanobis(1e-3).fit(maha.means_.repeat(10, 1) ** 2 + 0.01 * torch.randn(
        20, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64), torch.arange(20) % 2)
    model = _PooledImage()
    model.train()
    model.scale.requires_grad_(False)
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    zero = D.input_preprocessing(model, x, {"pooled": maha, "squared": squared}, 0.0, batch_size=2)
    assert torch.allclose(zero["pooled"], x.mean(dim=(2, 3))) and torch.allclose(zero["squared"], x.mean(dim=(2, 3)) ** 2)
    both = D.input_preprocessing(model, x, {"pooled": maha, "squared": squared}, 0.01, batch_size=2)
    alone = D.input_preprocessing(model, x, {"pooled": maha}, 0.01)
    assert torch.allclose(both["pooled"], alone["pooled"])  # a layer's step ignores the other layers
    assert model.training and model.dropout.training and not model.scale.requires_grad and model.scale.grad is None


def test_input_preprocessing_refuses_bad_arguments():
    _, _, maha = _maha_toy()
    model, x = _PooledImage(), torch.rand(2, 3, 4, 4)
    with pytest.raises(TypeError, match="layer_detectors must be a non-empty mapping"):
        D.input_preprocessing(model, x, {"pooled": D.MGM().fit(torch.randn(10, 3, dtype=torch.float64))}, 0.01)
    with pytest.raises(TypeError, match="layer_detectors must be a non-empty mapping"):
        D.input_preprocessing(model, x, {}, 0.01)
    with pytest.raises(KeyError, match="does not tap: \\['block9'\\]"):
        D.input_preprocessing(model, x, {"block9": maha}, 0.01)
    with pytest.raises(D.NotFittedError):
        D.input_preprocessing(model, x, {"pooled": D.Mahalanobis()}, 0.01)
    with pytest.raises(ValueError, match="magnitude"):
        D.input_preprocessing(model, x, {"pooled": maha}, -0.01)
    with pytest.raises(ValueError, match="images"):
        D.input_preprocessing(model, x * 3, {"pooled": maha}, 0.01)
    with pytest.raises(TypeError, match="model"):
        D.input_preprocessing(lambda t: t, x, {"pooled": maha}, 0.01)
