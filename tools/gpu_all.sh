#!/usr/bin/env bash
# Every GPU check in one call, within one wall-time budget, from a machine with nothing but
# Python, torch and this repository: set-up, the correctness checks, then the speed figures with
# the time that is left. Logs are written as each stage runs, so a call cut short shows what ran.
#
#   bash tools/gpu_all.sh                                # after `make install`
#   GPU_SETUP=path/to/setup.sh bash tools/gpu_all.sh     # sources a set-up script first
#
# Stages, in this order (GPU_ALL_STAGES picks and orders them, e.g. "g" or "b d"; the default
# runs the benchmark before f, which re-checks what passed on a GPU before):
#   setup      GPU_SETUP, when set, is sourced first (e.g. one that installs the wheels of a
#              machine without a package registry into a folder on PYTHONPATH and builds mmcv).
#              The wheels it leaves in GPU_SETUP_DIST (default /tmp/dist) are copied to the
#              output folder; a wheel named by GPU_MMCV_WHEEL, or in <setup dir>/dist, is put in
#              GPU_SETUP_DIST first, so that a second call skips the mmcv build.
#   a ops      tests/cuda/test_cuda_ops.py: mmcv's RoIAlign, NMS and deformable attention and
#              mmdet's focal loss on CUDA
#   b cascade  the Cascade Mask R-CNN T recipe on tiny_coco: tools/train.py, --resume, test.py
#   c upernet  the UperNet T recipe on the ADE20K samples: the same three runs
#   d demo     the detection demo (training under 2 minutes), tools/test.py and test.py --fast
#   e recipes  two fp16 AMP steps of each of the 15 V2 / Mask2Former / DINO recipes
#   f rest     the rest of tests/cuda: AMP, SyncBN under torchrun, a step of Mask R-CNN T and
#              Cascade S/B/L/XL, the recipe runs' options
#   g bench    tools/analysis/gpu_benchmark.sh (needs a GPU): ConvNeXt-T against timm, Cascade T
#              and UperNet T iterations against mmdet's / mmseg's ConvNeXt (mmpretrain)
#
# Budget: GPU_ALL_BUDGET_S (default 540) seconds from the start, set-up included. Each stage
# runs under `timeout`: at most its cap, and at most what is left less the minimum of each later
# stage of a-e (the owed checks; f, run before on a GPU, and the benchmark reserve nothing: they
# take what is left); a stage gets at least its own minimum, and is skipped when less is left.
#
# Measured on one H200 (2026-12-04, BENCHMARKS.md): set-up 183 s on a bare machine (33 s where
# the mmcv wheel was kept), a 29 s, e 121 s (15 recipes, two steps each, with the model builds),
# Cascade T's first epoch with validation about 60 s of b; d did not finish within 90 s.
# Estimates for the rest: b 100 s, c 60 s, d 150 s (training under 120 s, the test, --fast),
# f 65 s, g 180 s for all its figures (less gives fewer: the recipe iterations first, the
# backbone only from 45 s up). So a bare machine needs two calls of 10 minutes: the first runs
# set-up and a-e; the second (GPU_ALL_STAGES="g f"), with the wheel the first left in the output
# folder carried as <setup dir>/dist/, the benchmark and f. Where the output folder cannot bring
# the 32 MB wheel back, run the second call while the machine is still warm (it keeps
# /tmp/dist).
# Timeouts (cap / minimum, s): a 90/20, b 240/45, c 150/30, d 300/150, e 240/45, f 180/30, g -/60.
# Sizes: GPU_CHECK_DET_IMAGES (default 8 here), GPU_CHECK_DET_TEST_IMAGES (4), GPU_CHECK_SEG_ITERS
# (8), GPU_CHECK_STEP_IMAGES (2) (tests/cuda/test_cuda_recipes.py). The recipe runs need
# tiny_coco and ade20k_sample in CONVNEXT_DENSE_SAMPLE_DATA (tests/helpers.py).
#
# mmdet 3.3 imports mmpretrain wherever it is installed, and mmpretrain 1.2 does not import
# where transformers >= 5 is installed (TypeError: NoneType takes no arguments): stages a-f run
# without mmpretrain (where it lies in a folder on PYTHONPATH, e.g. a `pip install --target`
# one, it is moved aside and put back for the benchmark), and the benchmark runs, when needed,
# with a folder on PYTHONPATH declaring transformers version 0, so that mmpretrain leaves out
# its multimodal models.
#
# Output in GPU_ALL_OUT (default $OUT/gpu_all where OUT is set, else /tmp/gpu_all): summary.txt
# (the stage lines, then the figures), <stage>/pytest.log, junit.xml and work/ (the tools' own
# logs), figures.jsonl, bench/ (gpu_benchmark.sh's outputs), dist/ (the set-up's wheels).
set -uo pipefail
SECONDS=0
cd "$(dirname "$0")/.."

