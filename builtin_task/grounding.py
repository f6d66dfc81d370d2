"""Grounding pretraining of SigLIP + the understanding expert: the debug recipe's stand-in for
PaliGemma's pretraining.

The released F1 starts from PaliGemma, whose pretraining already taught SigLIP + Gemma to find
the objects a text names. The debug model starts from random weights, and in its 1000 F1 steps
the action expert learns only partly to pick out the named block (reach 11/20 without this stage,
19/20 with it; README). This stage teaches the prefix that first: camera patches and instruction pass through SigLIP and the
understanding expert exactly as in F1 (one bidirectional block), and a throw-away linear head on
each patch's output predicts whether the patch shows the instructed block, the instructed square
or neither (labels from the simulator's state, `builtin_task.labels`). Only the vision
tower, the word embedding and the understanding expert are in the graph; the other experts'
weights come out unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from builtin_task import labels as sim_labels
from builtin_task.env import SimEnv
from builtin_task.expert import expert_action
from data_pipelines.sources import libero
from f1_common import transforms
from f1_jax.models import masks
from f1_jax.models.f1 import F1

Params = Any
POSITIVE_WEIGHT = 5.0  # named objects cover ~10 % of the patches


def prefix_preprocessor(text, spec: transforms.ObservationSpec):
    """Simulator observation -> {images [C, S, S, 3], image_mask [C], tokens, token_mask}, with
    the observation contract's own functions (so pretraining sees what F1 sees). text: a
    Tokenizer."""

    def preprocess(obs: dict[str, Any]) -> dict[str, np.ndarray]:
        frames = transforms.camera_frames(obs, libero.DEFAULT_CAMERAS)
        images, present = transforms.understanding_images(frames, spec)
        tokens, token_mask = text.encode(obs["instruction"])
        return {"images": images, "image_mask": present, "tokens": tokens, "token_mask": token_mask}

    return preprocess


def collect_grounding_examples(
    seeds: list[int],
    task_names: list[str],
    preprocess,
    cameras: tuple[str, ...],
    side: int,
    image_size: int,
    every: int = 2,
) -> dict[str, np.ndarray]:
    """Expert rollouts -> model inputs and per-patch labels, every `every`-th step.

    preprocess: observation -> model inputs (`prefix_preprocessor`); cameras: the model's camera
    slots, in order; labels int32 [len(cameras) * side^2].
    """
    env = SimEnv(image_size=image_size)
    columns: dict[str, list] = {}
    for seed, task in zip(seeds, task_names):
        obs, done, t = env.reset(seed, task), False, 0
        while not done:
            if t % every == 0:
                example = dict(preprocess(obs))
                example["labels"] = sim_labels.patch_labels(env.world, env.goal, cameras, side)
                for key, value in example.items():
                    columns.setdefault(key, []).append(value)
            obs, _, done, _ = env.step(expert_action(env.world, env.goal))
            t += 1
    return {key: np.stack(values) for key, values in columns.items()}


def _patch_logits(model: F1, obs: dict[str, jax.Array], head: jax.Array) -> jax.Array:
    """[B, C * patches, classes]: the understanding expert's patch outputs through `head`."""
    tokens, pad = model.embed_understanding(obs)
    (out, _, _), _ = model.stack(
        [tokens, None, None],
        masks.positions_from_pad(pad),
        masks.block_attention_mask(pad, jnp.zeros_like(pad)),
    )
    num_patches = obs["images"].shape[1] * model.config.siglip.num_patches
    return out[:, :num_patches].astype(jnp.float32) @ head


def grounding_loss(
    model: F1, params: Params, head: jax.Array, batch: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted per-patch cross-entropy over present cameras, and recall/precision of the
    named-block patches (the metric that matters for the action expert)."""
    obs = {
        "images": batch["images"].astype(jnp.float32) / 127.5 - 1.0,
        "image_masks": batch["image_mask"],
        "tokens": batch["tokens"],
        "token_mask": batch["token_mask"],
    }
    logits = model.apply({"params": params}, obs, head, method=_patch_logits)
    labels = batch["labels"]
    valid = jnp.repeat(batch["image_mask"], model.config.siglip.num_patches, axis=1)
    weight = valid * jnp.where(labels > 0, POSITIVE_WEIGHT, 1.0)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    loss = jnp.sum(weight * nll) / jnp.sum(weight)
    hit = (jnp.argmax(logits, axis=-1) == sim_labels.NAMED_BLOCK) & valid
    true = labels == sim_labels.NAMED_BLOCK
    metrics = {
        "loss": loss,
        "block_recall": jnp.sum(hit & true) / jnp.maximum(jnp.sum(true), 1),
        "block_precision": jnp.sum(hit & true) / jnp.maximum(jnp.sum(hit), 1),
    }
    return loss, metrics


def pretrain_understanding(
    model: F1,
    params: Params,
    examples: dict[str, np.ndarray],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
) -> tuple[Params, dict[str, float]]:
    """Adam (warm-up + cosine) on `grounding_loss`; returns the updated F1 params (the head is
    dropped) and the last step's metrics."""
    width = model.config.und.width
    head = jax.random.normal(jax.random.key(seed), (width, sim_labels.NUM_CLASSES)) / width**0.5
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(steps // 20, 1), steps)
    tx = optax.adam(schedule)
    trainable = (params, head)
    opt_state = tx.init(trainable)

    @jax.jit
    def step(trainable, opt_state, batch):
        (_, metrics), grads = jax.value_and_grad(
            lambda t: grounding_loss(model, t[0], t[1], batch), has_aux=True
        )(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, metrics

    rng = np.random.default_rng(seed)
    n = len(examples["labels"])
    metrics: dict[str, float] = {}
    bar = tqdm.trange(steps, desc="grounding", mininterval=2.0)
    for i in bar:
        idx = rng.integers(0, n, batch_size)
        trainable, opt_state, out = step(
            trainable, opt_state, {k: v[idx] for k, v in examples.items()}
        )
        if i % 25 == 0 or i == steps - 1:
            metrics = {k: round(float(v), 4) for k, v in out.items()}
            bar.set_postfix(metrics)
    return trainable[0], metrics
