"""Model sizes read from an exported model's `config.json` (the official F1 layout, parsed by
`f1_common.official_config`). Everything the file does not state is fixed by the architecture and
takes the original's value: RMSNorm eps 1e-6, RoPE base 10000, 4 history frames, flow time periods
[4e-3, 4].
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from f1_common import official_config

from f1_common.export_layout import CONFIG_FILE


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """SigLIP vision tower + the PaliGemma projector to `out_width`."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    eps: float
    out_width: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """One Gemma expert. The three experts share depth, heads, KV heads and head dim."""

    width: int
    mlp_dim: int
    depth: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float = 1e-6
    rope_base: float = 10_000.0


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """VAR's multi-scale VQ-VAE (`vae_ch160v4096z32` by default)."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5  # Phi mixing ratio r: (1 - r) h + r conv(h)
    share_quant_resi: int = 4  # number of Phi convs (1: one shared)
    quant_conv_ks: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6
    in_channels: int = 3

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def latent_size(self) -> int:
        """Side of the encoder latent, which VAR requires to equal the last scale."""
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        return self.latent_size * 2 ** (len(self.ch_mult) - 1)

    @property
    def num_tokens(self) -> int:
        """Codes per frame over all scales, sum(pn^2) (680 at full size)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def num_phis(self) -> int:
        if abs(self.quant_resi) <= 1e-6:
            return 0
        return self.share_quant_resi or self.num_scales


@dataclasses.dataclass(frozen=True)
class ForesightConfig:
    """The generation expert's inputs/outputs and VAR's sampling rule."""

    width: int
    num_scales: int = 4  # scales predicted at inference (pn = 1, 2, 3, 4)
    history_frames: int = 4
    temporal_kernel: int = 4
    temporal_stride: int = 4
    top_k: int = 900
    top_p: float = 0.95


@dataclasses.dataclass(frozen=True)
class ActionConfig:
    """The action expert's projections and the flow-matching sampler."""

    width: int
    action_dim: int = 32
    state_dim: int = 32
    chunk_size: int = 50
    num_steps: int = 10
    min_period: float = 4e-3
    max_period: float = 4.0


@dataclasses.dataclass(frozen=True)
class F1Config:
    siglip: SiglipConfig
    und: ExpertConfig
    gen: ExpertConfig
    act: ExpertConfig
    vocab_size: int
    vqvae: VQVAEConfig
    foresight: ForesightConfig
    action: ActionConfig

    def __post_init__(self):
        shared = ("depth", "num_heads", "num_kv_heads", "head_dim")
        broken = [
            f"experts share {f}" for f in shared if len({getattr(e, f) for e in self.experts}) != 1
        ]
        if self.siglip.out_width != self.und.width:
            broken.append("SigLIP projector width == und width")
        if self.foresight.width != self.gen.width:
            broken.append("foresight width == gen width")
        if self.action.width != self.act.width:
            broken.append("action width == act width")
        if not 1 <= self.foresight.num_scales <= self.vqvae.num_scales:
            broken.append(f"1 <= num_resolutions <= {self.vqvae.num_scales}")
        if self.und.num_heads % self.und.num_kv_heads:
            broken.append("num_heads is a multiple of num_key_value_heads")
        if broken:
            raise ValueError(f"Inconsistent F1 config.json: {broken} must hold.")

    @property
    def experts(self) -> tuple[ExpertConfig, ExpertConfig, ExpertConfig]:
        """In sequence order: understanding, generation, action."""
        return (self.und, self.gen, self.act)

    @property
    def scale_lengths(self) -> tuple[int, ...]:
        """pn^2 of each predicted scale, e.g. (1, 4, 9, 16)."""
        return tuple(pn * pn for pn in self.vqvae.patch_nums[: self.foresight.num_scales])

    @property
    def num_cond(self) -> int:
        """History tokens per frame (679 at full size); the generation prefix has one more."""
        return self.vqvae.num_tokens - 1


def from_official(official: Mapping[str, Any]) -> F1Config:
    """The official F1 config.json dict (any size) -> F1Config."""
    sizes = official_config.read_sizes(official)
    # An f1-jax export also carries the run's own settings under f1_jax.config: its foresight
    # sampling rule (top-k / top-p) is the one the run's JAX policy samples with.
    ours = (sizes["embedded"] or {}).get("foresight", {})
    foresight = ForesightConfig(
        **sizes["foresight"],
        top_k=int(ours.get("top_k", ForesightConfig.top_k)),
        top_p=float(ours.get("top_p", ForesightConfig.top_p)),
    )
    experts = sizes["experts"]
    return F1Config(
        siglip=SiglipConfig(**sizes["siglip"]),
        und=ExpertConfig(**experts["und"]),
        gen=ExpertConfig(**experts["gen"]),
        act=ExpertConfig(**experts["act"]),
        vocab_size=sizes["vocab_size"],
        vqvae=VQVAEConfig(**sizes["vqvae"]),
        foresight=foresight,
        action=ActionConfig(**sizes["action"]),
    )


def read_config(directory: str | os.PathLike) -> F1Config:
    """`directory/config.json` -> F1Config."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE} (the official F1 config).")
    with open(path) as f:
        return from_official(json.load(f))


def with_sampling(
    config: F1Config,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    num_steps: int | None = None,
) -> F1Config:
    """`config` with other foresight sampling (top_k 1 = greedy) or Euler step settings."""
    foresight, action = config.foresight, config.action
    if top_k is not None:
        foresight = dataclasses.replace(foresight, top_k=int(top_k))
    if top_p is not None:
        foresight = dataclasses.replace(foresight, top_p=float(top_p))
    if num_steps is not None:
        action = dataclasses.replace(action, num_steps=int(num_steps))
    return dataclasses.replace(config, foresight=foresight, action=action)
