"""medadv_tutorial.gmm: the initialisation, the start selection and moving a fitted mixture, pinned down
exactly (known answers against scikit-learn and against the algorithms written out here), so that a
changed constant, comparison or index in them fails a test (benchmarks/mutation.py)."""

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture as SkGMM

from medadv_tutorial.gmm import GaussianMixture, kmeans_plusplus

torch.set_num_threads(1)
# scikit-learn warns that one EM iteration (max_iter=1) did not converge: that is the point of those fits
pytestmark = pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")


def blobs(n=300, d=3, seed=0, spread=4.0):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=(n // 3, d)) * (0.5 + 0.3 * k) + spread * rng.normal(size=d) for k in range(3)]
    return np.concatenate(parts)


X = blobs()
XT = torch.from_numpy(X)


def greedy_kmeans_plusplus(x: np.ndarray, k: int, gen: torch.Generator, trials: int):
    """k-means++ with greedy local trials, written out with the same random draws as the package."""
    n = len(x)
    d2 = lambda c: ((x - x[c]) ** 2).sum(1)  # noqa: E731
    first = int(torch.randint(n, (1,), generator=gen))
    chosen, closest = [first], d2(first)
    for _ in range(1, k):
        r = torch.rand(trials, generator=gen, dtype=torch.float64).numpy() * closest.sum()
        cand = np.minimum(np.searchsorted(np.cumsum(closest), r), n - 1)
        pots = [np.minimum(closest, d2(c)).sum() for c in cand]
        best = int(np.argmin(pots))
        chosen.append(int(cand[best]))
        closest = np.minimum(closest, d2(int(cand[best])))
    return chosen


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 3])
def test_kmeans_plusplus_is_the_greedy_algorithm(k, seed):
    _, idx = kmeans_plusplus(XT, k, seed=seed)
    trials = 2 + int(math.log(k))
    assert idx.tolist() == greedy_kmeans_plusplus(X, k, torch.Generator().manual_seed(seed), trials)


def test_kmeans_plusplus_trials_and_generator():
    _, idx = kmeans_plusplus(XT, 4, seed=None, n_local_trials=1)  # seed None: generator seeded with 0
    assert idx.tolist() == greedy_kmeans_plusplus(X, 4, torch.Generator().manual_seed(0), 1)
    gen = torch.Generator().manual_seed(11)
    _, idx = kmeans_plusplus(XT, 4, generator=gen, n_local_trials=7)
    assert idx.tolist() == greedy_kmeans_plusplus(X, 4, torch.Generator().manual_seed(11), 7)


def test_kmeans_plusplus_on_separated_clusters_takes_one_point_of_each():
    labels = np.repeat(np.arange(3), 100)
    for seed in range(5):
        _, idx = kmeans_plusplus(XT, 3, seed=seed)
        assert sorted(labels[idx.numpy()]) == [0, 1, 2]


def test_kmeans_plusplus_with_every_point_and_duplicates():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
    _, idx = kmeans_plusplus(x, 4, seed=0)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"n_clusters must be in \[1, N=4\]"):
        kmeans_plusplus(x, 5)
    with pytest.raises(TypeError, match="X must be a floating tensor"):
        kmeans_plusplus(x.long(), 2)


# --------------------------------------------------------------------------- the initial responsibilities


def test_random_init_is_normalised_uniform_draws():
    gmm = GaussianMixture(3, init_params="random", seed=5)
    resp = gmm._initial_resp(XT, torch.Generator().manual_seed(5))
    raw = torch.rand(len(X), 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(resp, raw / raw.sum(1, keepdim=True), rtol=0, atol=1e-15)


def test_kmeans_plusplus_init_is_one_hot_on_the_seeds():
    gmm = GaussianMixture(3, init_params="k-means++", seed=2)
    resp = gmm._initial_resp(XT, torch.Generator().manual_seed(2))
    _, idx = kmeans_plusplus(XT, 3, generator=torch.Generator().manual_seed(2))
    expected = torch.zeros(len(X), 3, dtype=torch.float64)
    expected[idx, torch.arange(3)] = 1.0
    assert torch.equal(resp, expected)


def test_kmeans_init_is_one_hot_on_lloyd_labels_from_the_seeds():
    gmm = GaussianMixture(3, seed=4)
    resp = gmm._initial_resp(XT, torch.Generator().manual_seed(4))
    centers, _ = kmeans_plusplus(XT, 3, generator=torch.Generator().manual_seed(4))
    labels = KMeans(3, init=centers.numpy(), n_init=1, algorithm="lloyd").fit(X).labels_
    assert torch.equal(resp, torch.from_numpy(np.eye(3)[labels]))


def test_resp_init_rows_are_normalised_and_checked():
    r = np.ones((len(X), 2))
    r[:, 0] = 3.0
    gmm = GaussianMixture(2, resp_init=r)
    resp = gmm._initial_resp(XT, torch.Generator())
    assert torch.allclose(resp[:, 0], torch.full((len(X),), 0.75, dtype=torch.float64), rtol=0, atol=1e-15)
    bad = r.copy()
    bad[5] = 0.0
    with pytest.raises(ValueError, match="positive sum in every row"):
        GaussianMixture(2, resp_init=bad).fit(XT)
    bad[5] = [-1.0, 2.0]
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixture(2, resp_init=bad).fit(XT)


# --------------------------------------------------------------------------- explicit initial parameters


def test_means_init_alone_overrides_only_the_means():
    """scikit-learn: weights and covariances from the K-means responsibilities, the means given."""
    labels = KMeans(3, n_init=1, random_state=7).fit(X).labels_
    means = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-1.0, 2.0, 0.5]])
    sk = SkGMM(3, covariance_type="full", means_init=means, max_iter=1, random_state=7).fit(X)
    ours = GaussianMixture(3, resp_init=np.eye(3)[labels], means_init=means, max_iter=1, warn=False).fit(XT)
    assert np.allclose(ours.means_.numpy(), sk.means_, atol=1e-8)
    assert np.allclose(ours.covariances_.numpy(), sk.covariances_, atol=1e-8)
    assert abs(ours.lower_bound_ - sk.lower_bound_) < 1e-8


