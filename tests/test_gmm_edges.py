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


# --------------------------------------------------------------------------- arguments at their bounds


def test_defaults_are_the_documented_ones():
    gmm = GaussianMixture()
    assert (gmm.n_components, gmm.max_iter, gmm.n_init, gmm.seed, gmm.tol, gmm.reg_covar) == (1, 100, 1, 0, 1e-3, 1e-6)
    assert GaussianMixture(seed=None).seed is None
    _, idx = kmeans_plusplus(XT, 3)  # default seed 0
    assert idx.tolist() == greedy_kmeans_plusplus(X, 3, torch.Generator().manual_seed(0), 2 + int(math.log(3)))


@pytest.mark.parametrize("kwargs", [dict(n_components=0), dict(n_components=True), dict(n_components=2.0),
                                    dict(reg_covar=-1e-12), dict(reg_covar=math.inf), dict(reg_covar="1e-6"),
                                    dict(tol=-1e-9), dict(tol=True), dict(tol="0.1"),
                                    dict(max_iter=0), dict(max_iter=True), dict(max_iter=2.0),
                                    dict(n_init=0), dict(n_init=False), dict(seed=-1)])
def test_bad_arguments_are_refused(kwargs):
    (name,) = kwargs
    with pytest.raises(ValueError, match=name if name != "seed" else "seed"):
        GaussianMixture(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(reg_covar=0), dict(reg_covar=0.0), dict(tol=0), dict(max_iter=1), dict(n_init=1),
                                    dict(n_components=1)])
def test_arguments_at_their_bounds_are_accepted(kwargs):
    GaussianMixture(**kwargs, warn=False)


def test_row_count_bound_and_feature_count():
    two = XT[:2]
    GaussianMixture(1, max_iter=1, warn=False).fit(two)  # max(2, K) = 2 rows suffice
    with pytest.raises(ValueError, match=r"needs at least max\(2, n_components=1\) rows, got 1"):
        GaussianMixture(1).fit(XT[:1])
    GaussianMixture(3, max_iter=1, warn=False, init_params="random").fit(XT[:3])
    with pytest.raises(ValueError, match=r"n_components=3\) rows, got 2"):
        GaussianMixture(3).fit(XT[:2])
    wide = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # d > N is allowed
    gmm = GaussianMixture(1, reg_covar=1e-3, max_iter=2, warn=False).fit(wide)
    assert gmm.n_features_in_ == 9
    with pytest.raises(ValueError, match=r"X must have shape \(N, 9\), got \(4, 3\)"):
        gmm.score_samples(wide[:, :3])
    with pytest.raises(ValueError, match=r"X must have shape \(N, d\)"):
        GaussianMixture(1).fit(XT[0])


def test_data_far_from_the_origin_is_centred_before_the_overflow_check():
    """Values near 1e154 square to 1e308: only the deviations from the mean may be squared."""
    far = XT[:60] + 1e154
    gmm = GaussianMixture(1, max_iter=3, warn=False).fit(far)
    assert torch.isfinite(gmm.covariances_).all()
    with pytest.raises(ValueError, match="too large for torch.float64"):
        GaussianMixture(1).fit(torch.tensor([[1e200, 0.0], [-1e200, 1.0], [0.0, 2.0]], dtype=torch.float64))


def test_numpy_and_torch_initial_values_are_the_same():
    w = np.array([0.4, 0.6])
    m = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    a = GaussianMixture(2, weights_init=w, means_init=m, max_iter=2, warn=False).fit(XT)
    b = GaussianMixture(2, weights_init=torch.from_numpy(w).float(), means_init=torch.from_numpy(m).float(),
                        max_iter=2, warn=False).fit(XT)
    assert torch.allclose(a.means_, b.means_, atol=1e-6)
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 3\)"):
        GaussianMixture(2, means_init=m[:, :2]).fit(XT)
    with pytest.raises(ValueError, match="precisions_init contains NaN"):
        GaussianMixture(2, precisions_init=np.full((2, 3, 3), np.nan)).fit(XT)


