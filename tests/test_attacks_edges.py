"""Known answers of the attack loop's projection box (``python benchmarks/mutation.py attacks``)."""

import torch

from medadv_tutorial.attacks import linf_box


def test_the_box_is_exact_where_the_arithmetic_is():
    # dyadic pixels and eps: x - eps and x + eps are exact, so no bound is nudged (the box is the whole ball)
    x = torch.tensor([0.125, 0.5, 0.875], dtype=torch.float32).view(1, 1, 1, 3)
    lo, hi = linf_box(x, 0.25)
    assert lo.flatten().tolist() == [0.0, 0.25, 0.625]
    assert hi.flatten().tolist() == [0.375, 0.75, 1.0]


def test_a_float64_box_keeps_eps_in_float64():
    # eps = 0.1 is compared in x's dtype: float64 images get the float64 bounds, not float32's rounding of eps
    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    lo, hi = linf_box(x, 0.1)
    assert float(hi) == 0.5 + 0.1 and float(lo) == 0.5 - 0.1
