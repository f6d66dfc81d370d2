"""From a recipe to everything a train step needs: model, data config, optimizer, sharded state.

`train_setup(config, mesh)` is the one place that chains model -> sharding rules -> abstract
parameters -> optimizer -> train-state shardings; the trainer, ahead-of-time lowering and the
benchmarks all use it.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from data_pipelines import HOST_ONLY_KEYS, DataConfig
from data_pipelines.config import OBSERVATION_FIELDS
from data_pipelines.sources import open_reader
from f1_common import transforms
from f1_jax.models.f1 import F1, F1Config, observation_spec
from f1_jax.models.sizes import model_config_from
from f1_jax.training import optimizer as opt
from f1_jax.training import sharding
from f1_jax.training import state as st
from f1_jax.training import step as steps


def data_config_from(data: ml_collections.ConfigDict, model_config: F1Config) -> DataConfig:
    """A recipe's data section, with the observation sizes the model dictates (image sizes,
    chunk, padding widths; see `f1_jax.models.f1.observation_spec`)."""
    fields = {k: v for k, v in data.to_dict().items() if k not in OBSERVATION_FIELDS}
    fields["stats_dir"] = fields.get("stats_dir") or None
    fields["observation"] = observation_spec(model_config, data)
    return DataConfig.from_mapping(fields)


def check_data(config: ml_collections.ConfigDict) -> str | None:
    """Why the recipe's data section cannot be used, or None: the datasets as the trainer builds
    them (their fields, a LeRobot mapping or an RLDS configuration and the files they name), and
    each LeRobot dataset's layout against its mapping (meta/ only: cameras, state and action
    features, fps). Nothing is compiled or sampled, so the launcher names bad input before a run
    starts (and in --dry_run's report)."""
    try:
        data = data_config_from(config.data, model_config_from(config.model))
        for ds in data.datasets:
            if ds.source == "lerobot":
                open_reader(ds)
    except KeyError as e:  # a missing split: KeyError quotes its message
        return str(e.args[0]) if e.args else repr(e)
    except (ValueError, FileNotFoundError, ImportError) as e:
        return str(e)
    return None


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """The pieces of a run that follow from its config and mesh."""

    model: F1
    mesh: Mesh
    rules: tuple
    labels: Any  # optimizer group (or "frozen") per parameter
    tx: optax.GradientTransformation
    schedules: dict[str, optax.Schedule]  # learning rate per group, for logging
    ema_decay: float | None
    init_fn: Callable[..., st.TrainState]  # (rng[, params]) -> the state, in its shards
    abstract_state: st.TrainState  # shapes with their target shardings (restore target)
    state_shardings: st.TrainState
    boxed_params: Any  # abstract parameters with their logical axis names

    @property
    def model_config(self) -> F1Config:
        return self.model.config


def train_setup(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainSetup:
    """Model, optimizer and sharded train-state functions of `config` on `mesh` (no allocation)."""
    model = F1(model_config_from(config.model))
    rules = sharding.rules_from_config(config.sharding_rules)
    boxed = st.abstract_params(model)
    labels = opt.param_labels(nn.unbox(boxed), config.optimizer.frozen)
    trainable_labels, _ = opt.split_frozen(labels, labels)
    tx, schedules = opt.make_optimizer(
        config.optimizer.to_dict(), config.train.steps, trainable_labels
    )
    ema_decay = config.optimizer.ema_decay or None
    init_fn, abstract_state, state_sh = st.make_state_fns(
        model, tx, labels, mesh, rules, ema=ema_decay is not None, boxed_params=boxed
    )
    return TrainSetup(
        model=model,
        mesh=mesh,
        rules=rules,
        labels=labels,
        tx=tx,
        schedules=schedules,
        ema_decay=ema_decay,
        init_fn=init_fn,
        abstract_state=sharding.with_shardings(abstract_state, state_sh),
        state_shardings=state_sh,
        boxed_params=boxed,
    )


def abstract_batch(
    spec: transforms.ObservationSpec, batch_size: int, mesh: Mesh | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch of `spec` as abstract arrays (sharded over `mesh` if given)."""
    batch_sharding = sharding.batch_sharding(mesh) if mesh is not None else None
    return {
        k: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=batch_sharding)
        for k, (shape, dtype) in spec.example_spec().items()
    }


def device_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A host's batch without its bookkeeping keys, assembled into global arrays on `mesh`."""
    return sharding.host_batch_to_global(
        {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}, mesh
    )


def jit_train_step(config: ml_collections.ConfigDict, setup: TrainSetup):
    """The jitted train step (state donated, state kept in its shardings); call it inside the
    run's logical axis rules and mesh."""
    return jax.jit(
        steps.make_train_step(
            setup.model,
            setup.tx,
            setup.labels,
            config.train.seed,
            config.optimizer.grad_accum_steps,
            setup.ema_decay,
        ),
        donate_argnums=0,
        out_shardings=(setup.state_shardings, None),
    )


def lower_train_step(config: ml_collections.ConfigDict, mesh: Mesh, batch_size: int | None = None):
    """The full train step of `config` lowered ahead of time with abstract inputs on `mesh`
    (no parameter is allocated). `.compile()` the result to get the compiler's memory analysis."""
    setup = train_setup(config, mesh)
    spec = observation_spec(setup.model_config, config.data)
    batch = abstract_batch(spec, batch_size or config.data.batch_size, mesh)
    with nn.logical_axis_rules(setup.rules), jax.set_mesh(mesh):
        return jit_train_step(config, setup).lower(setup.abstract_state, batch)
