#!/bin/bash
# The GPU figures of BENCHMARKS.md in one go, sized for one borrowed H100 / H200 call (about
# 3 minutes after the stack is set up):
#   1. tools/analysis/benchmark_recipe.py --quick --profile: Cascade Mask R-CNN T and UperNet T
#      training iterations, ours against the OpenMMLab port, and a profile of our Cascade step;
#   2. tools/analysis/benchmark.py --device cuda --quick: the ConvNeXt-T backbone against timm
#      (eager fp32, bf16 autocast, bf16 training step with memory, compiled).
# The recipe runs first: its time per iteration is the unknown; the backbone stage is bounded.
#
# Usage, from the repository root on a GPU machine (docs/gpu.md):
#   CONVNEXT_DENSE_SAMPLE_DATA=/path/to/samples bash tools/analysis/gpu_benchmark.sh
# where the folder holds tiny_coco/ and ade20k_sample/. Outputs (logs, JSON, a gzipped chrome trace of our Cascade
# iterations) go to $OUT when set, else to work_dirs/gpu_benchmark.
# Environment: BUDGET_S (default 180) bounds the whole script, BACKBONE_S (default 90) of it
# kept for the backbone stage; RECIPE_ITERS (default 8) and RECIPE_BUDGET_S (default 20: timed
# seconds per task, at least 3 rounds) size the recipe stage. Each stage writes its figures as
# it goes (JSON lines in the logs), so a stage stopped by its timeout keeps what it measured.
set -u -o pipefail
OUT_DIR=${OUT:-work_dirs/gpu_benchmark}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-180}
RECIPE_ITERS=${RECIPE_ITERS:-8}
BACKBONE_S=${BACKBONE_S:-90}
RECIPE_BUDGET_S=${RECIPE_BUDGET_S:-20}
SECONDS=0
status=0

{
  date -Is
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,temperature.gpu \
    --format=csv 2>/dev/null || echo "nvidia-smi: not available"
  git rev-parse --short HEAD 2>/dev/null && git status --short 2>/dev/null | head -40
} > "$OUT_DIR/machine.txt" 2>&1

echo "== 1/2 recipe training iterations (ours vs the port) + profile"
timeout $((BUDGET_S - BACKBONE_S)) $PY tools/analysis/benchmark_recipe.py --quick \
    --iters "$RECIPE_ITERS" --warmup 2 --time-budget "$RECIPE_BUDGET_S" \
    --profile --profile-iters 2 --profile-trace "$OUT_DIR/trace_{task}_{name}.json.gz" \
    --json "$OUT_DIR/recipe.json" 2>&1 | tee "$OUT_DIR/recipe.log"
rc=$?; [ $rc -ne 0 ] && { echo "recipe stage: exit status $rc (124: out of time)"; status=$rc; }
echo "== recipe stage done at ${SECONDS} s"

left=$((BUDGET_S - SECONDS))
if [ $left -lt 45 ]; then
  echo "== 2/2 backbone stage SKIPPED: ${left} s left of BUDGET_S=${BUDGET_S}"
  exit $((status ? status : 3))
fi
echo "== 2/2 backbone vs timm (${left} s left)"
timeout "$left" $PY tools/analysis/benchmark.py --device cuda --quick \
    --json "$OUT_DIR/backbone.json" 2>&1 | tee "$OUT_DIR/backbone.log"
rc=$?; [ $rc -ne 0 ] && { echo "backbone stage: exit status $rc (124: out of time)"; status=$rc; }
echo "== all done at ${SECONDS} s; outputs in $OUT_DIR"
exit $status
