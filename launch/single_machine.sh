#!/usr/bin/env bash
# One machine: one or several GPUs (FSDP over all of them), or a CPU.
#
#   launch/single_machine.sh RECIPE WORKDIR [--config.FIELD=VALUE ...]
#
# GPUs: install JAX with CUDA first (pip install -U "jax[cuda12]"). A single 80 GB GPU does not hold
# the full F1 train state (3.5 B params + Adam moments in fp32 = ~57 GB before activations); use
# --config.model.size=small, or several GPUs. Multi-node GPU jobs: start one process per node with
# JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under SLURM).
set -euo pipefail
RECIPE=$1 WORKDIR=$2
shift 2
exec python -m f1_jax.launch --config="$RECIPE" --workdir="$WORKDIR" "$@"
