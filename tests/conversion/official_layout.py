"""The official F1 state-dict layout, written out independently of conversion/tables.py.

Transcribed from the released F1 state dict (key patterns x layer counts, PyTorch shapes,
dtypes) and VAR's VQ-VAE keys, parameterised by sizes so the same
table describes the released model and the tiny test models.
"""

import dataclasses

P = "model.paligemma_with_expert."
BF16, F32, I64 = "bfloat16", "float32", "int64"


@dataclasses.dataclass(frozen=True)
class Sizes:
    vision_width: int = 1152
    vision_depth: int = 27
    vision_mlp: int = 4304
    patch: int = 14
    num_patches: int = 256
    und_width: int = 2048
    und_mlp: int = 16384
    vocab: int = 257152
    expert_width: int = 1024
    expert_mlp: int = 4096
    depth: int = 18
    heads: int = 8
    kv_heads: int = 1
    head_dim: int = 256
    z: int = 32
    codebook: int = 4096
    tokens: int = 680  # sum(pn^2)
    scales: int = 10
    temporal_kernel: int = 4
    action_dim: int = 32
    state_dim: int = 32
    vae_ch: int = 160
    vae_ch_mult: tuple = (1, 1, 2, 2, 4)
    vae_blocks: int = 2
    vae_phis: int = 4


def _gemma(
    prefix: str,
    width: int,
    mlp: int,
    s: Sizes,
    layer_dtype: str,
    norm_dtype: str,
    vocab_head: str | None,
) -> dict:
    out = {}
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    for i in range(s.depth):
        lay = f"{prefix}model.layers.{i}."
        out.update(
            {
                lay + "self_attn.q_proj.weight": ((q, width), layer_dtype),
                lay + "self_attn.k_proj.weight": ((kv, width), layer_dtype),
                lay + "self_attn.v_proj.weight": ((kv, width), layer_dtype),
                lay + "self_attn.o_proj.weight": ((width, q), layer_dtype),
                lay + "mlp.gate_proj.weight": ((mlp, width), layer_dtype),
                lay + "mlp.up_proj.weight": ((mlp, width), layer_dtype),
                lay + "mlp.down_proj.weight": ((width, mlp), layer_dtype),
                lay + "input_layernorm.weight": ((width,), layer_dtype),
                lay + "post_attention_layernorm.weight": ((width,), layer_dtype),
            }
        )
    out[prefix + "model.norm.weight"] = ((width,), norm_dtype)
    if vocab_head:
        out[prefix + "lm_head.weight"] = ((s.vocab, width), vocab_head)
    return out


