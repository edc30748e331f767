# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Where adversarial features go
#
# Chapter 2 showed that an invisible perturbation flips a chest X-ray classifier. This chapter
# follows the network's *features* during the attack and finds that they travel along one
# fixed direction, far outside the cloud of clean features. That is the HFC paper's
# explanation of why medical adversarial examples are easy to detect
# {cite:p}`yao2021hfc,yao2023hfh`, and the observation behind Li & Zhu's Gaussian detector
# {cite:p}`li2020robust`, which Chapter 4 builds.

# %%
# Install the package when it is missing (e.g. in a fresh Colab runtime).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("medadv_tutorial") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q",
         "git+https://github.com/medadv-tutorial/medadv-tutorial"],
        check=True,
    )

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from medadv_tutorial import data, features, training
from medadv_tutorial.profiles import get_profile
from medadv_tutorial.report import show_table

plt.rcParams["figure.dpi"] = 72
profile = get_profile()
training.seed_everything(0, profile.num_threads)
print(f"profile: {profile.name} (image_size={profile.image_size}, n_attack={profile.n_attack})")

# %% [markdown]
# ## The fixed-direction theorem
#
# Let $h \in \mathbb{R}^d$ be the penultimate features of an image and $z = Wh + b$ the logits,
# with rows $w_k$ of $W$, softmax probabilities $p$ and label $y$. The cross-entropy
# $L = -\log p_y$ has the gradient with respect to the features
#
# $$\nabla_h L = W^\top (p - e_y) = \sum_k p_k w_k - w_y .$$
#
# **Binary case.** With two classes, $y$ (source) and $t = 1 - y$ (target),
# $p_y = 1 - p_t$ and
#
# $$\nabla_h L = p_t w_t + (1 - p_t) w_y - w_y = p_t\,(w_t - w_y).$$
#
# Since $p_t > 0$, the gradient is a *positive multiple of the same vector*
# $\Delta w = w_t - w_y$ for every image and every iteration: the only thing that changes is
# its length. A targeted attack towards $t$ gives $\nabla_h(-L(f, t)) = (1 - p_t)\,(w_t - w_y)$,
# the same direction again. An attack that ascends $L$ therefore asks the features to move along
# $\Delta w$, always. The input-space step $\alpha\,\mathrm{sign}(\nabla_x L)$ follows the chain
# rule through the network ($\nabla_x L = J_h^\top \nabla_h L$, with $J_h$ the Jacobian of the
# features), so the features move by about $J_h\,\delta$, whose first-order change of the
# loss is positive along $\Delta w$: step after step, the projection of $h$ onto $\Delta w$
# grows. Features with a large gain in $J_h$ (the *vulnerable* features that the stress test of
# Chapter 2 found) travel far, and the representation of an adversarial image ends up far from
# where clean images of either class lie: an **outlier**.
#
# **Assumptions and where they fail.**
# (1) The direction is fixed only for two classes. With $K > 2$ classes,
# $\nabla_h L = \sum_k p_k w_k - w_y$ mixes the rows with weights that change during the attack;
# it is fixed only while one wrong class dominates $p$. (2) Saturation: once $p_t \to 1$ (or,
# for the targeted loss, $1 - p_t \to 0$) the gradient vanishes in length, not in direction, so
# sign steps keep moving. (3) The theorem speaks about the gradient in feature space; the
# features themselves move by the network's response to a sign step in input space, which is
# only approximately along $\Delta w$. The measurements below test how good the approximation is.
#
# ## Features of clean data, once
#
# Pooled features of every tapped layer for the chest X-ray training and test images, computed
# in one pass and cached (Chapters 4 and 5 reuse them).

# %% tags=["nbval-ignore-output"]
m, rec = training.get_model("chest_xray", profile=profile, seed=0)
mkey = training.checkpoint_key("chest_xray", profile.backbone, profile, 0)
train = data.load_dataset("chest_xray", "train", profile=profile)
test = data.load_dataset("chest_xray", "test", profile=profile)
fs_train = features.extract_features(m, train, cache_key=features.feature_cache_key(mkey, "train", len(train)))
fs_test = features.extract_features(m, test, cache_key=features.feature_cache_key(mkey, "test", len(test)))
x, y = training.correctly_classified(m, test, n=profile.n_attack)
W = m.fc.weight.detach()

