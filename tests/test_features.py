"""Known-answer tests for medadv_tutorial.features (synthetic models and Gaussians; CPU, seconds)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medadv_tutorial.attacks import BIM, PGD
from medadv_tutorial.direction import (attack_direction, delta_w, direction_stats, logit_gradient_wrt_features,
                                       pgd_feature_trajectory)
from medadv_tutorial.features import FeatureSet, extract_features
from medadv_tutorial.outliers import ClassGaussian, MahalanobisOutliers, mahalanobis, outlier_percentiles, outlier_rate

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- fixtures


class LinearFeatureNet(nn.Module):
    """Classifier-like module whose penultimate features are EXACTLY h = A flatten(x).

    Taps: ``block1`` = tanh(B x) (a nonlinear shallow layer) and ``penultimate`` = A x;
    logits = fc(dropout(h)) (dropout makes train vs eval mode observable).
    """

    feature_names = ["block1", "penultimate"]
    _derived_attributes = ("n_forward",)  # a call counter, not content: the result store's key skips it

    def __init__(self, A: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        d, D = A.shape
        self.A = nn.Parameter(A.clone())
        self.B = nn.Parameter(torch.randn(5, D, generator=torch.Generator().manual_seed(seed)) / math.sqrt(D))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(d, W.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(W)
            self.fc.bias.copy_(torch.zeros(W.shape[0]) if b is None else b)
        self.n_forward = 0

    def forward_features(self, x, layers=None, logits=True):
        self.n_forward += 1
        wanted = self.feature_names if layers is None else layers
        flat = x.flatten(1)
        h = flat @ self.A.T
        feats = OrderedDict()
        if "block1" in wanted:
            feats["block1"] = torch.tanh(flat @ self.B.T)
        if "penultimate" in wanted:
            feats["penultimate"] = h
        return self.fc(self.drop(h)), feats

    def forward(self, x):
        return self.forward_features(x, layers=[])[0]


def _images(n: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.1 * (2 * torch.rand(n, 1, side, side, generator=g) - 1)).float()


def _random_net(d=6, side=4, k=3, seed=0) -> LinearFeatureNet:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, side * side, generator=g)
    W = torch.randn(k, d, generator=g)
    return LinearFeatureNet(A, W, torch.randn(k, generator=g), seed=seed)


def _gaussian_featureset(n, d, mean_shift, L, seed, k=2):
    """Two-class Gaussian features (shared covariance L L^T), logits = one-hot(labels)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    h = (z @ L.T + mean_shift[y]).float()
    return FeatureSet(OrderedDict(penultimate=h), y, F.one_hot(y, k).float())


