r"""Gaussian mixtures with full covariances, fitted by EM in torch (CPU or GPU).

The Hierarchical Feature Constraint fits one Gaussian mixture per (layer, class) on the
pooled features of clean training images, then evaluates it inside every attack step.
:class:`GaussianMixture` is a small torch port of scikit-learn's
``GaussianMixture(covariance_type="full")``: the same EM updates, the same parameters
(``weights_``, ``means_``, ``covariances_``, ``precisions_cholesky_``), the same
convergence rule, so that its results can be checked against scikit-learn number for
number (``tests/test_gmm.py``) -- but batched over the components and running on the
device of its input::

    gmm = GaussianMixture(n_components=2, reg_covar=1e-6).fit(X)   # X: (N, d) tensor
    gmm.score_samples(X)            # (N,) log p(x)
    gmm.estimate_weighted_log_prob(X)   # (N, K) log pi_k + log N(x | mu_k, Sigma_k)

The model
---------
.. math::

   p(x) = \sum_{k=1}^{K} \pi_k\, \mathcal N(x \mid \mu_k, \Sigma_k), \qquad
   \log \mathcal N(x \mid \mu, \Sigma) = -\tfrac12 \big[ d \log 2\pi + \log\det\Sigma
       + (x - \mu)^\top \Sigma^{-1} (x - \mu) \big].

With the *precision Cholesky factor* :math:`U_k` (upper triangular,
:math:`U_k U_k^\top = \Sigma_k^{-1}`, scikit-learn's ``precisions_cholesky_``) the
Mahalanobis term is :math:`\|(x - \mu_k)^\top U_k\|^2` and
:math:`-\tfrac12 \log\det\Sigma_k = \sum_i \log (U_k)_{ii}`.  Both come from
:mod:`medadv_tutorial.gaussian` (``mahalanobis_sq`` and ``gaussian_log_prob`` are
re-exported here): one matrix product for all components.

EM
--
*E step*: responsibilities :math:`r_{nk} \propto \pi_k \mathcal N(x_n \mid \mu_k, \Sigma_k)`
(in log space, with a log-sum-exp), and the average log-likelihood
:math:`\ell = \frac1N \sum_n \log p(x_n)`.  *M step*: :math:`N_k = \sum_n r_{nk}`
(plus :math:`10\,\epsilon_{\mathrm{mach}}`, as scikit-learn, so that an empty component
does not divide by zero), :math:`\pi_k = N_k / \sum_j N_j`,
:math:`\mu_k = \sum_n r_{nk} x_n / N_k`,
:math:`\Sigma_k = \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^\top / N_k + \texttt{reg\_covar}\, I`.
EM stops when :math:`\ell` changes by less than ``tol`` between two iterations, or after
``max_iter`` iterations.  ``lower_bound_`` is :math:`\ell` of the last E step (as in
scikit-learn: it belongs to the parameters *before* the last M step).

Initialisation (``init_params``): ``"kmeans"`` (default, scikit-learn's default too):
k-means++ seeding, Lloyd iterations, then one-hot responsibilities of the clusters;
``"k-means++"``: the seeds only (one point per component, as scikit-learn's
``init_params="k-means++"``); ``"random"``: random normalised responsibilities; or
explicit ``resp_init`` (N, K) / ``weights_init`` / ``means_init`` / ``precisions_init``
(the last three exactly as scikit-learn's, so that both libraries can start from the
same point).

Everything runs on the input's device in ``dtype`` (float64 by default: EM on features
with hundreds of dimensions needs it; Apple MPS has no float64 and computes on the CPU).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .checks import check_int, check_seed
from .gaussian import gaussian_log_prob, mahalanobis_sq, precision_cholesky

__all__ = [
    "GaussianMixture",
    "ConvergenceWarning",
    "kmeans_plusplus",
    "gaussian_log_prob",
    "mahalanobis_sq",
    "precision_cholesky_from_covariance",
    "precision_cholesky_from_precision",
]

_INIT_PARAMS = ("kmeans", "k-means++", "random")
_BATCH_BYTES = 1 << 28  # components per batch in the M step: at most ~256 MB of (K, N, d) temporaries


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the log-likelihood changed by less than ``tol``."""


def _fail_message(dtype: torch.dtype) -> str:
    msg = ("Fitting the mixture model failed because some components have ill-defined empirical covariance "
           "(for instance caused by singleton or collapsed samples). Try to decrease the number of components, "
           "increase reg_covar, or scale the input data.")
    if dtype != torch.float64:
        msg += " The numerical accuracy can also be improved by passing dtype=torch.float64."
    return msg


