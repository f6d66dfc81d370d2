"""Latency of one closed-loop control step (batch 1): the JAX policy and the PyTorch runtime, each
with and without the frame-code cache.

  python -m benchmarks.bench_policy_latency --sizes tiny,small [--steps 8] [--warmup 3]
      [--torch_dtypes fp32,bf16] [--device cpu|cuda] [--released_dtypes]

Each size gets a random-weight export (`conversion.synthetic`: official keys, config.json,
norm_stats.json, a tokenizer) that both runtimes load. Every call brings a new camera frame, as on a
robot, so with the cache the frozen VQ-VAE encodes one frame per call instead of the four history
frames. One JSON line per (runtime, size, dtype, cache): median and best seconds per `infer` over
`steps` calls after `warmup` calls (JAX compiles during the warm-up), and VQ-VAE encodings per call.
"""

import argparse
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import emit
from conversion import synthetic
from inference.jax_policy import Policy


def _time(infer, observations, warmup: int) -> tuple[float, float]:
    for obs in observations[:warmup]:
        infer(obs)
    times = []
    for obs in observations[warmup:]:
        start = time.perf_counter()
        infer(obs)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def bench_jax(directory: str, observations: list, warmup: int, size: str, dtype: str) -> None:
    for cache in (True, False):
        policy = Policy.load(directory, frame_cache=cache)
        policy.reset()
        calls = iter(range(len(observations)))

        def infer(obs):
            out = policy.infer(obs, seed=next(calls))
            jax.block_until_ready(out["actions"])

        median, best = _time(infer, observations, warmup)
        emit(
            benchmark="policy_latency",
            runtime="jax",
            size=size,
            dtype=dtype,
            frame_cache=cache,
            median_s=round(median, 4),
            best_s=round(best, 4),
            encodes_per_call=round(policy.encoded_frames / len(observations), 2),
        )


def bench_torch(
    directory: str, observations: list, warmup: int, size: str, dtype: str, device: str
) -> None:
    import torch  # deferred: the JAX half runs without torch

    from f1_torch.policy import TorchPolicy  # deferred: as above

    for cache in (True, False):
        policy = TorchPolicy.load(directory, device=device, dtype=dtype, frame_cache=cache)
        policy.reset()
        calls = iter(range(len(observations)))

        def infer(obs):
            policy.infer(obs, seed=next(calls))
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        median, best = _time(infer, observations, warmup)
        emit(
            benchmark="policy_latency",
            runtime="torch",
            size=size,
            dtype=dtype,
            device=device,
            frame_cache=cache,
            median_s=round(median, 4),
            best_s=round(best, 4),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--torch_dtypes", default="fp32,bf16")
    parser.add_argument("--device", default="cpu", help="torch runtime device (cpu or cuda)")
    parser.add_argument(
        "--released_dtypes", action="store_true", help="write bf16 where the released F1 does"
    )
    parser.add_argument("--skip_jax", action="store_true")
    args = parser.parse_args()
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
                bench_jax(directory, observations, args.warmup, size, "bf16" if gpu else "fp32")
            for dtype in args.torch_dtypes.split(","):
                if dtype:
                    bench_torch(directory, observations, args.warmup, size, dtype, args.device)


if __name__ == "__main__":
    main()
