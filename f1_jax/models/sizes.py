"""Named model sizes beside the model: `full` (the official F1), `small`, `tiny`, `debug`.

`full` reproduces the released F1 (SigLIP So400m/14 at 224 px, Gemma-2B understanding expert,
two Gemma-300M-like experts, the VAR VQ-VAE ch 160; docs/model.md, "Parameters", gives the
parameter counts per part, which tests/models/test_f1.py checks). `tiny` is what the tests use:
same code paths, widths of 32-64, 2 layers, 28 px camera images and 32 px foresight frames.
`debug` is `tiny` adjusted for the built-in task; `small` sits between, for CPU benchmarks. A
recipe names a size (`config.model.size`) and its switches; `model_config_from` turns that
section into an `F1Config`. The size classes themselves are `f1_common.model_config`'s, shared
with the PyTorch runtime.
"""

import dataclasses
from typing import Any, Mapping

from f1_common.model_config import (
    ActionConfig,
    ExpertConfig,
    ForesightConfig,
    SiglipConfig,
    VQVAEConfig,
)
from f1_jax.models.f1 import F1Config

PALIGEMMA_VOCAB_SIZE = 257_152  # pi0's PaliGemma vocabulary (the HF original has 257,216)


def _experts(und: tuple[int, int], gen: tuple[int, int], act: tuple[int, int], **shared):
    return (
        ExpertConfig("und", *und, **shared),
        ExpertConfig("gen", *gen, **shared),
        ExpertConfig("act", *act, **shared),
    )


def full() -> F1Config:
    und, gen, act = _experts((2048, 16384), (1024, 4096), (1024, 4096), depth=18)
    return F1Config(
        siglip=SiglipConfig(),
        und=und,
        gen=gen,
        act=act,
        vocab_size=PALIGEMMA_VOCAB_SIZE,
        vqvae=VQVAEConfig.full(),
        foresight=ForesightConfig(width=1024),
        action=ActionConfig(width=1024),
    )


def small() -> F1Config:
    shared = dict(depth=4, num_heads=4, num_kv_heads=1, head_dim=64)
    und, gen, act = _experts((512, 2048), (256, 1024), (256, 1024), **shared)
    siglip = SiglipConfig(
        image_size=224, patch_size=14, width=256, depth=4, mlp_dim=1024, num_heads=4, out_width=512
    )
    return F1Config(
        siglip=siglip,
        und=und,
        gen=gen,
        act=act,
        vocab_size=16_384,
        vqvae=VQVAEConfig.full(),
        foresight=ForesightConfig(width=256),
        action=ActionConfig(width=256, chunk_size=50),
    )


def tiny() -> F1Config:
    shared = dict(depth=2, num_heads=4, num_kv_heads=1, head_dim=16)
    und, gen, act = _experts((64, 128), (32, 64), (32, 64), **shared)
    siglip = SiglipConfig(
        image_size=28, patch_size=14, width=32, depth=2, mlp_dim=64, num_heads=4, out_width=64
    )
    vqvae = VQVAEConfig.tiny()
    return F1Config(
        siglip=siglip,
        und=und,
        gen=gen,
        act=act,
        vocab_size=256,
        vqvae=vqvae,
        foresight=ForesightConfig(
            width=32, z_channels=vqvae.z_channels, vocab_size=vqvae.vocab_size, top_k=16
        ),
        action=ActionConfig(width=32, chunk_size=4),
    )


def debug() -> F1Config:
    """The `debug` recipe's model, sized for a 2-core CPU and trained from scratch in minutes.

    Same widths as `tiny` except a wider action expert (64, cheap: it sees 5 tokens), 56 px
    cameras in 8 px patches (49 per camera, so the simulated blocks are visible), sincos position
    embeddings, a VQ-VAE whose 4 predicted scales (1, 2, 4, 8) reach its full 8 x 8 latent, and
    fan-in initialisation of the experts: Gemma's N(0, 0.02) suits width 2048, but at width 32-64
    it leaves attention uniform, and the policy never learns where the blocks are.
    """
    config = tiny()
    vqvae = VQVAEConfig(
        vocab_size=64,
        z_channels=8,
        ch=16,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        norm_groups=8,
        patch_nums=(1, 2, 4, 8),
    )
    und, gen, act = (dataclasses.replace(e, param_init="fan_in") for e in config.experts)
    return dataclasses.replace(
        config,
        siglip=dataclasses.replace(
            config.siglip, image_size=56, patch_size=8, posemb_init="sincos2d"
        ),
        und=und,
        gen=gen,
        act=dataclasses.replace(act, width=64, mlp_dim=256),
        vocab_size=128,
        vqvae=vqvae,
        foresight=dataclasses.replace(config.foresight, patch_nums=vqvae.patch_nums),
        action=dataclasses.replace(config.action, width=64, action_dim=7, state_dim=8),
    )


MODEL_SIZES = {"full": full, "small": small, "tiny": tiny, "debug": debug}


def get_model_config(
    size: str,
    *,
    precision: str = "default",
    remat_policy: str = "none",
    num_scales: int | None = None,
    chunk_size: int | None = None,
    foresight_training: str | None = None,
) -> F1Config:
    """The named size with the per-recipe switches applied."""
    if size not in MODEL_SIZES:
        raise ValueError(f"Unknown model size {size!r}; valid sizes: {sorted(MODEL_SIZES)}")
    config = MODEL_SIZES[size]()
    foresight, action = config.foresight, config.action
    if num_scales is not None:
        foresight = dataclasses.replace(foresight, num_scales=num_scales)
    if chunk_size is not None:
        action = dataclasses.replace(action, chunk_size=chunk_size)
    return dataclasses.replace(
        config,
        precision=precision,
        remat_policy=remat_policy,
        foresight=foresight,
        action=action,
        foresight_training=foresight_training or config.foresight_training,
    )


def model_config_from(model: Mapping[str, Any]) -> F1Config:
    """A recipe's `model` section (size, precision, remat_policy, num_scales, chunk_size,
    foresight_training, reuse_prefix, unroll_layers, attention, encode_frames_by_step,
    action_loss_weight, foresight_loss_weight)
    -> F1Config. Fields a recorded config predates keep their defaults."""
    return dataclasses.replace(
        get_model_config(
            model["size"],
            precision=model["precision"],
            remat_policy=model["remat_policy"],
            num_scales=model["num_scales"],
            chunk_size=model["chunk_size"],
            foresight_training=model["foresight_training"],
        ),
        action_loss_weight=model["action_loss_weight"],
        foresight_loss_weight=model["foresight_loss_weight"],
        reuse_prefix=model.get("reuse_prefix", True),
        unroll_layers=model.get("unroll_layers", False),
        attention=model.get("attention", "xla"),
        encode_frames_by_step=model.get("encode_frames_by_step", True),
    )
