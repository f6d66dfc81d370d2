"""The `debug` recipe's hooks (`config.hooks = "builtin_task.hooks"`), run by the launcher.

before_training: writes the simulator's expert episodes, the tokenizer, the debug VQ-VAE and the
grounding-pretrained prefix (each once, cached under `sim.data_dir`) and points the config at
them. after_training: closed-loop evaluation in the simulator (process 0), into
WORKDIR/evaluation.
"""

import os

import jax
import ml_collections

from builtin_task import evaluate, prepare


def before_training(config: ml_collections.ConfigDict, workdir: str) -> None:
    prepare.prepare(config, workdir)


def after_training(config: ml_collections.ConfigDict, workdir: str, metrics: dict) -> None:
    if config.sim.evaluate_episodes and jax.process_index() == 0:
        evaluate.run(
            os.path.join(workdir, "checkpoints"),
            config.sim.evaluate_episodes,
            os.path.join(workdir, "evaluation"),
        )
