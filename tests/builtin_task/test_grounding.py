"""Grounding pretraining of the debug model's prefix (builtin_task.grounding)."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from builtin_task import grounding, prepare, writer
from builtin_task import labels as sim_labels
from builtin_task.prepare import all_instructions
from configs import debug
from f1_common import transforms
from f1_jax.models.f1 import F1, observation_spec
from f1_jax.models.sizes import model_config_from
from f1_common.tokenizer import Tokenizer, train_tokenizer
from f1_jax.training import checkpoints, state


@pytest.fixture(scope="module")
def debug_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    tokenizer = train_tokenizer(all_instructions() * 4, os.path.join(root, "tok.model"), 96)
    config = debug.get_config()
    model_config = model_config_from(config.model)
    return config, F1(model_config), tokenizer, Tokenizer(tokenizer, config.data.max_token_len)


def _examples(model, text, episodes=3):
    size = model.config.siglip.image_size
    spec = observation_spec(model.config)
    return grounding.collect_grounding_examples(
        writer.episode_seeds(0, episodes),
        [writer.episode_task(i) for i in range(episodes)],
        grounding.prefix_preprocessor(text, spec),
        cameras=spec.cameras,
        side=size // model.config.siglip.patch_size,
        image_size=64,
        every=3,
    )


def test_examples_carry_patch_labels_for_every_camera_slot(debug_setup):
    _, model, _, text = debug_setup
    ex = _examples(model, text)
    n = len(ex["labels"])
    patches = model.config.siglip.num_patches
    assert ex["labels"].shape == (n, len(transforms.CAMERAS) * patches)
    assert ex["images"].shape[:2] == (n, len(transforms.CAMERAS))
    secondary = transforms.CAMERAS.index("secondary")
    assert not ex["image_mask"][:, secondary].any()
    assert np.all(ex["labels"][:, secondary * patches : (secondary + 1) * patches] == 0)
    assert np.all((ex["labels"] == sim_labels.NAMED_BLOCK).any(axis=1))  # top view shows it


def test_pretraining_learns_and_touches_only_the_prefix(debug_setup):
    config, model, _, text = debug_setup
    ex = _examples(model, text)
    params = jax.jit(lambda k: state.init_params(model, k))(jax.random.key(0))
    head = np.zeros((model.config.und.width, sim_labels.NUM_CLASSES), np.float32)
    batch = {k: v[:16] for k, v in ex.items()}
    before, _ = grounding.grounding_loss(model, params, head, batch)
    np.testing.assert_allclose(float(before), np.log(sim_labels.NUM_CLASSES), rtol=1e-5)
    new, metrics = grounding.pretrain_understanding(
        model, params, ex, steps=40, batch_size=16, learning_rate=3e-3
    )
    assert metrics["loss"] < 0.8 * float(before)
    assert set(metrics) == {"loss", "block_recall", "block_precision"}
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new)
    assert changed["siglip"]["projector"]["kernel"]
    assert changed["embedder"]["input_embedding"]
    stack = changed["stack"]
    und = [v for k, v in jax.tree_util.tree_leaves_with_path(stack) if "und" in str(k)]
    others = [v for k, v in jax.tree_util.tree_leaves_with_path(stack) if "und" not in str(k)]
    assert und and any(und)
    assert others and not any(others), "generation/action experts must not change"


def test_debug_recipe_grounds_once_per_recipe(debug_setup, tmp_path, monkeypatch):
    """prepare.prepare_grounding: trains and saves full F1 params on first use (path keyed
    by the recipe), loads back into the model's tree, and is reused without training again."""
    config, model, tokenizer, _ = debug_setup
    config = config.copy_and_resolve_references()
    config.sim.grounding_steps, config.sim.grounding_episodes = 2, 1
    config.sim.grounding_batch_size = 4
    path = prepare.prepare_grounding(config, str(tmp_path), tokenizer)
    assert os.path.isdir(path) and os.path.exists(path + ".json")
    abstract = nn.unbox(state.abstract_params(model))
    loaded = checkpoints.load_params(path, abstract)
    assert jax.tree.structure(loaded) == jax.tree.structure(abstract)
    monkeypatch.setattr(
        grounding, "pretrain_understanding", lambda *a, **k: pytest.fail("trained twice")
    )
    assert prepare.prepare_grounding(config, str(tmp_path), tokenizer) == path
    config.sim.grounding_steps = 3
    with pytest.raises(pytest.fail.Exception, match="trained twice"):
        prepare.prepare_grounding(config, str(tmp_path), tokenizer)
