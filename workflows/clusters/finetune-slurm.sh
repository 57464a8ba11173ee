#!/bin/bash
# Multi-node `perturber finetune` on SLURM: one task per node, each running torchrun
# with one process per GPU; the rendezvous is on the first node of the allocation.
#
#   sbatch workflows/clusters/finetune-slurm.sh --model resnet50 --mode adversarial --eps 3 \
#       --data /data/imagenet/train --val /data/imagenet/val --out /shared/finetune/resnet50-adv
#
# Everything after the script's name goes to `perturber finetune`. --out must be on a
# file system every node sees (rank 0 writes there; every rank reads the resume file).
# --batch is the global batch: it must divide by nodes x GPUs per node. Re-submitting the
# same command resumes from the last checkpoint (the paper's runs: 17 adversarial and 7
# stylized checkpoints). Adjust partition, account, time and the environment to your site.
#SBATCH --job-name=perturber-finetune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=finetune-%j.log

set -euo pipefail
source "${PERTURBER_VENV:-$HOME/perturber/.venv}/bin/activate"

GPUS_PER_NODE=${SLURM_GPUS_PER_NODE:-4}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}                 # "a100:4" -> 4
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PERTURBER_RDZV_PORT:-29500}
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-8} / GPUS_PER_NODE ))

# torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `perturber finetune` sees them and joins
# the NCCL process group itself (it does not relaunch: leave --nproc-per-node out).
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD:$PORT" \
    -m perturber.pipeline.training.finetune_cli "$@"
