"""Known answers and boundaries of medadv_tutorial.gaussian that the mutation run showed untested
(``python benchmarks/mutation.py gaussian``)."""

import numpy as np
import pytest
import torch

from medadv_tutorial import gaussian as G

F64 = torch.float64


def test_class_moments_single_row_class_and_empty_last_class():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0]], dtype=F64)
    classes = torch.tensor([0, 0, 1])
    means, counts, centred = G.class_moments(x, classes, 3)  # class 1 has one row, class 2 none
    torch.testing.assert_close(means, torch.tensor([[2.0, 3.0], [5.0, 8.0], [0.0, 0.0]], dtype=F64))
    assert counts.tolist() == [2, 1, 0]
    torch.testing.assert_close(centred, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=F64))


def test_relative_ridge_of_no_features_is_the_floor():
    assert G.relative_ridge(torch.zeros(0, 0, dtype=F64), 2.0) == 2.0 * 1e-12
    assert G.relative_ridge(torch.diag(torch.tensor([1.0, 3.0], dtype=F64)), 0.5) == 1.0


def test_a_negative_reg_is_refused_even_with_an_explicit_ridge():
    x = torch.randn(10, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"reg \(relative ridge\) must be >= 0"):
        G.sample_ridge(x, -0.1)
    with pytest.raises(ValueError, match=r"reg \(relative ridge\) must be >= 0"):
        G.regularised_cholesky(torch.eye(3, dtype=F64), -1.0, ridge=0.1)


def test_regularised_cholesky_factorises_in_float64_and_handles_no_features():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float32)
    L, lam = G.regularised_cholesky(cov, 0.0)
    assert L.dtype == F64 and lam == 0.0
    torch.testing.assert_close(L @ L.T, cov.to(F64))
    L, lam = G.regularised_cholesky(torch.zeros(0, 0, dtype=F64), 1e-3)
    assert L.shape == (0, 0) and lam == 1e-3 * 1e-12


def test_the_pivot_rule_at_and_below_its_bound():
    # L_22^2 = 64 <= 1e-10 * 1e12 = 100 (caught, though Cholesky succeeds); 64 > 100 ** 1.5 / 1e12 would not be
    L = torch.tensor([[1e6, 0.0], [1e6, 8.0]], dtype=F64)
    with pytest.raises(ValueError, match="singular or nearly so"):
        G.regularised_cholesky(L @ L.T, 0.0)
    # a tiny pivot (L_22^2 = 1e-13 of the scale): caught although its square root is not tiny
    with pytest.raises(ValueError, match="singular or nearly so"):
        G.regularised_cholesky(torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-13]], dtype=F64), 0.0)
    # a pivot exactly at the bound, L_22^2 = 1e-10 * 1e10 = 1, counts as a failure
    with pytest.raises(ValueError, match="singular or nearly so"):
        G.regularised_cholesky(torch.diag(torch.tensor([1e10, 1.0], dtype=F64)), 0.0)
    G.regularised_cholesky(torch.diag(torch.tensor([1e10, 1.01], dtype=F64)), 0.0)  # just above: factorised
    # not positive semi-definite at all: Cholesky fails outright
    with pytest.raises(ValueError, match="singular or nearly so"):
        G.regularised_cholesky(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64), 0.0)


def test_the_error_suggests_a_larger_reg():
    # an indefinite "covariance": no reg is too small to be the problem; the suggestion is 10 x reg
    with pytest.raises(ValueError, match=r"^the covariance of the features \(d=2\) .*e\.g\. reg=5 \(reg is relative: "
                                         r"a multiple of the mean variance 1\)"):
        G.regularised_cholesky(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64), 0.5)
    # reg = 0 on duplicated large features: the floor 1e-3 (the spread term 1e-8 * max/mean is tiny)
    big = torch.tensor([[2e6, 2e6], [2e6, 2e6]], dtype=F64)
    with pytest.raises(ValueError, match=r"e\.g\. reg=0\.001 \(reg is relative: a multiple of the mean variance "
                                         r"2e\+06\)"):
        G.regularised_cholesky(big, 0.0)
    # n = d samples: the reason names them
    with pytest.raises(ValueError, match=r"\(n=2 samples <= d=2 dimensions\)"):
        G.regularised_cholesky(big, 0.0, n=2, who="MGM")
    with pytest.raises(ValueError, match=r"\(correlated, duplicated or constant features\)"):
        G.regularised_cholesky(big, 0.0, n=3)


def test_precision_cholesky_float64_and_non_square_batches():
    L = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=F64)
    U = G.precision_cholesky(L)
    assert U.dtype == F64
    torch.testing.assert_close(U @ U.T, torch.linalg.inv(L @ L.T))
    with pytest.raises(ValueError, match=r"chol must have shape \(d, d\) or \(K, d, d\)"):
        G.precision_cholesky(torch.ones(2, 3, 4))


def test_whitening_center_is_the_mean_of_the_means_and_flat_is_not_copied():
    means = torch.tensor([[0.0, 2.0], [4.0, 6.0]], dtype=F64)
    U = torch.eye(2, dtype=F64).expand(2, 2, 2).contiguous()
    w = G.whitening(means, U)
    torch.testing.assert_close(w.center, torch.tensor([2.0, 4.0], dtype=F64))
    flat = U.permute(1, 0, 2).reshape(2, 4)
    assert G.whitening(means, U, flat_cholesky=flat).flat is flat  # the precomputed matrix, as given


def test_gaussian_log_prob_checks_the_shape_of_x():
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3\) like means"):
        G.gaussian_log_prob(torch.ones(4, 2), torch.zeros(2, 3), torch.eye(3))


def test_the_type_error_names_x_only_when_it_is_given():
    with pytest.raises(TypeError, match=r"got X ndarray, means a tensor"):
        G.mahalanobis_sq(np.ones((4, 3)), torch.zeros(2, 3), torch.eye(3))
    with pytest.raises(TypeError, match=r"tensors \(N, d\), \(K, d\) and \(K, d, d\) or \(d, d\), got means ndarray"):
        G.whitening(np.zeros((2, 3)), torch.eye(3))


def test_whitening_to_moves_every_tensor():
    w = G.whitening(torch.zeros(2, 3, dtype=F64), torch.eye(3, dtype=F64))
    moved = w.to(device="meta", dtype=torch.float32)
    assert all(t.device.type == "meta" and t.dtype == torch.float32 for t in moved)
