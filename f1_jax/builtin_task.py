"""Data for the `debug` recipe: the built-in simulated task, generated on first use.

`prepare(config, workdir)` writes expert episodes of the simulated table (training seeds and
held-out seeds) as LIBERO-schema RLDS, trains a small SentencePiece tokenizer on every instruction
the task family can produce, then points the config at both. A second call finds everything in
place.
"""

import itertools
import os

import ml_collections

from data_pipelines.sim import render, tasks, writer
from data_pipelines.tokenizer import train_tokenizer


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
    config.data.datasets = [{"name": "f1_sim", "source": "libero", "path": train}]
    config.data.tokenizer_path = tokenizer
    config.eval_data = ml_collections.ConfigDict(config.data.to_dict())
    config.eval_data.datasets = [{"name": "f1_sim", "source": "libero", "path": held_out}]