# %%
print(f"{len(fs_train)} training and {len(fs_test)} test images, {len(fs_train.layers)} layers; "
      f"penultimate features: {tuple(fs_train.penultimate.shape[1:])}; attacked: {len(y)} images")

# %% [markdown]
# ## The gradient direction, checked
#
# The formula above against autograd, on the real head and the attacked images:

# %%
h = fs_test.penultimate[:8].clone().requires_grad_(True)
yy = fs_test.labels[:8]
loss = torch.nn.functional.cross_entropy(m.fc(h), yy, reduction="sum")
(g_auto,) = torch.autograd.grad(loss, h)
p = m.fc(h).softmax(1).detach()
g_formula = features.logit_gradient_wrt_features(W, p, yy)
dw = features.attack_direction(W, yy)
cos = torch.nn.functional.cosine_similarity(g_auto, dw, dim=1)
print(f"max |autograd - formula| = {float((g_auto - g_formula).abs().max()):.1e}; "
      f"cosine(gradient, w_t - w_y): min {float(cos.min()):.6f}")
assert torch.allclose(g_auto, g_formula, atol=1e-5) and float(cos.min()) > 0.9999

# %% [markdown]
# ## Following the features through PGD
#
# PGD at ε = 1/255 with α = ε/4 and a random start, recording the penultimate features at
# every iterate. The book's standard PGD has `attack_steps` = 10 steps (`ci` profile); we run 20
# and look at both the first 10 (the attack used in Chapters 2, 4 and 5, identical because α
# does not depend on the number of steps) and all 20.

# %% tags=["nbval-ignore-output"]
eps, steps, std_steps = 1 / 255, 20, profile.attack_steps
traj, x_adv20 = features.pgd_feature_trajectory(
    m, x, y, {"eps": eps, "steps": steps, "random_start": True, "seed": 0}, return_adv=True
)
u = features.attack_direction(W, y)
stats20 = features.direction_stats(traj, u, n_random=200, seed=0)
stats = features.direction_stats(traj[: std_steps + 1], u, n_random=200, seed=0)
# the adversarial images of the standard attack (first std_steps steps of the same run)
x_adv = features.pgd_feature_trajectory(
    m, x, y, {"eps": eps, "steps": std_steps, "random_start": True, "seed": 0}, return_adv=True
)[1]
with torch.no_grad():
    success = float((m(x_adv).argmax(1) != y).float().mean())
    success20 = float((m(x_adv20).argmax(1) != y).float().mean())

# %%
spread = float((fs_test.penultimate - fs_test.penultimate.mean(0)).norm(dim=1).mean())


def summary(st, tr, succ):
    disp = (tr[-1] - tr[0]).norm(dim=1)
    return [succ, st["cos_total"], st["cos_random"], st["cos_total"] / st["cos_random"], st["frac_increasing"],
            float(st["cos_successive"].mean()), float(disp.mean()) / spread]


names_ = ["PGD success rate", "cos(total displacement, Δw), mean over images",
          "mean |cos| with random directions (200)", "ratio", "share of steps whose projection on Δw grows",
          "mean cos between successive step displacements",
          "|displacement| / mean distance of clean features to their mean"]
cols = zip(names_, summary(stats, traj[: std_steps + 1], success), summary(stats20, traj, success20))
show_table([list(c) for c in cols], ["chest X-ray, PGD ε = 1/255", f"{std_steps} steps (standard)", f"{steps} steps"])

# %%
# The chapter's claims, on the unrounded numbers.
assert stats["cos_total"] >= 10 * stats["cos_random"], stats
assert stats["frac_increasing"] >= 0.85, stats["frac_increasing"]

# %% [markdown]
# The total displacement of the features is strongly aligned with $\Delta w$, many times more
# than a random direction in 1,280 dimensions could be, and during the standard attack the
# projection onto $\Delta w$ grows in the great majority of steps. Yet successive *single* steps
# are not parallel: the cosine between one step's displacement and the next is low or negative.
# That is not a contradiction. Sign steps of fixed size α overshoot: once δ reaches the faces of
# the ε-ball, many pixels are clipped back and forth, and each step's feature change carries a
# large component that the next step partly undoes. What accumulates is the **drift**, the part
# of every step that points along $\Delta w$, exactly as the theorem says; the zig-zag around it
# cancels out.
#
# The 20-step column shows where the picture weakens. The share of steps that increase the
# projection falls from the first steps to the last (the per-step plot below): after about ten
# steps the perturbation has used up the budget, the projection has reached the largest value
# the ε-ball allows, and further sign steps oscillate around that plateau, up about as often as
# down. Counted over 20 steps, the share is therefore lower than over the standard 10. The seed's
# claim that every step pushes the features further is true of the drift while the budget lasts,
# not of each step after it is spent. The plots show both effects, next to the same attack on
# the natural-image model.

