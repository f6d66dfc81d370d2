"""Latency of `sample_actions` (one observation), broken down as the original's latency table:
image encode (SigLIP + instruction embedding), foresight (VQ-VAE on the 4 history frames, prefix
pass, next-scale sampling) and denoising (10 Euler steps on the cached prefix).

  python benchmarks/bench_sample_actions.py --sizes tiny,small [--batch 1] [--repeats 5]

The original reports 235 ms in total on an RTX 4090 (full size, bf16).
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.common import emit, time_call
from f1_jax.models.sizes import get_model_config
from f1_jax.models.action import euler_sample
from f1_jax.models.f1 import F1, example_batch, sample_actions
from f1_jax.training.state import init_params

OBS_KEYS = ("images", "image_masks", "tokens", "token_mask", "state", "history")


def bench(size: str, batch_size: int, repeats: int, precision: str) -> None:
    config = get_model_config(size, precision=precision)
    model = F1(config)
    obs = {
        k: jnp.asarray(v)
        for k, v in example_batch(config, batch_size, num_tokens=48).items()
        if k in OBS_KEYS
    }
    params = {"params": jax.jit(lambda k: init_params(model, k))(jax.random.key(0))}
    rng = jax.random.key(1)

    def image_encode(p, o):
        return model.apply(p, o, method=F1.embed_understanding)

    def foresight(p, o, r):
        return model.apply(p, o, r, method=F1.encode_prefix)

    def denoise(p, o, cache, pad):
        noise = jnp.zeros((batch_size, config.action.chunk_size, config.action.action_dim))
        velocity = lambda x, t: model.apply(p, cache, pad, o["state"], x, t, method=F1.velocity)
        return euler_sample(velocity, noise, config.action.num_steps)

    total_fn = jax.jit(lambda p, o, r: sample_actions(model, p, o, r))
    encode_fn, foresight_fn, denoise_fn = (
        jax.jit(image_encode),
        jax.jit(foresight),
        jax.jit(denoise),
    )
    _, cache, pad = foresight_fn(params, obs, rng)
    parts = {
        "total": lambda: total_fn(params, obs, rng),
        "image_encode": lambda: encode_fn(params, obs),
        "foresight_incl_image_encode": lambda: foresight_fn(params, obs, rng),
        "denoising": lambda: denoise_fn(params, obs, cache, pad),
    }
    for part, fn in parts.items():
        median, best = time_call(fn, repeats)
        emit(
            benchmark="sample_actions",
            size=size,
            precision=precision,
            batch=batch_size,
            part=part,
            median_ms=round(1e3 * median, 2),
            min_ms=round(1e3 * best, 2),
            num_scales=config.foresight.num_scales,
            denoise_steps=config.action.num_steps,
            prefix_tokens=int(pad.shape[1]),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="default")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        bench(size, args.batch, args.repeats, args.precision)


if __name__ == "__main__":
    main()
