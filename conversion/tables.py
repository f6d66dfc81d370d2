"""Mapping tables: one per foreign layout, read forwards by import and backwards by export.

A table is a list of `Row`s. Each row names one foreign tensor (with `{i}` where the foreign file
has one tensor per layer), the path of our parameter (relative to `params/`), the named `Rule`
between the two layouts, and for per-layer rows the layer index fills our leading scanned axis.
Where several foreign tensors fill one of ours (k/v into `kv_einsum`, gate/up into
`gating_einsum`) each row names its `slot` on the axis after the layer axis.

Tables are built from the model config only to substitute sizes (heads, head_dim) into the rules;
the names are fixed data. The VQ-VAE table is generated from our parameter names, because our
VQ-VAE mirrors VAR's module names one to one (`down_0` <-> `down.0`).
"""

import dataclasses
import re

from conversion import rules
from conversion.rules import Rule
from f1_jax.models.f1 import F1Config
from f1_jax.models.gemma import ExpertConfig

BF16, F32, I64 = "bfloat16", "float32", "int64"
F1_PREFIX = "model.paligemma_with_expert."
_VAR_INDEXED = re.compile(r"^(down|up|block|attn|qresi_ls)_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Row:
    """One foreign tensor (or one per layer) <-> one of our parameters (or a slot of it)."""

    foreign: str  # foreign key; "{i}" stands for the layer index
    ours: str  # our path under params/, "/"-separated
    rule: Rule = rules.IDENTITY
    slot: int | None = None  # index on our axis after the layer axis (k=0/v=1, gate=0/up=1)
    dtype: str = F32  # dtype the foreign file stores (used on export)
    aliases: tuple[str, ...] = ()  # other names of the same (tied) tensor, accepted on import
    foreign_stacked: bool = False  # the foreign tensor itself has the leading layer axis
    truncate_rows: bool = False  # a longer foreign axis 0 may be cut to ours (vocabulary)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.foreign


@dataclasses.dataclass(frozen=True)
class Extra:
    """A foreign tensor with no parameter of ours (buffers, unused heads) and how export fills it."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    fill: str  # "levels" (the lvl_1L table), "zeros", or "buffer" (kept from import, else zeros)
    optional: bool = False  # written only on request (the unused expert lm_heads)


# --------------------------------------------------------------------------------------------
# Building blocks shared by the HF-transformers-style layouts (F1, lerobot pi0, PaliGemma).


def siglip_rows(vision: str, projector: str, dtype: str) -> list[Row]:
    """transformers SiglipVisionModel (+ PaliGemma projector) <-> params/siglip."""
    enc = vision + "encoder.layers.{i}."
    rows = [
        Row(
            vision + "embeddings.patch_embedding.weight",
            "siglip/patch_embedding/kernel",
            rules.CONV2D,
            dtype=dtype,
        ),
        Row(vision + "embeddings.patch_embedding.bias", "siglip/patch_embedding/bias", dtype=dtype),
        Row(
            vision + "embeddings.position_embedding.weight",
            "siglip/position_embedding",
            dtype=dtype,
        ),
    ]
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rows += [
            Row(
                enc + f"self_attn.{proj}.weight",
                f"siglip/layers/self_attn/{proj}/kernel",
                rules.LINEAR,
                dtype=dtype,
            ),
            Row(
                enc + f"self_attn.{proj}.bias", f"siglip/layers/self_attn/{proj}/bias", dtype=dtype
            ),
        ]
    for norm in ("layer_norm1", "layer_norm2"):
        rows += [
            Row(enc + f"{norm}.weight", f"siglip/layers/{norm}/scale", dtype=dtype),
            Row(enc + f"{norm}.bias", f"siglip/layers/{norm}/bias", dtype=dtype),
        ]
    for fc in ("fc1", "fc2"):
        rows += [
            Row(enc + f"mlp.{fc}.weight", f"siglip/layers/{fc}/kernel", rules.LINEAR, dtype=dtype),
            Row(enc + f"mlp.{fc}.bias", f"siglip/layers/{fc}/bias", dtype=dtype),
        ]
    rows += [
        Row(vision + "post_layernorm.weight", "siglip/post_layernorm/scale", dtype=dtype),
        Row(vision + "post_layernorm.bias", "siglip/post_layernorm/bias", dtype=dtype),
        Row(projector + "weight", "siglip/projector/kernel", rules.LINEAR, dtype=dtype),
        Row(projector + "bias", "siglip/projector/bias", dtype=dtype),
    ]
    # transformers 5 dropped the `vision_model.` level of SiglipVisionModel; accept both on import.
    return [
        dataclasses.replace(r, aliases=(r.foreign.replace("vision_model.", ""),))
        if "vision_model." in r.foreign
        else r
        for r in rows
    ]


def gemma_rows(
    layers: str, final_norm: str, expert: ExpertConfig, layer_dtype: str, norm_dtype: str
) -> list[Row]:
    """transformers GemmaModel layers + final norm <-> params/stack/{layers,final_norm}_<expert>."""
    e, lay = expert, layers + "{i}."
    ours = f"stack/layers/{e.name}/"
    q = rules.q_proj(e.num_heads, e.head_dim)
    kv = rules.kv_proj(e.num_kv_heads, e.head_dim)
    return [
        Row(lay + "self_attn.q_proj.weight", ours + "q_einsum", q, dtype=layer_dtype),
        Row(lay + "self_attn.k_proj.weight", ours + "kv_einsum", kv, slot=0, dtype=layer_dtype),
        Row(lay + "self_attn.v_proj.weight", ours + "kv_einsum", kv, slot=1, dtype=layer_dtype),
        Row(
            lay + "self_attn.o_proj.weight",
            ours + "attn_vec_einsum",
            rules.o_proj(e.num_heads, e.head_dim),
            dtype=layer_dtype,
        ),
        Row(
            lay + "mlp.gate_proj.weight",
            ours + "gating_einsum",
            rules.LINEAR,
            slot=0,
            dtype=layer_dtype,
        ),
        Row(
            lay + "mlp.up_proj.weight",
            ours + "gating_einsum",
            rules.LINEAR,
            slot=1,
            dtype=layer_dtype,
        ),
        Row(lay + "mlp.down_proj.weight", ours + "linear", rules.LINEAR, dtype=layer_dtype),
        Row(lay + "input_layernorm.weight", ours + "pre_attention_norm/scale", dtype=layer_dtype),
        Row(
            lay + "post_attention_layernorm.weight", ours + "pre_ffw_norm/scale", dtype=layer_dtype
        ),
        Row(final_norm, f"stack/final_norm_{e.name}/scale", dtype=norm_dtype),
    ]


# pi0 / F1 action and state projections (fp32 Linear layers), named alike in every layout.
ACTION_PROJECTIONS = (
    "state_proj",
    "action_in_proj",
    "action_out_proj",
    "action_time_mlp_in",
    "action_time_mlp_out",
)


def action_rows(prefix: str) -> list[Row]:
    """pi0 / F1 action and state projections (fp32 Linear) <-> params/action_io."""
    rows = []
    for name in ACTION_PROJECTIONS:
        rows += [
            Row(f"{prefix}{name}.weight", f"action_io/{name}/kernel", rules.LINEAR),
            Row(f"{prefix}{name}.bias", f"action_io/{name}/bias"),
        ]
    return rows


def foresight_rows(prefix: str) -> list[Row]:
    """F1's generation-expert inputs/outputs (fp32) <-> params/foresight (same names)."""
    f = "foresight/"
    return [
        Row(prefix + "temporal_conv.conv.weight", f + "temporal_conv/kernel", rules.CONV1D),
        Row(prefix + "temporal_conv.conv.bias", f + "temporal_conv/bias"),
        Row(prefix + "wm_embeddings.weight", f + "wm_embeddings/kernel", rules.LINEAR),
        Row(prefix + "wm_embeddings.bias", f + "wm_embeddings/bias"),
        Row(prefix + "wm_hist_pos_embs", f + "wm_hist_pos_embs"),
        Row(prefix + "wm_sos_token_embs", f + "wm_sos_token_embs"),
        Row(prefix + "wm_cond_pos_embs", f + "wm_cond_pos_embs"),
        Row(prefix + "wm_output_position_embedding", f + "wm_output_position_embedding"),
        Row(prefix + "lvl_embed.weight", f + "lvl_embed/embedding"),
        Row(prefix + "wm_out_layer_norm.weight", f + "wm_out_layer_norm/scale"),
        Row(prefix + "wm_out_layer_norm.bias", f + "wm_out_layer_norm/bias"),
        Row(prefix + "wm_out_proj.weight", f + "wm_out_proj/kernel", rules.LINEAR),
        Row(prefix + "wm_out_proj.bias", f + "wm_out_proj/bias"),
        Row(prefix + "mask_embedding", f + "mask_embedding"),  # a buffer in the original
    ]


def vae_foreign_name(ours_path: str) -> tuple[str, Rule]:
    """Our VQ-VAE path (below `vqvae/`) -> VAR's state-dict key and the layout rule.

    `encoder/down_0/block_1/norm1/scale` -> `encoder.down.0.block.1.norm1.weight` (identity),
    `quantize/quant_resi/qresi_ls_2/kernel` -> `quantize.quant_resi.qresi_ls.2.weight` (conv2d).
    """
    raw = ours_path.split("/")
    # List indices become ".i"; the middle block's own names (mid.block_1, mid.attn_1) stay.
    parts = [
        p if i and raw[i - 1] == "mid" else _VAR_INDEXED.sub(r"\1.\2", p) for i, p in enumerate(raw)
    ]
    leaf = parts[-1]
    if leaf == "kernel":
        return ".".join(parts[:-1] + ["weight"]), rules.CONV2D
    if leaf == "scale":
        return ".".join(parts[:-1] + ["weight"]), rules.IDENTITY
    if ours_path == "quantize/embedding":
        return "quantize.embedding.weight", rules.IDENTITY
    if leaf == "bias":
        return ".".join(parts), rules.IDENTITY
    raise ValueError(f"No VAR name for our VQ-VAE parameter {ours_path!r}.")


def vae_rows(vqvae_paths: list[str], prefix: str, aliases: tuple[str, ...] = ()) -> list[Row]:
    """VAR VQ-VAE state dict (fp32) <-> params/vqvae, given our VQ-VAE parameter paths."""
    rows = []
    for path in sorted(vqvae_paths):
        name, rule = vae_foreign_name(path)
        rows.append(
            Row(prefix + name, "vqvae/" + path, rule, aliases=tuple(a + name for a in aliases))
        )
    return rows


# --------------------------------------------------------------------------------------------
# The layouts.


def f1_table(config: F1Config, vqvae_paths: list[str]) -> list[Row]:
    """The official F1 `model.safetensors` (key names and layouts: docs/conversion.md)."""
    p = F1_PREFIX + "paligemma."
    lm = p + "language_model."
    rows = siglip_rows(p + "vision_tower.vision_model.", p + "multi_modal_projector.linear.", BF16)
    # Tied embedding: the official save keeps the alphabetically first name, lm_head.
    rows.append(
        Row(
            lm + "lm_head.weight",
            "embedder/input_embedding",
            dtype=BF16,
            aliases=(lm + "model.embed_tokens.weight",),
        )
    )
    rows += gemma_rows(lm + "model.layers.", lm + "model.norm.weight", config.und, BF16, BF16)
    for name, expert in (("gemma_wm_expert", config.gen), ("gemma_expert", config.act)):
        rows += gemma_rows(
            f"{F1_PREFIX}{name}.model.layers.",
            f"{F1_PREFIX}{name}.model.norm.weight",
            expert,
            BF16,
            F32,
        )  # expert final norms stay fp32 in the original
    rows += foresight_rows("model.")
    rows += action_rows("model.")
    # The VQ-VAE is registered twice (F1_VLA.vae is model.vae); the save keeps model.vae.*.
    rows += vae_rows(vqvae_paths, "model.vae.", aliases=("vae.",))
    return rows


def f1_extras(config: F1Config) -> list[Extra]:
    """Official tensors without a parameter of ours."""
    fc, vocab = config.foresight, config.vocab_size
    return [
        Extra("model.lvl_1L", (1, fc.num_tokens), I64, "levels"),
        Extra(
            "model.vae.quantize.ema_vocab_hit_SV",
            (len(config.vqvae.patch_nums), config.vqvae.vocab_size),
            F32,
            "buffer",
        ),
        Extra(
            F1_PREFIX + "gemma_wm_expert.lm_head.weight",
            (vocab, config.gen.width),
            F32,
            "zeros",
            optional=True,
        ),
        Extra(
            F1_PREFIX + "gemma_expert.lm_head.weight",
            (vocab, config.act.width),
            F32,
            "zeros",
            optional=True,
        ),
    ]


# lerobot pi0: transformers-4.4x names (`lerobot/pi0`) or transformers >= 4.52 names
# (`lerobot/pi0_base`, openpi's PyTorch port). Old -> new substitutions, applied to the old table.
PI0_NEW_NAMES = (
    ("paligemma.language_model.model.", "paligemma.model.language_model."),
    ("paligemma.language_model.lm_head.", "paligemma.lm_head."),
    ("paligemma.vision_tower.", "paligemma.model.vision_tower."),
    ("paligemma.multi_modal_projector.", "paligemma.model.multi_modal_projector."),
)
PI0_SUBTREES = (
    "siglip",
    "embedder",
    "stack/layers/und",
    "stack/final_norm_und",
    "stack/layers/act",
    "stack/final_norm_act",
    "action_io",
)
PALIGEMMA_SUBTREES = ("siglip", "embedder", "stack/layers/und", "stack/final_norm_und")


def _rename(row: Row, subs: tuple[tuple[str, str], ...]) -> Row:
    def apply(name: str) -> str:
        for old, new in subs:
            name = name.replace(old, new)
        return name

    return dataclasses.replace(
        row, foreign=apply(row.foreign), aliases=tuple(apply(a) for a in row.aliases)
    )


def _in_subtrees(path: str, subtrees: tuple[str, ...]) -> bool:
    return any(path == s or path.startswith(s + "/") for s in subtrees)


def pi0_table(config: F1Config, layout: str) -> list[Row]:
    """lerobot pi0 (`layout` "old" or "new") <-> und + act experts, SigLIP, embedder, action_io.

    F1 inherited pi0's names, so the old layout is the F1 table without the F1-only parts.
    """
    if layout not in ("old", "new"):
        raise ValueError(f"pi0 layout must be 'old' or 'new', got {layout!r}.")
    rows = [r for r in f1_table(config, []) if _in_subtrees(r.ours, PI0_SUBTREES)]
    if layout == "new":
        rows = [_rename(r, PI0_NEW_NAMES) for r in rows]
    return rows


def paligemma_table(config: F1Config, layout: str) -> list[Row]:
    """HF `PaliGemmaForConditionalGeneration` safetensors <-> SigLIP, embedder, und expert.

    `layout` "old": transformers 4.4x keys (`language_model.model.layers...`, the hub files of
    google/paligemma-3b-pt-224); "new": transformers >= 4.52 keys (`model.language_model...`).
    The vocabulary may be longer than ours (257216 vs pi0's 257152): the extra rows are cut.
    """
    rows = pi0_table(config, layout)
    rows = [r for r in rows if _in_subtrees(r.ours, PALIGEMMA_SUBTREES)]
    strip = F1_PREFIX + "paligemma."
    out = []
    for r in rows:
        r = _rename(r, ((strip, ""),))
        if r.ours == "embedder/input_embedding":
            r = dataclasses.replace(r, truncate_rows=True)
        out.append(r)
    return out


def openpi_table(config: F1Config) -> list[Row]:
    """openpi's JAX pi0 params tree (big_vision names, `_1` = action expert), flattened with "/".

    Both sides are scanned, so the rows keep the layer axis (`foreign_stacked`); the SigLIP
    attention kernels only regroup [W, heads, head_dim] <-> [W, W].
    """
    s = config.siglip
    w, heads, hd = s.width, s.num_heads, s.width // s.num_heads
    img, blk = "PaliGemma/img/", "PaliGemma/img/Transformer/encoderblock/"
    mha = blk + "MultiHeadDotProductAttention_0/"
    st = dict(foreign_stacked=True)
    rows = [
        Row(img + "embedding/kernel", "siglip/patch_embedding/kernel"),
        Row(img + "embedding/bias", "siglip/patch_embedding/bias"),
        Row(img + "pos_embedding", "siglip/position_embedding", rules.SQUEEZE0),
    ]
    for big, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rows += [
            Row(
                mha + f"{big}/kernel",
                f"siglip/layers/self_attn/{ours}/kernel",
                rules.reshape((w, heads, hd), (w, w)),
                **st,
            ),
            Row(
                mha + f"{big}/bias",
                f"siglip/layers/self_attn/{ours}/bias",
                rules.reshape((heads, hd), (w,)),
                **st,
            ),
        ]
    rows += [
        Row(
            mha + "out/kernel",
            "siglip/layers/self_attn/out_proj/kernel",
            rules.reshape((heads, hd, w), (w, w)),
            **st,
        ),
        Row(mha + "out/bias", "siglip/layers/self_attn/out_proj/bias", **st),
    ]
    for big, ours in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        rows += [
            Row(blk + f"{big}/scale", f"siglip/layers/{ours}/scale", **st),
            Row(blk + f"{big}/bias", f"siglip/layers/{ours}/bias", **st),
        ]
    for big, ours in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        rows += [
            Row(blk + f"MlpBlock_0/{big}/kernel", f"siglip/layers/{ours}/kernel", **st),
            Row(blk + f"MlpBlock_0/{big}/bias", f"siglip/layers/{ours}/bias", **st),
        ]
    rows += [
        Row(img + "Transformer/encoder_norm/scale", "siglip/post_layernorm/scale"),
        Row(img + "Transformer/encoder_norm/bias", "siglip/post_layernorm/bias"),
        Row(img + "head/kernel", "siglip/projector/kernel"),
        Row(img + "head/bias", "siglip/projector/bias"),
        Row("PaliGemma/llm/embedder/input_embedding", "embedder/input_embedding"),
    ]
    llm = "PaliGemma/llm/"
    for expert, sfx in (("und", ""), ("act", "_1")):
        ours = f"stack/layers/{expert}/"
        rows += [
            Row(llm + f"layers/attn/q_einsum{sfx}/w", ours + "q_einsum", **st),
            Row(llm + f"layers/attn/kv_einsum{sfx}/w", ours + "kv_einsum", **st),
            Row(llm + f"layers/attn/attn_vec_einsum{sfx}/w", ours + "attn_vec_einsum", **st),
            Row(llm + f"layers/mlp{sfx}/gating_einsum", ours + "gating_einsum", **st),
            Row(llm + f"layers/mlp{sfx}/linear", ours + "linear", **st),
            Row(
                llm + f"layers/pre_attention_norm{sfx}/scale",
                ours + "pre_attention_norm/scale",
                **st,
            ),
            Row(llm + f"layers/pre_ffw_norm{sfx}/scale", ours + "pre_ffw_norm/scale", **st),
            Row(llm + f"final_norm{sfx}/scale", f"stack/final_norm_{expert}/scale"),
        ]
    for name in ACTION_PROJECTIONS:
        rows += [
            Row(f"{name}/kernel", f"action_io/{name}/kernel"),
            Row(f"{name}/bias", f"action_io/{name}/bias"),
        ]
    return rows


def var_vae_table(vqvae_paths: list[str]) -> list[Row]:
    """VAR's `vae_ch160v4096z32.pth` state dict (no prefix) <-> params/vqvae."""
    return vae_rows(vqvae_paths, "")


VAR_VAE_EXTRAS = ("quantize.ema_vocab_hit_SV",)

# lerobot policies save their dataset normalisation statistics next to the weights
# (e.g. `normalize_inputs.buffer_observation_state.mean`). No parameter of ours: kept as buffers.
NORMALIZATION_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def is_normalization(key: str) -> bool:
    return key.startswith(NORMALIZATION_PREFIXES)


def is_unused_expert_embedding(key: str) -> bool:
    """The gen/act experts' embed_tokens are set to None in F1 and pi0; tolerate a saved one."""
    return key.endswith(
        ("gemma_expert.model.embed_tokens.weight", "gemma_wm_expert.model.embed_tokens.weight")
    )
