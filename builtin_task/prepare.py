"""Data and pretrained parts for the `debug` recipe, generated on first use.

`prepare(config, workdir)` writes expert episodes of the simulated table (training seeds and
held-out seeds) as LIBERO-schema RLDS, trains a small SentencePiece tokenizer on every instruction
the task family can produce, (with `sim.vqvae_steps`) the model's VQ-VAE image tokenizer on
expert frames and (with `sim.grounding_steps`) the starting weights of SigLIP + the understanding
expert, then points the config at all of them. A second call finds everything in place.

The full-size F1 starts from a released VAR VQ-VAE and from PaliGemma; the debug model has
neither. A random VQ-VAE tokenizes every frame into noise, and a random prefix does not learn to
find the named object within the recipe's budget, so the recipe pretrains both first.
"""

import hashlib
import itertools
import json
import logging
import os

import jax
import ml_collections

from builtin_task import grounding, render, tasks, vqvae_training, writer
from f1_jax.models.f1 import F1, observation_spec
from f1_jax.models.sizes import model_config_from
from f1_common.tokenizer import Tokenizer, train_tokenizer
from f1_jax.training import checkpoints, state

log = logging.getLogger("f1_jax")


def all_instructions() -> list[str]:
    """Every instruction the task family can produce (the tokenizer's training text)."""
    colors = sorted(render.COLORS)
    texts = []
    for template in tasks.TEMPLATES.values():
        for block, target in itertools.product(colors, colors):
            texts.append(template.format(block=block, target=target))
    return sorted(set(texts))


def prepare(config: ml_collections.ConfigDict, workdir: str) -> None:
    sim = config.sim
    data_dir = sim.data_dir or os.path.join(workdir, "data")
    train = writer.generate_dataset(
        data_dir, "f1_sim_train", sim.train_episodes, seed=sim.seed, image_size=sim.image_size
    )
    held_out = writer.generate_dataset(
        data_dir, "f1_sim_eval", sim.eval_episodes, seed=sim.seed + 1, image_size=sim.image_size
    )
    tokenizer = os.path.join(data_dir, "sim_tokenizer.model")
    if not os.path.exists(tokenizer):
        train_tokenizer(all_instructions() * 4, tokenizer, vocab_size=sim.vocab_size)
    if sim.get("vqvae_steps", 0) and not config.init.vqvae_path:
        config.init.vqvae_path = prepare_vqvae(config, data_dir)
    if sim.get("grounding_steps", 0) and not config.init.params_path:
        config.init.params_path = prepare_grounding(config, data_dir, tokenizer)
    config.data.datasets = [{"name": "f1_sim", "source": "libero", "path": train}]
    config.data.tokenizer_path = tokenizer
    config.eval_data = ml_collections.ConfigDict(config.data.to_dict())
    config.eval_data.datasets = [{"name": "f1_sim", "source": "libero", "path": held_out}]


def prepare_vqvae(config: ml_collections.ConfigDict, data_dir: str) -> str:
    """Trains the model's VQ-VAE on expert frames of the training seeds, once; returns its path.

    The directory name carries a hash of everything that shapes the result, so a changed model
    size or recipe trains a new tokenizer instead of loading a mismatched one.
    """
    sim = config.sim
    vq = model_config_from(config.model).vqvae
    recipe = {
        "vqvae": repr(vq),
        "steps": sim.vqvae_steps,
        "batch_size": sim.vqvae_batch_size,
        "learning_rate": sim.vqvae_lr,
        "episodes": sim.vqvae_episodes,
        "seed": sim.seed,
        "image_size": sim.image_size,
    }
    path = _recipe_path(data_dir, "sim_vqvae", recipe)
    if os.path.exists(path):
        return path
    first_seed = writer.episode_seeds(sim.seed, 1)[0]
    log.info("Training the debug VQ-VAE on %d expert episodes (once).", sim.vqvae_episodes)
    frames = vqvae_training.collect_sim_frames(
        sim.vqvae_episodes, first_seed, image_size=sim.image_size, frame_size=vq.image_size
    )
    params, metrics = vqvae_training.train_vqvae(
        vq,
        frames,
        steps=sim.vqvae_steps,
        batch_size=sim.vqvae_batch_size,
        learning_rate=sim.vqvae_lr,
        seed=sim.seed,
    )
    vqvae_training.save_vqvae(path, params)
    _write_record(path, recipe, metrics)
    log.info("VQ-VAE ready at %s: %s", path, json.dumps(metrics))
    return path


def _recipe_path(data_dir: str, prefix: str, recipe: dict) -> str:
    """Where a pretrained artifact lives: its name carries a hash of everything that shapes it,
    so a changed model size or recipe trains a new one instead of loading a mismatched one."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(data_dir, f"{prefix}_{key}")


def _write_record(path: str, recipe: dict, metrics: dict) -> None:
    """`PATH.json` beside a pretrained artifact: the recipe it was made with and its metrics."""
    with open(path + ".json", "w") as f:
        json.dump({"recipe": recipe, "metrics": metrics}, f, indent=2)


def prepare_grounding(config: ml_collections.ConfigDict, data_dir: str, tokenizer: str) -> str:
    """Grounding-pretrains SigLIP + the understanding expert on expert rollouts of the training
    seeds, once (`builtin_task.grounding`); returns the full F1 parameters' path, which the
    trainer starts from (`init.params_path`)."""
    sim = config.sim
    model_config = model_config_from(config.model)
    with open(tokenizer, "rb") as f:
        tokenizer_hash = hashlib.sha256(f.read()).hexdigest()
    recipe = {
        "model": repr(model_config),
        "steps": sim.grounding_steps,
        "batch_size": sim.grounding_batch_size,
        "learning_rate": sim.grounding_lr,
        "episodes": sim.grounding_episodes,
        "seed": sim.seed,
        "init_seed": config.train.seed,
        "image_size": sim.image_size,
        "max_token_len": config.data.max_token_len,
        "tokenizer": tokenizer_hash,
    }
    path = _recipe_path(data_dir, "sim_grounding", recipe)
    if os.path.exists(path):
        return path
    log.info("Grounding pretraining on %d expert episodes (once).", sim.grounding_episodes)
    n = sim.grounding_episodes
    spec = observation_spec(model_config, config.data)
    examples = grounding.collect_grounding_examples(
        writer.episode_seeds(sim.seed, n),
        [writer.episode_task(i) for i in range(n)],
        grounding.prefix_preprocessor(Tokenizer(tokenizer, spec.max_token_len), spec),
        cameras=spec.cameras,
        side=model_config.siglip.image_size // model_config.siglip.patch_size,
        image_size=sim.image_size,
    )
    model = F1(model_config)
    params = jax.jit(lambda key: state.init_params(model, key))(jax.random.key(config.train.seed))
    params, metrics = grounding.pretrain_understanding(
        model,
        params,
        examples,
        steps=sim.grounding_steps,
        batch_size=sim.grounding_batch_size,
        learning_rate=sim.grounding_lr,
        seed=sim.seed,
    )
    checkpoints.save_params(path, params)
    _write_record(path, recipe, metrics)
    log.info("Grounded starting weights at %s: %s", path, json.dumps(metrics))
    return path