def _ks_uniform(pct: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance between the percentiles / 100 and U[0, 1]."""
    u = (pct.double() / 100).sort().values
    n = len(u)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - u, u - (i - 1) / n).max())


# ----------------------------------------------------------------- feature extraction


def test_extract_features_matches_forward_in_eval_mode_for_tensors_and_datasets():
    net = _random_net()
    net.train()
    x = _images(23, 4, seed=1)
    y = torch.arange(23) % 3
    fs = extract_features(net, (x, y), batch_size=5, progress=False)
    assert net.training  # restored
    net.eval()
    with torch.no_grad():
        logits, feats = net.forward_features(x)
    assert fs.layers == ["block1", "penultimate"] and list(fs.feats) == fs.layers
    torch.testing.assert_close(fs["block1"], feats["block1"])
    torch.testing.assert_close(fs.penultimate, feats["penultimate"])
    torch.testing.assert_close(fs.logits, logits)  # eval mode: no dropout on the head
    assert torch.equal(fs.labels, y) and fs.labels.dtype == torch.int64
    assert fs.penultimate.dtype == torch.float32 and fs.penultimate.device.type == "cpu"
    torch.testing.assert_close(fs.predictions, logits.argmax(1))

    # a Dataset yielding (image, int label) gives the same set, and layer order is shallow to deep
    ds = torch.utils.data.TensorDataset(x, y)
    fs2 = extract_features(net, ds, layers=["penultimate", "block1"], batch_size=7, progress=False)
    assert fs2.layers == ["block1", "penultimate"]
    torch.testing.assert_close(fs2.penultimate, fs.penultimate)

    sub = fs.subset(torch.tensor([3, 0]))
    torch.testing.assert_close(sub["block1"], fs["block1"][[3, 0]])
    assert torch.equal(sub.labels, y[[3, 0]])
    assert len(fs.subset(fs.labels == 1)) == int((y == 1).sum())
    with pytest.raises(KeyError, match="layer"):
        fs["block9"]
    with pytest.raises(KeyError, match="unknown feature layers"):
        extract_features(net, (x, y), layers=["nope"], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extract_features(net, (x + 1, y), progress=False)


def test_cached_features_equal_fresh_extraction_and_skip_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDADV_CACHE", str(tmp_path))
    monkeypatch.delenv("MEDADV_RESULT_CACHE", raising=False)
    net = _random_net(seed=3)
    x, y = _images(12, 4, seed=2), torch.arange(12) % 3

    fresh = extract_features(net, (x, y), batch_size=5, progress=False, cache=True)
    files = sorted((tmp_path / "results" / "features").glob("*.pt"))
    assert len(files) == 1 and files[0].with_suffix(".sha256").is_file()
    before = net.n_forward
    cached = extract_features(net, (x, y), batch_size=5, progress=False, cache=True)
    assert net.n_forward == before  # read from the store, the model was not run
    assert cached.layers == fresh.layers
    for k in fresh.layers:
        assert torch.equal(cached[k], fresh[k])
    assert torch.equal(cached.logits, fresh.logits) and torch.equal(cached.labels, fresh.labels)
    # the key is the content: other images, other weights or other layers are computed, not read
    x2 = x.clone()
    x2[0, 0, 0, 0] = 1 - x2[0, 0, 0, 0]
    extract_features(net, (x2, y), batch_size=5, progress=False, cache=True)
    assert net.n_forward > before
    n = net.n_forward
    only = extract_features(net, (x, y), layers=["penultimate"], batch_size=5, progress=False, cache=True)
    assert net.n_forward > n and only.layers == ["penultimate"]
    other = _random_net(seed=4)
    extract_features(other, (x, y), batch_size=5, progress=False, cache=True)
    assert other.n_forward > 0
    assert len(list((tmp_path / "results" / "features").glob("*.pt"))) == 4


# ------------------------------------------------------------------- outlier statistics


def test_mahalanobis_equals_direct_numpy_computation():
    g = torch.Generator().manual_seed(0)
    d, n = 7, 9
    M = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = M @ M.T + 0.5 * torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    h = torch.randn(n, d, generator=g)
    mu = torch.randn(d, generator=g)
    mus = torch.randn(n, d, generator=g)
    inv = np.linalg.inv(cov.numpy())
    for mean in (mu, mus):
        diff = h.double().numpy() - mean.double().numpy()
        expected = np.sqrt(np.einsum("ni,ij,nj->n", diff, inv, diff))
        got = mahalanobis(h, mean, chol)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
        np.testing.assert_allclose(mahalanobis(h, mean, chol, squared=True).numpy(), expected**2, rtol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_class_gaussian_fit_known_answer(shared):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 3
    reg = 0.1
    cg = ClassGaussian.fit(h, y, shared=shared, reg=reg)
    X, Y = h.numpy(), y.numpy()
    means = np.stack([X[Y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(cg.means.numpy(), means, rtol=1e-12)
    if shared:
        C = X - means[Y]
        covs = [C.T @ C / len(X)] * 3
    else:
        covs = [np.cov(X[Y == c].T, bias=True) for c in range(3)]
    covs = [c + reg * np.trace(c) / 5 * np.eye(5) for c in covs]
    for c in range(3):
        L = cg.chol if shared else cg.chol[c]
        np.testing.assert_allclose((L @ L.T).numpy(), covs[c], rtol=1e-10, atol=1e-12)
    # distance to the own class uses that class's mean and covariance
    q = torch.randn(4, 5, generator=g, dtype=torch.float64)
    cls = torch.tensor([2, 0, 1, 2])
    Q = q.numpy()
    expected = [math.sqrt((Q[i] - means[c]) @ np.linalg.inv(covs[c]) @ (Q[i] - means[c])) for i, c in
                enumerate(cls.tolist())]
    np.testing.assert_allclose(cg.distance(q, cls).numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(cg.distances(q).numpy()[np.arange(4), cls.numpy()], expected, rtol=1e-9)


def _outlier_setup(d, n_train, n_test, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d) + torch.eye(d, dtype=torch.float64)
    shift = torch.zeros(2, d, dtype=torch.float64)
    shift[1, 0] = 3.0
    train = _gaussian_featureset(n_train, d, shift, L, seed + 1)
    test = _gaussian_featureset(n_test, d, shift, L, seed + 2)
    return L, shift, train, test


def test_clean_held_out_percentiles_are_uniform_and_shifted_points_are_outliers():
    d = 20
    L, shift, train, test = _outlier_setup(d, 2000, 2000)
    # "adversarial-like": clean test points moved 12 standard deviations along a whitened direction
    g = torch.Generator().manual_seed(9)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    adv = FeatureSet(OrderedDict(penultimate=(test.penultimate.double() + 12.0 * (L @ u)).float()),
                     test.labels, test.logits)
    pct = outlier_percentiles(train, {"clean": test, "adv": adv}, ref_fraction=0.5)
    clean_p, adv_p = pct["clean"]["penultimate"], pct["adv"]["penultimate"]
    assert clean_p.shape == (2000,) and float(clean_p.min()) >= 0 and float(clean_p.max()) <= 100
    assert _ks_uniform(clean_p) < 0.06
    deciles = torch.histc(clean_p.float(), bins=10, min=0, max=100) / len(clean_p)
    assert float((deciles - 0.1).abs().max()) < 0.035
    assert abs(outlier_rate(pct["clean"])["penultimate"] - 0.05) < 0.025
    assert float(adv_p.min()) > 99.0 and outlier_rate(pct["adv"])["penultimate"] == 1.0


def test_reference_must_be_held_out_when_d_is_close_to_n():
    """In-sample reference distances are too small: clean test data would look like outliers."""
    d = 60
    _, _, train, test = _outlier_setup(d, 400, 1000, seed=3)
    held_out = outlier_percentiles(train, {"clean": test}, ref_fraction=0.5)["clean"]["penultimate"]
    assert _ks_uniform(held_out) < 0.1
    # the flawed alternative: fit and reference on the same samples
    cg = ClassGaussian.fit(train.penultimate, train.labels, 2)
    ref = cg.distance(train.penultimate, train.labels).sort().values
    d_test = cg.distance(test.penultimate, test.labels)
    in_sample = 100 * torch.searchsorted(ref, d_test).double() / len(ref)
    assert _ks_uniform(in_sample) > 0.25
    # an explicit clean reference set (say, the validation split) works the same way
    L, shift, _, _ = _outlier_setup(d, 1, 1, seed=3)
    val = _gaussian_featureset(500, d, shift, L, seed=77)
    explicit = outlier_percentiles(train, {"clean": test}, reference=val)["clean"]["penultimate"]
    assert _ks_uniform(explicit) < 0.1


def test_class_rule_predicted_true_nearest():
    d = 4
    _, shift, train, _ = _outlier_setup(d, 600, 10, seed=5)
    model = MahalanobisOutliers(ref_fraction=0.3).fit(train)
    mu1 = model.gaussians_["penultimate"].means[1].float()
    # one point exactly at the class-1 mean, true label 0, predicted 1 (a successful attack)
    q = FeatureSet(OrderedDict(penultimate=mu1[None]), torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    dist_pred = model.distances(q)["penultimate"]
    dist_true = model.distances(q, "true")["penultimate"]
    dist_near = model.distances(q, "nearest")["penultimate"]
    assert float(dist_pred) < 1e-3 and float(dist_near) < 1e-3
    assert float(dist_true) > 2.0
    assert float(model.percentiles(q)["penultimate"]) < 1.0
    assert float(model.percentiles(q, "true")["penultimate"]) > 50.0
    with pytest.raises(ValueError, match="classes must be one of"):
        model.distances(q, "target")
    with pytest.raises(RuntimeError, match="not fitted"):
        MahalanobisOutliers().distances(q)


# ---------------------------------------------------------------- fixed-direction theorem


@pytest.mark.parametrize("k", [2, 5])
def test_analytic_feature_gradient_equals_autograd(k):
    g = torch.Generator().manual_seed(k)
    n, d = 8, 7
    W = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, k, (n,), generator=g)
    loss = F.cross_entropy(h @ W.T + b, y, reduction="sum")
    (auto,) = torch.autograd.grad(loss, h)
    p = torch.softmax(h.detach() @ W.T + b, dim=1)
    torch.testing.assert_close(logit_gradient_wrt_features(W, p, y), auto, rtol=1e-12, atol=1e-12)


def test_binary_gradient_is_a_positive_multiple_of_delta_w():
    g = torch.Generator().manual_seed(0)
    n, d = 10, 6
    W = torch.randn(2, d, generator=g, dtype=torch.float64)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    p = torch.softmax(h @ W.T, dim=1)
    y = torch.randint(0, 2, (n,), generator=g)
    # untargeted: ascend CE(y) -> (1 - p_y) (w_{1-y} - w_y)
    grad = logit_gradient_wrt_features(W, p, y)
    dw = attack_direction(W, y)
    torch.testing.assert_close(dw, delta_w(W, y, 1 - y))
    coef = 1 - p[torch.arange(n), y]
    torch.testing.assert_close(grad, coef[:, None] * dw)
    assert (F.cosine_similarity(grad, dw, dim=1) > 1 - 1e-12).all()
    # targeted: descend CE(t) -> -grad = (1 - p_t) (w_t - w_{1-t})
    t = 1 - y
    step = -logit_gradient_wrt_features(W, p, t)
    dwt = attack_direction(W, t, targeted=True)
    torch.testing.assert_close(dwt, dw)  # targeting the other class: the same direction
    assert (F.cosine_similarity(step, dwt, dim=1) > 1 - 1e-12).all()
    torch.testing.assert_close(delta_w(W, 0, 1), W[1] - W[0])
    with pytest.raises(ValueError, match="binary"):
        attack_direction(torch.randn(3, d), y)


def test_pgd_displacement_on_a_linear_feature_map_is_alpha_A_sign_AT_delta_w():
    """h = A x and sign steps: h_t - h_0 = t alpha A sign(A^T dw), projection grows by alpha ||A^T dw||_1."""
    g = torch.Generator().manual_seed(4)
    d, side, n, steps, alpha = 6, 4, 5, 5, 1 / 255
    A = torch.randn(d, side * side, generator=g)
    W = torch.randn(2, d, generator=g)
    net = LinearFeatureNet(A, W)
    x = _images(n, side, seed=5)
    y = torch.tensor([0, 1, 0, 1, 1])
    traj, x_adv = pgd_feature_trajectory(net, x, y, {"eps": 8 / 255, "alpha": alpha, "steps": steps},
                                         return_adv=True)
    assert traj.shape == (steps + 1, n, d)
    dw = attack_direction(W, y)  # (n, d)
    s = torch.sign(dw @ A)  # sign(A^T dw) per image, (n, D)
    assert (s != 0).all()
    predicted = alpha * s @ A.T  # one step's displacement (n, d)
    for t in range(steps + 1):
        torch.testing.assert_close(traj[t] - traj[0], t * predicted, atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(traj[0], x.flatten(1) @ A.T)
        torch.testing.assert_close(traj[-1], x_adv.flatten(1) @ A.T)
    stats = direction_stats(traj, dw)
    assert stats["frac_increasing"] == 1.0
    inc = alpha * (dw @ A).abs().sum(1) / dw.norm(dim=1)  # per-step projection gain, per image
    torch.testing.assert_close(stats["projection"].float(),
                               torch.arange(steps + 1).float() * inc.mean(), atol=1e-4, rtol=1e-4)
    assert (stats["cos_successive"] > 1 - 1e-5).all()


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_features_follow_delta_w_exactly_when_A_is_block_averaging(targeted):
    """A averages disjoint pixel blocks, dw in {+-c}^d: A sign(A^T dw) = sign(dw) = dw / c."""
    d, block, n, steps = 16, 4, 6, 4
    A = torch.zeros(d, d * block)
    for i in range(d):
        A[i, i * block:(i + 1) * block] = 1 / block
    pattern = torch.tensor([1.0, -1.0] * (d // 2))[torch.randperm(d, generator=torch.Generator().manual_seed(0))]
    W = torch.stack([torch.zeros(d), 0.5 * pattern])  # w_1 - w_0 = 0.5 * pattern
    net = LinearFeatureNet(A, W)
    x = _images(n, 8, seed=6)  # 1 x 8 x 8 = 64 pixels = d * block
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    kw = {"eps": 8 / 255, "steps": steps, "alpha": 1 / 255, "targeted": targeted}
    yy = 1 - y if targeted else y  # targets: the other class
    traj = pgd_feature_trajectory(net, x, yy, kw)
    dw = attack_direction(W, yy, targeted=targeted)
    torch.testing.assert_close(dw, attack_direction(W, y))
    stats = direction_stats(traj, dw, n_random=200, seed=1)
    assert stats["cos_total"] > 1 - 1e-5
    assert (stats["cos_total_per_image"] > 1 - 1e-5).all()
    assert stats["frac_increasing"] == 1.0
    assert (stats["cos_successive"] > 1 - 1e-5).all()
    assert stats["cos_random"] < 0.35
    assert abs(stats["cos_random"] - stats["cos_random_expected"]) < 0.05  # sqrt(2 / (pi 16)) = 0.2
    # the same attack without the fixed-direction structure in dw: not aligned with a random direction
    other = direction_stats(traj, torch.randn(d, generator=torch.Generator().manual_seed(3)))
    assert abs(other["cos_total"]) < 0.9


def test_trajectory_on_a_real_classifier_margin_gain_is_the_projection_on_delta_w():
    """For a binary head, z_{y'} - z_y changes by exactly dw . (h_T - h_0): the loss grows iff the
    features move along dw."""
    from medadv_tutorial.models import build_model

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=32).eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 1, 0])
    attack = BIM(eps=2 / 255, steps=3)
    traj, x_adv = pgd_feature_trajectory(model, x, y, attack, return_adv=True)
    assert traj.shape == (4, 3, 1280)
    fs = extract_features(model, (torch.cat([x, x_adv]), torch.cat([y, y])), layers=["penultimate"],
                          progress=False)
    torch.testing.assert_close(traj[0], fs.penultimate[:3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(traj[-1], fs.penultimate[3:], atol=1e-4, rtol=1e-4)
    W = model.fc.weight.detach()
    dw = attack_direction(W, y)
    m = fs.logits[:, 1] - fs.logits[:, 0]
    sgn = 1 - 2 * y.float()  # margin z_{1-y} - z_y
    gain = sgn * (m[3:] - m[:3])
    proj = ((traj[-1] - traj[0]) * dw).sum(1)
    torch.testing.assert_close(proj, gain, atol=1e-4, rtol=1e-3)
    assert (gain > 0).all()  # the attack raised the loss of every image
    with pytest.raises(ValueError, match="early_stop"):
        pgd_feature_trajectory(model, x, y, {"eps": 2 / 255, "early_stop": True})


def test_trajectory_keeps_an_attacks_own_extra_term():
    """The recording term wraps (does not replace) an attack's extra loss."""
    net = _random_net(d=4, k=2, seed=8)
    x, y = _images(3, 4, seed=9), torch.tensor([0, 1, 0])
    calls = []

    def penalty(xa, logits, aux):
        calls.append(aux["penultimate"].shape)
        return 1e3 * aux["penultimate"].pow(2).sum(1)  # strong pull towards h = 0

    plain = pgd_feature_trajectory(net, x, y, {"eps": 8 / 255, "steps": 3})
    pulled = pgd_feature_trajectory(net, x, y, PGD(eps=8 / 255, steps=3, random_start=False, extra_loss=penalty))
    assert len(calls) == 3
    assert (pulled[-1].norm(dim=1) < plain[-1].norm(dim=1)).all()
    torch.testing.assert_close(pulled[0], plain[0])
