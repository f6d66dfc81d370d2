#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (e.g. v5p-128): the same command runs on all
# hosts; JAX's distributed runtime discovers the pod by itself (TPU_WORKER_HOSTNAMES).
#
#   launch/tpu_vm_pod.sh TPU_NAME ZONE RECIPE WORKDIR [--config.FIELD=VALUE ...]
#
# WORKDIR must be shared by all hosts (a gs:// bucket or a shared filesystem): checkpoints are
# written by all processes together. Datasets: set F1_DATA_DIR to their common root.
set -euo pipefail
TPU_NAME=$1 ZONE=$2 RECIPE=$3 WORKDIR=$4
shift 4
OVERRIDES="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/f1-jax && F1_DATA_DIR=\${F1_DATA_DIR:-/data/rlds} \
  python -m f1_jax.launch --config=$RECIPE --workdir=$WORKDIR $OVERRIDES"
