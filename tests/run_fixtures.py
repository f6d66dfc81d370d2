"""A tiny simulator dataset, tokenizer and run checkpoint (built once per session), shared by
the policy, evaluation, export and serving tests through tests/conftest.py.

The checkpoint is written with `RunCheckpoints.save` exactly as `trainer.train` writes it (train
state with Adam state + JSON record with config and statistics) from random parameters of the
model's shapes: compiling a train step (or even the init) would cost most of this suite's time
budget on a small CPU machine.
"""

import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from builtin_task import writer
from builtin_task.prepare import all_instructions
from configs.base import base_config
from data_pipelines import dataset_statistics
from f1_jax.models.f1 import F1
from f1_jax.models.sizes import model_config_from
from f1_common.tokenizer import train_tokenizer
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import optimizer as opt
from f1_jax.training import setup
from f1_jax.training import state as st
from inference.jax_policy import Policy


def policy_config(data_dir: str, train_path: str, tokenizer: str):
    c = base_config()
    c.model.size = "tiny"
    c.model.precision = "parity"
    c.model.remat_policy = "none"
    c.model.chunk_size = 4
    c.data.datasets = [
        {"name": "sim_a", "source": "libero", "path": train_path},
        {"name": "sim_b", "source": "libero", "path": train_path, "norm_mode": "quantile"},
    ]
    c.data.tokenizer_path = tokenizer
    c.data.batch_size = 8
    c.data.num_workers = 0
    c.data.max_token_len = 16
    c.data.stats_dir = data_dir
    c.mesh.shape = (1, 1, 1)
    c.mesh.num_devices = 1
    c.optimizer.frozen = ("vision", "vqvae")
    c.sim = ml_collections.ConfigDict(
        {"image_size": 32}
    )  # recorded size of the generated data: evaluation renders at it
    return c


def write_checkpoint(config, workdir: str, step: int = 3) -> str:
    model_config = model_config_from(config.model)
    model = F1(model_config)
    data_config = setup.data_config_from(config.data, model_config)
    # Random values of the right shapes: compiling the model's init would cost ~30 s on CPU.
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype),
        nn.unbox(st.abstract_params(model)),
    )
    labels = opt.param_labels(nn.unbox(st.abstract_params(model)), config.optimizer.frozen)
    trainable_labels, _ = opt.split_frozen(labels, labels)
    tx, _ = opt.make_optimizer(config.optimizer.to_dict(), 10, trainable_labels)
    state = st.TrainState(
        step=np.int32(step),
        params=params,
        opt_state=tx.init(opt.split_frozen(params, labels)[0]),
        ema_params=None,
    )
    record = {
        "config": config.to_json_best_effort(),
        "dataset_statistics": dataset_statistics(data_config),
        "dataset_names": [d.name for d in data_config.datasets],
    }
    run = ckpt.RunCheckpoints(os.path.join(workdir, "checkpoints"), 1, async_save=False)
    run.save(step, state, None, record, force=True)
    run.close()
    return workdir


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory):
    root = os.fspath(tmp_path_factory.mktemp("policy_data"))
    train = writer.generate_dataset(root, "sim_tiny", 3, seed=0, image_size=32, progress=False)
    tokenizer = train_tokenizer(all_instructions() * 4, os.path.join(root, "tok.model"), 96)
    config = policy_config(root, train, tokenizer)
    workdir = write_checkpoint(config, os.path.join(root, "run"))
    return {"workdir": workdir, "config": config, "data": train}


@pytest.fixture(scope="session")
def policy(sim_run):
    return Policy.load(sim_run["workdir"])
