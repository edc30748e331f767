"""Retry a notebook kernel that dies while it starts (nbval starts one kernel per chapter).

With two xdist workers, two kernels start at the same moment.  jupyter_client picks each
kernel's five TCP ports by binding to port 0 and releasing it, so another process can take a
port in between; the kernel then fails to bind and exits, and nbval reports every cell of the
chapter as "Kernel died before replying to kernel_info".  A fresh start picks fresh ports, so
a start is tried up to ``ATTEMPTS`` times, with a warning each time, before the error stands.
"""

import time
import warnings

ATTEMPTS = 3


def with_retries(start, attempts=ATTEMPTS, pause_s=2.0):
    """Wrap nbval's ``start_new_kernel`` so that a kernel that dies while starting is started again."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts!r}")

    def start_with_retries(*args, **kwargs):
        for attempt in range(1, attempts + 1):
            try:
                return start(*args, **kwargs)
            except RuntimeError as error:
                if attempt == attempts:
                    raise
                warnings.warn(f"notebook kernel start {attempt} of {attempts} failed ({error}); starting it again",
                              RuntimeWarning, stacklevel=2)
                time.sleep(pause_s * attempt)

    return start_with_retries


def install():
    """Patch nbval (its RunningKernel looks ``start_new_kernel`` up in its module at each start)."""
    import nbval.kernel

    if not getattr(nbval.kernel.start_new_kernel, "_medadv_retries", False):
        nbval.kernel.start_new_kernel = with_retries(nbval.kernel.start_new_kernel)
        nbval.kernel.start_new_kernel._medadv_retries = True
