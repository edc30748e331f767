"""DNN: a small MLP trained on clean against adversarial features (Metzen et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int, check_real, check_seed
from .base import Detector, Inputs, _check_features, _check_layers


class DNNDetector(Detector):
    """A small MLP that classifies features as clean (0) or adversarial (1), supervised.

    ``d -> hidden -> hidden -> 1`` with ReLU, on features standardised with the mean and
    standard deviation of the training set, trained with class-balanced binary
    cross-entropy and Adam for a few epochs on clean features against ``adv_features`` of
    a *training* attack (never the evaluation images).  Features may be one tensor (N, d)
    or a dict of layers, which is concatenated in its key order (for example pooled
    features of several blocks, the deep-feature detector of Ma et al. 2021).
    Score: the logit (real, higher = more adversarial).  Seeded: the same seed and data
    give the same network on the same device.  ``labels`` are ignored.
    """

    name = "DNN"
    inputs = Inputs(adversarial=True)

    def __init__(self, hidden: int = 128, epochs: int = 20, lr: float = 1e-3, batch_size: int = 128,
                 weight_decay: float = 1e-4, seed: int = 0):
        self.hidden, self.epochs = check_int(hidden, "hidden (units per layer)"), check_int(epochs, "epochs")
        self.lr = check_real(lr, "lr", low=0.0, low_open=True)
        self.batch_size = check_int(batch_size, "batch_size")
        self.weight_decay, self.seed = check_real(weight_decay, "weight_decay", low=0.0), check_seed(seed)

    def _params(self):
        return {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr, "seed": self.seed}

    def _validate(self, x, name, fitting, finite=True):
        if isinstance(x, torch.Tensor):
            return _check_features(x, name, None if fitting else self.n_features_in_, finite=finite)
        if not fitting and self._layer_dims is None:
            raise TypeError(f"{name}: the detector was fitted on one tensor (N, {self.n_features_in_}); "
                            "pass a tensor of that shape, not a dict of layers")
        layers = _check_layers(x, name, None if fitting else self._layer_dims, finite=finite)
        if fitting:
            self._layer_dims = {k: v.shape[1] for k, v in layers.items()}
        return torch.cat(list(layers.values()), dim=1)

    def fit(self, clean_features, labels=None, *, adv_features=None, clean_val_features=None):
        """Train on clean (label 0) vs ``adv_features`` (label 1), same layout (N, d) or {layer: ...}.

        ``clean_val_features``: other clean rows to use as label 0 instead of
        ``clean_features`` (whose scores stay the threshold's reference).  Returns self.
        """
        self._check_fit_sets(adv_features, clean_val_features)
        with self._fitting():
            self._layer_dims = None
            x = self._validate(clean_features, "clean_features", fitting=True)
            self.n_features_in_ = x.shape[1]
            a = self._validate(adv_features, "adv_features", fitting=False)
            neg = x if clean_val_features is None else self._validate(clean_val_features, "clean_val_features",
                                                                      fitting=False)
            dev = x.device
            x, a, neg = x.detach().float(), a.detach().to(dev).float(), neg.detach().to(dev).float()
            data = torch.cat([neg, a])
            target = torch.cat([torch.zeros(len(neg), device=dev), torch.ones(len(a), device=dev)])
            self.mean_ = data.mean(0)
            self.std_ = data.std(0).clamp_min(1e-6)
            data = (data - self.mean_) / self.std_
            devices = [dev] if dev.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                net = nn.Sequential(nn.Linear(data.shape[1], self.hidden), nn.ReLU(),
                                    nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)).to(dev)
            gen = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(len(neg) / len(a), device=dev))
            net.train()
            with torch.enable_grad():
                for _ in range(self.epochs):
                    perm = torch.randperm(len(data), generator=gen).to(dev)
                    for i in range(0, len(data), self.batch_size):
                        idx = perm[i : i + self.batch_size]
                        opt.zero_grad(set_to_none=True)
                        loss_fn(net(data[idx]).squeeze(1), target[idx]).backward()
                        opt.step()
            net.eval().requires_grad_(False)
            self.net_ = net
            self._finish_fit(x, None)
        return self

    def _score(self, x, labels):
        dev = self.mean_.device
        z = (x.to(dev, torch.float32) - self.mean_) / self.std_
        return self.net_(z).squeeze(1).to(torch.float64)
