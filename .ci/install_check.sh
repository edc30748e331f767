#!/usr/bin/env bash
# The Colab install path, tested on this machine (issue 10, item 5).
#
# Colab already holds torch, torchvision and numpy; the chapters' first cell runs
# `pip install git+<repository>@v<version>`, which installs the package with the dependency
# *ranges* of pyproject.toml.  This script does the same from a wheel of the package alone:
#
#   1. build a wheel of the package (no dependencies, not requirements.txt);
#   2. create a fresh venv and install the pinned torch/torchvision (local files on this
#      machine) plus an older numpy, as Colab would have them; record their versions;
#   3. `pip install <wheel>`: every other dependency comes from pyproject's ranges (PyPI);
#   4. fail if torch, torchvision or numpy changed, if `pip check` complains, or if any module
#      of the package, or any declared dependency, does not import; run one model forward pass.
#
# Usage: bash .ci/install_check.sh   (about 3 min on 2 cores, 6 GB in a temporary folder, removed after)
# Settings: PYTHON (default python3), MEDADV_CHECK_NUMPY (default 2.0.2, Colab's numpy in 2025),
#           MEDADV_CHECK_KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-python3}
TORCH=2.14.1
TORCHVISION=0.29.1
NUMPY=${MEDADV_CHECK_NUMPY:-2.0.2}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/medadv-install-check.XXXXXX")
cleanup() {
    # The venv holds ~6 GB in ~20,000 files; removing it took about a minute here, so it is
    # removed in the background while CI goes on.
    if [ "${MEDADV_CHECK_KEEP:-0}" = 1 ]; then echo "[install-check] kept $WORK"
    else (rm -rf "$WORK" >/dev/null 2>&1 &); fi
}
trap cleanup EXIT

T_ALL=$(date +%s)
fail() { echo "[install-check] FAILED: $*" >&2; exit 1; }
T0=0
begin() { T0=$(date +%s); echo "[install-check] $*"; }
took() { echo "[install-check]   ... $(( $(date +%s) - T0 )) s"; }

# 1. A wheel of the package alone, built from a copy of its sources (keeps build/ and
#    *.egg-info out of the working tree; the copy has exactly what setuptools packages).
begin "building the wheel"
mkdir -p "$WORK/src" "$WORK/dist"
cp pyproject.toml README.md "$WORK/src/"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - medadv_tutorial | tar -C "$WORK/src" -xf -
"$PYTHON" -m pip wheel -q --no-deps "$WORK/src" -w "$WORK/dist" >"$WORK/wheel.log" 2>&1 \
    || { cat "$WORK/wheel.log" >&2; fail "pip wheel of the package did not build"; }
WHEEL=$(ls "$WORK"/dist/medadv_tutorial-*.whl 2>/dev/null | head -n 1)
[ -n "$WHEEL" ] || fail "no medadv_tutorial-*.whl in $WORK/dist"
echo "[install-check]   $(basename "$WHEEL")"
# The wheel holds every module of the source tree and nothing outside the package.
"$PYTHON" - "$WHEEL" "$ROOT/medadv_tutorial" <<'EOF' || fail "the wheel's contents are wrong (see above)"
import sys, zipfile, pathlib
names = zipfile.ZipFile(sys.argv[1]).namelist()
src = {f"medadv_tutorial/{p.name}" for p in pathlib.Path(sys.argv[2]).glob("*.py")}
missing = sorted(src - set(names))
stray = sorted(n for n in names if not n.startswith(("medadv_tutorial/", "medadv_tutorial-")))
if missing or stray:
    print(f"missing from the wheel: {missing}; files outside the package: {stray}", file=sys.stderr)
    sys.exit(1)
print(f"[install-check]   {len(names)} files, all {len(src)} modules")
EOF
took

# 2. A fresh venv holding what Colab holds: torch, torchvision, an older numpy.
begin "fresh venv with torch==$TORCH torchvision==$TORCHVISION numpy==$NUMPY"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >"$WORK/pip.log" 2>&1 \
    || echo "[install-check]   note: could not upgrade pip; going on with $("$VPY" -m pip --version | cut -d' ' -f1-2)"
"$VPY" -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION" "numpy==$NUMPY" \
    >"$WORK/torch.log" 2>&1 \
    || { tail -n 30 "$WORK/torch.log" >&2; fail "could not install torch==$TORCH torchvision==$TORCHVISION numpy==$NUMPY"; }