def _compute_device(device: torch.device, dtype: torch.dtype) -> torch.device:
    return torch.device("cpu") if device.type == "mps" and dtype == torch.float64 else device


# ------------------------------------------------------------------------------- kernels
# The Gaussian kernels (mahalanobis_sq, gaussian_log_prob) live in medadv_tutorial.gaussian.


def precision_cholesky_from_covariance(covariances: torch.Tensor) -> torch.Tensor:
    r"""Upper factors :math:`U = L^{-\top}` (``Sigma = L L^T``) for ``covariances`` (K, d, d).

    Raises ``ValueError`` (scikit-learn's message) when a covariance is not positive definite.
    """
    if not isinstance(covariances, torch.Tensor) or covariances.ndim != 3 or \
            covariances.shape[1] != covariances.shape[2]:
        raise ValueError(f"covariances must have shape (K, d, d), got "
                         f"{tuple(covariances.shape) if isinstance(covariances, torch.Tensor) else covariances!r}")
    L, info = torch.linalg.cholesky_ex(covariances)
    if bool((info != 0).any()):
        raise ValueError(_fail_message(covariances.dtype))
    return precision_cholesky(L)


def precision_cholesky_from_precision(precisions: torch.Tensor) -> torch.Tensor:
    r"""Upper factors :math:`U` with :math:`U U^\top = \Lambda` for precisions ``Lambda`` (K, d, d).

    (scikit-learn's ``_compute_precision_cholesky_from_precisions``: the Cholesky factor
    of the row-and-column-reversed matrix, reversed back.)
    """
    flipped = torch.flip(precisions, dims=(-2, -1))
    L, info = torch.linalg.cholesky_ex(flipped)
    if bool((info != 0).any()):
        raise ValueError("precisions_init must be symmetric positive definite matrices")
    return torch.flip(L, dims=(-2, -1))


def _estimate_gaussian_parameters(X: torch.Tensor, resp: torch.Tensor, reg_covar: float):
    r"""``(nk (K,), means (K, d), covariances (K, d, d))`` from responsibilities ``resp`` (N, K).

    In float64 (``X`` centred by the fit) the covariances are
    :math:`\sum_n r_{nk} x_n x_n^\top / N_k - \mu_k \mu_k^\top`: one matrix product
    :math:`X^\top [r_1 \odot X, \dots, r_K \odot X]` for all components.  In float32 that
    subtraction loses too many digits, and the covariances are computed from the
    per-component centred data :math:`(x_n - \mu_k)` (a batched product, slower).
    """
    n, d = X.shape
    K = resp.shape[1]
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    means = (resp.T @ X) / nk[:, None]
    cov = torch.empty(K, d, d, dtype=X.dtype, device=X.device)
    centred = X.dtype != torch.float64
    step = max(1, _BATCH_BYTES // max(1, n * d * X.element_size() * (2 if centred else 1)))
    for k0 in range(0, K, step):  # usually one batch of all components
        k1 = min(K, k0 + step)
        if centred:
            diff = X.unsqueeze(0) - means[k0:k1].unsqueeze(1)  # (k, N, d)
            cov[k0:k1] = torch.matmul((resp.T[k0:k1].unsqueeze(-1) * diff).transpose(1, 2), diff)
        else:
            xw = resp[:, k0:k1, None] * X[:, None, :]  # (N, k, d)
            cov[k0:k1] = (X.T @ xw.view(n, (k1 - k0) * d)).view(d, k1 - k0, d).transpose(0, 1)
    cov /= nk[:, None, None]
    if not centred:
        cov -= means[:, :, None] * means[:, None, :]
        cov = 0.5 * (cov + cov.transpose(1, 2))  # exact symmetry for the Cholesky factorisation
    cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    return nk, means, cov


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, *, seed: int | None = 0,
                    generator: torch.Generator | None = None, n_local_trials: int | None = None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

    Each new centre is the best of ``n_local_trials`` (default ``2 + floor(log K)``)
    candidates drawn with probability proportional to the squared distance to the
    nearest centre so far, "best" meaning the smallest total potential.  The random
    numbers come from a CPU generator (``seed`` or ``generator``), so the choice does
    not depend on the device.

    Returns ``(centers (K, d), indices (K,) int64)`` on ``X``'s device.
    """
    if not isinstance(X, torch.Tensor) or not X.is_floating_point() or X.ndim != 2:
        raise TypeError(f"X must be a floating tensor (N, d), got {type(X).__name__}")
    n = X.shape[0]
    if not 1 <= check_int(n_clusters, "n_clusters") <= n:
        raise ValueError(f"n_clusters must be in [1, N={n}], got {n_clusters}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(n_clusters))
    x_sq = (X * X).sum(1)

    def sq_dist(idx):  # (len(idx), N)
        c = X[idx]
        return (x_sq[None, :] - 2.0 * c @ X.T + (c * c).sum(1)[:, None]).clamp_min_(0.0)

    first = int(torch.randint(n, (1,), generator=gen))
    indices = [first]
    closest = sq_dist(torch.tensor([first], device=X.device))[0]
    pot = closest.sum()
    for _ in range(1, n_clusters):
        r = torch.rand(trials, generator=gen, dtype=torch.float64).to(X.device, X.dtype) * pot
        cand = torch.searchsorted(torch.cumsum(closest, 0), r).clamp_(max=n - 1)
        d_cand = torch.minimum(closest[None, :], sq_dist(cand))
        best = int(d_cand.sum(1).argmin())
        indices.append(int(cand[best]))
        closest = d_cand[best]
        pot = closest.sum()
    idx = torch.tensor(indices, device=X.device)
    return X[idx].clone(), idx


def _lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int = 300) -> torch.Tensor:
    """Lloyd's k-means from ``centers``; returns the labels (N,) at convergence."""
    x_sq = (X * X).sum(1, keepdim=True)
    K = centers.shape[0]
    labels = None
    for _ in range(max_iter):
        d2 = x_sq - 2.0 * X @ centers.T + (centers * centers).sum(1)[None, :]
        new = d2.argmin(1)
        if labels is not None and bool((new == labels).all()):
            break
        labels = new
        counts = torch.bincount(labels, minlength=K).to(X.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, X)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)  # empty: keep
    return labels