def test_components_in_several_batches_equal_one_batch(monkeypatch):
    """The M step takes components in batches of _BATCH_BYTES: any batch size gives the same covariances."""
    from medadv_tutorial import gmm as gmm_module

    resp = torch.rand(len(X), 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    resp /= resp.sum(1, keepdim=True)
    Xc = XT - XT.mean(0)
    for dtype in (torch.float64, torch.float32):
        whole = gmm_module._estimate_gaussian_parameters(Xc.to(dtype), resp.to(dtype), 1e-6)
        for batch_bytes in (1, Xc.numel() * 8 + 1, 3 * Xc.numel() * 8):  # 1, 1 and 3 components per batch
            monkeypatch.setattr(gmm_module, "_BATCH_BYTES", batch_bytes)
            part = gmm_module._estimate_gaussian_parameters(Xc.to(dtype), resp.to(dtype), 1e-6)
            for a, b in zip(whole, part):
                torch.testing.assert_close(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
        monkeypatch.undo()
    # against the definition, float64: N_k with its 10 eps, weighted means, weighted covariances + reg
    nk, means, cov = gmm_module._estimate_gaussian_parameters(Xc, resp, 1e-6)
    r = resp.numpy()
    xn = Xc.numpy()
    nk_ref = r.sum(0) + 10 * np.finfo(float).eps
    np.testing.assert_allclose(nk.numpy(), nk_ref, rtol=0, atol=1e-13)
    for k in range(4):
        mu = r[:, k] @ xn / nk_ref[k]
        c = (r[:, k, None] * (xn - mu)).T @ (xn - mu) / nk_ref[k] + 1e-6 * np.eye(3)
        np.testing.assert_allclose(cov[k].numpy(), c, rtol=1e-10, atol=1e-12)
        assert torch.equal(cov[k], cov[k].T)


def test_kmeans_plusplus_in_float32_draws_like_float64():
    _, a = kmeans_plusplus(XT, 4, seed=2)
    _, b = kmeans_plusplus(XT.float(), 4, seed=2)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("given", [("weights_init", "means_init"), ("weights_init", "precisions_init"),
                                   ("means_init", "precisions_init")])
def test_any_two_initial_values_match_sklearn(given):
    """The third comes from the K-means responsibilities, as in scikit-learn."""
    labels = KMeans(2, n_init=1, random_state=3).fit(X).labels_
    init = {"weights_init": np.array([0.3, 0.7]), "means_init": np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]),
            "precisions_init": np.stack([np.eye(3), 0.5 * np.eye(3)])}
    kw = {k: init[k] for k in given}
    sk = SkGMM(2, covariance_type="full", max_iter=1, random_state=3, **kw).fit(X)
    ours = GaussianMixture(2, resp_init=np.eye(2)[labels], max_iter=1, warn=False, **kw).fit(XT)
    assert abs(ours.lower_bound_ - sk.lower_bound_) < 1e-8


def test_resp_init_is_checked_even_when_every_parameter_is_given():
    bad = np.ones((len(X), 2))
    bad[0] = [-1.0, 2.0]
    with pytest.raises(ValueError, match="resp_init must be non-negative"):
        GaussianMixture(2, resp_init=bad, weights_init=[0.5, 0.5], means_init=np.zeros((2, 3)),
                        precisions_init=np.stack([np.eye(3)] * 2)).fit(XT)


@pytest.mark.parametrize("init_params", ["random", "kmeans", "k-means++"])
def test_float32_fits_start_in_float32(init_params):
    gmm = GaussianMixture(2, init_params=init_params, dtype=torch.float32, max_iter=3, warn=False).fit(XT)
    assert gmm.means_.dtype == torch.float32


# --------------------------------------------------------------------------- what the mutation run found untested


@pytest.mark.parametrize("given", [("weights_init", "means_init"), ("weights_init", "precisions_init"),
                                   ("means_init", "precisions_init")])
def test_two_initial_values_without_resp_init_use_the_own_kmeans(given):
    init = {"weights_init": np.array([0.3, 0.7]), "means_init": np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]),
            "precisions_init": np.stack([np.eye(3), 0.5 * np.eye(3)])}
    kw = {k: init[k] for k in given}
    own = GaussianMixture(2, seed=3)._initial_resp(XT - XT.mean(0), torch.Generator().manual_seed(3))
    a = GaussianMixture(2, seed=3, max_iter=1, warn=False, **kw).fit(XT)
    b = GaussianMixture(2, seed=3, max_iter=1, warn=False, resp_init=own.numpy(), **kw).fit(XT)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, abs=1e-10)


def test_an_empty_component_gets_ten_machine_epsilons():
    from medadv_tutorial import gmm as gmm_module

    resp = torch.zeros(len(X), 2, dtype=torch.float64)
    resp[:, 0] = 1.0
    nk, _, _ = gmm_module._estimate_gaussian_parameters(XT - XT.mean(0), resp, 1e-6)
    assert nk[1].item() == 10 * np.finfo(float).eps


