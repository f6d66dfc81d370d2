"""Model configs: the official F1 `config.json` <-> our F1Config, and our JSON sidecar.

The official `F1Config` (configuration_f1.py) reads `und_expert_config` (a PaliGemmaConfig),
`gen_expert_config` / `act_expert_config` (GemmaConfigs; the generation one carries pn, the temporal
conv and the VAE dict), `proj_width`, `chunk_size`, `max_action_dim`, `max_state_dim`. It overwrites
the VAE dict with the released sizes, so a tiny VAE's remaining sizes (ch_mult, blocks, groups) are
written under the extra key `f1_jax`, which the official class keeps as a plain attribute.
"""

import dataclasses
import json
from typing import Any

from etils import epath

from f1_common import model_config, official_config
from f1_common.model_config import (
    ActionConfig,
    ExpertConfig,
    ForesightConfig,
    SiglipConfig,
    VQVAEConfig,
)
from f1_jax.models.f1 import F1Config

SIDECAR = "model_config.json"
SIDECAR_FORMAT = "f1_jax.conversion/1"
_SUBCONFIGS = {
    "siglip": SiglipConfig,
    "und": ExpertConfig,
    "gen": ExpertConfig,
    "act": ExpertConfig,
    "vqvae": VQVAEConfig,
    "foresight": ForesightConfig,
    "action": ActionConfig,
}


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def config_to_dict(config: F1Config) -> dict:
    """F1Config -> plain JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict) -> F1Config:
    """Inverse of `config_to_dict`; unknown fields raise (a sidecar from another version)."""
    kwargs = dict(data)
    for name, cls in _SUBCONFIGS.items():
        kwargs[name] = cls(**{k: _tuples(v) for k, v in data[name].items()})
    return F1Config(**kwargs)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} vs {y!r}")
    return out


def from_official(official: dict) -> F1Config:
    """The official F1 config.json (any size) -> our F1Config with the same parameter shapes.

    A config.json written by our export also carries our whole F1Config under `f1_jax.config`
    (settings the official format has no field for: precision, sampling, initialisers, ...);
    it is used when the official fields agree with it, and refused when they do not.
    """
    ours = official_config.read_sizes(official)["embedded"]
    if ours is None:
        return _from_sizes(official)
    try:
        full = config_from_dict(ours)
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(
            f"config.json: f1_jax.config is not an F1Config of this version ({e}); delete the "
            "key to use the official fields alone."
        ) from None
    # Both read the sampling rule from the embedded config: the sizes are what is compared.
    derived, check = _from_sizes(official), _from_sizes(to_official(full))
    if check != derived:
        diffs = _differences(config_to_dict(derived), config_to_dict(check))
        raise ValueError(
            "config.json: the official fields disagree with f1_jax.config (edited by hand?): "
            f"{diffs[:8]}. Fix one of them or delete f1_jax.config."
        )
    return full


def _from_sizes(official: dict) -> F1Config:
    """`f1_common.model_config.from_official` (the sizes) with the JAX model's switches at their
    defaults."""
    sizes = model_config.from_official(official)
    return F1Config(**{f.name: getattr(sizes, f.name) for f in dataclasses.fields(sizes)})


def _gemma(expert: ExpertConfig, vocab: int) -> dict:
    return {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "head_dim": expert.head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": expert.width,
        "initializer_range": 0.02,
        "intermediate_size": expert.mlp_dim,
        "max_position_embeddings": 8192,
        "model_type": "gemma",
        "num_attention_heads": expert.num_heads,
        "num_hidden_layers": expert.depth,
        "num_key_value_heads": expert.num_kv_heads,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
        "transformers_version": "4.48.1",
        "use_cache": True,
        "vocab_size": vocab,
    }


def to_official(config: F1Config, embed_config: bool = True) -> dict:
    """Our F1Config -> an F1 config.json the official `F1Config` reads (same layout as
    f1_vla/config/f1_config.json), with our whole config under `f1_jax.config` (embed_config)."""
    c, s, v = config, config.siglip, config.vqvae
    text = {
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": c.und.width,
        "intermediate_size": c.und.mlp_dim,
        "model_type": "gemma",
        "num_attention_heads": c.und.num_heads,
        "num_hidden_layers": c.und.depth,
        "num_image_tokens": s.num_patches,
        "num_key_value_heads": c.und.num_kv_heads,
        "head_dim": c.und.head_dim,
        "torch_dtype": "float32",
        "vocab_size": c.vocab_size,
    }
    vision = {
        "hidden_size": s.width,
        "intermediate_size": s.mlp_dim,
        "model_type": "siglip_vision_model",
        "num_attention_heads": s.num_heads,
        "num_hidden_layers": s.depth,
        "num_image_tokens": s.num_patches,
        "image_size": s.image_size,
        "patch_size": s.patch_size,
        "layer_norm_eps": s.eps,
        "projection_dim": c.und.width,
        "projector_hidden_act": "gelu_fast",
        "torch_dtype": "float32",
        "vision_use_head": False,
    }
    gen = _gemma(c.gen, c.vocab_size)
    gen.update(
        {
            "pn": "_".join(str(p) for p in c.foresight.patch_nums),
            "temporal_conv_kernel_size": c.foresight.temporal_kernel,
            "temporal_conv_stride": c.foresight.temporal_stride,
            "num_resolutions": c.foresight.num_scales,
            "vae": {
                "vocab_size": v.vocab_size,
                "z_channels": v.z_channels,
                "ch": v.ch,
                "test_mode": True,
                "share_quant_resi": v.share_quant_resi,
                "vae_ckpt": "",
            },
        }
    )
    return {
        "architectures": ["F1ForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_f1.F1Config",
            "AutoModel": "modeling_f1.F1ForConditionalGeneration",
        },
        "und_expert_config": {
            "transformers_version": "4.48.1",
            "_vocab_size": c.vocab_size,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "hidden_size": c.und.width,
            "image_token_index": c.vocab_size,
            "model_type": "paligemma",
            "pad_token_id": 0,
            "projection_dim": c.und.width,
            "text_config": text,
            "vision_config": vision,
        },
        "gen_expert_config": gen,
        "act_expert_config": _gemma(c.act, c.vocab_size),
        "use_world_model": True,
        "chunk_size": c.action.chunk_size,
        "max_action_dim": c.action.action_dim,
        "max_state_dim": c.action.state_dim,
        "tokenizer_max_length": 48,
        "use_cache": True,
        "attention_implementation": "eager",
        "resize_imgs_with_padding": [s.image_size, s.image_size],
        "language_tokenizer_path": "",
        "proj_width": c.act.width,
        "num_steps": c.action.num_steps,
        # Sizes the official class cannot express (it hard-codes the released VAE), and our
        # whole config (the official class keeps unknown keys as plain attributes).
        "f1_jax": {
            "vae_ch_mult": list(v.ch_mult),
            "vae_num_res_blocks": v.num_res_blocks,
            "vae_norm_groups": v.norm_groups,
            **({"config": config_to_dict(config)} if embed_config else {}),
        },
    }


def write_sidecar(
    path, config: F1Config, source: str, subtrees: list[str], notes: list[str]
) -> None:
    """The JSON next to the Orbax checkpoint: which config, which source, which subtrees."""
    with open(path, "w") as f:
        json.dump(
            {
                "format": SIDECAR_FORMAT,
                "source": source,
                "subtrees": subtrees,
                "notes": notes,
                "config": config_to_dict(config),
            },
            f,
            indent=1,
        )


def read_sidecar(path) -> tuple[F1Config, dict]:
    """The sidecar of an import's output (a local path or a URI)."""
    data = json.loads(epath.Path(path).read_text())
    if data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path} is not a conversion sidecar (format {data.get('format')!r}).")
    return config_from_dict(data["config"]), data
