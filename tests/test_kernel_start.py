"""The kernel-start retry used by the nbval runs (tests/kernel_start.py)."""

import nbval.kernel
import pytest

import kernel_start


def test_a_kernel_that_dies_once_is_started_again():
    calls = []

    def start(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return "km", "kc"

    with pytest.warns(RuntimeWarning, match="start 1 of 3 failed"):
        assert kernel_start.with_retries(start, pause_s=0)(kernel_name="python3") == ("km", "kc")
    assert calls == [{"kernel_name": "python3"}] * 2


def test_the_error_stands_after_the_last_attempt():
    def start():
        raise RuntimeError("Kernel died before replying to kernel_info")

    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="Kernel died"):
        kernel_start.with_retries(start, attempts=2, pause_s=0)()


def test_other_errors_are_not_retried():
    calls = []

    def start():
        calls.append(1)
        raise ValueError("no such kernel")

    with pytest.raises(ValueError):
        kernel_start.with_retries(start, pause_s=0)()
    assert calls == [1]


def test_attempts_is_checked():
    with pytest.raises(ValueError, match="attempts"):
        kernel_start.with_retries(lambda: None, attempts=0)


def test_the_test_session_runs_nbval_with_the_retry():
    assert getattr(nbval.kernel.start_new_kernel, "_medadv_retries", False)
