"""The tiny training config shared by the training tests (a plain module: `conftest` is not
importable by name when several test folders have one)."""

import os

import numpy as np

from configs.base import base_config
from f1_jax.models.f1 import F1
from f1_jax.models.sizes import model_config_from
from f1_jax.training import checkpoints, setup


def tiny_config(data: dict, steps: int = 4, mesh=(1, 1, 1)):
    c = base_config()
    c.model.size = "tiny"
    c.model.precision = "parity"
    c.model.remat_policy = "none"
    c.model.chunk_size = 4
    c.model.foresight_training = "teacher_forcing"  # smaller graph, faster compiles
    c.data.datasets = [{"name": "tiny", "source": "libero", "path": data["train"]}]
    c.data.tokenizer_path = data["tokenizer"]
    c.data.batch_size = 8
    c.data.num_workers = 0
    c.data.max_token_len = 8
    c.data.stats_dir = data["stats"]
    c.mesh.shape = mesh
    c.mesh.num_devices = int(np.prod(mesh))
    c.optimizer.lr = {"vision": 1e-3, "und": 1e-3, "gen": 1e-3, "act": 1e-3}
    c.optimizer.frozen = ("vision", "vqvae")
    c.train.steps = steps
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.eval_every = 1000
    c.train.async_checkpoints = False
    return c


def frame_codes_setup(data: dict, stats_dir: str):
    """(data config with frame codes on, the tiny model, its VQ-VAE parameters as host arrays
    from the `tiny_init` checkpoint named by $F1_TEST_INIT) for the frame-code store tests."""
    model_config = model_config_from(tiny_config(data).model)
    config = tiny_config(data)
    config.data.frame_codes = True
    config.data.stats_dir = stats_dir
    vqvae = checkpoints.restore_on_host(os.environ["F1_TEST_INIT"])["params"]["vqvae"]
    return setup.data_config_from(config.data, model_config), F1(model_config), vqvae
