"""A small trainer for the VAR multi-scale VQ-VAE (:mod:`f1_jax.models.vqvae`).

Used to give the `debug` recipe a tokenizer that actually encodes the simulated table-top scene:

    frames = collect_sim_frames(num_episodes=100, seed=0)          # ~2500 frames, 32 px
    params, metrics = train_vqvae(config, frames, seed=0, **RECOMMENDED)
    save_vqvae(path, params)   # loadable by checkpoints.load_params(path, abstract_params)

Training follows VAR's VectorQuantizer2.forward (multi-scale residual quantization with
straight-through gradients and the beta-weighted VQ loss). Two additions keep a tiny model on
sparse scenes from collapsing to "a beige table": a reconstruction loss that up-weights the few
object pixels, and a data-initialised codebook with dead-code restarts.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import traverse_util

from builtin_task.env import SimEnv
from builtin_task.expert import expert_policy, rollout
from f1_common import transforms
from f1_common.model_config import VQVAEConfig
from f1_jax.models.resize import resize_area, resize_bicubic
from f1_jax.models.vqvae import VQVAE
from f1_jax.training import checkpoints

Params = Any
BETA = 0.25  # VAR's commitment weight
OBJECT_THRESHOLD = 0.15  # [-1, 1] units (~19/255): a pixel this far from the dominant colour
# Objects are ~9% of the pixels (17% with their neighbours); x10 gives them ~70% of the loss.
OBJECT_WEIGHT = 10.0
RARITY_POWER = 0.25  # extra weight for rare object colours (the grey gripper), see pixel_weights
# Measured at 400 steps x 16: an L1 term next to MSE sharpens edges (held-out object-pixel MSE
# 0.043 vs 0.051 without); a lower VQ weight (0.3) was worse (0.048).
L1_WEIGHT = 0.5
VQ_WEIGHT = 1.0
USAGE_DECAY = 0.95  # EMA of per-code hit rates, ~20-step memory
DEAD_FRACTION = 0.03  # a code hit at < 3% of the uniform rate counts as dead
RESTART_EVERY = 10
RESTART_UNTIL = 0.8  # no restarts in the last 20% of training, so the codebook can settle
# b2 0.99 rather than 0.999: in a few hundred steps the slow second moment kept the nets at the
# mean colour; (0.5, 0.9) as VQGAN/VAR was slightly worse here.
ADAM_B1, ADAM_B2 = 0.9, 0.99
# ~85 s on 2 busy CPU cores (incl. ~13 s compile) for the debug VQ-VAE on ~2500 32 px frames.
RECOMMENDED = {"steps": 900, "batch_size": 8, "learning_rate": 5e-3}


# ----------------------------------------------------------------------------- data


def collect_sim_frames(
    num_episodes: int,
    seed: int,
    image_size: int = 64,
    frame_size: int = 32,
    every: int = 1,
    resize: int | None = None,
) -> np.ndarray:
    """Primary-camera frames of expert rollouts as the generation expert sees them.

    Seeds ``seed .. seed + num_episodes - 1``; every ``every``-th step. Returns uint8
    ``[N, frame_size, frame_size, 3]``: rendered at ``image_size``, short side to ``resize``
    (default ``frame_size * 9 // 8``, the data config's gen_resize/gen_crop ratio 288/256: 36
    for 32), centred crop (``transforms.generation_crop``, i.e. the eval-mode pipeline).
    """
    env = SimEnv(image_size=image_size)
    spec = transforms.ObservationSpec(gen_resize=resize or frame_size * 9 // 8, gen_crop=frame_size)
    frames = []
    for s in range(seed, seed + num_episodes):
        observations, _, _ = rollout(env, expert_policy(env), s)
        frames += [transforms.generation_crop(o["image"], spec) for o in observations[::every]]
    return np.stack(frames)


def to_float(frames_uint8: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> float32 in [-1, 1]."""
    return frames_uint8.astype(np.float32) / 127.5 - 1.0


def object_mask(frames: np.ndarray) -> np.ndarray:
    """bool ``[N, H, W]``: pixels far from their image's dominant colour (the table).

    The dominant colour is the per-channel median, which is the table for any frame that is
    mostly table; blocks, target outlines and the gripper all differ by > 0.15 in some channel.
    """
    dominant = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None, :]
    return np.abs(frames - dominant).max(-1) > OBJECT_THRESHOLD


