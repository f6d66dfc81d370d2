"""The training loop: sharded state, data, train/eval steps, logging and checkpoints.

`train(config, workdir)` is what `python -m f1_jax.launch` runs on every host. It resumes from the
latest checkpoint in `workdir`, logs from process 0 only (console progress bar + TensorBoard),
evaluates on held-out episodes, stops on a non-finite loss naming the step, and on SIGTERM (TPU
preemption) saves a checkpoint and exits cleanly.
"""

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm

from configs.models import get_model_config
from data_pipelines import DataConfig, dataset_statistics, make_train_iterator, unnormalize_actions
from data_pipelines.pipeline import eval_config
from f1_jax.models.f1 import F1, F1Config
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import optimizer as opt
from f1_jax.training import sharding
from f1_jax.training import state as st
from f1_jax.training import step as steps

log = logging.getLogger("f1_jax")


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or gradient norm becomes NaN or infinite."""


def model_config_from(config: ml_collections.ConfigDict) -> F1Config:
    m = config.model
    return dataclasses.replace(
        get_model_config(
            m.size,
            precision=m.precision,
            remat_policy=m.remat_policy,
            num_scales=m.num_scales,
            chunk_size=m.chunk_size,
            foresight_training=m.foresight_training,
        ),
        action_loss_weight=m.action_loss_weight,
        foresight_loss_weight=m.foresight_loss_weight,
    )


def data_config_from(data: ml_collections.ConfigDict, model_config: F1Config) -> DataConfig:
    """The data section plus the sizes the model dictates (image sizes, chunk, history)."""
    frame = model_config.vqvae.image_size
    fields = dict(data.to_dict())
    fields["stats_dir"] = fields.get("stats_dir") or None
    fields.update(
        chunk_size=model_config.action.chunk_size,
        state_dim=model_config.action.state_dim,
        action_dim=model_config.action.action_dim,
        und_image_size=model_config.siglip.image_size,
        gen_crop=frame,
        gen_resize=int(round(1.125 * frame)),
    )
    if len(fields.get("history_offsets", (-9, -6, -3, 0))) != model_config.foresight.history_frames:
        raise ValueError(
            f"data.history_offsets must have {model_config.foresight.history_frames} "
            f"entries, got {fields['history_offsets']}."
        )
    return DataConfig.from_mapping(fields)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after every step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting.")
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step: int, metrics: dict[str, float]) -> None:
    for name in ("loss", "action_loss", "foresight_loss", "grad_norm"):
        if name in metrics and not math.isfinite(metrics[name]):
            raise NonFiniteLossError(
                f"Non-finite {name} = {metrics[name]} at step {step}; stopping. "
                "The last checkpoint is intact; lower the learning rate or check "
                "the data of this step."
            )


def _fetch(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class _Logger:
    """Console progress bar and TensorBoard, both on process 0 only."""

    def __init__(self, workdir: str, start: int, total: int, batch_size: int):
        self.active = jax.process_index() == 0
        self.batch_size = batch_size
        self.writer = None
        self.bar = None
        if self.active:
            from flax.metrics import tensorboard  # TensorFlow only in logging, never in the step

            self.writer = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))
            self.bar = tqdm.tqdm(
                total=total,
                initial=start,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self.last_time, self.last_step = time.time(), start

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.active:
            return
        now = time.time()
        if prefix == "train" and step > self.last_step:
            rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
            metrics = dict(metrics, steps_per_sec=rate, examples_per_sec=rate * self.batch_size)
            self.last_time, self.last_step = now, step
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        for name, value in metrics.items():
            self.writer.scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()
        self.jsonl.write(json.dumps({"step": step, "split": prefix, **metrics}) + "\n")
        self.jsonl.flush()

    def advance(self, step: int) -> None:
        if self.active:
            self.bar.update(step - self.bar.n)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.active:
            self.writer.image(name, image, step)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.writer.close()
            self.jsonl.close()


def foresight_strip(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N, h, w, 3] predicted and true next frames in [-1, 1] -> one uint8 picture, pairs in rows."""
    rows = [np.concatenate([p, t], axis=1) for p, t in zip(predicted, target)]
    return np.clip((np.concatenate(rows, axis=0) + 1) * 127.5, 0, 255).astype(np.uint8)


HOST_ONLY_KEYS = ("dataset_index", "episode_index", "step_index")  # bookkeeping, not model input


def device_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """A host's batch without its bookkeeping keys, assembled into global arrays on `mesh`."""
    return sharding.host_batch_to_global(
        {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}, mesh
    )


