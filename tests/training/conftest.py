"""A tiny LIBERO-layout dataset and tokenizer written at test time, and a tiny training config."""

import os

import numpy as np
import pytest


TEXTS = ("push the red block", "open the drawer")


def _episode(length: int, ep: int) -> dict:
    rng = np.random.RandomState(ep)
    steps = []
    for t in range(length):
        steps.append(
            {
                "observation": {
                    "image": rng.randint(0, 255, (32, 32, 3), dtype=np.uint8),
                    "wrist_image": rng.randint(0, 255, (32, 32, 3), dtype=np.uint8),
                    "state": rng.normal(size=8).astype(np.float32),
                    "joint_state": np.zeros(7, np.float32),
                },
                "action": rng.normal(size=7).astype(np.float32),
                "discount": 1.0,
                "reward": float(t == length - 1),
                "is_first": t == 0,
                "is_last": t == length - 1,
                "is_terminal": t == length - 1,
                "language_instruction": TEXTS[ep % 2],
            }
        )
    return {"steps": steps, "episode_metadata": {"file_path": f"/sim/{ep}"}}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from data_pipelines.sources import libero
    from f1_common.tokenizer import train_tokenizer

    root = os.fspath(tmp_path_factory.mktemp("train_data"))
    train = libero.write_dataset(root, "tiny_train", [_episode(12, i) for i in range(4)], (32, 32))
    held_out = libero.write_dataset(
        root, "tiny_eval", [_episode(10, 10 + i) for i in range(2)], (32, 32)
    )
    tokenizer = train_tokenizer(list(TEXTS) * 4, os.path.join(root, "tok.model"), 40)
    return {"train": train, "eval": held_out, "tokenizer": tokenizer, "stats": root}


@pytest.fixture(scope="session")
def tiny_init(tiny_data, tmp_path_factory):
    """The tiny model's initial parameters (train.seed 42, as a fresh run makes them) as a
    parameter checkpoint. Runs that start from it (`init.params_path`) compile only their step:
    the random initialisation is the slowest program to compile on CPU."""
    import jax

    from f1_jax.models.f1 import F1
    from f1_jax.models.sizes import model_config_from
    from f1_jax.training import checkpoints, state
    from train_fixtures import tiny_config

    model = F1(model_config_from(tiny_config(tiny_data).model))
    params = jax.jit(lambda k: state.init_params(model, k))(jax.random.key(42))
    path = os.fspath(tmp_path_factory.mktemp("tiny_init") / "params")
    checkpoints.save_params(path, params)
    return path
