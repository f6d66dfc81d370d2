"""Train-step time and model FLOPs utilisation (MFU) of the F1 train step.

  python -m benchmarks.bench_train_step --sizes tiny,small [--batch 8] [--steps 5]
      [--variant 'model.reuse_prefix=False' --variant ''] [--compile_only]

Each line also carries XLA's FLOPs of the compiled step and the compiler's memory analysis
(arguments, temporaries, a peak estimate); `--compile_only` prints just those, so the full-size
step can be sized on a CPU (one device: `--sizes full --batch 16 --compile_only`). On a GPU the
device's measured peak memory is added.

Model FLOPs: the project's analytic count, f1_jax/training/flops.py (the same in
`python -m f1_jax.aot`); XLA's own count (a scanned layer counted once) is reported beside it.
Peak FLOP/s: the device's bf16 peak where known (H100 989 TFLOP/s dense), else measured here as the
best throughput of a large fp32 matmul on this machine (stated in the output).
"""

import argparse
import ast
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, time_call
from configs.base import base_config
from f1_jax.models.f1 import observation_spec
from f1_jax.training import setup, sharding
from f1_jax.training.flops import step_flops

PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12}


def measured_matmul_peak(n: int = 2048) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    median, best = time_call(lambda: f(a), repeats=5)
    return 2 * n**3 / best


def _set(config, assignment: str) -> str:
    """Applies `field.path=value` (a Python literal, or a bare string) to the config."""
    path, _, text = assignment.partition("=")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    node, *rest = path.split(".")
    target = config[node]
    for key in rest[:-1]:
        target = target[key]
    target[rest[-1]] = value
    return assignment


def _gib(n: float) -> float:
    return round(n / 2**30, 3)


def bench(
    size: str,
    batch_size: int,
    num_steps: int,
    peak: float,
    peak_source: str,
    overrides: list[str],
    compile_only: bool,
) -> None:
    config = base_config()
    config.model.size = size
    # The recipe's bf16 matmuls on accelerators and for the compiler's memory analysis; fp32 when
    # a CPU actually runs the step (CPUs have no fast bf16).
    on_cpu = jax.default_backend() == "cpu" and not compile_only
    config.model.precision = "parity" if on_cpu else "default"
    config.model.remat_policy = "none" if size != "full" else "full"
    config.model.chunk_size = 4 if size == "tiny" else 30
    config.optimizer.frozen = ("vqvae",)
    for assignment in overrides:
        _set(config, assignment)
    mesh = sharding.make_mesh((1, -1, 1))
    ts = setup.train_setup(config, mesh)
    model_config = ts.model_config
    spec = observation_spec(model_config, config.data)
    abstract = setup.abstract_batch(spec, batch_size, mesh)
    with nn.logical_axis_rules(ts.rules), jax.set_mesh(mesh):
        step = setup.jit_train_step(config, ts)
        start = time.perf_counter()
        compiled = step.lower(ts.abstract_state, abstract).compile()
        compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
    memory = compiled.memory_analysis()
    flops = step_flops(model_config, spec, batch_size)
    fields = dict(
        benchmark="train_step",
        size=size,
        batch=batch_size,
        precision=config.model.precision,
        remat=config.model.remat_policy,
        overrides=overrides,
        devices=jax.device_count(),
        model_tflop_per_step=round(flops / 1e12, 4),
        xla_tflop_per_step=round(xla_flops / 1e12, 4),
        xla_gflop_per_example=round(xla_flops / batch_size / 1e9, 2),
        aot_argument_gib=_gib(memory.argument_size_in_bytes),
        aot_temp_gib=_gib(memory.temp_size_in_bytes),
        aot_peak_estimate_gib=_gib(
            memory.argument_size_in_bytes
            + memory.temp_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        ),
        compile_s=round(compile_s, 1),
    )
    if compile_only:
        emit(**fields)
        return
    state = ts.init_fn(jax.random.key(0))
    batch = {
        k: np.zeros(v.shape, v.dtype) + (1 if v.dtype == bool else 0) for k, v in abstract.items()
    }
    batch = sharding.host_batch_to_global(batch, mesh)
    with nn.logical_axis_rules(ts.rules), jax.set_mesh(mesh):
        state, _ = step(state, batch)
        jax.block_until_ready(state)
        times = []
        for _ in range(num_steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    stats = jax.devices()[0].memory_stats() or {}
    emit(
        **fields,
        step_ms=round(1e3 * step_s, 1),
        examples_per_s=round(batch_size / step_s, 2),
        model_tflops_per_s=round(flops / step_s / 1e12, 4),
        mfu=round(flops / step_s / (peak * jax.device_count()), 4),
        peak_tflops_per_device=round(peak / 1e12, 3),
        peak_source=peak_source,
        device_peak_gib=_gib(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="semicolon-separated config overrides measured as one variant, e.g. "
        '\'model.reuse_prefix=False;data.cameras=("primary","wrist")\' (repeat the flag for '
        "several variants; '' is the defaults)",
    )
    parser.add_argument(
        "--compile_only",
        action="store_true",
        help="only compile: XLA FLOPs and the compiler's memory analysis (any machine)",
    )
    args = parser.parse_args()
    kind = jax.devices()[0].device_kind
    if kind in PEAK_FLOPS:
        peak, source = PEAK_FLOPS[kind], f"{kind} bf16 dense datasheet"
    elif args.compile_only:
        peak, source = float("nan"), "not measured"
    else:
        peak, source = measured_matmul_peak(), "measured fp32 2048^3 matmul on this machine"
    variants = [v.split(";") if v else [] for v in args.variant] or [[]]
    for size in args.sizes.split(","):
        for overrides in variants:
            bench(size, args.batch, args.steps, peak, source, overrides, args.compile_only)


if __name__ == "__main__":
    main()