def optimization_from(config: ml_collections.ConfigDict, boxed_params: Any):
    """(labels, tx, schedules, ema_decay) of a config's `optimizer` section for these params."""
    labels = opt.param_labels(nn.unbox(boxed_params), config.optimizer.frozen)
    trainable_labels, _ = opt.split_frozen(labels, labels)
    tx, schedules = opt.make_optimizer(
        config.optimizer.to_dict(), config.train.steps, trainable_labels
    )
    return labels, tx, schedules, config.optimizer.ema_decay or None


def evaluate(
    eval_step, params, data_config: DataConfig, stats: dict, mesh, num_batches: int, seed: int
) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean metrics over `num_batches` held-out batches and a foresight picture of the first."""
    iterator = make_train_iterator(
        eval_config(data_config), seed, jax.process_index(), jax.process_count()
    )
    names = [d.name for d in data_config.datasets]
    totals: dict[str, list[float]] = {}
    picture = None
    for index, batch in zip(range(num_batches), iterator):
        out = jax.device_get(eval_step(params, device_batch(batch, mesh)))
        for name, value in out["metrics"].items():
            totals.setdefault(name, []).append(float(value))
        # Robot units: un-normalise per dataset with the statistics the model was trained with.
        local = out["actions"][: len(batch["dataset_index"])]
        errors = []
        for row, d in enumerate(batch["dataset_index"]):
            dim = int(batch["action_mask"][row].sum())
            valid = ~batch["action_is_pad"][row]
            pred = unnormalize_actions(local[row], stats[names[d]])[..., :dim]
            true = unnormalize_actions(batch["actions"][row], stats[names[d]])[..., :dim]
            errors.append(np.mean(np.square(pred - true)[valid]))
        totals.setdefault("action_mse_robot_units", []).append(float(np.mean(errors)))
        if picture is None:
            picture = foresight_strip(out["foresight_image"][:4], out["target_frame"][:4])
    return {k: float(np.mean(v)) for k, v in totals.items()}, picture


def _global_batch_iterator(iterator, mesh) -> Iterator[dict]:
    for batch in iterator:
        yield device_batch(batch, mesh)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training; returns the last logged training metrics."""
    os.makedirs(workdir, exist_ok=True)
    model_config = model_config_from(config)
    model = F1(model_config)
    data_config = data_config_from(config.data, model_config)
    eval_data = (
        data_config_from(config.eval_data, model_config) if config.eval_data.datasets else None
    )
    devices = jax.devices()[: config.mesh.num_devices or None]
    mesh = sharding.make_mesh(config.mesh.shape, config.mesh.num_slices, devices)
    rules = sharding.rules_from_config(config.sharding_rules)
    total_steps = config.train.steps

    boxed = st.abstract_params(model)
    labels, tx, schedules, ema_decay = optimization_from(config, boxed)
    init_fn, abstract_state, state_sh = st.make_state_fns(
        model, tx, labels, mesh, rules, ema=ema_decay is not None, boxed_params=boxed
    )
    if jax.process_index() == 0:
        trainable, frozen = opt.split_frozen(nn.unbox(boxed), labels)
        log.info(
            "Model %s: %.2f M trainable, %.2f M frozen parameters; mesh %s.",
            config.model.size,
            st.count_params(trainable) / 1e6,
            st.count_params(frozen) / 1e6,
            dict(mesh.shape),
        )

    checkpoints = ckpt.RunCheckpoints(
        os.path.join(workdir, "checkpoints"),
        config.train.checkpoint_every,
        config.train.keep_checkpoints,
        config.train.keep_period or None,
        config.train.async_checkpoints,
    )
    train_iter = make_train_iterator(
        data_config, config.train.seed, jax.process_index(), jax.process_count()
    )
    stats = dataset_statistics(data_config)
    record = {
        "config": config.to_json_best_effort(),
        "dataset_statistics": stats,
        "dataset_names": [d.name for d in data_config.datasets],
    }

    start = checkpoints.latest_step()
    if start is not None:
        log.info("Resuming from step %d in %s.", start, workdir)
        state, _ = checkpoints.restore(
            start, ckpt.with_shardings(abstract_state, state_sh), train_iter
        )
    else:
        start = 0
        if config.init.params_path:
            params = ckpt.load_params(
                config.init.params_path, ckpt.with_shardings(abstract_state.params, state_sh.params)
            )
            state = _state_from_params(init_fn, params)
        else:
            state = init_fn(jax.random.key(config.train.seed))
        if config.init.vqvae_path:
            vqvae = ckpt.load_params(
                config.init.vqvae_path,
                ckpt.with_shardings(abstract_state.params["vqvae"], state_sh.params["vqvae"]),
            )
            params = {**state.params, "vqvae": vqvae}
            state = state.replace(
                params=params, ema_params=params if state.ema_params is not None else None
            )
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))

    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
        train_step = jit_train_step(config, model, tx, labels, ema_decay, state_sh)
        eval_step = jax.jit(steps.make_eval_step(model, config.train.seed)) if eval_data else None

        logger = _Logger(workdir, start, total_steps, data_config.batch_size)
        preemption = _Preemption()
        batches = _global_batch_iterator(train_iter, mesh)
        last, step = {}, start
        try:
            while step < total_steps:
                state, metrics = train_step(state, next(batches))
                step += 1
                log_now = step % config.train.log_every == 0 or step == total_steps
                # Fetching metrics syncs with the device; big runs check only when they log.
                if log_now or config.train.check_every_step:
                    fetched = _fetch(metrics)
                    _check_finite(step, fetched)
                    if log_now:
                        lrs = {f"lr_{g}": float(s(step - 1)) for g, s in schedules.items()}
                        logger.scalars(step, dict(fetched, **lrs))
                        last = fetched
                logger.advance(step)
                if eval_step is not None and (
                    step % config.train.eval_every == 0 or step == total_steps
                ):
                    eval_metrics, picture = evaluate(
                        eval_step,
                        state.params,
                        eval_data,
                        stats,
                        mesh,
                        config.train.eval_batches,
                        config.train.seed,
                    )
                    logger.scalars(step, eval_metrics, prefix="eval")
                    if picture is not None:
                        logger.image(step, "eval/foresight_predicted_vs_true", picture)
                    if jax.process_index() == 0:
                        log.info("step %d eval %s", step, json.dumps(eval_metrics))
                if preemption.requested or checkpoints.should_save(step) or step == total_steps:
                    checkpoints.save(step, state, train_iter, record, force=True)
                if preemption.requested:
                    break
        finally:
            checkpoints.close()
            logger.close()
            preemption.restore()
            if data_config.num_workers > 0 and hasattr(train_iter, "close"):
                train_iter.close()
    return last


