"""Detectors at their boundaries: the largest k of LID, distance blocks smaller than the data (the
leave-one-out mask across blocks), the kernel density's normalisation, the Gaussian detectors'
leave-one-out scores on tiny sets.  Known answers from numpy / scipy written out here, so that a
changed index, bound or constant fails a test (benchmarks/mutation.py)."""

import math

import numpy as np
import pytest
import scipy.special
import torch
from scipy.spatial.distance import cdist

from medadv_tutorial import detectors as D
from medadv_tutorial.detectors import kernel_density, lid
from test_detectors import _numpy_lid as numpy_lid

G = torch.Generator().manual_seed(5)
REF = torch.randn(15, 4, generator=G, dtype=torch.float64)
Q = torch.randn(7, 4, generator=G, dtype=torch.float64) + 0.5


def numpy_kde(q, train, h, exclude_self=False):
    d2 = cdist(q, train, "sqeuclidean")
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    n = len(train) - (1 if exclude_self else 0)
    d = train.shape[1]
    return scipy.special.logsumexp(-d2 / (2 * h * h), axis=1) - math.log(n) - d / 2 * math.log(2 * math.pi * h * h)


@pytest.mark.parametrize("exclude_self, kmax", [(False, 15), (True, 14)])
def test_lid_accepts_k_up_to_the_reference_size(exclude_self, kmax):
    q = REF if exclude_self else Q
    got = lid.lid_mle(q, REF, k=kmax, exclude_self=exclude_self)
    np.testing.assert_allclose(got.numpy(), numpy_lid(q.numpy(), REF.numpy(), kmax, exclude_self), rtol=1e-10)
    for bad in (kmax + 1, 0, True):
        with pytest.raises(ValueError, match=rf"k must be an int in \[1, {kmax}\]"):
            lid.lid_mle(q, REF, k=bad, exclude_self=exclude_self)


def test_lid_exclude_self_needs_the_reference_itself():
    with pytest.raises(ValueError, match="exclude_self=True needs features to be the reference set itself"):
        lid.lid_mle(Q, REF, k=3, exclude_self=True)


@pytest.mark.parametrize("elements", [15, 31, 45, 1])
def test_lid_in_small_blocks_equals_one_block(monkeypatch, elements):
    """Rows are taken in blocks of _CHUNK_ELEMENTS // m; the self-exclusion mask must follow the block."""
    whole_q, whole_self = lid.lid_mle(Q, REF, k=4), lid.lid_mle(REF, REF, k=4, exclude_self=True)
    monkeypatch.setattr(lid, "_CHUNK_ELEMENTS", elements)  # 1, 2 or 3 rows per block (at least one)
    # (a block's matrix product rounds differently: equal to 1e-12, not bit for bit)
    torch.testing.assert_close(lid.lid_mle(Q, REF, k=4), whole_q, rtol=1e-12, atol=0)
    torch.testing.assert_close(lid.lid_mle(REF, REF, k=4, exclude_self=True), whole_self, rtol=1e-12, atol=0)
    np.testing.assert_allclose(whole_self.numpy(), numpy_lid(REF.numpy(), REF.numpy(), 4, True), rtol=1e-10)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("elements", [1 << 24, 15, 45])
def test_kde_log_density_known_answer_in_any_block_size(monkeypatch, exclude_self, elements):
    monkeypatch.setattr(kernel_density, "_CHUNK_ELEMENTS", elements)
    q = REF if exclude_self else Q
    got = kernel_density.gaussian_kde_log_density(q, REF, bandwidth=0.7, exclude_self=exclude_self)
    np.testing.assert_allclose(got.numpy(), numpy_kde(q.numpy(), REF.numpy(), 0.7, exclude_self), rtol=1e-10)


def test_kde_exclude_self_checks():
    with pytest.raises(ValueError, match="exclude_self=True needs features to be the training set itself"):
        kernel_density.gaussian_kde_log_density(Q, REF, bandwidth=1.0, exclude_self=True)
    one = REF[:1]
    with pytest.raises(ValueError, match="n >= 2"):
        kernel_density.gaussian_kde_log_density(one, one, bandwidth=1.0, exclude_self=True)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_gaussian_detectors_on_tiny_training_sets(n):
    """Below three points there is no leave-one-out Gaussian: the in-sample score is the reference."""
    x = REF[:n]
    mgm = D.MGM(reg=0.1).fit(x)
    maha = D.Mahalanobis(reg=0.1).fit(x)
    if n < 3:
        assert torch.allclose(mgm.reference_scores_, mgm.score(x), rtol=1e-12)
        assert torch.allclose(maha.reference_scores_, maha.score(x), rtol=1e-12)
    else:  # leave-one-out: each point is scored by the Gaussian of the other n - 1 (their ridge: the fit's)
        xn = x.numpy()
        for i in range(n):
            o = np.delete(xn, i, axis=0)
            cov = np.cov(o, rowvar=False, bias=False) if n - 1 > 1 else np.zeros((4, 4))
            sigma = cov + mgm.ridge_ * np.eye(4)
            u = xn[i] - o.mean(0)
            nll = 0.5 * (u @ np.linalg.solve(sigma, u) + np.linalg.slogdet(sigma)[1] + 4 * math.log(2 * math.pi))
            assert mgm.reference_scores_[i].item() == pytest.approx(nll, rel=1e-8)
            cov_ml = (o - o.mean(0)).T @ (o - o.mean(0)) / len(o) + maha.ridge_ * np.eye(4)
            assert maha.reference_scores_[i].item() == pytest.approx(u @ np.linalg.solve(cov_ml, u), rel=1e-8)


