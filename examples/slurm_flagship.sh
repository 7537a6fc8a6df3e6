#!/usr/bin/env bash
# SLURM: the 7B flagship on 8 nodes x 8 GPUs (layout in examples/slurm/flagship_7b.yaml).
# Submit from the repository root, with the latent shards made by
# tools/precompute_latents.py:
#   sbatch examples/slurm_flagship.sh --data /path/to/shards [extra training flags]
# It runs examples/slurm/train.sbatch inside this allocation: torchrun under srun, one
# task per node; logs under runs/vdit-7b/logs/. 10 minutes before the time limit SLURM
# sends SIGTERM: the run checkpoints and this job requeues itself (--requeue), resuming
# from that checkpoint (also after `scontrol requeue` or preemption).
#SBATCH --job-name=vdit-7b
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@600
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# The flagship trains only on real latents: no embedded-default or synthetic fallback.
data=""
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --data) j=$((i + 1)); data=${!j:-} ;;
    --data=*) data=${!i#--data=} ;;
  esac
done
if [[ -z $data || $data == default || $data == synthetic || ! -d $data ]]; then
  echo "slurm_flagship.sh: error: --data must name a directory of latent shards" \
       "(tools/precompute_latents.py), got '${data}'" >&2
  exit 2
fi
# NCCL: torchrun's workers already get TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (tear down on a
# NCCL error); the old NCCL_ASYNC_ERROR_HANDLING name is not read by current PyTorch.
export NPROC_PER_NODE=8 GRACE=${GRACE:-540}   # GRACE: under the 600 s warning above
exec bash examples/slurm/train.sbatch examples/slurm/flagship_7b.yaml "$@"
