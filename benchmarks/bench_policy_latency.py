"""Latency of one closed-loop control step (batch 1): the JAX policy and the PyTorch runtime, each
with and without the frame-code cache; the PyTorch runtime in each of its modes.

  python -m benchmarks.bench_policy_latency --sizes tiny,small [--steps 8] [--warmup 3]
      [--torch_dtypes fp32,bf16,fp16] [--torch_attention eager,sdpa] [--torch_compile off,on]
      [--torch_rope reciprocal] [--frame_cache on,off] [--device cpu|cuda] [--released_dtypes]
      [--skip_jax] [--threads N]

Each size gets a random-weight export (`conversion.synthetic`: official keys, config.json,
norm_stats.json, a tokenizer) that both runtimes load. Every call brings a new camera frame, as on a
robot, so with the cache the frozen VQ-VAE encodes one frame per call instead of the four history
frames. One JSON line per (runtime, size, dtype, cache, and for torch attention, rope, compile):
median and best seconds per `infer` over `steps` calls after `warmup` calls (JAX and
torch.compile compile during the warm-up; the first call's seconds are reported as
`first_call_s`), and VQ-VAE encodings per call. A mode the device does not support (e.g. fp16 on
an old CPU) gives a line with its error instead of stopping the run.
"""

import argparse
import itertools
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import emit
from conversion import synthetic
from inference.jax_policy import Policy


def _time(infer, observations, warmup: int) -> tuple[float, float, float]:
    """(median, best, first call) seconds; the first call is part of the warm-up."""
    times = []
    for obs in observations:
        start = time.perf_counter()
        infer(obs)
        times.append(time.perf_counter() - start)
    measured = times[warmup:]
    return float(np.median(measured)), float(np.min(measured)), times[0]


def bench_jax(
    directory: str, observations: list, warmup: int, size: str, dtype: str, caches: list[bool]
) -> None:
    for cache in caches:
        policy = Policy.from_checkpoint(directory, frame_cache=cache)
        policy.reset()
        calls = iter(range(len(observations)))

        def infer(obs):
            out = policy.infer(obs, jax.random.key(next(calls)))
            jax.block_until_ready(out["actions"])

        median, best, first = _time(infer, observations, warmup)
        emit(
            benchmark="policy_latency",
            runtime="jax",
            size=size,
            dtype=dtype,
            frame_cache=cache,
            median_s=round(median, 4),
            best_s=round(best, 4),
            first_call_s=round(first, 3),
            encodes_per_call=round(policy.encoded_frames / len(observations), 2),
            load_1min=round(os.getloadavg()[0], 1),  # others' jobs on a shared machine
        )


def bench_torch(
    directory: str,
    observations: list,
    warmup: int,
    size: str,
    device: str,
    modes: list[dict],
) -> None:
    """One line per mode: {dtype, attention, rope, compile, frame_cache}."""
    import torch  # deferred: the JAX half runs without torch

    from f1_torch.policy import TorchPolicy  # deferred: as above

    for mode in modes:
        fields = dict(benchmark="policy_latency", runtime="torch", size=size, device=device, **mode)
        try:
            policy = TorchPolicy.from_export(
                directory,
                device=device,
                dtype=mode["dtype"],
                frame_cache=mode["frame_cache"],
                attention=mode["attention"],
                rope=mode["rope"],
                compile=mode["compile"],
            )
            policy.reset()
            calls = iter(range(len(observations)))

            def infer(obs):
                policy.infer(obs, seed=next(calls))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()

            median, best, first = _time(infer, observations, warmup)
        except (RuntimeError, NotImplementedError) as e:  # a mode this device lacks
            emit(**fields, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        emit(
            **fields,
            median_s=round(median, 4),
            best_s=round(best, 4),
            first_call_s=round(first, 3),
            encodes_per_call=round(policy.encoded_frames / len(observations), 2),
            threads=torch.get_num_threads(),
            load_1min=round(os.getloadavg()[0], 1),  # others' jobs on a shared machine
        )


def _switches(text: str) -> list[bool]:
    return [{"on": True, "off": False}[v] for v in text.split(",") if v]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--torch_dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--torch_attention", default="eager,sdpa")
    parser.add_argument("--torch_rope", default="reciprocal", help="reciprocal and/or divide")
    parser.add_argument("--torch_compile", default="off", help="off and/or on (torch.compile)")
    parser.add_argument("--frame_cache", default="on,off")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu", help="torch runtime device (cpu or cuda)")
    parser.add_argument(
        "--released_dtypes", action="store_true", help="write bf16 where the released F1 does"
    )
    parser.add_argument("--skip_jax", action="store_true")
    args = parser.parse_args()
    if args.threads:
        import torch  # deferred: the JAX half runs without torch

        torch.set_num_threads(args.threads)
    modes = [
        dict(dtype=d, attention=a, rope=r, compile=c, frame_cache=f)
        for d, a, r, c, f in itertools.product(
            [d for d in args.torch_dtypes.split(",") if d],
            [a for a in args.torch_attention.split(",") if a],
            [r for r in args.torch_rope.split(",") if r],
            _switches(args.torch_compile),
            _switches(args.frame_cache),
        )
    ]
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"f1-latency-{size}-") as tmp:
            # The JAX policy runs the export's recorded precision: bf16 matmuls on accelerators,
            # fp32 on CPUs (which have no fast bf16).
            gpu = jax.default_backend() != "cpu"
            precision = "default" if gpu else "parity"
            config = synthetic.model_config(size, precision=precision, top_k=900)
            tokenizer = synthetic.make_tokenizer(tmp)
            directory = synthetic.write_export(
                f"{tmp}/export",
                config,
                synthetic.random_params(config),
                tokenizer,
                official_dtypes=args.released_dtypes,
            )
            observations = synthetic.observations(config, args.warmup + args.steps)
            if not args.skip_jax:
                bench_jax(
                    directory,
                    observations,
                    args.warmup,
                    size,
                    "bf16" if gpu else "fp32",
                    _switches(args.frame_cache),
                )
            bench_torch(directory, observations, args.warmup, size, args.device, modes)


if __name__ == "__main__":
    main()
