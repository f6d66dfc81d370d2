"""The sizes an official F1 `config.json` states, read once for both runtimes.

The official `F1Config` nests a PaliGemma config (`und_expert_config`: SigLIP `vision_config` and
Gemma `text_config`) and two Gemma configs (`gen_expert_config`, which also carries the VQ-VAE
scales `pn`, the temporal conv and the `vae` dict, and `act_expert_config`). The VQ-VAE sizes the
official class cannot express (channel multipliers, blocks, norm groups of a smaller tokenizer)
sit under the extra key `f1_jax`, beside `f1_jax.config`, the whole config an f1-jax export
embeds. `read_sizes` returns plain values; `f1_common.model_config.from_official` builds from
them the sizes both runtimes use (`conversion.config_io` adds the JAX F1Config's switches).
Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_PATCH_NUMS = "1_2_3_4_5_6_8_10_13_16"


def _expert(gemma: Mapping[str, Any]) -> dict[str, int]:
    return {
        "width": gemma["hidden_size"],
        "mlp_dim": gemma["intermediate_size"],
        "depth": gemma["num_hidden_layers"],
        "num_heads": gemma.get("num_attention_heads", 8),
        "num_kv_heads": gemma.get("num_key_value_heads", 1),
        "head_dim": gemma.get("head_dim", 256),
    }


def read_sizes(official: Mapping[str, Any]) -> dict[str, Any]:
    """The official config.json dict (any size) -> {"siglip", "experts" (und, gen, act),
    "vocab_size", "vqvae", "foresight", "action", "embedded"}: plain dicts of the stated sizes.

    "vqvae" holds only the fields the file states (a runtime's defaults fill the rest);
    "embedded" is the f1-jax config an export carries under `f1_jax.config`, or None.
    Raises ValueError naming what is missing when this is not an F1 config.
    """
    try:
        und = official["und_expert_config"]
        text, vision = und["text_config"], und["vision_config"]
        gen, act = official["gen_expert_config"], official["act_expert_config"]
        siglip = {
            "image_size": vision.get("image_size", 224),
            "patch_size": vision.get("patch_size", 14),
            "width": vision["hidden_size"],
            "depth": vision["num_hidden_layers"],
            "mlp_dim": vision["intermediate_size"],
            "num_heads": vision["num_attention_heads"],
            "eps": vision.get("layer_norm_eps", 1e-6),
            "out_width": text["hidden_size"],
        }
        experts = {"und": _expert(text), "gen": _expert(gen), "act": _expert(act)}
    except KeyError as e:
        raise ValueError(
            f"Not an F1 config.json: missing {e}. Expected und_expert_config (with text_config "
            "and vision_config), gen_expert_config and act_expert_config."
        ) from None
    extra = official.get("f1_jax") or {}
    vae = dict(gen.get("vae") or {})
    patch_nums = tuple(int(p) for p in str(gen.get("pn", DEFAULT_PATCH_NUMS)).split("_"))
    vqvae: dict[str, Any] = {"patch_nums": patch_nums}
    for ours, theirs in (
        ("vocab_size", "vocab_size"),
        ("z_channels", "z_channels"),
        ("ch", "ch"),
        ("share_quant_resi", "share_quant_resi"),
    ):
        if theirs in vae:
            vqvae[ours] = vae[theirs]
    for ours, theirs in (
        ("ch_mult", "vae_ch_mult"),
        ("num_res_blocks", "vae_num_res_blocks"),
        ("norm_groups", "vae_norm_groups"),
    ):
        if theirs in extra:
            value = extra[theirs]
            vqvae[ours] = tuple(value) if isinstance(value, list) else value
    return {
        "siglip": siglip,
        "experts": experts,
        "vocab_size": text.get("vocab_size", 257_152),
        "vqvae": vqvae,
        "foresight": {
            "width": gen["hidden_size"],
            "num_scales": gen.get("num_resolutions", 4),
            "temporal_kernel": gen.get("temporal_conv_kernel_size", 4),
            "temporal_stride": gen.get("temporal_conv_stride", 4),
        },
        "action": {
            "width": act["hidden_size"],
            "action_dim": official.get("max_action_dim", 32),
            "state_dim": official.get("max_state_dim", 32),
            "chunk_size": official.get("chunk_size", 50),
            "num_steps": official.get("num_steps", 10),
        },
        "embedded": extra.get("config"),
    }


def key_problems(
    what: str, verb: str, missing: list[str], unexpected: list[str], misshaped: list[str]
) -> str:
    """One message listing every missing, unexpected and mis-shaped key of a checkpoint (50 of
    each at most), e.g. "FILE: cannot load (1 missing, 0 unexpected, 2 mis-shaped keys)."."""
    lines = [
        f"{what}: cannot {verb} ({len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(misshaped)} mis-shaped keys)."
    ]
    for title, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
    ):
        if items:
            lines.append(f"  {title}:")
            lines += [f"    {item}" for item in items[:50]]
            if len(items) > 50:
                lines.append(f"    ... and {len(items) - 50} more")
    return "\n".join(lines)