def pixel_weights(
    frames: np.ndarray,
    object_weight: float = OBJECT_WEIGHT,
    rarity_power: float = RARITY_POWER,
) -> np.ndarray:
    """float32 ``[N, H, W]`` reconstruction weights of float frames ``[N, H, W, 3]``.

    Plain MSE is ~90% table, so its cheapest minimum is a flat table colour (a previous attempt
    collapsed exactly there). Object pixels and their 4-neighbours get ``1 + object_weight *
    rarity``: with 10 the objects carry at least as much loss as the table, and the 1-pixel
    dilation also weights the table next to each object, so edges stay sharp instead of
    smeared. ``rarity`` (mean 1 over object pixels, clipped to [0.25, 4]) is
    ``freq(colour) ** -rarity_power`` over the object pixels of ``frames``: the ~3-pixel grey
    gripper is far rarer than the coloured blocks and squares and was otherwise left out
    (measured: gripper-pixel MSE 0.175 -> 0.127 for object MSE 0.031 -> 0.033 at power 0.25).
    """
    m = object_mask(frames)
    d = m.copy()
    d[:, 1:] |= m[:, :-1]
    d[:, :-1] |= m[:, 1:]
    d[:, :, 1:] |= m[:, :, :-1]
    d[:, :, :-1] |= m[:, :, 1:]
    boost = np.ones(m.shape)
    if m.any() and rarity_power:
        q = np.clip(((frames + 1.0) * 4.0).astype(np.int64), 0, 7)  # 8 levels per channel
        bins = (q[..., 0] * 8 + q[..., 1]) * 8 + q[..., 2]
        freq = np.bincount(bins[m], minlength=512)[bins[m]].astype(np.float64)
        rarity = freq**-rarity_power
        boost[m] = np.clip(rarity / rarity.mean(), 0.25, 4.0)
    return (1.0 + object_weight * d * boost).astype(np.float32)


# ----------------------------------------------------------------------------- model pieces


def init_params(config: VQVAEConfig, seed: int) -> Params:
    """Random params with the module's own init distributions, filled with NumPy.

    ``VQVAE.init`` under jit costs ~20 s of compile on 2 busy cores (one RNG kernel per
    parameter); the tree comes from ``eval_shape`` instead. Conv kernels and biases:
    U(+-1/sqrt(fan_in)) as torch; GroupNorm 1/0; codebook N(0, 1) (re-initialised from data).
    """
    img = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: VQVAE(config).init(jax.random.key(0), x), img)["params"]
    flat = traverse_util.flatten_dict(shapes)
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in flat.items():
        kernel = flat.get(path[:-1] + ("kernel",))
        if path[-1] == "embedding":
            val = rng.standard_normal(leaf.shape)
        elif kernel is not None and path[-1] in ("kernel", "bias"):
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            val = rng.uniform(-bound, bound, leaf.shape)
        else:  # GroupNorm
            val = np.ones(leaf.shape) if path[-1] == "scale" else np.zeros(leaf.shape)
        out[path] = jnp.asarray(val, jnp.float32)
    return traverse_util.unflatten_dict(out)


def _decode_unclipped(m: VQVAE, f_hat: jax.Array) -> jax.Array:
    # fhat_to_img clips to [-1, 1], which would zero the gradient of saturated pixels.
    return m.decoder(m.post_quant_conv(f_hat))


