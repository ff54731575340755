#!/usr/bin/env bash
# Distributed training with torchrun on this machine (or several: set NNODES, NODE_RANK,
# MASTER_ADDR on each).
#
#   tools/dist_train.sh CONFIG NUM_PROCS [tools/train.py options, e.g. --cfg-options ...]
#
# One process per GPU with NCCL; on a machine without GPU, NUM_PROCS CPU processes with gloo
# (mmengine itself always takes env_cfg.dist_cfg.backend, 'nccl' in the configs, so the
# backend is chosen here). Environment: PYTHON (default .venv/bin/python), PORT (29500),
# NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), DIST_BACKEND (override the choice).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCS [tools/train.py options]" >&2
  exit 2
fi
CONFIG=$1
NPROCS=$2
shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
if [ -z "${DIST_BACKEND:-}" ]; then
  if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DIST_BACKEND=nccl
  else
    DIST_BACKEND=gloo
  fi
fi
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$NPROCS" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch \
  --cfg-options "env_cfg.dist_cfg.backend=$DIST_BACKEND" "$@"
