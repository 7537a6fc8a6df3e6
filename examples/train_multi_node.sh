#!/usr/bin/env bash
# Several nodes with torchrun's c10d rendezvous, started BY HAND: run the same command
# on every node (ssh, tmux, ...); each node's torchrun waits at the rendezvous until
# NNODES have joined. On SLURM do not use this: examples/slurm/train.sbatch starts
# torchrun once per node with srun and finds MASTER_ADDR itself (docs/launch.md).
#   NNODES=4 MASTER_ADDR=node0 TP=8 PP=4 bash examples/train_multi_node.sh --model-size 7b ...
# TP should stay inside a node (NPROC_PER_NODE a multiple of TP): rank order is
# tp-cp-dp-pp, so TP ranks are adjacent. CP (ring) and PP tolerate inter-node links.
set -euo pipefail
cd "$(dirname "$0")/.."
NNODES=${NNODES:?set NNODES}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR (hostname of the rendezvous node)}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
TP=${TP:-1}; CP=${CP:-1}; PP=${PP:-1}
CP_ARGS=(${CP_COMM:+--cp-comm-type "$CP_COMM"})   # unset: Ulysses when heads allow
VPP_ARGS=()
if [[ -n "${VPP_LAYERS:-}" ]]; then
  VPP_ARGS=(--num-layers-per-virtual-pipeline-stage "$VPP_LAYERS")
fi
PYTHON=${PYTHON:-.venv/bin/python}

exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE" \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \
  --rdzv-id="${RDZV_ID:-vdit}" \
  -m megatron_vdit.train \
  --tensor-model-parallel-size "$TP" --context-parallel-size "$CP" \
  --pipeline-model-parallel-size "$PP" "${CP_ARGS[@]}" "${VPP_ARGS[@]}" "$@"
