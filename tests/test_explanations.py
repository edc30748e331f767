"""Verdicts from intervals of differences (medadv_tutorial.explanations): every branch, bad inputs."""

import pytest

from medadv_tutorial import explanations as ex
from medadv_tutorial.metrics import Interval

UP, DOWN, ZERO = Interval(0.3, 0.1, 0.5), Interval(-0.3, -0.5, -0.1), Interval(0.05, -0.1, 0.2)


@pytest.mark.parametrize("direct, matched, expected, verdict", [
    (UP, [UP, UP], 1, ex.SUPPORTED),
    (DOWN, [DOWN], -1, ex.SUPPORTED),
    (UP, [UP, ZERO], 1, ex.INCONSISTENT),     # one matched comparison does not show it
    (DOWN, [DOWN, UP], 1, ex.INCONSISTENT),   # the matched sets disagree
    (UP, [DOWN, DOWN], 1, ex.CONFOUNDED),     # the matched ones point the other way
    (UP, [ZERO, ZERO], 1, ex.CONFOUNDED),     # gone at matched resolution
    (ZERO, [UP], 1, ex.CONFOUNDED),           # only at matched resolution
    (ZERO, [ZERO, DOWN], 1, ex.NOT_SUPPORTED),
    (DOWN, [DOWN], 1, ex.NOT_SUPPORTED),      # a difference against the prediction
    (UP, [UP], -1, ex.NOT_SUPPORTED),
])
def test_resolution_verdict(direct, matched, expected, verdict):
    assert ex.resolution_verdict(direct, matched, expected) == verdict


@pytest.mark.parametrize("medical, natural, verdict", [
    (UP, ZERO, ex.SUPPORTED), (UP, DOWN, ex.SUPPORTED), (UP, UP, ex.NOT_SPECIFIC),
    (ZERO, UP, ex.NOT_SUPPORTED), (DOWN, ZERO, ex.NOT_SUPPORTED),
])
def test_trend_verdict(medical, natural, verdict):
    assert ex.trend_verdict(medical, natural) == verdict


def test_trend_verdict_other_direction():
    assert ex.trend_verdict(DOWN, ZERO, expected=-1) == ex.SUPPORTED


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="direct must be a metrics.Interval"):
        ex.resolution_verdict((0.1, 0, 0.2), [UP], 1)
    with pytest.raises(ValueError, match="matched must be a non-empty list"):
        ex.resolution_verdict(UP, [], 1)
    with pytest.raises(ValueError, match="matched must be a non-empty list"):
        ex.resolution_verdict(UP, UP, 1)
    with pytest.raises(TypeError, match=r"matched\[1\]"):
        ex.resolution_verdict(UP, [UP, 0.3], 1)
    with pytest.raises(ValueError, match="expected must be"):
        ex.resolution_verdict(UP, [UP], 0)
    with pytest.raises(ValueError, match="expected must be"):
        ex.trend_verdict(UP, UP, True)
    with pytest.raises(TypeError, match="natural must be"):
        ex.trend_verdict(UP, None)
