#!/usr/bin/env bash
# Multi-slice TPU training (several pod slices linked by the data-center network): data
# parallelism across slices, FSDP inside each slice. Run this on every host of every slice, for
# example through a queued-resource / XPK job that sets MEGASCALE_* variables for each slice.
#
#   launch/multislice.sh NUM_SLICES RECIPE WORKDIR [--config.FIELD=VALUE ...]
set -euo pipefail
NUM_SLICES=$1 RECIPE=$2 WORKDIR=$3
shift 3
exec python -m f1_jax.launch --config="$RECIPE" --workdir="$WORKDIR" \
  --config.mesh.num_slices="$NUM_SLICES" --config.mesh.shape="($NUM_SLICES,-1,1)" "$@"
