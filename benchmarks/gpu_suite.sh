#!/usr/bin/env bash
# One GPU, one call, under 8 minutes: the full-size stage-2 train step at batch 16 before and after
# the speed levers (same run, so the ratio is fair), then inference latency at batch 1 (the JAX
# policy and the PyTorch runtime, with and without the frame-code cache).
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
#
# Prints one JSON line per measurement and copies them to OUT_DIR (default $OUT or /tmp/gpu_suite).
# Needs jax (CUDA), flax, optax, orbax, chex, ml_collections and, for the runtime, torch with CUDA;
# no TensorFlow or grain (nothing here reads a dataset).
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu_suite}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
before="model.reuse_prefix=False"                  # the original's order: prefix twice, VQ-VAE in the step
after="data.frame_codes=True"                       # the prefix once, codes instead of frames
# Stage 2 as the recipe runs it (remat full, bf16 matmuls), batch 16 on one GPU; 2 cameras (the
# mixture's common case). Each variant compiles once (~1-2 min), then times 5 steps.
timeout 330 python -m benchmarks.bench_train_step --sizes full --batch 16 --steps 5 \
  --variant "model.chunk_size=30;data.cameras=('primary','wrist');$before" \
  --variant "model.chunk_size=30;data.cameras=('primary','wrist');$after" \
  | tee "$out/train_step.jsonl"
# Inference: the sample_actions breakdown, then both runtimes on a random-weight full-size export
# in the released dtypes (bf16 where the released F1 is bf16).
timeout 60 python -m benchmarks.bench_sample_actions --sizes full --batch 1 --repeats 10 \
  | tee "$out/sample_actions.jsonl"
timeout 300 python -m benchmarks.bench_policy_latency --sizes full --steps 6 --warmup 2 \
  --torch_dtypes bf16,fp16 --torch_attention eager,sdpa --frame_cache on --device cuda \
  --released_dtypes | tee "$out/policy_latency.jsonl"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