def test_mahalanobis_leave_one_out_when_another_class_is_nearer():
    """Random labels on one cloud: for many points the nearest class mean, without the point, is the
    other class, so the leave-one-out distance to every class (not only the own) is checked."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    maha = D.Mahalanobis(reg=0.05).fit(x, y)
    xn, yn = x.numpy(), y.numpy()
    other_class_nearest = 0
    for i in range(40):
        keep = np.arange(40) != i
        o, oy = xn[keep], yn[keep]
        means = np.stack([o[oy == c].mean(0) for c in range(3)])
        sigma = (o - means[oy]).T @ (o - means[oy]) / len(o) + maha.ridge_ * np.eye(4)
        d2 = [(xn[i] - m) @ np.linalg.solve(sigma, xn[i] - m) for m in means]
        other_class_nearest += int(np.argmin(d2) != yn[i])
        assert maha.reference_scores_[i].item() == pytest.approx(min(d2), rel=1e-9), i
    assert other_class_nearest >= 10


def test_pairwise_distances_without_precomputed_norms():
    from medadv_tutorial.detectors.kernel_density import _pairwise_sq_dist

    np.testing.assert_allclose(_pairwise_sq_dist(Q, REF).numpy(), cdist(Q.numpy(), REF.numpy(), "sqeuclidean"),
                               rtol=1e-10, atol=1e-12)


def test_lid_with_k_one_and_kde_leaving_one_of_two_out():
    assert torch.isinf(lid.lid_mle(Q, REF, k=1)).all()  # r_1 / r_1 = 1: log 0, an infinite estimate, not an error
    two = REF[:2]
    got = kernel_density.gaussian_kde_log_density(two, two, bandwidth=0.5, exclude_self=True)
    np.testing.assert_allclose(got.numpy(), numpy_kde(two.numpy(), two.numpy(), 0.5, True), rtol=1e-12)


def _dropout_classifier():
    from medadv_tutorial.capacity import small_cnn

    torch.manual_seed(0)
    model = small_cnn(2, 3, 1)
    model.dropout.p = 0.5
    return model.eval()


def test_mc_dropout_variance_of_a_classifier_head_known_answer():
    model = _dropout_classifier()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    got = D.mc_dropout_variance(model, x, n_samples=4, seed=7)
    with torch.no_grad():
        pooled = model.forward_features(x, layers=["penultimate"], logits=False)[1]["penultimate"]
        torch.manual_seed(7)
        p = torch.stack([torch.softmax(model.fc(torch.nn.functional.dropout(pooled, 0.5, True)).double(), 1)
                         for _ in range(4)])
    torch.testing.assert_close(got, p.var(0, unbiased=False).sum(1))


def test_mc_dropout_variance_arguments():
    model = _dropout_classifier()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="n_samples"):
        D.mc_dropout_variance(model, x, n_samples=1)
    state = torch.random.get_rng_state()
    D.mc_dropout_variance(model, x, n_samples=2, seed=None)  # unseeded: draws from (and advances) the global RNG
    assert not torch.equal(torch.random.get_rng_state(), state)
    model.dropout.p = 0.0
    with pytest.raises(ValueError, match="no dropout layer with p > 0"):
        D.mc_dropout_variance(model, x)


def test_bu_scores_repeat():
    model = _dropout_classifier()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    bu = D.BU(model, n_samples=3).fit(x)
    assert torch.equal(bu.score(x), bu.score(x))


def test_fit_size_bounds():
    D.LID(k=1)  # the smallest k
    D.LID(k=3).fit(REF[:4])  # k + 1 rows suffice (each point's k neighbours, itself left out)
    with pytest.raises(ValueError, match=r"needs at least k\+1=4"):
        D.LID(k=3).fit(REF[:3])
    y = torch.tensor([0] * 13 + [1] * 2)  # two points of class 1: the least KD and Mahalanobis accept
    D.KD(bandwidth=1.0).fit(REF, y)
    D.Mahalanobis().fit(REF, y)
    y1 = torch.tensor([0] * 14 + [1])
    with pytest.raises(ValueError, match="KD needs at least 2 clean training features per class"):
        D.KD(bandwidth=1.0).fit(REF, y1)
    with pytest.raises(ValueError, match="Mahalanobis needs at least 2 clean training features per class"):
        D.Mahalanobis().fit(REF, y1)


@pytest.mark.parametrize("make, method", [(D.MGM, "log_density"), (D.Mahalanobis, "class_distances")])
def test_unfitted_messages_name_the_method(make, method):
    with pytest.raises(Exception, match=rf"before \.{method}\(\)"):
        getattr(make(), method)(REF)


def test_calibrate_scores_with_the_labels_given():
    y = torch.tensor([0, 1] * 7 + [0])
    kd = D.KD(bandwidth=1.0).fit(REF, y)
    kd.calibrate(Q, torch.tensor([0, 1, 0, 1, 0, 1, 0]))
    assert torch.equal(kd.reference_scores_, kd.score(Q, torch.tensor([0, 1, 0, 1, 0, 1, 0])))
    assert kd.reference_scores_.dtype == torch.float64