def test_the_failure_message_is_scikit_learns():
    from medadv_tutorial.gmm import precision_cholesky_from_covariance, precision_cholesky_from_precision

    base = ("Fitting the mixture model failed because some components have ill-defined empirical covariance "
            "(for instance caused by singleton or collapsed samples). Try to decrease the number of components, "
            "increase reg_covar, or scale the input data.")
    with pytest.raises(ValueError) as info:
        precision_cholesky_from_covariance(-torch.eye(2, dtype=torch.float64)[None])
    assert str(info.value) == base
    with pytest.raises(ValueError) as info:
        precision_cholesky_from_covariance(-torch.eye(2)[None])
    assert str(info.value) == base + " The numerical accuracy can also be improved by passing dtype=torch.float64."
    for shape in ((2, 2), (1, 2, 3)):
        with pytest.raises(ValueError, match=r"covariances must have shape \(K, d, d\)"):
            precision_cholesky_from_covariance(torch.ones(shape))
    with pytest.raises(ValueError, match="covariances must have shape"):
        precision_cholesky_from_covariance(np.eye(2)[None])
    with pytest.raises(ValueError, match="precisions_init must be symmetric positive definite"):
        precision_cholesky_from_precision(-torch.eye(2, dtype=torch.float64)[None])


@pytest.mark.parametrize("name", ["max_iter", "n_init"])
def test_the_message_names_the_argument(name):
    with pytest.raises(ValueError, match=rf"^{name} must be an int >= 1, got 0$"):
        GaussianMixture(**{name: 0})


def test_messages_name_the_initial_value():
    for kw, name in ((dict(resp_init=np.ones((5, 2))), "resp_init"), (dict(weights_init=[1.0]), "weights_init")):
        with pytest.raises(ValueError, match=rf"^{name} must have shape"):
            GaussianMixture(2, **kw).fit(XT)
    GaussianMixture(2, weights_init=[0.0, 1.0], max_iter=1, warn=False).fit(XT)  # a zero weight is allowed
    gmm = GaussianMixture(2, max_iter=2, warn=False).fit(XT)
    with pytest.raises(ValueError, match=r"^X must have shape \(N, 3\)"):
        gmm.estimate_weighted_log_prob(XT[:, :2])


def test_integer_data_is_accepted_and_columns_far_apart_do_not_overflow():
    ints = torch.randint(0, 50, (40, 2), generator=torch.Generator().manual_seed(0))
    assert GaussianMixture(1, max_iter=2, warn=False).fit(ints).means_.dtype == torch.float64
    apart = XT[:60].clone()
    apart[:, 0] += 1e154
    apart[:, 1] -= 1e154  # the mean of all entries is near 0: only per-column centring keeps the squares finite
    GaussianMixture(1, max_iter=2, warn=False).fit(apart)


def test_a_failed_fit_leaves_the_mixture_unfitted():
    gmm = GaussianMixture(1)
    with pytest.raises(ValueError):
        gmm.fit(torch.tensor([[math.nan, 0.0], [1.0, 1.0]], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="not fitted yet"):
        gmm.score_samples(XT[:, :2])


def test_seed_none_is_seed_zero():
    a = GaussianMixture(3, seed=None, max_iter=3, warn=False).fit(XT)
    b = GaussianMixture(3, seed=0, max_iter=3, warn=False).fit(XT)
    assert torch.equal(a.means_, b.means_)


def test_tol_zero_needs_a_strict_decrease_and_converged_fits_do_not_warn():
    import warnings

    one = GaussianMixture(1, tol=0.0, max_iter=4, warn=False).fit(XT)  # one Gaussian: the bound repeats exactly
    assert one.lower_bounds_[1] == one.lower_bounds_[2]
    assert one.n_iter_ == 4 and not one.converged_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GaussianMixture(1, tol=1e-3).fit(XT).converged_


def test_the_convergence_warning_points_outside_the_package():
    """stacklevel=2: the warning names the caller's line, not gmm.py's (a mutation run adds a frame of its own)."""
    with pytest.warns(UserWarning) as record:
        GaussianMixture(3, tol=0.0, max_iter=2).fit(XT)
    assert not record[0].filename.endswith("gmm.py"), record[0].filename