# %% tags=["nbval-ignore-output"]
mc, _ = training.get_model("cifar10", profile=profile, seed=0)
test_c = data.load_dataset("cifar10", "test", profile=profile)
xc, yc = training.correctly_classified(mc, test_c, n=profile.n_attack)
traj_c, xc_adv = features.pgd_feature_trajectory(
    mc, xc, yc, {"eps": eps, "steps": steps, "random_start": True, "seed": 0}, return_adv=True
)
with torch.no_grad():
    yc_adv = mc(xc_adv).argmax(1)
# Ten classes: no single fixed direction. Use, per image, w_(adversarial class) - w_(true class).
Wc = mc.fc.weight.detach()
u_c = features.delta_w(Wc, yc, yc_adv)
stats_c = features.direction_stats(traj_c, u_c, n_random=200, seed=0)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
t = np.arange(steps + 1)
for st, label in [(stats20, "chest X-ray (binary)"), (stats_c, "CIFAR-10 (10 classes)")]:
    axes[0].plot(t, st["projection"] / max(1e-12, float(st["projection"][-1])), label=label)
    axes[1].plot(t[1:], st["frac_increasing_per_step"], label=label)
    axes[2].plot(t[2:], st["cos_successive"], label=label)
axes[0].set(xlabel="PGD step", ylabel="projection on Δw (fraction of final)", title="drift along Δw")
axes[1].axvline(std_steps, color="k", ls="--", lw=0.8)
axes[1].set(xlabel="PGD step", ylabel="share of images", ylim=(0, 1.02), title="projection grows at this step")
axes[2].axhline(0, color="k", lw=0.5)
axes[2].set(xlabel="PGD step", ylabel="cos(step t, step t-1)", title="successive step displacements")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
show_table(
    [["chest X-ray", stats20["cos_total"], stats20["cos_random"], stats20["frac_increasing"]],
     ["CIFAR-10", stats_c["cos_total"], stats_c["cos_random"], stats_c["frac_increasing"]]],
    ["model (20 steps)", "cos(total, Δw)", "random |cos|", "projection grows"],
)

# %% [markdown]
# ## Clean and adversarial features along Δw
#
# Project the penultimate features of clean test images and of the adversarial images onto the
# unit vector $(w_1 - w_0)/\|w_1 - w_0\|$ (NORMAL → PNEUMONIA). Clean images of the two classes
# sit on either side of the decision boundary; adversarial images are pushed past it.

# %%
u01 = (W[1] - W[0]) / (W[1] - W[0]).norm()
proj_clean = fs_test.penultimate @ u01
proj_adv = traj[std_steps] @ u01
fig, ax = plt.subplots(figsize=(6, 3.2))
bins = np.linspace(float(min(proj_clean.min(), proj_adv.min())), float(max(proj_clean.max(), proj_adv.max())), 50)
for c, name in enumerate(rec["classes"]):
    ax.hist(proj_clean[fs_test.labels == c].numpy(), bins=bins, alpha=0.5, density=True, label=f"clean {name}")
for c, name in enumerate(rec["classes"]):
    if (y == c).any():
        ax.hist(proj_adv[y == c].numpy(), bins=bins, histtype="step", lw=2, density=True, label=f"PGD from {name}")
ax.set(xlabel="penultimate features projected on Δw", ylabel="density")
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# ## At which depth does the attack become visible?
#
# For each tapped layer we fit one Gaussian per class (shared covariance, a small ridge) to the
# clean training features and measure the Mahalanobis distance of a sample to the Gaussian of the
# class the model *predicts*, which is all a detector can see (an adversarial image is measured
# against the class it now claims to be). Distances are expressed as percentiles among clean
# images held out from the fit, so clean test images should come out uniform on [0, 100], and
# "above the 95th percentile" means "more unusual than 95% of clean images".