def test_weights_init_alone_overrides_only_the_weights():
    labels = KMeans(3, n_init=1, random_state=7).fit(X).labels_
    w = np.array([0.5, 0.3, 0.2])
    sk = SkGMM(3, covariance_type="full", weights_init=w, max_iter=1, random_state=7).fit(X)
    ours = GaussianMixture(3, resp_init=np.eye(3)[labels], weights_init=w, max_iter=1, warn=False).fit(XT)
    assert abs(ours.lower_bound_ - sk.lower_bound_) < 1e-8
    assert np.allclose(ours.weights_.numpy(), sk.weights_, atol=1e-10)


def test_all_three_inits_skip_the_responsibilities():
    """With weights, means and precisions all given, the first E step uses exactly them."""
    w = np.array([0.2, 0.8])
    m = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    p = np.stack([np.eye(3), 2 * np.eye(3)])
    sk = SkGMM(2, covariance_type="full", weights_init=w, means_init=m, precisions_init=p, max_iter=1).fit(X)
    ours = GaussianMixture(2, weights_init=w, means_init=m, precisions_init=p, max_iter=1, warn=False).fit(XT)
    assert abs(ours.lower_bounds_[0] - sk.lower_bound_) < 1e-9
    # the same start from the given parameters, whatever init_params says
    other = GaussianMixture(2, weights_init=w, means_init=m, precisions_init=p, max_iter=1, warn=False,
                            init_params="random").fit(XT)
    assert other.lower_bound_ == ours.lower_bound_


@pytest.mark.parametrize("w, ok", [([0.5, 0.5], True), ([0.5, 0.5 + 5e-7], True), ([0.5, 0.5 + 5e-6], False),
                                   ([1.2, -0.2], False)])
def test_weights_init_must_sum_to_one_within_1e6(w, ok):
    gmm = GaussianMixture(2, weights_init=w, max_iter=1, warn=False)
    if ok:
        gmm.fit(XT)
    else:
        with pytest.raises(ValueError, match="weights_init must be non-negative and sum to 1"):
            gmm.fit(XT)


# --------------------------------------------------------------------------- EM loop and starts


def test_iterations_bounds_and_convergence_flag_match_sklearn():
    labels = KMeans(3, n_init=1, random_state=0).fit(X).labels_
    for tol, max_iter in ((1e-3, 100), (1e-12, 5)):
        sk = SkGMM(3, covariance_type="full", tol=tol, max_iter=max_iter, random_state=0).fit(X)
        ours = GaussianMixture(3, resp_init=np.eye(3)[labels], tol=tol, max_iter=max_iter, warn=False).fit(XT)
        assert (ours.n_iter_, ours.converged_) == (sk.n_iter_, sk.converged_)
        assert len(ours.lower_bounds_) == ours.n_iter_ and ours.lower_bounds_[-1] == ours.lower_bound_
        assert abs(ours.lower_bound_ - sk.lower_bound_) < 1e-8
        assert np.allclose(ours.means_.numpy(), sk.means_, atol=1e-6)


def test_tol_zero_never_converges_and_warns():
    with pytest.warns(UserWarning, match="did not converge in max_iter=3"):
        gmm = GaussianMixture(3, tol=0.0, max_iter=3).fit(XT)
    assert gmm.n_iter_ == 3 and not gmm.converged_


def test_n_init_keeps_the_start_with_the_highest_final_bound():
    gen = torch.Generator().manual_seed(1)
    # the i-th start of n_init = 3 is the first start of a generator advanced by the earlier ones: replay them
    bounds = []
    gmm = GaussianMixture(3, init_params="random", seed=1, max_iter=2, warn=False)
    shift = XT.mean(0)
    for _ in range(3):
        w, m, _, p = gmm._initialize(XT - shift, gen, shift)
        for _ in range(2):
            lb, log_resp = gmm._e_step(XT - shift, w, m, p)
            w, m, _, p = gmm._m_step(XT - shift, log_resp)
        bounds.append(float(lb))
    best = GaussianMixture(3, init_params="random", n_init=3, seed=1, max_iter=2, warn=False).fit(XT)
    assert best.lower_bound_ == max(bounds)
    assert len(set(bounds)) == 3  # three different starts


def test_the_fit_is_translation_invariant():
    a = GaussianMixture(3, seed=0).fit(XT)
    b = GaussianMixture(3, seed=0).fit(XT + 1000.0)
    assert torch.allclose(b.means_ - 1000.0, a.means_, atol=1e-6)
    assert abs(a.lower_bound_ - b.lower_bound_) < 1e-6


# --------------------------------------------------------------------------- moving a fitted mixture


def test_to_moves_every_parameter_and_returns_self():
    gmm = GaussianMixture(2, seed=0).fit(XT)
    scores = gmm.score_samples(XT)
    assert gmm.to(torch.float32) is gmm  # a dtype goes through the same .to as a device
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert getattr(gmm, name).dtype == torch.float32, name
    assert gmm.to("cpu").to(torch.float64) is gmm
    assert torch.allclose(gmm.score_samples(XT), scores, atol=1e-3)
    with pytest.raises(RuntimeError, match=r"not fitted yet: call .fit\(X\) before .to\(\)"):
        GaussianMixture(2).to("cpu")
