"""The train state and its sharded initialisation.

Parameters are created directly in their shards: `jax.jit(init, out_shardings=...)` with the
shardings derived from the parameters' logical axis names, so no host ever holds the whole model.
"""

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from f1_jax.models.f1 import F1, example_batch
from f1_jax.training import optimizer as opt
from f1_jax.training import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # the 'params' collection, fp32
    opt_state: Any  # optimizer state over the trainable parameters only
    ema_params: Any  # exponential moving average of params, or None


def abstract_params(model: F1) -> Any:
    """Boxed (logically partitioned) parameter shapes, without allocating anything."""
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_batch(model.config, 1)
    )
    return jax.eval_shape(model.init, jax.random.key(0), batch, jax.random.key(0))["params"]


def init_params(model: F1, rng: jax.Array) -> Any:
    """Concrete fp32 parameters (call under jit with out_shardings to create them sharded)."""
    batch = jax.tree.map(jnp.asarray, example_batch(model.config, 1))
    return nn.unbox(model.init(rng, batch, rng))["params"]


def make_state_fns(
    model: F1,
    tx: optax.GradientTransformation,
    labels: Any,
    mesh: Mesh,
    rules,
    ema: bool,
    boxed_params: Any = None,
) -> tuple[Callable[..., TrainState], TrainState, Any]:
    """Returns (init_fn, abstract_state, state_shardings).

    init_fn(rng) is jitted with out_shardings=state_shardings; init_fn(rng, params) builds the
    state around given parameters without compiling their random initialisation (slow to compile
    on CPU: a random-bits program per parameter). abstract_state is the restore target for
    checkpoints.
    """
    boxed = (
        abstract_params(model) if boxed_params is None else boxed_params
    )  # an eval_shape of init
    with nn.logical_axis_rules(rules):
        param_sh = sharding.param_shardings(boxed, mesh, rules)
    param_sh = nn.unbox(param_sh)

    def init_state(rng: jax.Array, params: Any | None = None) -> TrainState:
        params = init_params(model, rng) if params is None else params
        trainable, _ = opt.split_frozen(params, labels)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(trainable),
            ema_params=params if ema else None,
        )

    abstract_state = jax.eval_shape(init_state, jax.random.key(0))
    opt_sh = _like_params(abstract_state.opt_state, boxed, param_sh, mesh)
    state_sh = TrainState(
        step=sharding.replicated(mesh),
        params=param_sh,
        opt_state=opt_sh,
        ema_params=param_sh if ema else None,
    )
    init_fn = jax.jit(init_state, out_shardings=state_sh)
    return init_fn, abstract_state, state_sh


def _path(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _like_params(tree: Any, boxed_params: Any, param_sh: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer-state tree: a leaf whose key path ends with a parameter's path
    (Adam's mu and nu) and has its shape gets that parameter's sharding; others are replicated."""
    by_path = {}
    for (path, sh), leaf in zip(
        jax.tree_util.tree_flatten_with_path(param_sh)[0], jax.tree.leaves(nn.unbox(boxed_params))
    ):
        by_path[_path(path)] = (sh, leaf.shape)

    def pick(path, leaf):
        keys = _path(path)
        for start in range(len(keys)):
            match = by_path.get(keys[start:])
            if match is not None and match[1] == leaf.shape:
                return match[0]
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
