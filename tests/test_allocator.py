"""medadv_tutorial.allocator: freed memory kept in the process, applied on purpose only."""

import subprocess
import sys

from medadv_tutorial import allocator


def test_the_line_says_what_was_done_and_a_second_call_changes_nothing():
    line = allocator.retain_freed_memory()
    if sys.platform.startswith("linux"):
        assert line.startswith("freed memory kept in the process") and "1024 MiB" in line, line
    else:
        assert line.startswith("memory allocator left as it is"), line
    assert allocator.retain_freed_memory() == line


def test_only_the_context_applies_it():
    """Importing the package (and the allocator module) sets nothing; entering the context does, and says so."""
    code = ("import medadv_tutorial, medadv_tutorial.allocator as a, medadv_tutorial.experiment as e; "
            "assert a._state == {}, a._state; "
            "line = e.Experiment('ci').enter(); assert a.retain_freed_memory() in line, line; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
