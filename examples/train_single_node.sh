#!/usr/bin/env bash
# One node, NPROC GPUs (or CPU processes with gloo when no GPU): any TP x CP x PP layout,
# data parallel size = NPROC / (TP x CP x PP).
#   NPROC=8 TP=2 CP=2 PP=2 bash examples/train_single_node.sh --model-size 0.13b ...
# Extra arguments go to the training CLI (Megatron-LM flag names).
# CPU try-out (gloo): NPROC=2 PP=2 VPP_LAYERS=1 bash examples/train_single_node.sh \
#   --micro-batch-size 4 --train-iters 3 --run-dir /tmp/pp2
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-8}
TP=${TP:-1}; CP=${CP:-1}; PP=${PP:-1}
# CP_COMM: p2p (ring), a2a (Ulysses), a2a+p2p (hybrid); unset: the trainer picks
# Ulysses when the heads per TP rank divide over CP.
CP_ARGS=(${CP_COMM:+--cp-comm-type "$CP_COMM"})
VPP_ARGS=()
if [[ -n "${VPP_LAYERS:-}" ]]; then   # interleaved 1F1B: layers per virtual stage
  VPP_ARGS=(--num-layers-per-virtual-pipeline-stage "$VPP_LAYERS")
fi
PYTHON=${PYTHON:-.venv/bin/python}

exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" \
  -m megatron_vdit.train \
  --tensor-model-parallel-size "$TP" --context-parallel-size "$CP" \
  --pipeline-model-parallel-size "$PP" "${CP_ARGS[@]}" "${VPP_ARGS[@]}" \
  --config "${CONFIG:-configs/tiny_default.yaml}" "$@"
