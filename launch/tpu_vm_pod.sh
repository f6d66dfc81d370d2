#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (e.g. v5p-128): the same command runs on all
# hosts; JAX's distributed runtime discovers the pod by itself (TPU_WORKER_HOSTNAMES).
#
#   launch/tpu_vm_pod.sh TPU_NAME ZONE RECIPE WORKDIR [--config.FIELD=VALUE ...] [--dry_run]
#
# Every argument reaches the launcher on each worker exactly as given here (each one is quoted
# for the remote shell), so `--config.mesh.shape="(2,-1,2)"` or values with spaces survive.
# WORKDIR must be shared by all hosts (a gs:// bucket or a shared filesystem): checkpoints are
# written by all processes together. Datasets: set F1_DATA_DIR to their common root (default
# /data/rlds on the workers); F1_REPO is the checkout on the workers (default ~/f1-jax).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE RECIPE WORKDIR [--config.FIELD=VALUE ...] [--dry_run]" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 RECIPE=$3 WORKDIR=$4
shift 4
LAUNCH=$(printf '%q ' python -m f1_jax.launch "--config=$RECIPE" "--workdir=$WORKDIR" "$@")
REPO=${F1_REPO:-"~/f1-jax"}
DATA=$(printf '%q' "${F1_DATA_DIR:-/data/rlds}")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $REPO && F1_DATA_DIR=$DATA $LAUNCH"
