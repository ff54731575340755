#!/usr/bin/env bash
# Every GPU check in one go: the tests marked `cuda` (tests/cuda: mmcv ops on CUDA, AMP fp16 /
# bf16, SyncBN, the Cascade Mask R-CNN T and UperNet T recipes trained, resumed and tested on
# the sample data, one training step of Mask R-CNN T and Cascade S/B/L/XL, two fp16 AMP training
# steps of each newer recipe on synthetic batches at its training size (Mask R-CNN V2 T/B/L/H,
# Mask2Former T/B and DINO T/B on COCO, UperNet V2 T/B/L/H and Mask2Former T/B on ADE20K:
# -k test_recipe_builds), the detection demo, test.py --fast), then the figures they measured
# (seconds per iteration, peak memory).
#
#   bash tools/gpu_check.sh                          # after `make install`, on a GPU machine
#
# The recipe runs need the sample data (tiny_coco, ade20k_sample) in the folder named by
# CONVNEXT_DENSE_SAMPLE_DATA (tests/helpers.py) and skip without it. docs/gpu.md: running the
# checks on a machine without a package registry.
#
# Arguments go to pytest (e.g. -k cascade, -x). Output in $GPU_CHECK_OUT (default
# $OUT/gpu_check where $OUT is set, else /tmp/gpu_check): pytest.log, junit.xml and
# figures.jsonl. Sizes: GPU_CHECK_DET_IMAGES (tiny_coco images per epoch, two epochs, default
# 20), GPU_CHECK_DET_TEST_IMAGES (default 10), GPU_CHECK_SEG_ITERS (UperNet iterations before
# the resume, default 16; 4 after), GPU_CHECK_STEP_IMAGES (images per batch of the newer
# recipes' steps, default 2).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=python3
fi
DATA=$("$PY" -c 'import sys; sys.path.insert(0, "tests"); from helpers import SHARED_DATA; print(SHARED_DATA)')
if [ -d "$DATA/tiny_coco" ] && [ -d "$DATA/ade20k_sample" ]; then
  echo "gpu_check: data in $DATA"
else
  echo "gpu_check: no tiny_coco / ade20k_sample in $DATA (set CONVNEXT_DENSE_SAMPLE_DATA):" \
       "the recipe runs will be skipped" >&2
fi
OUT_DIR=${GPU_CHECK_OUT:-${OUT:-/tmp}/gpu_check}
mkdir -p "$OUT_DIR"
export CONVNEXT_DENSE_GPU_FIGURES="$OUT_DIR/figures.jsonl"
: > "$CONVNEXT_DENSE_GPU_FIGURES"

if ! "$PY" -c 'import pytest' 2>/dev/null; then
  echo "gpu_check: pytest is not installed for $PY: pip install pytest (on a machine without" \
       "a registry: pip install --no-index --find-links DIR pytest, with the wheels of" \
       "pytest, pluggy, iniconfig, packaging and pygments in DIR)" >&2
  exit 2
fi

# mmdet 3.3 imports mmpretrain wherever it is installed, and mmpretrain 1.2.0 fails to import
# where transformers >= 5 is installed (TypeError: NoneType takes no arguments: its multimodal
# models, which it loads whenever transformers >= 4.28 is installed, need names that
# transformers 5 removed): then no detector builds.
if ! "$PY" -c 'import mmdet.models' 2>/dev/null; then
  echo "gpu_check: mmdet.models does not import here:" >&2
  "$PY" -c 'import mmdet.models' 2>&1 | tail -1 >&2
  echo "gpu_check: if that is mmpretrain 1.2 beside transformers >= 5, uninstall mmpretrain;" \
       "tools/gpu_all.sh moves it aside by itself" >&2
  exit 2
fi

"$PY" - <<'EOF'
import torch, torchvision, mmcv, mmdet, mmseg, mmengine
from mmcv.ops import get_compiling_cuda_version
from convnext_dense.compat import mmcv_cuda_ops
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none: the tests are skipped'
print(f'gpu_check: GPU {gpu} | torch {torch.__version__} (CUDA {torch.version.cuda}) | '
      f'torchvision {torchvision.__version__} | mmcv {mmcv.__version__} (CUDA kernels: '
      f'{get_compiling_cuda_version()}) | mmengine {mmengine.__version__} | mmdet '
      f'{mmdet.__version__} | mmseg {mmseg.__version__}')
if torch.cuda.is_available():
    print('gpu_check: mmcv ops on CUDA tensors:', "mmcv's own kernels"
          if mmcv_cuda_ops.mmcv_has_cuda_ops() else
          "torchvision's kernels (convnext_dense.compat.mmcv_cuda_ops)")
EOF

SECONDS=0
"$PY" -m pytest tests/cuda -m cuda -v -rs -p no:cacheprovider --durations=0 \
    --junitxml "$OUT_DIR/junit.xml" "$@" 2>&1 | tee "$OUT_DIR/pytest.log"
status=${PIPESTATUS[0]}
echo "gpu_check: pytest exit status $status after ${SECONDS} s"

"$PY" - "$CONVNEXT_DENSE_GPU_FIGURES" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f'gpu_check: {len(records)} figures ({sys.argv[1]})')
for record in records:
    name = record.pop('name')
    context = ', '.join(f'{k} {record.pop(k)}' for k in ('gpu', 'torch') if k in record)
    values = ', '.join(f'{k}={v}' for k, v in record.items())
    print(f'  {name}: {values}  [{context}]')
EOF
exit "$status"