"$VPY" -m pip list --format=freeze >"$WORK/before.txt"
echo "[install-check]   $(grep -iE '^(torch|torchvision|numpy)==' "$WORK/before.txt" | tr '\n' ' ')"
took

# 3. The package from its wheel; dependencies from pyproject's ranges.
begin "pip install $(basename "$WHEEL")"
"$VPY" -m pip install "$WHEEL" >"$WORK/install.log" 2>&1 \
    || { tail -n 30 "$WORK/install.log" >&2; fail "pip install of the wheel failed"; }
"$VPY" -m pip list --format=freeze >"$WORK/after.txt"
took

# 4. Nothing Colab had is replaced; the environment is consistent; everything imports.
begin "checking versions, pip check, imports"
"$VPY" - "$WORK/before.txt" "$WORK/after.txt" <<'EOF' || fail "installing the package replaced torch, torchvision or numpy (see REPLACED above); in Colab it would replace the runtime's own"
import sys
def read(path):
    return dict(line.strip().lower().split("==", 1) for line in open(path) if "==" in line)
before, after = read(sys.argv[1]), read(sys.argv[2])
changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
added = sorted(f"{k}=={v}" for k, v in after.items() if k not in before)
print(f"[install-check]   added by the package: {len(added)}: {' '.join(added)}")
bad = {k: c for k, c in changed.items() if k in ("torch", "torchvision", "numpy")}
for k, (old, new) in changed.items():
    print(f"[install-check]   {'REPLACED' if k in bad else 'note: changed'} {k}: {old} -> {new}",
          file=sys.stderr if k in bad else sys.stdout)
sys.exit(1 if bad else 0)
EOF
"$VPY" -m pip check || fail "pip check found broken requirements in the fresh venv"
VERSION=$("$PYTHON" -c "import re,sys; print(re.search(r'^version\s*=\s*\"([^\"]+)\"', open('pyproject.toml').read(), re.M).group(1))")
# Run outside the clone, so that the package is imported from the venv, not the source tree.
(cd "$WORK" && MEDADV_EXPECTED_VERSION="$VERSION" "$VPY" - ) <<'EOF' || fail "an import or the forward pass failed in the fresh venv (see above)"
import importlib, importlib.metadata as md, os, pkgutil, re, sys, time, traceback
t0 = time.perf_counter()
import medadv_tutorial
expected = os.environ["MEDADV_EXPECTED_VERSION"]
assert medadv_tutorial.__file__.startswith(sys.prefix), f"imported from {medadv_tutorial.__file__}, not the venv"
assert medadv_tutorial.__version__ == md.version("medadv-tutorial") == expected, (
    f"versions differ: __version__ {medadv_tutorial.__version__}, metadata "
    f"{md.version('medadv-tutorial')}, pyproject {expected}")
failed = []
modules = sorted(m.name for m in pkgutil.walk_packages(medadv_tutorial.__path__, "medadv_tutorial."))
for name in modules:
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name)
        traceback.print_exc()
# The package imports most dependencies lazily (sklearn, medmnist, efficientnet...): import each one.
import_names = {"scikit-learn": "sklearn", "pillow": "PIL"}
deps = [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0] for r in md.requires("medadv-tutorial") or []]
for dist in deps:
    mod = import_names.get(dist.lower(), dist.lower().replace("-", "_"))
    try:
        importlib.import_module(mod)
    except Exception:
        failed.append(f"{mod} (dependency {dist})")
        traceback.print_exc()
if failed:
    sys.exit(f"[install-check] could not import: {', '.join(failed)}")
print(f"[install-check]   imported {len(modules)} modules and {len(deps)} dependencies "
      f"in {time.perf_counter() - t0:.1f} s")
import torch
from medadv_tutorial import metrics, models, numerics
model = models.build_model("efficientnet_lite0", num_classes=2, in_channels=1, image_size=64).eval()
with torch.no_grad():
    logits = model(torch.rand(2, 1, 64, 64))
assert logits.shape == (2, 2) and torch.isfinite(logits).all(), logits
assert metrics.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
print(f"[install-check]   EfficientNet-Lite0 (packaged ImageNet weights) forward pass and AUROC ok; {numerics.report()}")
EOF
took

echo "[install-check] passed: medadv-tutorial $VERSION installed from its wheel beside torch $TORCH," \
     "torchvision $TORCHVISION, numpy $NUMPY (unchanged) in $(( $(date +%s) - T_ALL )) s"
