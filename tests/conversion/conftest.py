"""Foreign checkpoints in their exact layouts, built at test time at tiny sizes."""

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from conversion import config_io
from f1_common.model_config import level_ids
from f1_jax.models.sizes import get_model_config
from tests.conversion import official_layout as layout

NP = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "int64": np.int64}


def random_tensors(keys: dict, seed: int) -> dict[str, np.ndarray]:
    """Random values in each key's official dtype (bf16 values are exact in fp32)."""
    rng = np.random.RandomState(seed)
    return {
        k: rng.normal(0, 0.5, shape).astype(np.float32).astype(NP[dtype])
        for k, (shape, dtype) in keys.items()
    }


@pytest.fixture(scope="session")
def tiny_config():
    return get_model_config("tiny")


@pytest.fixture(scope="session")
def official_tiny(tmp_path_factory, tiny_config):
    """A tiny official-layout F1 checkpoint: model.safetensors (as the official save writes it,
    expert lm_heads included) + config.json."""
    directory = tmp_path_factory.mktemp("official_f1")
    keys = layout.saved_file_keys(layout.tiny_sizes(tiny_config))
    tensors = random_tensors(keys, seed=0)
    tensors["model.lvl_1L"] = level_ids(tiny_config.foresight.patch_nums)[None].astype(np.int64)
    save_file(tensors, str(directory / "model.safetensors"))
    with open(directory / "config.json", "w") as f:
        json.dump(config_io.to_official(tiny_config), f)
    return directory
