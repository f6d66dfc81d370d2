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
        policy = Policy.load(directory, frame_cache=cache)
        policy.reset()
        calls = iter(range(len(observations)))

        def infer(obs):
            out = policy.infer(obs, seed=next(calls))
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
    interleave: bool = False,
) -> None:
    """One line per mode: {dtype, attention, rope, compile, frame_cache}.

    interleave: load every mode's policy first, then send each observation to every policy in
    turn, so that a shared machine's changing load falls on all modes alike (the modes then
    hold their models in memory at once).
    """
    import torch  # deferred: the JAX half runs without torch

    from f1_torch.policy import TorchPolicy  # deferred: as above

    def fields(mode: dict) -> dict:
        return dict(benchmark="policy_latency", runtime="torch", size=size, device=device, **mode)

    def load(mode: dict):
        try:
            policy = TorchPolicy.load(
                directory,
                device=device,
                dtype=mode["dtype"],
                frame_cache=mode["frame_cache"],
                attention=mode["attention"],
                rope=mode["rope"],
                compile=mode["compile"],
            )
        except (RuntimeError, NotImplementedError) as e:
            return None, e
        policy.reset()
        return policy, None

    def call(policy, seed: int, obs) -> float:
        start = time.perf_counter()
        policy.infer(obs, seed=seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def report(mode: dict, policy, times: list[float] | None, error: Exception | None) -> None:
        if error is not None:  # a mode this device lacks (e.g. fp16 kernels on an old CPU)
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            emit(**fields(mode), error=message)
            return
        measured = times[warmup:]
        emit(
            **fields(mode),
            median_s=round(float(np.median(measured)), 4),
            best_s=round(float(np.min(measured)), 4),
            first_call_s=round(times[0], 3),
            encodes_per_call=round(policy.encoded_frames / len(observations), 2),
            threads=torch.get_num_threads(),
            interleaved=interleave,
            load_1min=round(os.getloadavg()[0], 1),  # others' jobs on a shared machine
        )

    if not interleave:
        for mode in modes:
            policy, error = load(mode)
            times = None
            if error is None:
                try:
                    times = [call(policy, k, obs) for k, obs in enumerate(observations)]
                except (RuntimeError, NotImplementedError) as e:
                    error = e
            report(mode, policy, times, error)
        return
    loaded = [load(mode) for mode in modes]
    times = [[] for _ in modes]
    errors = [error for _, error in loaded]
    for k, obs in enumerate(observations):
        for m, (policy, _) in enumerate(loaded):
            if errors[m] is None:
                try:
                    times[m].append(call(policy, k, obs))
                except (RuntimeError, NotImplementedError) as e:
                    errors[m] = e
    for mode, (policy, _), t, error in zip(modes, loaded, times, errors):
        report(mode, policy, t, error)


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
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="torch modes take turns call by call (fair on a machine shared with other jobs)",
    )
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
            bench_torch(
                directory, observations, args.warmup, size, args.device, modes, args.interleave
            )


if __name__ == "__main__":
    main()