# ------------------------------------------------------------------------------- the model


class GaussianMixture:
    """Full-covariance Gaussian mixture fitted by EM in torch; scikit-learn-like API.

    Parameters
    ----------
    n_components: K >= 1.
    reg_covar: non-negative number added to the diagonal of every covariance (absolute,
        in squared feature units, as scikit-learn); keeps them positive definite when
        features are collinear or constant.
    tol: EM stops when the average log-likelihood changes by less than ``tol``.
    max_iter: maximum number of EM iterations per initialisation (>= 1).
    n_init: number of initialisations; the one with the highest final average
        log-likelihood is kept (explicit ``*_init`` arguments make them identical).
    init_params: ``"kmeans"``, ``"k-means++"`` or ``"random"`` (see the module docstring).
    weights_init: (K,) initial weights; means_init: (K, d); precisions_init: (K, d, d)
        initial *precision* matrices (inverse covariances) -- scikit-learn's arguments.
    resp_init: (N, K) non-negative initial responsibilities (rows normalised here);
        replaces ``init_params`` (weights/means/covariances are then estimated from it,
        and any of the three ``*_init`` given overrides that estimate).
    seed: seed of the (CPU) random generator of the initialisation.
    dtype: torch dtype of the computation and of the fitted parameters.
    warn: emit :class:`ConvergenceWarning` when EM does not converge.

    The attributes are set by :meth:`fit` (tensors on the device of ``X``, in ``dtype``).

    Attributes
    ----------
    weights_: (K,).
    means_: (K, d).
    covariances_: (K, d, d), including ``reg_covar``.
    precisions_cholesky_: (K, d, d), upper triangular.
    precisions_: (K, d, d).
    converged_: bool.
    n_iter_: int.
    lower_bound_: float, the average log-likelihood of the last E step.
    lower_bounds_: list of floats, one per iteration.
    n_features_in_: int, ``d``.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        reg_covar: float = 1e-6,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        resp_init=None,
        seed: int | None = 0,
        dtype: torch.dtype = torch.float64,
        warn: bool = True,
    ):
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be an int >= 1, got {n_components!r}")
        if not (isinstance(reg_covar, (int, float)) and reg_covar >= 0 and math.isfinite(reg_covar)):
            raise ValueError(f"reg_covar must be a finite number >= 0, got {reg_covar!r}")
        if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {tol!r}")
        for name, v in (("max_iter", max_iter), ("n_init", n_init)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if init_params not in _INIT_PARAMS:
            raise ValueError(f"init_params must be one of {_INIT_PARAMS}, got {init_params!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        seed = None if seed is None else check_seed(seed)
        self.n_components, self.reg_covar, self.tol = n_components, float(reg_covar), float(tol)
        self.max_iter, self.n_init, self.init_params = max_iter, n_init, init_params
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self.resp_init, self.seed, self.dtype, self.warn = resp_init, seed, dtype, bool(warn)

    def __repr__(self) -> str:
        return (f"GaussianMixture(n_components={self.n_components}, reg_covar={self.reg_covar:g}, tol={self.tol:g}, "
                f"max_iter={self.max_iter}, init_params={self.init_params!r}, dtype={self.dtype})")

    # ----------------------------------------------------------------- validation
    def _as_tensor(self, X, name: str, fitting: bool) -> tuple[torch.Tensor, torch.device]:
        if isinstance(X, np.ndarray):
            X = torch.from_numpy(X)
        if not isinstance(X, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (or numpy array) of shape (N, d), got {type(X).__name__}")
        if not (X.is_floating_point() or X.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
        d = None if fitting else self.n_features_in_
        if X.ndim != 2 or (d is not None and X.shape[1] != d):
            raise ValueError(f"{name} must have shape (N, {d if d is not None else 'd'}), got {tuple(X.shape)}")
        if fitting and X.shape[0] < max(2, self.n_components):
            raise ValueError(f"{name} needs at least max(2, n_components={self.n_components}) rows, "
                             f"got {X.shape[0]}")
        out_device = X.device
        X = X.detach().to(_compute_device(X.device, self.dtype), self.dtype)
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        if fitting and not bool(torch.isfinite((X - X.mean(0)).square().sum(0)).all()):
            raise ValueError(f"{name} is too large for {self.dtype}: its covariance overflows (|{name}| up to "
                             f"{float(X.abs().max()):.3g}); rescale the data (a larger reg_covar cannot help)")
        return X, out_device

    def _init_tensor(self, value, name: str, shape: tuple, ref: torch.Tensor) -> torch.Tensor | None:
        if value is None:
            return None
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        t = t.to(ref.device, ref.dtype)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        return t

    def _check_fitted(self, what: str) -> None:
        if getattr(self, "means_", None) is None:
            raise RuntimeError(f"GaussianMixture is not fitted yet: call .fit(X) before .{what}()")

    # ----------------------------------------------------------------- EM pieces
    def _initial_resp(self, X: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, K = X.shape[0], self.n_components
        if self.resp_init is not None:
            resp = self._init_tensor(self.resp_init, "resp_init", (n, K), X)
            if bool((resp < 0).any()) or bool((resp.sum(1) <= 0).any()):
                raise ValueError("resp_init must be non-negative with a positive sum in every row")
            return resp / resp.sum(1, keepdim=True)
        if self.init_params == "random":
            resp = torch.rand(n, K, generator=gen, dtype=torch.float64).to(X.device, X.dtype)
            return resp / resp.sum(1, keepdim=True)
        centers, idx = kmeans_plusplus(X, K, generator=gen)
        resp = torch.zeros(n, K, dtype=X.dtype, device=X.device)
        if self.init_params == "k-means++":
            resp[idx, torch.arange(K, device=X.device)] = 1.0
        else:
            resp[torch.arange(n, device=X.device), _lloyd(X, centers)] = 1.0
        return resp

    def _initialize(self, X: torch.Tensor, gen: torch.Generator, shift: torch.Tensor):
        """Initial ``(weights, means, covariances or None, precisions_cholesky)`` for ``X`` centred by ``shift``."""
        n, d = X.shape
        K = self.n_components
        w0 = self._init_tensor(self.weights_init, "weights_init", (K,), X)
        m0 = self._init_tensor(self.means_init, "means_init", (K, d), X)
        p0 = self._init_tensor(self.precisions_init, "precisions_init", (K, d, d), X)
        if m0 is not None:
            m0 = m0 - shift
        if w0 is not None and (bool((w0 < 0).any()) or abs(float(w0.sum()) - 1.0) > 1e-6):
            raise ValueError("weights_init must be non-negative and sum to 1")
        cov = None
        if w0 is None or m0 is None or p0 is None or self.resp_init is not None:
            nk, means, cov = _estimate_gaussian_parameters(X, self._initial_resp(X, gen), self.reg_covar)
            weights = nk / n
        weights = w0 if w0 is not None else weights
        means = m0 if m0 is not None else means
        if p0 is None:
            prec_chol = precision_cholesky_from_covariance(cov)
        else:
            prec_chol, cov = precision_cholesky_from_precision(p0), None
        return weights, means, cov, prec_chol

    @staticmethod
    def _e_step(X, weights, means, prec_chol):
        wlp = gaussian_log_prob(X, means, prec_chol) + torch.log(weights)[None, :]
        log_norm = torch.logsumexp(wlp, dim=1)
        return log_norm.mean(), wlp - log_norm[:, None]

    def _m_step(self, X, log_resp):
        nk, means, cov = _estimate_gaussian_parameters(X, torch.exp(log_resp), self.reg_covar)
        return nk / nk.sum(), means, cov, precision_cholesky_from_covariance(cov)

    # ----------------------------------------------------------------- public API
    def fit(self, X, y=None) -> "GaussianMixture":
        """Fit the mixture to ``X`` (N, d) by EM (``n_init`` starts, best kept). Returns ``self``.

        ``X``: a torch tensor (any device) or numpy array; the parameters live on its device.
        ``y`` is ignored (scikit-learn signature).
        """
        self.means_ = None
        self.n_features_in_ = None
        X, device = self._as_tensor(X, "X", fitting=True)
        gen = torch.Generator().manual_seed(0 if self.seed is None else int(self.seed))
        shift = X.mean(0)
        X = X - shift  # EM is translation invariant; centring keeps the covariance products accurate
        best = None
        for _ in range(self.n_init):
            weights, means, cov, prec_chol = self._initialize(X, gen, shift)
            lower, bounds, converged, n_iter = -math.inf, [], False, 0
            for n_iter in range(1, self.max_iter + 1):
                prev = lower
                lb, log_resp = self._e_step(X, weights, means, prec_chol)
                weights, means, cov, prec_chol = self._m_step(X, log_resp)
                lower = float(lb)
                bounds.append(lower)
                if abs(lower - prev) < self.tol:
                    converged = True
                    break
            if best is None or lower > best[0]:
                best = (lower, (weights, means, cov, prec_chol), converged, n_iter, bounds)
        lower, (weights, means, cov, prec_chol), converged, n_iter, bounds = best
        means = means + shift
        if not converged and self.warn:
            warnings.warn(f"EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol:g}); "
                          "increase max_iter or tol, or check for degenerate data", ConvergenceWarning, stacklevel=2)
        to = (lambda t: t.to(device)) if device != X.device and device.type != "mps" else (lambda t: t)
        self.weights_, self.means_, self.covariances_ = to(weights), to(means), to(cov)
        self.precisions_cholesky_ = to(prec_chol)
        self.precisions_ = self.precisions_cholesky_ @ self.precisions_cholesky_.transpose(-1, -2)
        self.converged_, self.n_iter_, self.lower_bound_, self.lower_bounds_ = converged, n_iter, lower, bounds
        self.n_features_in_ = X.shape[1]
        return self

    def _params_on(self, device: torch.device):
        if self.means_.device == device:
            return self.weights_, self.means_, self.precisions_cholesky_
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] is not self.means_ or cache[1] != device:
            self._cache = (self.means_, device, tuple(t.to(device) for t in
                                                      (self.weights_, self.means_, self.precisions_cholesky_)))
        return self._cache[2]

    def estimate_weighted_log_prob(self, X) -> torch.Tensor:
        r""":math:`\log \pi_k + \log \mathcal N(x_n \mid \mu_k, \Sigma_k)`, shape ``(N, K)``, on ``X``'s device."""
        self._check_fitted("estimate_weighted_log_prob")
        Xc, device = self._as_tensor(X, "X", fitting=False)
        w, m, p = self._params_on(Xc.device)
        out = gaussian_log_prob(Xc, m, p) + torch.log(w)[None, :]
        return out.to(device, torch.float32) if device.type == "mps" and out.device != device else out

    def score_samples(self, X) -> torch.Tensor:
        """Log-likelihood :math:`\\log p(x_n)` of each sample, ``(N,)`` in ``dtype`` on ``X``'s device."""
        return torch.logsumexp(self.estimate_weighted_log_prob(X), dim=1)

    def score(self, X, y=None) -> float:
        """Average log-likelihood of ``X`` (a Python float)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X) -> torch.Tensor:
        """Posterior probabilities of the components, ``(N, K)``."""
        return torch.softmax(self.estimate_weighted_log_prob(X), dim=1)

    def predict(self, X) -> torch.Tensor:
        """Most probable component of each sample, ``(N,)`` int64."""
        return self.estimate_weighted_log_prob(X).argmax(dim=1)

    def to(self, device) -> "GaussianMixture":
        """Move the fitted parameters to ``device`` (in place); returns ``self``."""
        self._check_fitted("to")
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
            setattr(self, name, getattr(self, name).to(device))
        return self
