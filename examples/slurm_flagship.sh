#!/usr/bin/env bash
# SLURM: the 7B flagship (preset 7b: 26 layers, hidden 4096, 32 heads) on 8 nodes x
# 8 GPUs = 64 GPUs: TP8 + sequence parallel inside a node, CP2 (ring) and PP2 (1F1B)
# across nodes, DP = 64 / (8 x 2 x 2) = 2. Submit with:
#   sbatch examples/slurm_flagship.sh [extra training flags]
#SBATCH --job-name=vdit-7b
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500}
export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1
PYTHON=${PYTHON:-python}   # inside an NGC PyTorch image: the image's python

# 26 layers / PP2 = 13 per stage (prime), so no interleaving: plain 1F1B. 32 latent
# frames x 32 x 32 tokens = 32k tokens per sample, split 16 ways by CP2 x SP8.
srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
  --nnodes="$SLURM_NNODES" --nproc-per-node=8 \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \
  -m megatron_vdit.train \
  --model-size 7b --bf16 \
  --tensor-model-parallel-size 8 --sequence-parallel \
  --pipeline-model-parallel-size 2 \
  --context-parallel-size 2 --cp-comm-type a2a \
  --recompute-granularity selective \
  --in-channels 16 --latent-frames 32 --latent-height 64 --latent-width 64 \
  --text-hidden-size 4096 --max-text-tokens 128 \
  --micro-batch-size 1 --global-batch-size 64 --train-iters 100000 \
  --save checkpoints/vdit-7b --save-interval 500 "$@"
