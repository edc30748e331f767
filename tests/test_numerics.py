"""The CPU numerics pin, tested by simulating other CPUs in subprocesses.

Each subprocess trains an EfficientNet-Lite0 for two steps (oneDNN convolutions, MKL products,
ATen element-wise ops), factors a float64 matrix with torch (MKL) and with numpy (OpenBLAS),
then prints hashes of the results.  "Another CPU" is simulated by what the libraries would pick there: an AVX2-only
machine runs the AVX2 kernels, which the pin selects; an AVX-512 machine without the pin runs
AVX-512 kernels.
"""

import os
import subprocess
import sys
import warnings

import pytest

from medadv_tutorial import numerics

SCRIPT = r"""
import hashlib, sys
if sys.argv[1] == "torch-first":
    import torch
from medadv_tutorial import numerics
numerics.pin()  # what the experiment context, prepare and the tests do first
import numpy as np
import torch
import torch.nn.functional as F
from medadv_tutorial.models import build_model

torch.manual_seed(0)
torch.set_num_threads(1)
m = build_model("efficientnet_lite0", 2, 3, 96, pretrained=False).train()
opt = torch.optim.SGD(m.parameters(), lr=0.1)
x, y = torch.rand(16, 3, 96, 96), torch.randint(0, 2, (16,))  # smaller shapes hide the difference
for _ in range(2):
    loss = F.cross_entropy(m(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
h = hashlib.sha256()
for v in m.state_dict().values():
    h.update(v.contiguous().numpy().tobytes())
# float64 Cholesky and products (MKL), as in the Gaussian detectors, the GMM's EM and HFC
f = torch.randn(500, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
h.update(torch.linalg.cholesky(f.T @ f / 500 + 1e-3 * torch.eye(300, dtype=torch.float64)).numpy().tobytes())
a = np.random.default_rng(0).standard_normal((300, 257))
c = np.linalg.cholesky(a.T @ a + 300 * np.eye(257))
print(h.hexdigest()[:16], hashlib.sha256(c.tobytes()).hexdigest()[:16])
print(numerics.report())
"""

CPU_FLAGS = ""
if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as fh:
        CPU_FLAGS = next((line for line in fh if line.startswith("flags")), "")
HAS_AVX512 = " avx512f " in f" {CPU_FLAGS} "

pytestmark = pytest.mark.skipif(numerics.cpu_has_avx2() is not True, reason="the pin needs an x86-64 CPU with AVX2")


def _run(mode="package-first", **env):
    clean = {k: v for k, v in os.environ.items() if k not in numerics.PIN and k != numerics.PIN_ENV}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=clean, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    torch_hash, numpy_hash = out.stdout.splitlines()[0].split()
    return torch_hash, numpy_hash, out.stdout.splitlines()[1], out.stderr


@pytest.fixture(scope="module")
def pinned():
    return _run()


def test_pin_equals_an_avx2_machine(pinned):
    # An AVX2-only CPU: its libraries pick these kernels by themselves (the package pins nothing).
    avx2_machine = _run(MEDADV_CPU_PIN="0", **numerics.PIN)
    assert pinned[:2] == avx2_machine[:2]
    assert pinned[2].startswith("CPU numerics pinned: DNNL_MAX_CPU_ISA=AVX2")


def test_pin_applies_to_torch_imported_before_the_package(pinned):
    torch_hash, numpy_hash, report, _ = _run("torch-first")
    assert torch_hash == pinned[0]  # oneDNN, MKL and ATen read the variables at their first kernel
    if numpy_hash != pinned[1]:
        # numpy (loaded by torch) fixed OpenBLAS's kernels before the pin: the report must say so
        assert "numpy was imported before medadv_tutorial" in report


@pytest.mark.skipif(not HAS_AVX512, reason="unpinned kernels equal the pinned ones on a CPU without AVX-512")
def test_without_the_pin_an_avx512_machine_differs(pinned):
    # The pin is what makes the outputs portable: the libraries' own AVX-512 kernels differ.
    unpinned = _run(MEDADV_CPU_PIN="0")
    assert unpinned[0] != pinned[0]
    assert unpinned[1] != pinned[1]
    assert "library defaults" in unpinned[2]


def test_explicit_user_setting_is_kept_with_a_warning(monkeypatch):
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE")
    state = {"applied": False, "kept": {}}  # a fresh state: not yet warned about this setting; the real one kept
    monkeypatch.setattr(numerics, "_state", state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = numerics.pin()
    assert values["DNNL_MAX_CPU_ISA"] == "AVX512_CORE"
    assert any("DNNL_MAX_CPU_ISA='AVX512_CORE'" in str(w.message) for w in caught)
    assert state == {"applied": True, "kept": {"DNNL_MAX_CPU_ISA": "AVX512_CORE"}}  # pin used the patched state


def test_opt_out(monkeypatch):
    monkeypatch.setenv(numerics.PIN_ENV, "off")
    assert numerics.pin() == {}
    assert "library defaults" in numerics.report()
