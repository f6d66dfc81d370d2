"""Train-step time and model FLOPs utilisation (MFU) of the F1 train step.

  python -m benchmarks.bench_train_step --sizes tiny,small [--batch 8] [--steps 5]

Model FLOPs per example (analytic, stated here so numbers are comparable across machines):
  for every transformer (SigLIP, and each expert of the joint stack) 6 x (layer parameters) x
  (tokens through them) for the forward and backward matmuls, plus 12 x layers x heads x head_dim
  x queries x keys for the attention score and value products (forward 4, backward 8).
  The frozen VQ-VAE encoder and the foresight sampling passes that run before the gradient pass are
  real work but not model FLOPs; XLA's own count of everything is reported beside it.
Peak FLOP/s: the device's bf16 peak where known (H100 989 TFLOP/s dense), else measured here as the
best throughput of a large fp32 matmul on this machine (stated in the output).
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, time_call
from configs.base import base_config
from f1_jax.models.f1 import observation_spec
from f1_jax.training import setup, sharding

PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12}


def measured_matmul_peak(n: int = 2048) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    median, best = time_call(lambda: f(a), repeats=5)
    return 2 * n**3 / best


def model_flops_per_example(model_config, num_und_tokens: int) -> float:
    """Analytic training FLOPs of one example (see module docstring)."""
    c = model_config
    fc = c.foresight
    siglip_layer = 4 * (c.siglip.width**2 + c.siglip.width) + 2 * c.siglip.width * c.siglip.mlp_dim
    patches = c.siglip.num_patches
    cams = 3
    flops = 6 * siglip_layer * c.siglip.depth * patches * cams
    flops += 12 * c.siglip.depth * c.siglip.width * patches * patches * cams
    flops += 6 * c.siglip.width * c.siglip.out_width * patches * cams
    gen_tokens = fc.num_tokens + fc.num_predicted - fc.scale_lengths[0]
    act_tokens = 1 + c.action.chunk_size
    und_tokens = num_und_tokens
    for expert, tokens in ((c.und, und_tokens), (c.gen, gen_tokens), (c.act, act_tokens)):
        layer = (
            2 * expert.num_heads * expert.head_dim * expert.width
            + 2 * expert.num_kv_heads * expert.head_dim * expert.width
            + 3 * expert.width * expert.mlp_dim
        )
        flops += 6 * layer * expert.depth * tokens
    total = und_tokens + gen_tokens + act_tokens
    flops += 12 * c.und.depth * c.und.num_heads * c.und.head_dim * total * total
    return float(flops)


def bench(size: str, batch_size: int, num_steps: int, peak: float, peak_source: str) -> None:
    config = base_config()
    config.model.size = size
    config.model.precision = "default" if jax.default_backend() != "cpu" else "parity"
    config.model.remat_policy = "none" if size != "full" else "full"
    config.model.chunk_size = 4 if size == "tiny" else 30
    config.optimizer.frozen = ("vqvae",)
    mesh = sharding.make_mesh((1, -1, 1))
    ts = setup.train_setup(config, mesh)
    model_config = ts.model_config
    state = ts.init_fn(jax.random.key(0))
    spec = observation_spec(model_config, config.data)
    batch = {
        k: np.zeros(v.shape, v.dtype) + (1 if v.dtype == bool else 0)
        for k, v in setup.abstract_batch(spec, batch_size).items()
    }
    batch = sharding.host_batch_to_global(batch, mesh)
    with nn.logical_axis_rules(ts.rules), jax.set_mesh(mesh):
        step = setup.jit_train_step(config, ts)
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        xla_flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
        state, _ = step(state, batch)
        jax.block_until_ready(state)
        times = []
        for _ in range(num_steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    und_tokens = 3 * model_config.siglip.num_patches + 48
    flops = model_flops_per_example(model_config, und_tokens) * batch_size
    emit(
        benchmark="train_step",
        size=size,
        batch=batch_size,
        precision=config.model.precision,
        step_ms=round(1e3 * step_s, 1),
        examples_per_s=round(batch_size / step_s, 2),
        model_tflop_per_step=round(flops / 1e12, 4),
        xla_tflop_per_step=round(xla_flops / 1e12, 4),
        model_tflops_per_s=round(flops / step_s / 1e12, 4),
        mfu=round(flops / step_s / (peak * jax.device_count()), 4),
        peak_tflops_per_device=round(peak / 1e12, 3),
        peak_source=peak_source,
        compile_s=round(compile_s, 1),
        devices=jax.device_count(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    kind = jax.devices()[0].device_kind
    if kind in PEAK_FLOPS:
        peak, source = PEAK_FLOPS[kind], f"{kind} bf16 dense datasheet"
    else:
        peak, source = measured_matmul_peak(), "measured fp32 2048^3 matmul on this machine"
    for size in args.sizes.split(","):
        bench(size, args.batch, args.steps, peak, source)


if __name__ == "__main__":
    main()
