"""Synthetic exports: random parameters of a named size written the way `python -m conversion
export` writes them (official keys and layouts, fp32 or the released dtypes), plus config.json,
norm_stats.json and a small tokenizer. For the runtime's tests and the latency benchmark, and to
try a robot's serving path before any weights exist.

Random values, not the model's init: compiling F1's init costs tens of seconds on a small CPU.
Scales follow fan-in (so attention is far from uniform and code logits are well separated) and
norm scales sit near their identity.
"""

import dataclasses
import json
import math
import os
import shutil

import numpy as np

from conversion import config_io, engine, tables
from conversion.io import write_safetensors_streaming
from f1_common import transforms
from f1_common.export_layout import (
    CONFIG_FILE,
    MODEL_FILE,
    NORM_STATS_FILE,
    TOKENIZER_FILE,
    write_manifest,
)
from f1_common.tokenizer import train_tokenizer
from f1_jax.models.f1 import F1Config, observation_spec
from f1_jax.models.sizes import get_model_config

STATE_DIM, ACTION_DIM = 7, 7
INSTRUCTIONS = ("put the red block on the blue square", "open the top drawer", "stack the cups")
CAMERAS = {"primary": "image", "secondary": None, "wrist": "wrist_image"}


@dataclasses.dataclass(frozen=True)
class Export:
    directory: str
    config: F1Config  # the JAX config (parity precision, greedy foresight)
    params: dict[str, np.ndarray]  # fp32 values by "/"-path


def model_config(size: str, precision: str = "parity", top_k: int = 1) -> F1Config:
    """The named size with greedy foresight (top_k 1) unless told otherwise."""
    config = get_model_config(size, precision=precision)
    return dataclasses.replace(config, foresight=dataclasses.replace(config.foresight, top_k=top_k))


def _fan_in(path: str, shape: tuple[int, ...]) -> int:
    """Inputs summed by one output of a kernel (after dropping a scanned layer axis)."""
    if path.startswith(("stack/layers/", "siglip/layers/")):
        shape = shape[1:]
    leaf = path.split("/")[-1]
    if leaf == "q_einsum":  # [N, D, H]
        return shape[1]
    if leaf == "kv_einsum":  # [2, K, D, H]
        return shape[2]
    if leaf == "attn_vec_einsum":  # [N, H, D]
        return shape[0] * shape[1]
    if leaf == "gating_einsum":  # [2, D, F]
        return shape[1]
    return math.prod(shape[:-1])  # linear [F, D], Dense [in, out], conv [.., in, out]


def random_params(config: F1Config, seed: int = 0) -> dict[str, np.ndarray]:
    """fp32 values for every parameter of F1(config), by "/"-path."""
    rng = np.random.default_rng(seed)
    params = {}
    for path, spec in sorted(engine.abstract_params(config).items()):
        shape, leaf = tuple(spec.shape), path.split("/")[-1]
        normal = rng.standard_normal(shape)
        if leaf == "scale":  # RMSNorm multiplies by (1 + scale); Layer/GroupNorm by scale
            value = 0.1 * normal + (0.0 if path.startswith("stack/") else 1.0)
        elif leaf == "bias":
            value = 0.1 * normal
        elif path == "vqvae/quantize/embedding":
            value = normal
        elif path == "embedder/input_embedding":
            value = normal / math.sqrt(shape[-1])  # the model multiplies by sqrt(width)
        elif leaf in ("kernel", "linear") or leaf.endswith("_einsum"):
            value = normal / math.sqrt(_fan_in(path, shape))
        else:  # position / level / SOS tables, the mask embedding
            value = 0.2 * normal
        params[path] = value.astype(np.float32)
    return params


def _stats(dim: int, rng: np.random.Generator) -> dict:
    mean = rng.uniform(-1, 1, dim)
    std = rng.uniform(0.1, 2.0, dim)
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "q01": (mean - 2 * std).tolist(),
        "q99": (mean + 2 * std).tolist(),
        "min": (mean - 3 * std).tolist(),
        "max": (mean + 3 * std).tolist(),
        "count": 100,
    }


def write_export(
    directory: str,
    config: F1Config,
    params: dict[str, np.ndarray],
    tokenizer: str,
    official_dtypes: bool = False,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
) -> str:
    """model.safetensors (official keys, fp32 or with official_dtypes the released file's bf16 /
    fp32 mix) + config.json + norm_stats.json + tokenizer.

    state_dim, action_dim: the robot's widths in the statistics (LIBERO: 8 and 7); at most the
    model's padded widths."""
    os.makedirs(directory, exist_ok=True)
    abstract = engine.abstract_params(config)
    vqvae_paths = [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]
    # fp32 in every row, as conversion.verification.verify_roundtrip does: parity needs the exact values.
    rows = tables.f1_table(config, vqvae_paths)
    if not official_dtypes:
        rows = [dataclasses.replace(r, dtype="float32") for r in rows]
    plan = engine.plan_export(
        rows, {k: v.shape for k, v in abstract.items()}, tables.f1_extras(config)
    )
    write_safetensors_streaming(
        os.path.join(directory, MODEL_FILE),
        [(i.key, i.shape, i.dtype) for i in plan],
        engine.export_tensors(plan, params, config, {}, progress=False),
    )
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config_io.to_official(config), f, indent=1)
    rng = np.random.default_rng(7)
    spec = observation_spec(config, {"max_token_len": 16})
    dataset = {
        "state": _stats(state_dim, rng),
        "action": _stats(action_dim, rng),
        "norm_mode": "mean_std",
        "cameras": CAMERAS,
    }
    contract = transforms.DeploymentContract(spec, {"sim": dataset}, "sim", tokenizer)
    with open(os.path.join(directory, NORM_STATS_FILE), "w") as f:
        json.dump(contract.to_json(), f, indent=1)
    shutil.copy(tokenizer, os.path.join(directory, TOKENIZER_FILE))
    write_manifest(directory)
    return directory


def make_tokenizer(directory: str) -> str:
    return train_tokenizer(list(INSTRUCTIONS) * 4, os.path.join(directory, "tok.model"), 64)


def observations(config: F1Config, count: int, seed: int = 0) -> list[dict]:
    """Robot observations: uint8 cameras larger than the model's sizes (so the contract's
    resizes run), a state in robot units, one instruction; the secondary camera is absent."""
    rng = np.random.default_rng(seed)
    side = config.vqvae.image_size
    shape = (side + side // 4, side + side // 2, 3)
    out = []
    for _ in range(count):
        out.append(
            {
                "primary": rng.integers(0, 256, shape, dtype=np.uint8),
                "wrist_image": rng.integers(0, 256, shape, dtype=np.uint8),
                "state": rng.normal(0, 1, STATE_DIM).astype(np.float32),
                "instruction": INSTRUCTIONS[0],
            }
        )
    return out