def _quantize_st(m: VQVAE, f: jax.Array) -> dict[str, Any]:
    """VAR's training quantizer forward on a bound VQVAE; ``f [B, L, L, z]``.

    The residual walk (area-down, lookup, embed, bicubic-up, Phi) runs on stop_grad(f) exactly
    as ``VectorQuantizer.quantize_latent``, so indices and f_hat equal inference's. Gradients
    reach the codebook and the Phis through the VQ loss, and the encoder through the VQ loss's
    commitment term and the straight-through f_hat_st.
    """
    q, c = m.quantize, m.config
    size = (c.latent_size, c.latent_size)
    f_sg = jax.lax.stop_gradient(f)
    f_rest, f_hat = f_sg, jnp.zeros_like(f_sg)
    vq_loss = 0.0
    idx_list, fhat_list, queries, errors = [], [], [], []
    for si, pn in enumerate(c.patch_nums):
        last = si == c.num_scales - 1
        z = f_rest if last else resize_area(f_rest, (pn, pn))
        idx = q.lookup(z)  # [B, pn, pn]
        e = q.embed(idx)
        h = q.phi(e if last else resize_bicubic(e, size), si)
        f_hat = f_hat + h
        f_rest = f_rest - jax.lax.stop_gradient(h)
        vq_loss += BETA * jnp.mean((jax.lax.stop_gradient(f_hat) - f) ** 2)
        vq_loss += jnp.mean((f_hat - f_sg) ** 2)
        idx_list.append(idx.reshape(idx.shape[0], pn * pn))
        fhat_list.append(f_hat)
        queries.append(z.reshape(-1, c.z_channels))  # candidates for dead-code restarts
        errors.append(jnp.sum((z - jax.lax.stop_gradient(e)) ** 2, -1).reshape(-1))
    return {
        "f_hat_st": jax.lax.stop_gradient(f_hat - f) + f,
        "vq_loss": vq_loss / c.num_scales,
        "idx_list": idx_list,
        "fhat_list": fhat_list,
        "queries": jax.lax.stop_gradient(jnp.concatenate(queries)),
        "errors": jnp.concatenate(errors),
    }


def quantize_st(config: VQVAEConfig, params: Params, f: jax.Array) -> dict[str, Any]:
    """Straight-through multi-scale quantization of latent ``f [B, L, L, z]``.

    Returns f_hat_st (forward value f_hat, gradient identity to f), vq_loss, idx_list
    (int32 ``[B, pn*pn]`` per scale), fhat_list, and the per-scale queries/errors.
    """
    return VQVAE(config).apply({"params": params}, f, method=_quantize_st)


def forward_losses(
    config: VQVAEConfig,
    params: Params,
    img: jax.Array,
    weights: jax.Array,
    l1_weight: float = L1_WEIGHT,
    vq_weight: float = VQ_WEIGHT,
) -> tuple[jax.Array, dict[str, Any]]:
    """Training loss for ``img [B, H, W, 3]`` and pixel weights ``[B, H, W]``."""
    model = VQVAE(config)
    f = model.apply({"params": params}, img, method=VQVAE.encode_latent)
    out = quantize_st(config, params, f)
    rec = model.apply({"params": params}, out["f_hat_st"], method=_decode_unclipped)
    # Weighted MSE, normalised by the weights' sum so the scale does not depend on the scene.
    d = rec - img
    rec_loss = jnp.sum(weights[..., None] * (d**2 + l1_weight * jnp.abs(d))) / (
        3 * jnp.sum(weights)
    )
    loss = rec_loss + vq_weight * out["vq_loss"]
    return loss, {"rec_loss": rec_loss, "vq_loss": out["vq_loss"], **out}


