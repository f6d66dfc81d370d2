"""The training loop: `train(config, workdir)`, what `python -m f1_jax.launch` runs on every host.

It resumes from the latest checkpoint in `workdir` (stopping if the config changed, see
`run_config`), or starts from `init.*` (see `initial_params`); logs from process 0 only;
evaluates on held-out episodes; stops on a non-finite loss naming the step; and on SIGTERM saves
the step every process agrees on and exits cleanly (see `preemption`).
"""

import json
import logging
import math

import flax.linen as nn
import jax
import ml_collections

from data_pipelines import dataset_statistics, make_train_iterator
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import evaluation, frame_codes, initial_params, run_config, setup
from f1_jax.training import optimizer as opt
from f1_jax.training import sharding
from f1_jax.training import state as st
from f1_jax.training import step as steps
from f1_jax.training.metrics_log import MetricsLogger
from f1_jax.training.preemption import Preemption

log = logging.getLogger("f1_jax")


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or gradient norm becomes NaN or infinite."""


class MissingInitError(ValueError):
    """A recipe that needs starting weights (`init.required`) was started without them."""


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


def _global_batches(iterator, mesh):
    """The data iterator's host batches as global device arrays."""
    for batch in iterator:
        yield setup.device_batch(batch, mesh)


def _initial_state(config: ml_collections.ConfigDict, ts: setup.TrainSetup) -> st.TrainState:
    """A fresh state, with the weights `init.*` names put in."""
    rng = jax.random.key(config.train.seed)
    if not (config.init.params_path or config.init.vqvae_path):
        return ts.init_fn(rng)
    params = initial_params.load_initial_params(
        config.init.params_path,
        config.init.vqvae_path,
        config.init.get("use_ema", False),
        # Only the parameters, in their shards: no optimizer state made to be thrown away.
        lambda: jax.jit(
            lambda key: st.init_params(ts.model, key), out_shardings=ts.state_shardings.params
        )(rng),
        ts.abstract_state.params,
    )
    return ts.init_fn(rng, jax.device_put(params, ts.state_shardings.params))


def train(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict[str, float]:
    """Runs (or resumes) training; returns the last logged training metrics.

    allow_config_change: resume even if the config differs from the run's (see run_config).
    """
    run_dir = ckpt.RunDir(workdir)
    mesh = sharding.mesh_from_config(config.mesh)
    ts = setup.train_setup(config, mesh)
    data_config = setup.data_config_from(config.data, ts.model_config)
    eval_data = (
        setup.data_config_from(config.eval_data, ts.model_config)
        if config.eval_data.datasets
        else None
    )
    total_steps = config.train.steps
    if jax.process_index() == 0:
        trainable, frozen = opt.split_frozen(nn.unbox(ts.boxed_params), ts.labels)
        log.info(
            "Model %s: %.2f M trainable, %.2f M frozen parameters; mesh %s.",
            config.model.size,
            st.count_params(trainable) / 1e6,
            st.count_params(frozen) / 1e6,
            dict(mesh.shape),
        )
        fallbacks = sharding.sharding_fallbacks(ts.boxed_params, mesh, ts.rules)
        if fallbacks:  # placement only; python -m f1_jax.aot shows their memory cost
            log.warning(
                "%d parameter dimensions are not divisible by their mesh axes: %s",
                len(fallbacks),
                "; ".join(fallbacks),
            )

    config_json = config.to_json_best_effort(indent=2)
    start = run_dir.latest_step()
    if start is None and config.init.get("required") and not config.init.params_path:
        raise MissingInitError(
            "This recipe starts from earlier weights: pass --config.init.params_path=WORKDIR of "
            "the previous stage (or WORKDIR:STEP), or a `python -m conversion import` output "
            "(the recipe's docstring shows the whole chain)."
        )
    if start is not None and run_dir.config.exists():
        changed = run_config.check_resume(
            run_dir.config.read_text(), config_json, allow_config_change
        )
        if changed:
            log.warning("Resuming with changed config fields: %s", changed)
    checkpoints = ckpt.RunCheckpoints(
        run_dir.checkpoints,
        config.train.checkpoint_every,
        config.train.keep_checkpoints,
        config.train.keep_period or None,
        config.train.async_checkpoints,
        use_ocdbt=config.train.get("checkpoint_ocdbt", True),
    )
    if start is not None:
        log.info("Resuming from step %d in %s.", start, run_dir.path)
        state = checkpoints.restore_state(start, ts.abstract_state)
    else:
        state = _initial_state(config, ts)
    # The frozen VQ-VAE encodes every frame once, before the loop.
    if data_config.observation.frame_codes:
        vqvae = state.params["vqvae"]
        data_config = frame_codes.ensure_frame_codes(data_config, ts.model, vqvae)
        if eval_data is not None:
            eval_data = frame_codes.ensure_frame_codes(eval_data, ts.model, vqvae)
    train_iter = make_train_iterator(
        data_config, config.train.seed, jax.process_index(), jax.process_count()
    )
    if start is not None:
        checkpoints.restore_data(start, train_iter)
    else:
        start = 0
    stats = dataset_statistics(data_config)
    record = {
        "config": config.to_json_best_effort(),
        "dataset_statistics": stats,
        "dataset_names": [d.name for d in data_config.datasets],
    }
    if jax.process_index() == 0:
        run_config.record_config(run_dir.config_history, run_dir.config, start, config_json)

    with nn.logical_axis_rules(ts.rules), jax.set_mesh(mesh):
        train_step = setup.jit_train_step(config, ts)
        eval_step = (
            jax.jit(steps.make_eval_step(ts.model, config.train.seed)) if eval_data else None
        )

        logger = MetricsLogger(
            run_dir.metrics, run_dir.tensorboard, start, total_steps, data_config.batch_size
        )
        preemption = Preemption()
        batches = _global_batches(train_iter, mesh)
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
                        lrs = {f"lr_{g}": float(s(step - 1)) for g, s in ts.schedules.items()}
                        logger.scalars(step, dict(fetched, **lrs))
                        last = fetched
                logger.advance(step)
                if eval_step is not None and (
                    step % config.train.eval_every == 0 or step == total_steps
                ):
                    eval_metrics, picture = evaluation.evaluate(
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
                preempted = preemption.reached(step)
                if preempted or checkpoints.should_save(step) or step == total_steps:
                    checkpoints.save(step, state, train_iter, record, force=True)
                    logger.flush()
                if preempted:
                    break
        finally:
            checkpoints.close()
            logger.close()
            preemption.restore()
            if data_config.num_workers > 0 and hasattr(train_iter, "close"):
                train_iter.close()
    return last
