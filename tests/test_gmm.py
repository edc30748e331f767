"""medadv_tutorial.gmm: EM in torch checked against scikit-learn's GaussianMixture(covariance_type="full")."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture as SkGMM

from medadv_tutorial.gmm import (
    ConvergenceWarning,
    GaussianMixture,
    gaussian_log_prob,
    kmeans_plusplus,
    mahalanobis_sq,
    precision_cholesky_from_covariance,
    precision_cholesky_from_precision,
)

torch.set_num_threads(1)


def blobs(n=600, d=5, seed=0, spread=3.0):
    """Three anisotropic Gaussian clusters, (n, d) float64."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(3):
        A = rng.normal(size=(d, d)) * (0.3 + 0.4 * k)
        parts.append(rng.normal(size=(n // 3, d)) @ A + spread * rng.normal(size=d))
    return np.concatenate(parts)


def kmeans_init(X, K, reg_covar=1e-6, seed=0):
    """scikit-learn's initial parameters for init_params='kmeans' (one-hot K-means responsibilities)."""
    labels = KMeans(K, n_init=1, random_state=seed).fit(X).labels_
    resp = np.eye(K)[labels]
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    means = resp.T @ X / nk[:, None]
    covs = np.stack([(resp[:, k] * (X - means[k]).T) @ (X - means[k]) / nk[k] for k in range(K)])
    covs += reg_covar * np.eye(X.shape[1])
    return {"weights_init": nk / len(X), "means_init": means, "precisions_init": np.linalg.inv(covs)}, labels


def sk_weighted_log_prob(sk, X):
    """log pi_k + log N(x | mu_k, Sigma_k) from scikit-learn's fitted parameters (scipy densities)."""
    return np.stack([np.log(w) + multivariate_normal(m, c).logpdf(X)
                     for w, m, c in zip(sk.weights_, sk.means_, sk.covariances_)], axis=1)


@pytest.fixture(scope="module")
def X():
    return blobs()


# --------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("tol,max_iter", [(1e-3, 100), (1e-10, 1000)])
def test_em_matches_sklearn_from_the_same_initial_parameters(X, tol, max_iter):
    init, _ = kmeans_init(X, 3)
    sk = SkGMM(3, covariance_type="full", tol=tol, max_iter=max_iter, **init).fit(X)
    ours = GaussianMixture(3, tol=tol, max_iter=max_iter, **init).fit(torch.from_numpy(X))
    Xt = torch.from_numpy(X)
    assert ours.n_iter_ == sk.n_iter_ and ours.converged_ == sk.converged_
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-9)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(ours.score_samples(Xt).numpy(), sk.score_samples(X), rtol=1e-7, atol=0)
    assert ours.score(Xt) == pytest.approx(sk.score(X), rel=1e-9)
    np.testing.assert_allclose(ours.weights_.numpy(), sk.weights_, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(ours.means_.numpy(), sk.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_.numpy(), sk.covariances_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.precisions_cholesky_.numpy(), sk.precisions_cholesky_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.precisions_.numpy(), sk.precisions_, rtol=1e-6, atol=1e-8)
    wlp = ours.estimate_weighted_log_prob(Xt).numpy()
    np.testing.assert_allclose(wlp, sk_weighted_log_prob(sk, X), rtol=1e-7, atol=1e-8)
    assert torch.equal(ours.predict(Xt), torch.from_numpy(sk.predict(X)))
    np.testing.assert_allclose(ours.predict_proba(Xt).numpy(), sk.predict_proba(X), atol=1e-9)


def test_resp_init_reproduces_sklearn_default_kmeans_init(X):
    """sklearn's default init is one-hot K-means labels; the same labels as resp_init give the same fit."""
    _, labels = kmeans_init(X, 3, seed=7)
    sk = SkGMM(3, covariance_type="full", random_state=7).fit(X)
    ours = GaussianMixture(3, resp_init=np.eye(3)[labels]).fit(torch.from_numpy(X))
    assert ours.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(ours.score_samples(torch.from_numpy(X)).numpy(), sk.score_samples(X), rtol=1e-7)


def test_float32_close_to_float64(X):
    init, _ = kmeans_init(X, 3)
    ref = GaussianMixture(3, **init).fit(torch.from_numpy(X))
    f32 = GaussianMixture(3, dtype=torch.float32, **init).fit(torch.from_numpy(X).float())
    assert f32.means_.dtype == torch.float32
    assert f32.score(torch.from_numpy(X)) == pytest.approx(ref.score(torch.from_numpy(X)), rel=1e-4)


# --------------------------------------------------------------------------- own initialisation


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++"])
def test_own_initialisation_reaches_sklearn_best_loglik(X, init_params):
    best = SkGMM(3, covariance_type="full", n_init=5, random_state=0).fit(X).score(X)
    ours = GaussianMixture(3, init_params=init_params, seed=0).fit(torch.from_numpy(X))
    assert ours.converged_
    assert abs(ours.score(torch.from_numpy(X)) - best) <= 0.01 * abs(best)


def test_n_init_keeps_the_best_and_seed_is_reproducible(X):
    Xt = torch.from_numpy(X)
    a = GaussianMixture(3, init_params="random", n_init=3, seed=1).fit(Xt)
    b = GaussianMixture(3, init_params="random", n_init=3, seed=1).fit(Xt)
    assert torch.equal(a.means_, b.means_)
    first = GaussianMixture(3, init_params="random", seed=1).fit(Xt)  # the first of a's three starts
    assert a.lower_bound_ >= first.lower_bound_ - 1e-12


def test_kmeans_plusplus_picks_distinct_data_points(X):
    Xt = torch.from_numpy(X)
    centers, idx = kmeans_plusplus(Xt, 3, seed=0)
    assert centers.shape == (3, 5) and len(set(idx.tolist())) == 3
    assert torch.equal(centers, Xt[idx])
    _, idx2 = kmeans_plusplus(Xt, 3, seed=0)
    assert torch.equal(idx, idx2)


# --------------------------------------------------------------------------- degenerate data


def test_collinear_and_constant_features_are_handled_by_reg_covar():
    X = blobs(d=4)
    X = np.concatenate([X, X[:, :1] + X[:, 1:2], np.zeros((len(X), 1))], axis=1)  # rank 4 of 6
    init, _ = kmeans_init(X, 3, reg_covar=1e-6)
    sk = SkGMM(3, covariance_type="full", **init).fit(X)
    ours = GaussianMixture(3, **init).fit(torch.from_numpy(X))
    s = ours.score_samples(torch.from_numpy(X)).numpy()
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s, sk.score_samples(X), rtol=1e-6)
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(3, reg_covar=0.0).fit(torch.from_numpy(X))


def test_nonconvergence_warns():
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        GaussianMixture(3, max_iter=1, tol=0.0).fit(torch.from_numpy(blobs()))


# --------------------------------------------------------------------------- kernels and API


def test_kernels_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(7, 4, generator=g, dtype=torch.float64) + 5.0
    means = torch.randn(2, 4, generator=g, dtype=torch.float64) + 5.0
    A = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    cov = A @ A.transpose(1, 2) + 0.5 * torch.eye(4, dtype=torch.float64)
    U = precision_cholesky_from_covariance(cov)
    assert torch.allclose(torch.triu(U), U)
    assert torch.allclose(U @ U.transpose(1, 2), torch.linalg.inv(cov), atol=1e-10)
    assert torch.allclose(precision_cholesky_from_precision(torch.linalg.inv(cov)), U, atol=1e-10)
    diff = X[:, None, :] - means[None]
    direct = torch.einsum("nkd,kde,nke->nk", diff, torch.linalg.inv(cov), diff)
    assert torch.allclose(mahalanobis_sq(X, means, U), direct, atol=1e-9)
    mvn = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    assert torch.allclose(gaussian_log_prob(X, means, U), mvn.log_prob(X[:, None, :]), atol=1e-9)


def test_api_shapes_and_validation(X):
    Xt = torch.from_numpy(X)
    gmm = GaussianMixture(2)
    with pytest.raises(RuntimeError, match="not fitted"):
        gmm.score_samples(Xt)
    gmm.fit(X)  # numpy input
    assert gmm.weights_.shape == (2,) and gmm.means_.shape == (2, 5)
    assert gmm.covariances_.shape == gmm.precisions_cholesky_.shape == (2, 5, 5)
    assert gmm.estimate_weighted_log_prob(Xt).shape == (600, 2)
    s = gmm.score_samples(Xt)
    assert s.shape == (600,) and s.dtype == torch.float64
    assert gmm.score(Xt) == pytest.approx(float(s.mean()))
    assert torch.equal(gmm.predict(Xt), gmm.estimate_weighted_log_prob(Xt).argmax(1))
    assert torch.allclose(torch.logsumexp(gmm.estimate_weighted_log_prob(Xt), 1), s)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        gmm.score_samples(Xt[:, :3])
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2).fit(torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="means_init"):
        GaussianMixture(2, means_init=np.zeros((3, 5))).fit(Xt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(X):
    init, _ = kmeans_init(X, 3)
    cpu = GaussianMixture(3, **init).fit(torch.from_numpy(X))
    gpu = GaussianMixture(3, **init).fit(torch.from_numpy(X).cuda())
    assert gpu.means_.is_cuda
    s = gpu.score_samples(torch.from_numpy(X).cuda())
    assert s.is_cuda
    np.testing.assert_allclose(s.cpu().numpy(), cpu.score_samples(torch.from_numpy(X)).numpy(), rtol=1e-7)
