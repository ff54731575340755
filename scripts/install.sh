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

# mmcv 2.1.0 ships as source only; its ops must be compiled against the installed torch.
# The wheel is cached per torch version and Python ABI, outside the repository.
ABI=$("$PY" -c "import sys; print(f'cp{sys.version_info.major}{sys.version_info.minor}')")
MMCV_DIR="$WHEEL_CACHE/torch-$TORCH-$ABI-$(uname -m)"
mkdir -p "$MMCV_DIR"
MMCV_WHEEL=$(ls "$MMCV_DIR"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$MMCV_WHEEL" ]; then
  echo ">> building mmcv $MMCV_VERSION with ops (about 8 minutes on 2 cores; cached in $MMCV_DIR)"
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
  tar -xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
  SRC="$BUILD/mmcv-$MMCV_VERSION"
  # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes C++17.
  sed -i 's/-std=c++17/-std=c++20/g; s#/std:c++17#/std:c++20#g' "$SRC/setup.py"
  (cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$OLDPWD/$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps . -w "$BUILD/dist")
  cp "$BUILD"/dist/mmcv-*.whl "$MMCV_DIR/"
  MMCV_WHEEL=$(ls "$MMCV_DIR"/mmcv-$MMCV_VERSION-*.whl | head -n1)
fi
if ! "$PY" -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  echo ">> installing $MMCV_WHEEL"
  "${PIP[@]}" --force-reinstall --no-deps "$MMCV_WHEEL"
fi

echo ">> installing requirements and convnext_dense (editable)"
"${PIP[@]}" -r requirements.txt -r requirements-test.txt "$MMCV_WHEEL"
"${PIP[@]}" --no-deps --no-build-isolation -e .
"$PY" -c "import convnext_dense, mmcv.ops, mmdet, mmseg, timm; print('>> environment ready:', convnext_dense.__version__)"
