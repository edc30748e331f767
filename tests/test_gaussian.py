"""medadv_tutorial.gaussian: known answers (scipy), the relative ridge, shapes, bad inputs."""

import math
import re

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from medadv_tutorial import gaussian as G
from medadv_tutorial import detectors, features, gmm, hfc, outliers

D = 6


def _data(n=200, d=D, seed=0, offset=40.0):
    """Correlated float64 features far from the origin, with very different scales per column."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.logspace(-1, 1, d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ A) * scales + offset


def _fit(x, reg):
    """(mean, cov, L, ridge, U) of features x with the relative ridge reg."""
    mean = x.mean(0)
    cov = torch.cov(x.T)
    L, ridge = G.regularised_cholesky(cov, reg)
    return mean, cov, L, ridge, G.precision_cholesky(L)


# ------------------------------------------------------------------ known answers


@pytest.mark.parametrize("reg", [0.0, 1e-3, 0.5])
def test_log_density_and_distances_equal_scipy(reg):
    x = _data()
    q = _data(30, seed=1)
    mean, cov, L, ridge, U = _fit(x, reg)
    cov_n = cov.numpy()
    assert ridge == pytest.approx(reg * np.trace(cov_n) / D, rel=1e-13)
    sigma = cov_n + ridge * np.eye(D)
    np.testing.assert_allclose((L @ L.T).numpy(), sigma, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((U @ U.T).numpy(), np.linalg.inv(sigma), rtol=1e-9, atol=1e-12)
    ref = scipy.stats.multivariate_normal(mean.numpy(), sigma)
    got = G.gaussian_log_prob(q, mean[None], U)
    assert got.shape == (30, 1) and got.dtype == torch.float64
    np.testing.assert_allclose(got[:, 0].numpy(), ref.logpdf(q.numpy()), rtol=1e-10)
    inv = np.linalg.inv(sigma)
    expected = np.array([scipy_mahalanobis(r, mean.numpy(), inv) ** 2 for r in q.numpy()])
    np.testing.assert_allclose(G.mahalanobis_sq(q, mean[None], U)[:, 0].numpy(), expected, rtol=1e-10)
    assert float(G.half_log_det_precision(U)) == pytest.approx(-0.5 * np.linalg.slogdet(sigma)[1], rel=1e-12)
    # outliers.mahalanobis is the same kernel, on the covariance factor
    np.testing.assert_allclose(outliers.mahalanobis(q, mean, L).numpy(), np.sqrt(expected), rtol=1e-10)


@pytest.mark.parametrize("s", [1e-4, 0.37, 1e3])
def test_the_ridge_is_relative(s):
    # features scaled by s: the ridge scales by s^2, distances do not move, log p moves by -d log s
    x, q = _data(), _data(25, seed=2)
    mean, cov, _, ridge, U = _fit(x, 1e-2)
    mean_s, cov_s, _, ridge_s, U_s = _fit(s * x, 1e-2)
    assert ridge_s == pytest.approx(s * s * ridge, rel=1e-12)
    np.testing.assert_allclose(G.mahalanobis_sq(s * q, mean_s[None], U_s).numpy(),
                               G.mahalanobis_sq(q, mean[None], U).numpy(), rtol=1e-10)
    np.testing.assert_allclose(G.gaussian_log_prob(s * q, mean_s[None], U_s).numpy(),
                               G.gaussian_log_prob(q, mean[None], U).numpy() - D * math.log(s), rtol=1e-10)
    # the same for scipy with the ridge added by hand: the ridge is reg x the mean variance
    sigma_s = cov_s.numpy() + 1e-2 * np.trace(cov_s.numpy()) / D * np.eye(D)
    np.testing.assert_allclose(G.gaussian_log_prob(s * q, mean_s[None], U_s)[:, 0].numpy(),
                               scipy.stats.multivariate_normal(mean_s.numpy(), sigma_s).logpdf((s * q).numpy()),
                               rtol=1e-11)


def test_several_gaussians_and_a_tied_factor_in_one_product():
    g = torch.Generator().manual_seed(3)
    K = 3
    covs = [torch.cov(_data(80, seed=10 + k).T) for k in range(K)]
    U = torch.stack([G.precision_cholesky(G.regularised_cholesky(c, 1e-3)[0]) for c in covs])
    means = torch.randn(K, D, generator=g, dtype=torch.float64) * 5 + 40
    q = _data(17, seed=4)
    got = G.gaussian_log_prob(q, means, U)
    for k in range(K):
        sigma = np.linalg.inv((U[k] @ U[k].T).numpy())
        ref = scipy.stats.multivariate_normal(means[k].numpy(), sigma).logpdf(q.numpy())
        np.testing.assert_allclose(got[:, k].numpy(), ref, rtol=1e-10)
    # a tied factor (d, d) for every mean gives what K copies of it give
    tied = G.mahalanobis_sq(q, means, U[0])
    assert tied.shape == (17, K)
    torch.testing.assert_close(tied, G.mahalanobis_sq(q, means, U[0].expand(K, D, D)), rtol=1e-12, atol=0)
    w = G.whitening(means, U[0])
    assert w.flat.shape == (D, D) and G.residuals(q, w).shape == (17, K, D)


def test_float32_and_gradient():
    x, q = _data(), _data(5, seed=5)
    mean, _, _, _, U = _fit(x, 1e-3)
    q32 = q.float().requires_grad_(True)
    m32 = G.mahalanobis_sq(q32, mean[None].float(), U.float())
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), G.mahalanobis_sq(q, mean[None], U), rtol=1e-4, atol=0)
    qg = q.clone().requires_grad_(True)
    G.mahalanobis_sq(qg, mean[None], U).sum().backward()
    expected = 2 * (q - mean) @ (U @ U.T)  # d/dx (x - mu)^T Sigma^-1 (x - mu)
    torch.testing.assert_close(qg.grad, expected, rtol=1e-10, atol=1e-12)


def test_exact_sum_gives_the_same_bits_with_and_without_autograd():
    x, q = _data(), _data(40, seed=6)
    for dtype in (torch.float32, torch.float64):
        mean, _, _, _, U = _fit(x, 1e-3)
        w = G.whitening(mean[None], U[None]).to(dtype=dtype)
        qd = q.to(dtype)
        with torch.no_grad():
            plain = G.whitened_sq(qd, w, exact_sum=True)
            fused = G.whitened_sq(qd, w)
        with_grad = G.whitened_sq(qd.clone().requires_grad_(True), w)
        assert torch.equal(plain, with_grad.detach())
        torch.testing.assert_close(fused, plain, rtol=1e-5 if dtype == torch.float32 else 1e-13, atol=0)


def test_one_implementation():
    assert gmm.mahalanobis_sq is G.mahalanobis_sq and gmm.gaussian_log_prob is G.gaussian_log_prob
    for module in (gmm, hfc, detectors, features):
        assert not hasattr(module, "_LOG_2PI"), module.__name__
    assert not hasattr(detectors, "_regularised_cholesky") and not hasattr(features, "_mahalanobis")
    assert G.LOG_2PI == math.log(2 * math.pi)
    assert float(G.log_density(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0), 1)) == \
        pytest.approx(scipy.stats.norm.logpdf(0.0), rel=1e-15)


# ------------------------------------------------------------------ the ridge's errors


def test_singular_covariance_explains_and_the_suggested_reg_works():
    g = torch.Generator().manual_seed(7)
    wide = torch.randn(10, 40, generator=g, dtype=torch.float64)  # n <= d: rank 9
    cov = torch.cov(wide.T)
    msg = (r"MGM: the covariance of clean_features \(d=40\) is singular or nearly so \(n=10 samples <= d=40 "
           r"dimensions\), and reg=0 is too small .* Use a larger reg, e\.g\. reg=(\S+) \(reg is relative")
    with pytest.raises(ValueError, match=msg) as err:
        G.regularised_cholesky(cov, 0.0, n=10, name="clean_features", who="MGM")
    suggested = float(re.search(msg, str(err.value)).group(1))
    L, ridge = G.regularised_cholesky(cov, suggested, n=10)
    assert ridge == pytest.approx(suggested * float(torch.trace(cov)) / 40) and bool(torch.isfinite(L).all())
    # duplicated columns: no n given, the other reason
    dup = torch.cat([wide[:, :3], wide[:, :3]], 1)
    with pytest.raises(ValueError, match=r"correlated, duplicated or constant features\), and reg=0 is too small"):
        G.regularised_cholesky(torch.cov(dup.T), 0.0)
    # constant features: the mean variance is floored, a positive reg still factorises
    L, ridge = G.regularised_cholesky(torch.zeros(3, 3, dtype=torch.float64), 1e-3)
    assert ridge == pytest.approx(1e-15) and bool((torch.diagonal(L) > 0).all())


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda: G.regularised_cholesky(torch.eye(3), -1.0), ValueError, r"\breg \(relative ridge\) must be >= 0"),
    (lambda: G.regularised_cholesky(torch.eye(3), float("nan")), ValueError, r"\breg \(relative ridge\) must be a"),
    (lambda: G.regularised_cholesky(torch.eye(3), "1e-3"), TypeError, r"\breg \(relative ridge\) must be a real"),
    (lambda: G.regularised_cholesky(torch.ones(3, 4), 1e-3), ValueError, r"\bcov must be a square floating matrix"),
    (lambda: G.regularised_cholesky(torch.eye(3, dtype=torch.int64), 1e-3), ValueError, r"\bcov must be a square"),
    (lambda: G.regularised_cholesky(np.eye(3), 1e-3), ValueError, r"\bcov must be a square floating matrix"),
    (lambda: G.regularised_cholesky(torch.full((2, 2), float("nan")), 1e-3), ValueError,
     r"\bthe features are too large: their covariance overflows float64 \(it holds NaN"),
    (lambda: G.regularised_cholesky(torch.full((2, 2), float("inf")), 1e-3, name="feats"), ValueError,
     r"\bfeats are too large: their covariance overflows float64 .*; rescale"),
    (lambda: G.regularised_cholesky(torch.eye(2), 1e-3, ridge=-1.0), ValueError, r"\bridge must be >= 0"),
    (lambda: G.relative_ridge(torch.eye(2), -0.5), ValueError, r"\breg \(relative ridge\) must be >= 0"),
    (lambda: G.precision_cholesky(torch.ones(3)), ValueError, r"\bchol must have shape \(d, d\) or \(K, d, d\)"),
    (lambda: G.mahalanobis_sq(torch.ones(4, 3), torch.zeros(2, 3), torch.eye(3).expand(3, 3, 3)), ValueError,
     r"\bprecisions_cholesky must have shape \(2, 3, 3\) \(one factor per mean\) or \(3, 3\)"),
    (lambda: G.mahalanobis_sq(torch.ones(4, 5), torch.zeros(2, 3), torch.eye(3)), ValueError,
     r"\bX must have shape \(N, 3\) like means"),
    (lambda: G.mahalanobis_sq(np.ones((4, 3)), torch.zeros(2, 3), torch.eye(3)), TypeError,
     r"\bX, means and precisions_cholesky must be tensors"),
    (lambda: G.gaussian_log_prob(torch.ones(4, 3), torch.zeros(3), torch.eye(3)), TypeError,
     r"\bmeans a tensor of dtype torch\.float32 and shape \(3,\)"),
    (lambda: G.whitening(torch.zeros(2, 3), torch.eye(4)), ValueError, r"\bprecisions_cholesky must have shape"),
], ids=lambda v: None)
def test_bad_inputs(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_sample_ridge_is_the_relative_ridge_of_the_biased_covariance():
    from medadv_tutorial.gaussian import relative_ridge, sample_ridge

    x = torch.randn(50, 7, dtype=torch.float64) * torch.arange(1, 8, dtype=torch.float64)
    xc = x - x.mean(0)
    cov = xc.T @ xc / len(x)
    assert sample_ridge(x, 1e-3) == pytest.approx(relative_ridge(cov, 1e-3), rel=1e-12)
    assert sample_ridge(torch.zeros(5, 3, dtype=torch.float64), 0.5) == 0.5 * 1e-12  # the floor
    with pytest.raises(ValueError, match="overflows"):
        sample_ridge(torch.tensor([[1e300, 0.0], [-1e300, 1.0]], dtype=torch.float64), 1e-3)