def vae_keys(s: Sizes, prefix: str) -> dict:
    """VAR VQVAE state dict: encoder, decoder, quant convs, codebook, Phis, the usage buffer."""
    out = {}

    def conv(name, o, i, k):
        out[prefix + name + ".weight"] = ((o, i, k, k), F32)
        out[prefix + name + ".bias"] = ((o,), F32)

    def norm(name, c):
        out[prefix + name + ".weight"] = ((c,), F32)
        out[prefix + name + ".bias"] = ((c,), F32)

    def res(name, i, o):
        norm(name + ".norm1", i)
        conv(name + ".conv1", o, i, 3)
        norm(name + ".norm2", o)
        conv(name + ".conv2", o, o, 3)
        if i != o:
            conv(name + ".nin_shortcut", o, i, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        conv(name + ".qkv", 3 * c, c, 1)
        conv(name + ".proj_out", c, c, 1)

    chans = [s.vae_ch * m for m in s.vae_ch_mult]
    last = len(chans) - 1
    conv("encoder.conv_in", s.vae_ch, 3, 3)
    c_in = s.vae_ch
    for lvl, c_out in enumerate(chans):
        for b in range(s.vae_blocks):
            res(f"encoder.down.{lvl}.block.{b}", c_in, c_out)
            c_in = c_out
            if lvl == last:
                attn(f"encoder.down.{lvl}.attn.{b}", c_out)
        if lvl != last:
            conv(f"encoder.down.{lvl}.downsample.conv", c_out, c_out, 3)
    for part, c in (("encoder", chans[-1]), ("decoder", chans[-1])):
        res(f"{part}.mid.block_1", c, c)
        attn(f"{part}.mid.attn_1", c)
        res(f"{part}.mid.block_2", c, c)
    norm("encoder.norm_out", chans[-1])
    conv("encoder.conv_out", s.z, chans[-1], 3)
    conv("decoder.conv_in", chans[-1], s.z, 3)
    c_in = chans[-1]
    for lvl in reversed(range(len(chans))):
        for b in range(s.vae_blocks + 1):
            res(f"decoder.up.{lvl}.block.{b}", c_in, chans[lvl])
            c_in = chans[lvl]
            if lvl == last:
                attn(f"decoder.up.{lvl}.attn.{b}", c_in)
        if lvl != 0:
            conv(f"decoder.up.{lvl}.upsample.conv", c_in, c_in, 3)
    norm("decoder.norm_out", s.vae_ch)
    conv("decoder.conv_out", 3, s.vae_ch, 3)
    conv("quant_conv", s.z, s.z, 3)
    conv("post_quant_conv", s.z, s.z, 3)
    out[prefix + "quantize.embedding.weight"] = ((s.codebook, s.z), F32)
    for k in range(s.vae_phis):
        conv(f"quantize.quant_resi.qresi_ls.{k}", s.z, s.z, 3)
    out[prefix + "quantize.ema_vocab_hit_SV"] = ((s.scales, s.codebook), F32)
    return out


def state_dict_keys(s: Sizes) -> dict:
    """Every tensor of the official F1FlowMatching state dict (prefix `model.`), with aliases:
    both tied embedding names, the expert lm_heads and the persistent buffers."""
    out = {}
    v = P + "paligemma.vision_tower.vision_model."
    out[v + "embeddings.patch_embedding.weight"] = ((s.vision_width, 3, s.patch, s.patch), BF16)
    out[v + "embeddings.patch_embedding.bias"] = ((s.vision_width,), BF16)
    out[v + "embeddings.position_embedding.weight"] = ((s.num_patches, s.vision_width), BF16)
    w, m = s.vision_width, s.vision_mlp
    for i in range(s.vision_depth):
        lay = f"{v}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[lay + f"self_attn.{proj}.weight"] = ((w, w), BF16)
            out[lay + f"self_attn.{proj}.bias"] = ((w,), BF16)
        for n in ("layer_norm1", "layer_norm2"):
            out[lay + f"{n}.weight"] = ((w,), BF16)
            out[lay + f"{n}.bias"] = ((w,), BF16)
        out[lay + "mlp.fc1.weight"] = ((m, w), BF16)
        out[lay + "mlp.fc1.bias"] = ((m,), BF16)
        out[lay + "mlp.fc2.weight"] = ((w, m), BF16)
        out[lay + "mlp.fc2.bias"] = ((w,), BF16)
    out[v + "post_layernorm.weight"] = ((w,), BF16)
    out[v + "post_layernorm.bias"] = ((w,), BF16)
    out[P + "paligemma.multi_modal_projector.linear.weight"] = ((s.und_width, w), BF16)
    out[P + "paligemma.multi_modal_projector.linear.bias"] = ((s.und_width,), BF16)
    lm = P + "paligemma.language_model."
    out[lm + "model.embed_tokens.weight"] = ((s.vocab, s.und_width), BF16)
    out[lm + "lm_head.weight"] = ((s.vocab, s.und_width), BF16)
    out.update(_gemma(lm, s.und_width, s.und_mlp, s, BF16, BF16, None))
    out.update(_gemma(P + "gemma_wm_expert.", s.expert_width, s.expert_mlp, s, BF16, F32, F32))
    out.update(_gemma(P + "gemma_expert.", s.expert_width, s.expert_mlp, s, BF16, F32, F32))
    W, z, L = s.expert_width, s.z, s.tokens
    out.update(
        {
            "model.temporal_conv.conv.weight": ((z, z, s.temporal_kernel), F32),
            "model.temporal_conv.conv.bias": ((z,), F32),
            "model.wm_embeddings.weight": ((W, z), F32),
            "model.wm_embeddings.bias": ((W,), F32),
            "model.wm_hist_pos_embs": ((1, L - 1, z), F32),
            "model.wm_sos_token_embs": ((1, 1, W), F32),
            "model.wm_cond_pos_embs": ((1, L, W), F32),
            "model.wm_output_position_embedding": ((1, L, W), F32),
            "model.lvl_embed.weight": ((s.scales, W), F32),
            "model.wm_out_layer_norm.weight": ((W,), F32),
            "model.wm_out_layer_norm.bias": ((W,), F32),
            "model.wm_out_proj.weight": ((s.codebook, W), F32),
            "model.wm_out_proj.bias": ((s.codebook,), F32),
            "model.state_proj.weight": ((W, s.state_dim), F32),
            "model.state_proj.bias": ((W,), F32),
            "model.action_in_proj.weight": ((W, s.action_dim), F32),
            "model.action_in_proj.bias": ((W,), F32),
            "model.action_out_proj.weight": ((s.action_dim, W), F32),
            "model.action_out_proj.bias": ((s.action_dim,), F32),
            "model.action_time_mlp_in.weight": ((W, 2 * W), F32),
            "model.action_time_mlp_in.bias": ((W,), F32),
            "model.action_time_mlp_out.weight": ((W, W), F32),
            "model.action_time_mlp_out.bias": ((W,), F32),
            "model.lvl_1L": ((1, L), I64),
            "model.mask_embedding": ((1, 1, z), F32),
        }
    )
    out.update(vae_keys(s, "model.vae."))
    return out


def saved_file_keys(s: Sizes) -> dict:
    """What `safetensors.torch.save_model` writes: the tied embed_tokens name is dropped."""
    out = state_dict_keys(s)
    del out[P + "paligemma.language_model.model.embed_tokens.weight"]
    return out


def tiny_sizes(config) -> Sizes:
    """The Sizes of one of our F1Configs (for the tiny test fixtures)."""
    c = config
    return Sizes(
        vision_width=c.siglip.width,
        vision_depth=c.siglip.depth,
        vision_mlp=c.siglip.mlp_dim,
        patch=c.siglip.patch_size,
        num_patches=c.siglip.num_patches,
        und_width=c.und.width,
        und_mlp=c.und.mlp_dim,
        vocab=c.vocab_size,
        expert_width=c.gen.width,
        expert_mlp=c.gen.mlp_dim,
        depth=c.und.depth,
        heads=c.und.num_heads,
        kv_heads=c.und.num_kv_heads,
        head_dim=c.und.head_dim,
        z=c.vqvae.z_channels,
        codebook=c.vqvae.vocab_size,
        tokens=c.foresight.num_tokens,
        scales=len(c.vqvae.patch_nums),
        temporal_kernel=c.foresight.temporal_kernel,
        action_dim=c.action.action_dim,
        state_dim=c.action.state_dim,
        vae_ch=c.vqvae.ch,
        vae_ch_mult=c.vqvae.ch_mult,
        vae_blocks=c.vqvae.num_res_blocks,
        vae_phis=c.vqvae.share_quant_resi,
    )
