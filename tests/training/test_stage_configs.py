"""Every recipe builds; the full-size train step lowers (stage 1, teacher forcing) and compiles
(stage 2, sampled foresight: the costliest step) on a simulated 8-device FSDP mesh with abstract
inputs, without allocating the 3.5 B parameters. benchmarks/bench_aot_memory.py compiles every
recipe on a 64-device mesh and records the compiler's memory figures in BENCHMARKS.md."""

import flax.linen as nn
import pytest

from f1_jax import recipes
from f1_jax.models.f1 import F1, observation_spec
from f1_jax.models.sizes import model_config_from
from f1_jax.training import optimizer as opt
from f1_jax.training import setup, sharding
from f1_jax.training import state as st


# What a recipe needs from its user before it builds.
INPUTS = {
    "finetune": {
        "path": "/data/my_robot/1.0.0",
        "rlds": '{"cameras": {"primary": "image"}, "state": [{"key": "observation/state"}], '
        '"action": [{"key": "action"}]}',
    }
}


@pytest.mark.parametrize("name", recipes.RECIPES)
def test_recipe_builds(name):
    config = recipes.load_config(name)
    for field, value in INPUTS.get(name, {}).items():
        config.data[field] = value
    model_config = model_config_from(config.model)
    if config.hooks:
        return  # the debug recipe's data paths exist only after its hooks prepared them
    setup.data_config_from(config.data, model_config)
    labels = opt.param_labels(
        nn.unbox(st.abstract_params(F1(model_config))), config.optimizer.frozen
    )
    opt.make_optimizer(
        config.optimizer.to_dict(), config.train.steps, opt.split_frozen(labels, labels)[0]
    )


@pytest.mark.parametrize("name", ["stage1", "stage2"])
def test_full_size_train_step_lowers_and_compiles(name):
    config = recipes.load_config(name)
    lowered = setup.lower_train_step(config, sharding.make_mesh((1, 8, 1)), batch_size=8)
    if name == "stage2":
        memory = lowered.compile().memory_analysis()
        # 3.55 B fp32 params + Adam moments, FSDP over 8 devices: > 5 GB of arguments per device.
        assert memory.argument_size_in_bytes > 5e9


def test_debug_train_step_lowers_with_its_narrow_state_and_action_widths():
    """abstract_batch follows the model's pad widths (8-dim state, 7-dim actions for `debug`)."""
    config = recipes.load_config("debug")
    model_config = model_config_from(config.model)
    batch = setup.abstract_batch(observation_spec(model_config, config.data), 8)
    assert batch["state"].shape == (8, model_config.action.state_dim) == (8, 8)
    assert batch["actions"].shape[-1] == model_config.action.action_dim == 7
    setup.lower_train_step(config, sharding.make_mesh((8, 1, 1)), batch_size=8)
