#!/usr/bin/env bash
# The GPU step benchmark of docs/benchmarks.md: ~1B model (preset 1.07b), bf16,
# 8k / 16k / 32k video tokens per sample on one GPU, then the same under TP/CP on 8.
#   bash examples/bench_gpu_step.sh            (results appended to bench/results_gpu.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/results_gpu.jsonl}
RUN=("$PYTHON" -m torch.distributed.run --standalone)
# One GPU: 8k and 16k fit without recompute; 32k needs selective recompute.
"${RUN[@]}" --nproc-per-node=1 bench/bench_gpu_step.py --tokens 8192 16384 --json-out "$OUT"
"${RUN[@]}" --nproc-per-node=1 bench/bench_gpu_step.py --tokens 32768 \
  --recompute-granularity selective --json-out "$OUT"
if [[ "$(nvidia-smi -L | wc -l)" -ge 8 ]]; then
  "${RUN[@]}" --nproc-per-node=8 bench/bench_gpu_step.py --tokens 32768 \
    --tensor-model-parallel-size 2 --context-parallel-size 4 --json-out "$OUT"
  "${RUN[@]}" --nproc-per-node=8 bench/bench_gpu_step.py --tokens 32768 \
    --pipeline-model-parallel-size 2 --context-parallel-size 4 \
    --num-layers-per-virtual-pipeline-stage 7 --num-microbatches 4 --json-out "$OUT"
fi
"$PYTHON" bench/gpu_table.py "$OUT" docs/benchmarks.md   # the table in docs/benchmarks.md
