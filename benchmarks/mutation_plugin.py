"""pytest plugin for the mutation run (benchmarks/mutation.py): re-import the test modules in every session.

mutmut runs pytest several times in one process (and in processes forked from it).  A test module
already in ``sys.modules`` is not executed again, and pytest then builds the ids of its
parametrised tests a second time from the marks it left on the functions, escaping backslashes
twice (``\\b`` becomes ``\\\\b``): the ids mutmut recorded in the first session no longer match
and the run stops with "not found".  Dropping the test modules at the start of each session
makes every session collect them as the first one did.
"""

import sys


def pytest_sessionstart(session):
    for name in [m for m in sys.modules if m.startswith("test_")]:
        del sys.modules[name]
