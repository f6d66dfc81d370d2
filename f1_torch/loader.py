"""An exported model directory -> F1: strict, tensor by tensor.

The export (`python -m conversion export`) writes the official F1 `model.safetensors`: PyTorch
layouts (Linear [out, in], Conv [O, I, kh, kw]) under the official key names, which are the
names of this package's modules behind a prefix (below). Every key of the file must be either a
weight of the model or one of the official tensors inference does not need (KNOWN_UNUSED); every
weight must be in the file with its shape. All problems are reported in one error.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from safetensors import safe_open

from f1_common.export_layout import MODEL_FILE, verify_manifest
from f1_common.model_config import F1Config, level_ids, read_config
from f1_common.official_config import key_problems
from f1_torch.model import F1

WEIGHTS_FILE = MODEL_FILE
P = "model.paligemma_with_expert."

# Official prefix -> prefix of our module names. Earlier rows win where several official names
# exist for one tensor (the tied word embedding, transformers-5's SigLIP names, the VQ-VAE that
# the original registers twice): the later ones are accepted in their place.
PREFIXES: tuple[tuple[str, str], ...] = (
    (P + "paligemma.vision_tower.vision_model.", "siglip."),
    (P + "paligemma.vision_tower.", "siglip."),
    (P + "paligemma.multi_modal_projector.linear.", "projector."),
    (P + "paligemma.language_model.lm_head.", "embed_tokens."),
    (P + "paligemma.language_model.model.embed_tokens.", "embed_tokens."),
    (P + "paligemma.language_model.model.", "stack.und."),
    (P + "gemma_wm_expert.model.", "stack.gen."),
    (P + "gemma_expert.model.", "stack.act."),
    ("model.vae.", "vae."),
    ("vae.", "vae."),
)
# Top-level F1FlowMatching modules (`model.<name>...`) and where they live here.
MODULES = {
    **{
        name: "foresight."
        for name in (
            "temporal_conv",
            "wm_embeddings",
            "wm_hist_pos_embs",
            "wm_sos_token_embs",
            "wm_cond_pos_embs",
            "wm_output_position_embedding",
            "lvl_embed",
            "wm_out_layer_norm",
            "wm_out_proj",
            "mask_embedding",
        )
    },
    **{
        name: "action_io."
        for name in (
            "state_proj",
            "action_in_proj",
            "action_out_proj",
            "action_time_mlp_in",
            "action_time_mlp_out",
        )
    },
}
# Official tensors that inference does not read: the level table (rebuilt from the config), the
# VQ-VAE's code-usage statistics, the experts' unused vocabulary heads and embeddings.
KNOWN_UNUSED = (
    "model.lvl_1L",
    "model.vae.quantize.ema_vocab_hit_SV",
    "vae.quantize.ema_vocab_hit_SV",
    P + "gemma_wm_expert.lm_head.weight",
    P + "gemma_expert.lm_head.weight",
    P + "gemma_wm_expert.model.embed_tokens.weight",
    P + "gemma_expert.model.embed_tokens.weight",
)
# lerobot policies save their normalisation statistics beside the weights; ours travel in
# norm_stats.json instead.
UNUSED_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


class LoadError(ValueError):
    """The export does not fit the model; the message lists every problem."""


def our_name(key: str) -> tuple[str | None, int]:
    """Official key -> (our parameter name, priority: lower wins among aliases), or (None, 0)."""
    for priority, (official, ours) in enumerate(PREFIXES):
        if key.startswith(official):
            return ours + key[len(official) :], priority
    if key.startswith("model."):
        rest = key[len("model.") :]
        head = rest.split(".")[0]
        if head in MODULES:
            return MODULES[head] + rest, 0
    return None, 0


def official_name(ours: str) -> str:
    """Our parameter name -> its (first) official key, for error messages."""
    for official, prefix in PREFIXES:
        if ours.startswith(prefix):
            return official + ours[len(prefix) :]
    head, _, rest = ours.partition(".")
    return "model." + rest if head in ("foresight", "action_io") else ours


def _is_unused(key: str) -> bool:
    return key in KNOWN_UNUSED or key.startswith(UNUSED_PREFIXES)


def plan_load(
    file_shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], what: str
) -> dict[str, str]:
    """Which file key fills each of our tensors (`expected`: name -> shape).

    Raises:
      LoadError listing every missing, unexpected and mis-shaped key at once.
    """
    chosen: dict[str, tuple[int, str]] = {}
    unexpected = []
    for key in sorted(file_shapes):
        if _is_unused(key):
            continue
        ours, priority = our_name(key)
        if ours is None or ours not in expected:
            unexpected.append(f"{key} {file_shapes[key]}")
            continue
        if ours not in chosen or priority < chosen[ours][0]:
            chosen[ours] = (priority, key)
    missing = [
        f"{official_name(name)} (expected {shape})"
        for name, shape in expected.items()
        if name not in chosen
    ]
    misshaped = [
        f"{key}: expected {expected[name]}, found {file_shapes[key]}"
        for name, (_, key) in sorted(chosen.items())
        if tuple(file_shapes[key]) != tuple(expected[name])
    ]
    if missing or unexpected or misshaped:
        raise LoadError(key_problems(what, "load", missing, unexpected, misshaped))
    return {name: key for name, (_, key) in chosen.items()}


def load_model(
    directory: str | os.PathLike,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    config: F1Config | None = None,
    *,
    attention: str = "eager",
    rope: str = "reciprocal",
    compile: bool = False,
) -> F1:
    """Builds F1(config.json of `directory`, dtype, attention, rope) and fills it from
    model.safetensors; `compile`: then `F1.compile_parts()` (torch.compile).

    Modules are created on the meta device, so host memory holds about one copy of the model
    (in the target dtypes) at the peak. The model is in eval mode without gradients.
    """
    directory = os.fspath(directory)
    config = config or read_config(directory)
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}.")
    verify_manifest(directory)  # a flipped bit is named by file, not loaded silently
    with torch.device("meta"):
        model = F1(config, dtype, attention=attention, rope=rope)
    sd = model.state_dict()
    targets = {name: t.dtype for name, t in sd.items()}
    if model.dtype == torch.bfloat16:
        # The word embedding is looked up, then scaled in fp32: a bf16 table (the released file)
        # is kept as is in bf16 mode (lossless; half the memory of a 257k x 2048 table).
        targets["embed_tokens.weight"] = None
    state = {}
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise LoadError(f"{path} is not a readable safetensors file ({e})") from None
    with handle as f:
        file_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        plan = plan_load(file_shapes, {k: tuple(v.shape) for k, v in sd.items()}, path)
        for name, key in plan.items():
            tensor = f.get_tensor(key)
            target = targets[name]
            if target is None:  # the embedding in bf16 mode
                target = torch.bfloat16 if tensor.dtype == torch.bfloat16 else torch.float32
            state[name] = tensor.to(device=device, dtype=target)
        if "model.lvl_1L" in file_shapes:
            levels = f.get_tensor("model.lvl_1L").numpy()
            if not np.array_equal(levels.reshape(-1), level_ids(config.vqvae.patch_nums)):
                warnings.warn(
                    f"{path}: model.lvl_1L differs from the level table of the config's scales; "
                    "the config's table is used (as the JAX model does)."
                )
    model.load_state_dict(state, strict=True, assign=True)
    model = model.eval().requires_grad_(False)
    if compile:
        model.compile_parts()
    return model
