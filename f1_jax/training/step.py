"""The jitted train and eval steps.

Randomness is `fold_in(key(seed), step)`: a resumed run draws exactly the noise, flow times and
foresight samples an uninterrupted run would have drawn.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from f1_jax.models.f1 import F1, model_inputs, sample_actions
from f1_jax.training import optimizer as opt
from f1_jax.training.state import TrainState


def _split_micro_batches(batch: dict[str, jax.Array], steps: int) -> dict[str, jax.Array]:
    def split(x):
        if x.shape[0] % steps:
            raise ValueError(
                f"Batch size {x.shape[0]} is not divisible by {steps} accumulation steps."
            )
        return x.reshape(steps, x.shape[0] // steps, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    model: F1,
    tx: optax.GradientTransformation,
    labels: Any,
    seed: int,
    grad_accum_steps: int = 1,
    ema_decay: float | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """(state, data-pipeline batch) -> (new state, metrics). Jit it with donated state."""

    def loss_fn(trainable, frozen, batch, rng):
        params = opt.merge_frozen(trainable, frozen)
        return model.apply({"params": params}, model_inputs(batch), rng)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        trainable, frozen = opt.split_frozen(state.params, labels)
        if grad_accum_steps == 1:
            (_, metrics), grads = grad_fn(trainable, frozen, batch, rng)
        else:  # Sum gradients over micro-batches in a scan: activation memory of one micro-batch.
            micro = _split_micro_batches(batch, grad_accum_steps)

            def accumulate(carry, inputs):
                index, micro_batch = inputs
                (_, m), g = grad_fn(trainable, frozen, micro_batch, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (g, m)), None

            zeros = jax.eval_shape(
                lambda: grad_fn(trainable, frozen, jax.tree.map(lambda x: x[0], micro), rng)
            )
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (zeros[1], zeros[0][1]))
            (grads, metrics), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(grad_accum_steps), micro)
            )
            grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, (grads, metrics))
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params = opt.merge_frozen(optax.apply_updates(trainable, updates), frozen)
        ema_params = state.ema_params
        if ema_decay is not None:
            ema_params = jax.tree.map(
                lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params
            )
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        return TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params
        ), metrics

    return step


def make_eval_step(model: F1, seed: int) -> Callable[[Any, dict], dict]:
    """(params, batch) -> losses, foresight accuracy, sampled actions and the foresight image."""

    def step(params: Any, batch: dict) -> dict:
        inputs = model_inputs(batch)
        rng = jax.random.key(seed)
        _, metrics = model.apply({"params": params}, inputs, rng)
        keys = (
            "images",
            "image_masks",
            "tokens",
            "token_mask",
            "state",
            "history",
            "history_codes",
        )
        obs = {k: inputs[k] for k in keys if k in inputs}
        actions, foresight = sample_actions(
            model, {"params": params}, obs, rng, return_foresight=True
        )
        target = inputs.get("target_frame")
        if target is None:  # frames stored as codes: the true next frame is their decoding
            target = model.apply({"params": params}, inputs["target_codes"], method=F1.decode_codes)
        valid = (~inputs["action_is_pad"])[..., None] & batch["action_mask"][:, None, :]
        error = jnp.square(actions - inputs["actions"]) * valid
        metrics["action_mse"] = jnp.sum(error) / jnp.maximum(jnp.sum(valid), 1)
        return {
            "metrics": metrics,
            "actions": actions,
            "foresight_image": foresight["image"],
            "target_frame": target,
        }

    return step