def _state_from_params(init_fn, params):
    """A fresh train state whose parameters come from a converted checkpoint."""
    state = init_fn(jax.random.key(0))
    return state.replace(params=params, ema_params=params if state.ema_params is not None else None)


def abstract_batch(
    model_config: F1Config,
    batch_size: int,
    max_token_len: int = 48,
    num_cameras: int = 3,
    mesh=None,
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of one data-pipeline batch (see data_pipelines.pipeline.BATCH_SPEC)."""
    side, frame = model_config.siglip.image_size, model_config.vqvae.image_size
    frames = model_config.foresight.history_frames + 1
    chunk, state_dim, action_dim = (
        model_config.action.chunk_size,
        model_config.action.state_dim,
        model_config.action.action_dim,
    )
    spec = {
        "images": ((batch_size, num_cameras, side, side, 3), np.uint8),
        "image_mask": ((batch_size, num_cameras), bool),
        "gen_frames": ((batch_size, frames, frame, frame, 3), np.uint8),
        "state": ((batch_size, state_dim), np.float32),
        "actions": ((batch_size, chunk, action_dim), np.float32),
        "action_mask": ((batch_size, action_dim), bool),
        "action_is_pad": ((batch_size, chunk), bool),
        "tokens": ((batch_size, max_token_len), np.int32),
        "token_mask": ((batch_size, max_token_len), bool),
    }
    sharding_ = sharding.batch_sharding(mesh) if mesh is not None else None
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_)
        for k, (shape, dtype) in spec.items()
    }


def jit_train_step(config: ml_collections.ConfigDict, model: F1, tx, labels, ema_decay, state_sh):
    """The jitted train step (state donated, state kept in its shardings); call it inside the
    run's logical axis rules and mesh."""
    return jax.jit(
        steps.make_train_step(
            model, tx, labels, config.train.seed, config.optimizer.grad_accum_steps, ema_decay
        ),
        donate_argnums=0,
        out_shardings=(state_sh, None),
    )


def lower_train_step(config: ml_collections.ConfigDict, mesh, batch_size: int | None = None):
    """The full train step of `config` lowered ahead of time with abstract inputs on `mesh`
    (no parameter is allocated). `.compile()` the result to get the compiler's memory analysis."""
    model_config = model_config_from(config)
    model = F1(model_config)
    rules = sharding.rules_from_config(config.sharding_rules)
    boxed = st.abstract_params(model)
    labels, tx, _, ema_decay = optimization_from(config, boxed)
    _, abstract_state, state_sh = st.make_state_fns(
        model, tx, labels, mesh, rules, ema=ema_decay is not None, boxed_params=boxed
    )
    batch = abstract_batch(
        model_config,
        batch_size or config.data.batch_size,
        config.data.get("max_token_len", 48),
        mesh=mesh,
    )
    with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
        step = jit_train_step(config, model, tx, labels, ema_decay, state_sh)
        return step.lower(ckpt.with_shardings(abstract_state, state_sh), batch)