BUDGET=${GPU_ALL_BUDGET_S:-540}
STAGES=${GPU_ALL_STAGES:-a b c d e g f}
OUT_DIR=${GPU_ALL_OUT:-${OUT:-/tmp}/gpu_all}
WORK=${GPU_ALL_WORK:-/tmp/gpu_all_work}  # pytest's temporary folders, checkpoints included
DIST=${GPU_SETUP_DIST:-/tmp/dist}
SUMMARY=$OUT_DIR/summary.txt
mkdir -p "$OUT_DIR" "$WORK"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1
export GPU_CHECK_DET_IMAGES=${GPU_CHECK_DET_IMAGES:-8}
export GPU_CHECK_DET_TEST_IMAGES=${GPU_CHECK_DET_TEST_IMAGES:-4}
export GPU_CHECK_SEG_ITERS=${GPU_CHECK_SEG_ITERS:-8}
export CONVNEXT_DENSE_GPU_FIGURES=$OUT_DIR/figures.jsonl
: > "$CONVNEXT_DENSE_GPU_FIGURES"

declare -A NAME=([a]=ops [b]=cascade [c]=upernet [d]=demo [e]=recipes [f]=rest [g]=bench)
declare -A CAP=([a]=90 [b]=240 [c]=150 [d]=300 [e]=240 [f]=180 [g]=100000)
declare -A MIN=([a]=20 [b]=45 [c]=30 [d]=150 [e]=45 [f]=30 [g]=60)

say() { echo "$*" | tee -a "$SUMMARY"; }

say "== gpu_all: $(date -Is), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget" \
    "${BUDGET} s, stages: $STAGES"

