"""Helpers shared by the toy classifiers of the tests (imported as ``toys``: pytest puts tests/ on sys.path)."""

import torch


@torch.no_grad()
def lda_head(h: torch.Tensor, y: torch.Tensor, margin: float | None = None):
    """Two-logit linear discriminant for features ``h`` ``(N, d)`` with labels ``y`` in {0, 1}.

    Returns ``(weight (2, d), bias (2,))`` float32: logits ``(-s/2, s/2)`` with
    ``s = w.h + b`` the LDA score.  ``margin``: rescale ``w`` so that the logit gap between
    the two class means is ``margin`` (keeps the softmax away from saturation).
    """
    h = h.double()
    d = h.shape[1]
    mu = torch.stack([h[y == c].mean(0) for c in (0, 1)])
    cov = sum((h[y == c] - mu[c]).T @ (h[y == c] - mu[c]) for c in (0, 1)) / len(y)
    w = torch.linalg.solve(cov + 1e-6 * torch.eye(d, dtype=h.dtype), mu[1] - mu[0])
    if margin is not None:
        w = w / (w @ (mu[1] - mu[0])) * margin
    b = -w @ (mu[0] + mu[1]) / 2
    return torch.stack([-w / 2, w / 2]).float(), torch.stack([-b / 2, b / 2]).float()


class LinearClassifier(torch.nn.Module):
    """logits = W flatten(dropout(x)) + b, K = 3 classes, weights from an explicit generator: the
    cross-entropy's input gradient and losses have closed forms (eval mode must switch off the
    dropout)."""

    num_classes = 3

    def __init__(self, d: int = 16, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dropout = torch.nn.Dropout(0.5)
        self.weight = torch.nn.Parameter(torch.randn(3, d, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(3, generator=g))

    def forward(self, x):
        return self.dropout(x).flatten(1) @ self.weight.T + self.bias