# ----------------------------------------------------------------------------- codebook


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 10) -> np.ndarray:
    """k-means++ seeding + Lloyd iterations on ``x [N, D]`` -> centres ``[k, D]``."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = np.sum((x - centres[0]) ** 2, -1)
    for _ in range(1, k):
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, np.sum((x - centres[-1]) ** 2, -1))
    c = np.stack(centres)
    for _ in range(iters):
        assign = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), 1)
        for j in range(k):
            if np.any(assign == j):
                c[j] = x[assign == j].mean(0)
    return c.astype(np.float32)


def init_codebook(config: VQVAEConfig, params: Params, img: jax.Array, seed: int) -> Params:
    """Codebook from k-means over the residual queries of an "oracle" quantizer.

    A N(0, 1) codebook sits far from the encoder's latents, so only a handful of codes ever win
    the argmin. We walk the scales as the quantizer does but subtract each query itself (no
    rounding), collecting the queries of every scale: big coarse vectors and small fine
    residuals share the one codebook, and k-means++ seeding covers both.
    """
    model = VQVAE(config)

    def queries(m: VQVAE, x: jax.Array) -> jax.Array:
        c, f_rest, out = m.config, m.encode_latent(x), []
        for si, pn in enumerate(c.patch_nums):
            last = si == c.num_scales - 1
            z = f_rest if last else resize_area(f_rest, (pn, pn))
            up = z if last else resize_bicubic(z, (c.latent_size, c.latent_size))
            f_rest = f_rest - m.quantize.phi(up, si)
            out.append(z.reshape(-1, c.z_channels))
        return jnp.concatenate(out)

    x = np.asarray(jax.jit(lambda p, i: model.apply({"params": p}, i, method=queries))(params, img))
    book = kmeans(x, config.vocab_size, seed)
    return {**params, "quantize": {**params["quantize"], "embedding": jnp.asarray(book)}}


def _restart_dead_codes(state: dict, out: dict, key: jax.Array, do_restart: jax.Array) -> dict:
    """EMA code usage; when ``do_restart``, dead codes are re-seeded from current residuals.

    Replacement vectors are batch queries drawn with probability proportional to their
    quantization error, so new codes land where the codebook fits worst. Their Adam moments are
    zeroed and their usage reset to the uniform rate (a grace period before the next check).
    """
    v = state["usage"].shape[0]
    hits = jnp.zeros(v).at[jnp.concatenate([i.reshape(-1) for i in out["idx_list"]])].add(1.0)
    usage = USAGE_DECAY * state["usage"] + (1 - USAGE_DECAY) * hits / jnp.sum(hits)
    dead = do_restart & (usage < DEAD_FRACTION / v)
    pick = jax.random.categorical(key, jnp.log(out["errors"] + 1e-12), shape=(v,))
    emb = state["params"]["quantize"]["embedding"]
    new_emb = jnp.where(dead[:, None], out["queries"][pick], emb)
    params = {**state["params"], "quantize": {**state["params"]["quantize"], "embedding": new_emb}}

    def reset_rows(path, x):  # Adam mu/nu leaves of the codebook have its shape and path
        if getattr(path[-1], "key", None) == "embedding" and x.shape == emb.shape:
            return jnp.where(dead[:, None], 0.0, x)
        return x

    opt_state = jax.tree_util.tree_map_with_path(reset_rows, state["opt_state"])
    usage = jnp.where(dead, 1.0 / v, usage)
    restarts = state["restarts"] + jnp.sum(dead, dtype=jnp.int32)
    return {**state, "params": params, "opt_state": opt_state, "usage": usage, "restarts": restarts}


# ----------------------------------------------------------------------------- training


def train_vqvae(
    config: VQVAEConfig,
    frames_uint8: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    progress: bool = True,
    eval_frames_uint8: np.ndarray | None = None,
    object_weight: float = OBJECT_WEIGHT,
    rarity_power: float = RARITY_POWER,
    l1_weight: float = L1_WEIGHT,
    vq_weight: float = VQ_WEIGHT,
) -> tuple[Params, dict[str, float]]:
    """Trains a VQ-VAE from scratch on ``frames_uint8 [N, S, S, 3]`` (S = config.image_size).

    Adam (5% warm-up, cosine decay to 10%), global-norm clip 1; batches are drawn (and
    flipped) inside the jitted step. Loss: pixel-weighted MSE + l1_weight * L1 (see
    ``pixel_weights``) + vq_weight * VAR's VQ loss. Metrics (see ``evaluate_vqvae``) are on
    ``eval_frames_uint8`` (default: the last 10% of ``frames_uint8``, then not trained on), plus
    the first/final training losses, the number of dead-code restarts and the wall time.
    See ``RECOMMENDED`` for steps / batch_size / learning_rate.
    """
    if eval_frames_uint8 is None:
        n_eval = max(1, len(frames_uint8) // 10)
        frames_uint8, eval_frames_uint8 = frames_uint8[:-n_eval], frames_uint8[-n_eval:]
    data = to_float(frames_uint8)
    data_j = jnp.asarray(data)
    weights_j = jnp.asarray(pixel_weights(data, object_weight, rarity_power))
    params = init_params(config, seed)
    rng = np.random.default_rng(seed)
    first = data[rng.choice(len(data), min(len(data), 256), replace=False)]
    params = init_codebook(config, params, jnp.asarray(first), seed)

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(1, steps // 20), steps, learning_rate * 0.1
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule, b1=ADAM_B1, b2=ADAM_B2))
    state = {
        "params": params,
        "opt_state": tx.init(params),
        # float32, not weak-typed: the step's output types must match its inputs (no retrace).
        "usage": jnp.full((config.vocab_size,), 1.0 / config.vocab_size, jnp.float32),
        "restarts": jnp.zeros((), jnp.int32),
    }
    restart_until = int(steps * RESTART_UNTIL)

    @jax.jit
    def train_step(state: dict, key: jax.Array, step: jax.Array) -> tuple[dict, dict]:
        k_idx, k_flip, k_restart = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data_j.shape[0])
        img, w = data_j[idx], weights_j[idx]
        # Random flips: the top-down scene is mirror-symmetric in distribution.
        fy, fx = jax.random.bernoulli(k_flip, 0.5, (2, batch_size, 1, 1))
        img = jnp.where(fy[..., None], img[:, ::-1], img)
        img = jnp.where(fx[..., None], img[:, :, ::-1], img)
        w = jnp.where(fy, w[:, ::-1], w)
        w = jnp.where(fx, w[:, :, ::-1], w)
        grad_fn = jax.value_and_grad(
            lambda p: forward_losses(config, p, img, w, l1_weight, vq_weight), has_aux=True
        )
        (loss, out), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        state = {**state, "params": optax.apply_updates(state["params"], updates)}
        state["opt_state"] = opt_state
        do_restart = (step % RESTART_EVERY == RESTART_EVERY - 1) & (step < restart_until)
        state = _restart_dead_codes(state, out, k_restart, do_restart)
        metrics = {"loss": loss, "rec": out["rec_loss"], "vq": out["vq_loss"]}
        return state, metrics

    t0 = time.perf_counter()
    key = jax.random.key(seed)
    bar = None
    if progress:
        bar = tqdm.tqdm(total=steps, desc="vqvae", dynamic_ncols=True)
    first_loss = last = None
    for step in range(steps):
        state, m = train_step(state, jax.random.fold_in(key, step), jnp.int32(step))
        # Reading a loss waits for the step; only every 10th step (first and last without bar).
        if step == 0 or step == steps - 1 or (bar is not None and step % 10 == 0):
            last = {k: float(v) for k, v in m.items()}
            first_loss = last["loss"] if first_loss is None else first_loss
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4f}", rec=f"{last['rec']:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    params = state["params"]
    metrics = evaluate_vqvae(config, params, eval_frames_uint8)
    metrics.update(
        first_loss=first_loss,
        final_loss=last["loss"],
        final_rec_loss=last["rec"],
        final_vq_loss=last["vq"],
        code_restarts=int(state["restarts"]),
        train_seconds=time.perf_counter() - t0,
    )
    return params, metrics


# ----------------------------------------------------------------------------- evaluation / io


@functools.cache
def _inference_fn(config: VQVAEConfig, num_scales: int) -> Any:
    """Jitted ``(params, img) -> (reconstruction from the first num_scales scales, idx_list)``,
    cached so evaluation and reconstruction share one compile."""

    def fn(m: VQVAE, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        idx_list, fhat_list, _ = m.quantize_latent(m.encode_latent(x))
        return m.fhat_to_img(fhat_list[num_scales - 1]), idx_list

    return jax.jit(lambda p, x: VQVAE(config).apply({"params": p}, x, method=fn))


def evaluate_vqvae(
    config: VQVAEConfig, params: Params, frames_uint8: np.ndarray
) -> dict[str, float]:
    """MSE (in [-1, 1] units) on all pixels and on object pixels, and distinct codes used."""
    x = to_float(frames_uint8)
    rec, idx = _inference_fn(config, config.num_scales)(params, jnp.asarray(x))
    err = ((np.asarray(rec) - x) ** 2).mean(-1)
    mask = object_mask(x)
    codes = np.unique(np.concatenate([np.asarray(i).reshape(-1) for i in idx]))
    return {
        "mse": float(err.mean()),
        "object_mse": float(err[mask].mean()) if mask.any() else 0.0,
        "codes_used": len(codes),
    }


def save_vqvae(path: str, params: Params) -> None:
    """Writes ``{'params': params}`` (``checkpoints.save_params``) atomically to ``path``.

    Saved into a sibling temp dir first, then renamed, so a reader never sees a partial
    checkpoint; an existing checkpoint at ``path`` is replaced.
    """
    path = os.path.abspath(path)
    with tempfile.TemporaryDirectory(
        prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path)
    ) as tmp:
        staged = os.path.join(tmp, "params")
        checkpoints.save_params(staged, jax.tree.map(np.asarray, params))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staged, path)