# %% tags=["nbval-ignore-output"]
fs_adv = features.extract_features(m, (x_adv, y), progress=False)
fs_clean_att = features.extract_features(m, (x, y), progress=False)
outliers = features.MahalanobisOutliers(reg=1e-3).fit(fs_train)
pct = {"clean test": outliers.percentiles(fs_test), "attacked images (clean)": outliers.percentiles(fs_clean_att),
       "PGD 1/255": outliers.percentiles(fs_adv)}

# %%
layers = fs_train.layers
fig, ax = plt.subplots(figsize=(9, 3.3))
for name, per_layer in pct.items():
    ax.plot(range(len(layers)), [float(per_layer[l].median()) for l in layers], "o-", label=name)
ax.axhline(95, color="k", ls="--", lw=0.8, label="95th percentile")
ax.set_xticks(range(len(layers)), layers, rotation=60, fontsize=7)
ax.set(ylabel="median Mahalanobis percentile", ylim=(0, 101), title="outlier-ness by depth (chest X-ray)")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
show_table(
    [[l] + [float(pct[n][l].median()) for n in pct] + [float((pct["PGD 1/255"][l] > 95).float().mean())]
     for l in ["stem", "block3", "block8", "block13", "block16", "penultimate"]],
    ["layer"] + [f"median pct: {n}" for n in pct] + ["PGD share above 95th"],
    digits=1,
)

# %%
med_adv_pen = float(pct["PGD 1/255"]["penultimate"].median())
med_clean_pen = float(pct["clean test"]["penultimate"].median())
print(f"penultimate layer: median percentile of PGD features {med_adv_pen:.1f}, of clean test features {med_clean_pen:.1f}")
assert med_adv_pen > 95, med_adv_pen

# %% [markdown]
# Clean test images land in the middle of the percentile scale, roughly as they should (not
# exactly: the Kermany test split comes from other patients than the training split, so its
# distribution differs a little from the held-out training images the percentiles are taken
# against). The adversarial images are
# ordinary at the stem, where a perturbation of one grey level changes little, grow more unusual
# with every block, and are extreme outliers in the deep layers: their median penultimate-layer distance lies above
# the 95th percentile of clean images. Depth is where the attack lives, and where a detector can
# see it.
#
# ## Two-dimensional views
#
# PCA and t-SNE of clean test features (300 images) and the adversarial ones, for a shallow, a
# middle and the last layer. Both embeddings are only pictures: PCA keeps global distances, t-SNE
# keeps neighbourhoods and distorts everything else.

# %% tags=["nbval-ignore-output"]
sel = torch.randperm(len(fs_test), generator=torch.Generator().manual_seed(0))[:300]
fig, axes = plt.subplots(2, 3, figsize=(11, 7))
for j, layer in enumerate(["block3", "block8", "penultimate"]):
    clean_l, adv_l = fs_test[layer][sel], fs_adv[layer]
    pts = torch.cat([clean_l, adv_l]).numpy()
    pts = (pts - pts.mean(0)) / (pts.std(0) + 1e-6)
    emb = {"PCA": PCA(2, random_state=0).fit_transform(pts),
           "t-SNE": TSNE(2, perplexity=30, init="pca", random_state=0).fit_transform(pts)}
    for i, (kind, e) in enumerate(emb.items()):
        ax = axes[i, j]
        lab = fs_test.labels[sel].numpy()
        for c, name in enumerate(rec["classes"]):
            ax.scatter(*e[: len(sel)][lab == c].T, s=6, alpha=0.5, label=f"clean {name}")
        ax.scatter(*e[len(sel):].T, s=14, marker="x", c="k", label="PGD 1/255")
        ax.set_title(f"{kind}: {layer}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# In the shallow layer the adversarial points mix with the clean ones; in the penultimate layer
# they form their own group, away from both clean classes, the picture Li & Zhu drew with t-SNE
# {cite:p}`li2020robust`.
#
# ## What this means
#
# Ordinary attacks ascend one loss, and in a binary task its gradient in feature space points the
# same way for every image and every step. The features drift along that direction until the
# decision flips, and the drift carries them out of the clean distribution, most visibly in the
# deepest layers. The rest of the book draws the two consequences:
#
# - **Detection (Chapter 4):** a model of clean features, as simple as one Gaussian over the
#   penultimate layer, should catch such outliers.
# - **Hiding (Chapter 5):** an attacker who knows this can add a term that keeps every layer's
#   features inside the clean distribution of the target class. Medical features are so easy to
#   move (Chapter 2) that the attack can afford the constraint: that is the Hierarchical Feature
#   Constraint.
