"""Per-device memory of every recipe's full-size train step on a simulated 64-device FSDP mesh,
as the compiler reports it (ahead-of-time lowering and compilation with abstract inputs: nothing
is allocated). Run on any machine; it sets up 64 CPU devices itself.

  python -m benchmarks.bench_aot_memory [--recipes stage1,stage2,stage3_libero,stage3_bridge]
      [--devices 64] [--per_device_batch 4]
"""

import argparse
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="stage1,stage2,stage3_libero,stage3_bridge")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--per_device_batch", type=int, default=4)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    # deferred: XLA_FLAGS (the simulated device count) must be set before JAX starts.
    import jax  # deferred: XLA_FLAGS must be set before JAX starts
    from benchmarks.common import emit  # deferred: imports JAX
    from f1_jax import recipes  # deferred: with the JAX imports below (XLA_FLAGS first)
    from f1_jax.training import setup, sharding  # deferred: imports JAX

    assert jax.device_count() == args.devices, "XLA_FLAGS must be set before JAX starts"
    mesh = sharding.make_mesh((1, -1, 1))
    for name in args.recipes.split(","):
        config = recipes.load_config(name)
        start = time.perf_counter()
        lowered = setup.lower_train_step(config, mesh, args.per_device_batch * args.devices)
        compiled = lowered.compile()
        memory = compiled.memory_analysis()
        gib = lambda b: round(b / 2**30, 3)
        emit(
            benchmark="aot_memory",
            recipe=name,
            mesh="fsdp=%d" % args.devices,
            global_batch=args.per_device_batch * args.devices,
            remat=config.model.remat_policy,
            argument_gib=gib(memory.argument_size_in_bytes),
            output_gib=gib(memory.output_size_in_bytes),
            temp_gib=gib(memory.temp_size_in_bytes),
            alias_gib=gib(memory.alias_size_in_bytes),
            peak_estimate_gib=gib(
                memory.argument_size_in_bytes
                + memory.temp_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
            ),
            compile_s=round(time.perf_counter() - start, 1),
        )


if __name__ == "__main__":
    sys.exit(main())