# ------------------------------------------------------------------ set-up
if [ -n "${GPU_SETUP:-}" ]; then
  say "== stage setup: start at ${SECONDS} s ($GPU_SETUP)"
  carried=
  for wheel in ${GPU_MMCV_WHEEL:-} "$(dirname "$GPU_SETUP")"/dist/mmcv-*.whl; do
    if [ -f "$wheel" ]; then
      mkdir -p "$DIST" && cp "$wheel" "$DIST"/ && say "   a built mmcv wheel: $wheel"
      carried=1
    fi
  done
  # shellcheck disable=SC1090
  source "$GPU_SETUP"
  rc=$?
  # a carried wheel that does not load here (the set-up's own import check fails) is rebuilt
  if [ $rc -ne 0 ] && [ -n "$carried" ]; then
    say "   the set-up failed (exit $rc) with the carried mmcv wheel: building it here"
    rm -f "$DIST"/mmcv-*.whl
    # shellcheck disable=SC1090
    source "$GPU_SETUP"
    rc=$?
  fi
  say "== stage setup: done at ${SECONDS} s, exit $rc"
  if ls "$DIST"/*.whl >/dev/null 2>&1; then
    mkdir -p "$OUT_DIR/dist" && cp "$DIST"/*.whl "$OUT_DIR/dist/"
  fi
fi

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=python3
fi

# ------------------------------------------------------------------ mmpretrain aside
ASIDE=$WORK/mmpretrain_aside
PRETRAIN_DIR=$("$PY" -c 'import importlib.util as u, os.path as p
s = u.find_spec("mmpretrain"); print(p.dirname(p.dirname(s.origin)) if s else "")' 2>/dev/null)
put_back_mmpretrain() {
  if [ -d "$ASIDE" ] && [ -n "$(ls -A "$ASIDE")" ]; then
    for item in "$ASIDE"/*; do rm -rf "$PRETRAIN_DIR/$(basename "$item")"; done
    mv "$ASIDE"/* "$PRETRAIN_DIR"/ && say "   mmpretrain put back in $PRETRAIN_DIR"
  fi
}
if [ -n "$PRETRAIN_DIR" ]; then
  case ":${PYTHONPATH:-}:" in
    *":$PRETRAIN_DIR:"*)
      rm -rf "$ASIDE" && mkdir -p "$ASIDE"
      mv "$PRETRAIN_DIR"/mmpretrain "$PRETRAIN_DIR"/mmpretrain-*.dist-info "$ASIDE"/
      trap put_back_mmpretrain EXIT
      say "   mmpretrain moved aside from $PRETRAIN_DIR for the checks";;
    *) say "   mmpretrain is installed in $PRETRAIN_DIR (not a PYTHONPATH folder): the checks" \
           "run with it";;
  esac
fi

# ------------------------------------------------------------------ what is here
"$PY" - > "$OUT_DIR/versions.txt" 2>&1 <<'EOF'
import importlib.metadata as metadata, os, sys
sys.path.insert(0, 'tests')
import torch
from helpers import SHARED_DATA
data = SHARED_DATA  # $CONVNEXT_DENSE_SAMPLE_DATA
found = [name for name in ('tiny_coco', 'ade20k_sample') if os.path.isdir(f'{data}/{name}')]
print('gpu:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')
print(f'python {sys.version.split()[0]} | torch {torch.__version__} (CUDA {torch.version.cuda})',
      end='')
for name in ('mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain', 'timm',
             'transformers', 'pytest'):
    try:
        print(f' | {name} {metadata.version(name)}', end='')
    except metadata.PackageNotFoundError:
        print(f' | {name} -', end='')
print(f'\ndata: {data} ({", ".join(found) or "no tiny_coco / ade20k_sample: b, c skip"})')
try:
    import mmdet.models  # noqa: F401
    print('import mmdet.models: ok')
except Exception as error:  # the checks below fail the same way; say it once here
    print(f'import mmdet.models: FAILED: {type(error).__name__}: {error}')
EOF
sed 's/^/   /' "$OUT_DIR/versions.txt" | tee -a "$SUMMARY"
HAVE_GPU=0
grep -q '^gpu: none' "$OUT_DIR/versions.txt" || HAVE_GPU=1
HAVE_PYTEST=1
grep -q '| pytest -' "$OUT_DIR/versions.txt" && HAVE_PYTEST=0

# ------------------------------------------------------------------ the stages
pytest_stage() {  # stage seconds pytest-arguments...
  local stage=$1 seconds=$2 dir=$OUT_DIR/$1_${NAME[$1]} rc
  shift 2
  if [ $HAVE_PYTEST = 0 ]; then
    say "   pytest is not installed for $PY"
    return 2
  fi
  mkdir -p "$dir"
  timeout -k 10 "$seconds" "$PY" -m pytest -v -rs -p no:cacheprovider --durations=0 \
      --basetemp "$WORK/$stage" --junitxml "$dir/junit.xml" "$@" 2>&1 | tee "$dir/pytest.log"
  rc=${PIPESTATUS[0]}
  # pytest keeps only the tail of a failed tool run's output: keep the tools' own logs
  if [ -d "$WORK/$stage" ]; then
    (cd "$WORK/$stage" && find . -type f \( -name '*.log' -o -name 'scalars.json' \) \
       -size -8M -exec cp --parents {} "$dir/" \;)
  fi
  tail -n 1 "$dir/pytest.log" | sed 's/^/   /' >> "$SUMMARY"
  return "$rc"
}

bench_stage() {  # seconds
  local seconds=$1 pythonpath=${PYTHONPATH:-} meta=$WORK/transformers_hidden
  put_back_mmpretrain
  if [ -n "$PRETRAIN_DIR" ] && ! "$PY" -c 'import mmpretrain.models' 2>/dev/null; then
    mkdir -p "$meta/transformers-0.dist-info"
    printf 'Metadata-Version: 2.1\nName: transformers\nVersion: 0\n' \
      > "$meta/transformers-0.dist-info/METADATA"
    pythonpath=$meta${pythonpath:+:$pythonpath}
  fi
  if PYTHONPATH=$pythonpath "$PY" -c 'import mmpretrain.models, mmdet.models' 2>"$WORK/port.err"
  then
    say "   mmpretrain.models and mmdet.models import (PYTHONPATH=$pythonpath)"
  else
    say "   the port will be skipped: $(tail -n 1 "$WORK/port.err")"
  fi
  if [ $HAVE_GPU = 0 ]; then
    NOTE='not run: no GPU'
    return 0
  fi
  local backbone=$((seconds * 2 / 5 < 90 ? seconds * 2 / 5 : 90))
  local timed=$((seconds < 180 ? 8 : 20))
  PYTHONPATH=$pythonpath OUT=$OUT_DIR/g_bench PYTHON=$PY BUDGET_S=$((seconds - 10)) \
    BACKBONE_S=${BACKBONE_S:-$backbone} RECIPE_BUDGET_S=${RECIPE_BUDGET_S:-$timed} \
    timeout -k 10 "$seconds" bash tools/analysis/gpu_benchmark.sh
}

run_stage() {  # stage seconds
  case $1 in
    a) pytest_stage a "$2" tests/cuda/test_cuda_ops.py;;
    b) pytest_stage b "$2" tests/cuda/test_cuda_recipes.py -k cascade_t_;;
    c) pytest_stage c "$2" tests/cuda/test_cuda_recipes.py -k upernet_t_;;
    d) pytest_stage d "$2" tests/cuda/test_cuda_demo.py;;
    e) pytest_stage e "$2" tests/cuda/test_cuda_recipes.py -k test_recipe_builds;;
    f) pytest_stage f "$2" tests/cuda --ignore tests/cuda/test_cuda_ops.py \
         --ignore tests/cuda/test_cuda_demo.py \
         -k 'not (test_cuda_recipes and (cascade_t_ or upernet_t_ or test_recipe_builds))';;
    g) bench_stage "$2";;
  esac
}

status=0
for stage in $STAGES; do
  if [ -z "${NAME[$stage]:-}" ]; then
    say "== stage $stage: unknown (GPU_ALL_STAGES takes the letters a-g)"
    status=2
    continue
  fi
  label="stage $stage (${NAME[$stage]})"
  left=$((BUDGET - SECONDS))
  reserve=0 later=0
  for other in $STAGES; do
    case $later$other in 1[a-e]) reserve=$((reserve + MIN[$other]));; esac
    [ "$other" = "$stage" ] && later=1
  done
  need=${MIN[$stage]:-0}
  if [ $left -lt "$need" ]; then
    say "== $label: skipped at ${SECONDS} s: ${left} s left, it needs ${need} s"
    status=3
    continue
  fi
  seconds=$((left - reserve))
  [ $seconds -gt "${CAP[$stage]:-0}" ] && seconds=${CAP[$stage]}
  [ $seconds -lt "$need" ] && seconds=$need
  say "== $label: start at ${SECONDS} s, timeout ${seconds} s"
  started=$SECONDS
  NOTE=
  run_stage "$stage" "$seconds"
  rc=$?
  case $rc in
    0) note=${NOTE:-passed};;
    124|137) note='out of time';;
    *) note=failed;;
  esac
  if [ "$stage" = g ] && [ $rc = 3 ]; then  # gpu_benchmark.sh: its backbone stage skipped
    note='partly skipped: out of time'
  fi
  say "== $label: done at ${SECONDS} s ($((SECONDS - started)) s), exit $rc: $note"
  [ $rc -ne 0 ] && status=$rc
done

say "== gpu_all: all done at ${SECONDS} s, exit $status; outputs in $OUT_DIR"
if [ -s "$CONVNEXT_DENSE_GPU_FIGURES" ]; then
  say "== figures ($CONVNEXT_DENSE_GPU_FIGURES)"
  tee -a "$SUMMARY" < "$CONVNEXT_DENSE_GPU_FIGURES"
fi
exit $status
