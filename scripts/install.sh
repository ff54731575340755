#!/usr/bin/env bash
# One-command set-up: .venv with torch, mmcv 2.1.0 (compiled ops, wheel cached outside the repo),
# mmengine/mmdet/mmseg/timm and this package in editable mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
WHEEL_CACHE=${CONVNEXT_DENSE_WHEEL_CACHE:-$HOME/.cache/convnext-dense/wheels}
MMCV_VERSION=2.1.0

case "$(uname -m)" in
  x86_64) TORCH=2.14.1; TORCHVISION=0.29.1 ;;
  aarch64|arm64) TORCH=2.9.1; TORCHVISION=0.24.1 ;;
  *) echo "install.sh: unsupported machine $(uname -m) (x86_64 or aarch64)" >&2; exit 1 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

"${PIP[@]}" 'setuptools>=77,<82' wheel ninja
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  echo ">> installing torch==$TORCH torchvision==$TORCHVISION"
  "${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION"
fi

# mmcv 2.1.0 ships as source only; its ops must be compiled against the installed torch. By
# default with CPU kernels only, the GPU hidden (CUDA_VISIBLE_DEVICES= FORCE_CUDA=0) so that nvcc
# is never tried: on a GPU, convnext_dense routes the ops the recipes need to torchvision's CUDA
# kernels (README "GPU"). MMCV_CUDA=1 builds mmcv's own CUDA kernels too, where an nvcc of
# torch's CUDA version exists. The wheels are cached per torch version, Python ABI and kind,
# outside the repository.
ABI=$("$PY" -c "import sys; print(f'cp{sys.version_info.major}{sys.version_info.minor}')")
MMCV_DIR="$WHEEL_CACHE/torch-$TORCH-$ABI-$(uname -m)"
MMCV_BUILD_ENV=(CUDA_VISIBLE_DEVICES= FORCE_CUDA=0)
MMCV_KIND="CPU ops"
WANT_CUDA=0

# The CUDA toolkit to build mmcv's CUDA ops with: prints "ROOT CUDA_VERSION", or why there is
# none (and fails). Looked for in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then beside the nvcc
# on the PATH; it needs nvcc and the CUDA headers, and torch's CUDA version.
cuda_toolkit() {
  local torch_cuda root found= nvcc_cuda
  torch_cuda=$("$PY" -c "import torch; print(torch.version.cuda or '')")
  if [ -z "$torch_cuda" ]; then
    echo "torch $TORCH here is a build without CUDA"; return 1
  fi
  for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda \
      "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /none/bin/nvcc)")")")"; do
    if [ -n "$root" ] && [ -x "$root/bin/nvcc" ] && [ -f "$root/include/cuda_runtime.h" ]; then
      found=$root; break
    fi
  done
  if [ -z "$found" ]; then
    echo "there is no CUDA toolkit (nvcc and headers) in \$CUDA_HOME, \$CUDA_PATH," \
         "/usr/local/cuda or beside an nvcc on the PATH"
    return 1
  fi
  nvcc_cuda=$("$found/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  if [ "$nvcc_cuda" != "$(echo "$torch_cuda" | cut -d. -f1,2)" ]; then
    echo "the CUDA toolkit in $found is CUDA ${nvcc_cuda:-of unknown version} and torch has" \
         "CUDA $torch_cuda"
    return 1
  fi
  echo "$found $torch_cuda"
}

if [ "${MMCV_CUDA:-0}" = 1 ]; then
  if TOOLKIT=$(cuda_toolkit); then
    read -r CUDA_ROOT TORCH_CUDA <<< "$TOOLKIT"
    WANT_CUDA=1
    MMCV_DIR="$MMCV_DIR-cuda$TORCH_CUDA"
    MMCV_BUILD_ENV=(FORCE_CUDA=1 "CUDA_HOME=$CUDA_ROOT")
    MMCV_KIND="CUDA ops (CUDA $TORCH_CUDA, $CUDA_ROOT)"
  else
    echo ">> MMCV_CUDA=1, but $TOOLKIT: building mmcv with CPU ops only. On a GPU, RoIAlign" \
         "and NMS then run through torchvision's CUDA kernels (convnext_dense.compat." \
         "mmcv_cuda_ops). For mmcv's own CUDA ops, install the CUDA toolkit that matches" \
         "torch.version.cuda and run MMCV_CUDA=1 bash scripts/install.sh again."
  fi
fi
mkdir -p "$MMCV_DIR"
MMCV_WHEEL=$(ls "$MMCV_DIR"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$MMCV_WHEEL" ]; then
  echo ">> building mmcv $MMCV_VERSION with $MMCV_KIND (CPU ops: about 8 minutes on 2 cores," \
       "CUDA ops: much longer; cached in $MMCV_DIR)"
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
  tar -xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
  SRC="$BUILD/mmcv-$MMCV_VERSION"
  # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes C++17.
  sed -i 's/-std=c++17/-std=c++20/g; s#/std:c++17#/std:c++20#g' "$SRC/setup.py"
  (cd "$SRC" && env "${MMCV_BUILD_ENV[@]}" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$OLDPWD/$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps . -w "$BUILD/dist")
  cp "$BUILD"/dist/mmcv-*.whl "$MMCV_DIR/"
  MMCV_WHEEL=$(ls "$MMCV_DIR"/mmcv-$MMCV_VERSION-*.whl | head -n1)
fi
# Keep an installed mmcv $MMCV_VERSION with ops (CPU or CUDA) unless CUDA ops are asked for and
# it has none.
if ! "$PY" -c "import mmcv, sys; from mmcv.ops import nms, get_compiling_cuda_version as cuda
sys.exit(mmcv.__version__ != '$MMCV_VERSION' or ($WANT_CUDA and cuda() == 'not available'))" 2>/dev/null; then
  echo ">> installing $MMCV_WHEEL"
  "${PIP[@]}" --force-reinstall --no-deps "$MMCV_WHEEL"
fi

echo ">> installing requirements and convnext_dense (editable)"
"${PIP[@]}" -r requirements.txt -r requirements-test.txt  # mmcv: the one installed above
"${PIP[@]}" --no-deps --no-build-isolation -e .
"$PY" -c "import convnext_dense, mmcv.ops, mmdet, mmseg, timm; print('>> environment ready:', convnext_dense.__version__)"
