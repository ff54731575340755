#!/usr/bin/env bash
# Distributed evaluation with torchrun (see tools/dist_train.sh for the environment variables).
#
#   tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [tools/test.py options]
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NUM_PROCS [tools/test.py options]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROCS=$3
shift 3
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
  "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch \
  --cfg-options "env_cfg.dist_cfg.backend=$DIST_BACKEND" "$@"
