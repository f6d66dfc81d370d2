"""The model's sizes and their checks, one definition for both runtimes (JAX and PyTorch).

`SiglipConfig`, `ExpertConfig`, `VQVAEConfig`, `ForesightConfig`, `ActionConfig` and `F1Config`
hold every size of the architecture, the values derived from them and the checks that they fit
together. `f1_jax.models.f1.F1Config` adds the JAX model's training and precision switches;
the PyTorch runtime uses these classes as they are. `from_official` reads an exported model's
`config.json` (the official F1 layout, parsed by `f1_common.official_config`). NumPy only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from f1_common import official_config
from f1_common.export_layout import CONFIG_FILE

# Fixed by the architecture (the original's values; config.json does not state them).
RMS_NORM_EPS = 1e-6  # every Gemma RMSNorm
ROPE_BASE = 10_000.0  # Gemma's RoPE max wavelength
PARAM_INITS = ("gemma", "fan_in")


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """SigLIP So400m/14 at 224 px by default."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    eps: float = 1e-6
    out_width: int = 2048
    # Initial value of the (learned) position embedding: "normal" as SigLIP, or "sincos2d" (plus
    # the same small normal), whose row and column phases a small model trained from scratch
    # can read patch positions from within a few hundred steps (a random one takes thousands).
    posemb_init: str = "normal"
    posemb_period: float = 100.0  # longest sincos2d wavelength scale (patches)

    def __post_init__(self) -> None:
        if self.posemb_init not in ("normal", "sincos2d"):
            raise ValueError(
                f"posemb_init must be 'normal' or 'sincos2d', got {self.posemb_init!r}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """One expert of the stack. All experts of a stack must agree on everything but width/mlp."""

    name: str
    width: int
    mlp_dim: int
    depth: int
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    # Initial std of weights trained from scratch. "gemma": normal(0.02) for every projection and
    # the word embedding (HF Gemma's initializer_range, what the original uses for new weights);
    # "fan_in": normal(1/sqrt(fan_in)). The two agree at width ~2048; at width 32-64, 0.02 is 6-9x
    # too small and attention stays uniform for thousands of steps (see docs/builtin_task.md).
    param_init: str = "gemma"

    def __post_init__(self):
        if self.param_init not in PARAM_INITS:
            raise ValueError(
                f"Expert {self.name!r}: param_init must be one of {PARAM_INITS}, "
                f"got {self.param_init!r}."
            )


def check_expert_configs(experts: Sequence[ExpertConfig]) -> None:
    """Raises ValueError unless the experts can share one joint attention."""
    if not experts:
        raise ValueError("The expert list is empty; give at least one ExpertConfig.")
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise ValueError(f"Expert names must be unique, got {names}.")
    first = experts[0]
    for field in ("depth", "num_heads", "num_kv_heads", "head_dim"):
        values = {e.name: getattr(e, field) for e in experts}
        if len(set(values.values())) != 1:
            raise ValueError(
                f"All experts must share {field} (one joint attention per layer); got {values}."
            )
    if first.num_heads % first.num_kv_heads:
        raise ValueError(
            f"num_heads ({first.num_heads}) must be a multiple of num_kv_heads "
            f"({first.num_kv_heads}) for grouped-query attention."
        )


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """Hyper-parameters of VAR's ``VQVAE`` (defaults = ``vae_ch160v4096z32``)."""

    vocab_size: int = 4096
    z_channels: int = 32  # "Cvae": codebook / latent width
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # encoder blocks per level; the decoder uses one more
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5  # Phi mixing ratio r in (1 - r) h + r conv(h)
    share_quant_resi: int = 4  # 0: one Phi per scale, 1: one shared Phi, K>1: K Phis
    default_qresi_counts: int = 0  # Phi count for share_quant_resi == 0 (0: one per scale)
    quant_conv_ks: int = 3
    dropout: float = 0.0
    in_channels: int = 3
    using_znorm: bool = False  # True: cosine-similarity lookup (unused by the release)
    using_sa: bool = True  # attention at the lowest-resolution level
    using_mid_sa: bool = True  # attention in the middle block
    norm_groups: int = 32
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dropout != 0.0:
            # VAR builds the tokenizer in test_mode (eval), so dropout is never active.
            raise ValueError("this inference port supports dropout == 0.0 only")
        if len(self.patch_nums) < 2 or list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(
                f"patch_nums must be >= 2 strictly increasing sizes: {self.patch_nums}"
            )
        for mult in self.ch_mult:
            if (self.ch * mult) % self.norm_groups:
                raise ValueError(
                    f"channels {self.ch * mult} not divisible by {self.norm_groups} groups"
                )

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def downsample_ratio(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Spatial size of the encoder output; VAR requires it to equal the last scale."""
        return self.patch_nums[-1]

    @property
    def image_size(self) -> int:
        return self.latent_size * self.downsample_ratio

    @property
    def num_tokens(self) -> int:
        """Total tokens over all scales (680 at full size)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def var_input_len(self) -> int:
        """Teacher-forcing input length: every scale but the first (679 at full size)."""
        return sum(pn * pn for pn in self.patch_nums[1:])

    @property
    def num_phis(self) -> int:
        if abs(self.quant_resi) <= 1e-6:
            return 0  # VAR uses nn.Identity instead of Phi
        if self.share_quant_resi == 0:
            return self.default_qresi_counts or self.num_scales
        return self.share_quant_resi

    @classmethod
    def full(cls) -> VQVAEConfig:
        """The released ``vae_ch160v4096z32`` (256x256 images, 108,948,355 params)."""
        return cls()

    @classmethod
    def tiny(cls) -> VQVAEConfig:
        """A CPU-test-sized model: 32x32 images -> 16x16x8 latent, the full scale schedule."""
        return cls(
            vocab_size=64,
            z_channels=8,
            ch=32,
            ch_mult=(1, 2),
            num_res_blocks=1,
            norm_groups=8,
        )


@dataclasses.dataclass(frozen=True)
class ForesightConfig:
    """Sizes of the foresight input/output modules and the sampling / masking settings."""

    width: int = 1024  # generation expert width
    z_channels: int = 32  # VQ-VAE latent channels
    vocab_size: int = 4096
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    num_scales: int = 4  # scales predicted: 4 at stages 2/3, 10 at stage 1
    history_frames: int = 4
    temporal_kernel: int = 4
    temporal_stride: int = 4
    top_k: int = 900
    top_p: float = 0.95
    mask_sample_prob: float = 0.1  # stage-1 "mixture" masking: per sample ...
    mask_token_prob: float = 0.15  # ... AND per token

    def __post_init__(self):
        pns = tuple(self.patch_nums)
        if not pns or pns[0] != 1 or list(pns) != sorted(set(pns)):
            # pn[0] = 1: the single scale-0 token is the SOS-style query (VAR's first_l = 1).
            raise ValueError(f"patch_nums must be strictly increasing and start at 1, got {pns}.")
        if not 1 <= self.num_scales <= len(pns):
            raise ValueError(f"num_scales must be in 1..{len(pns)}, got {self.num_scales}.")
        if (
            self.history_frames < self.temporal_kernel
            or self.temporal_stride < 1
            or ((self.history_frames - self.temporal_kernel) // self.temporal_stride + 1 != 1)
        ):
            # The original squeezes the time axis after the conv: exactly one output step.
            raise ValueError(
                f"The temporal conv (kernel {self.temporal_kernel}, stride {self.temporal_stride}) must "
                f"turn {self.history_frames} history frames into exactly one step."
            )
        for name in ("mask_sample_prob", "mask_token_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}.")

    @property
    def num_levels(self) -> int:
        """Number of scales of the tokenizer (rows of the level embedding table)."""
        return len(self.patch_nums)

    @property
    def num_tokens(self) -> int:
        """Output tokens of all scales, sum(pn^2) (680)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def num_cond(self) -> int:
        """History (cond) tokens = next-scale inputs per frame (679); the prefix has num_cond + 1."""
        return self.num_tokens - 1

    @property
    def scale_lengths(self) -> tuple[int, ...]:
        """pn^2 for each predicted scale."""
        return tuple(pn * pn for pn in self.patch_nums[: self.num_scales])

    @property
    def num_predicted(self) -> int:
        """Output tokens actually predicted (30 at 4 scales)."""
        return sum(self.scale_lengths)

    @property
    def scale_starts(self) -> tuple[int, ...]:
        """Offset of each predicted scale within the output tokens, e.g. (0, 1, 5, 14)."""
        return tuple(int(s) for s in np.cumsum((0,) + self.scale_lengths[:-1]))


@dataclasses.dataclass(frozen=True)
class ActionConfig:
    """Sizes of the action expert's projections; `width` is the action expert's width."""

    width: int = 1024
    action_dim: int = 32  # actions are zero-padded to this many dims
    state_dim: int = 32  # states likewise
    chunk_size: int = 50
    num_steps: int = 10
    min_period: float = 4e-3
    max_period: float = 4.0


@dataclasses.dataclass(frozen=True)
class F1Config:
    """Every size of the model. The JAX model's `F1Config` (f1_jax/models/f1.py) adds its training
    and precision switches; `f1_jax/models/sizes.py` holds the named sizes."""

    siglip: SiglipConfig
    und: ExpertConfig
    gen: ExpertConfig
    act: ExpertConfig
    vocab_size: int
    vqvae: VQVAEConfig
    foresight: ForesightConfig
    action: ActionConfig

    def __post_init__(self):
        checks = {
            "siglip.out_width == und.width": self.siglip.out_width == self.und.width,
            "foresight.width == gen.width": self.foresight.width == self.gen.width,
            "action.width == act.width": self.action.width == self.act.width,
            "foresight.patch_nums == vqvae.patch_nums": tuple(self.foresight.patch_nums)
            == tuple(self.vqvae.patch_nums),
            "foresight.z_channels == vqvae.z_channels": self.foresight.z_channels
            == self.vqvae.z_channels,
            "foresight.vocab_size == vqvae.vocab_size": self.foresight.vocab_size
            == self.vqvae.vocab_size,
            "expert names are und, gen, act": (self.und.name, self.gen.name, self.act.name)
            == ("und", "gen", "act"),
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise ValueError(f"Inconsistent F1Config: {broken} must hold.")
        check_expert_configs(self.experts)

    @property
    def experts(self) -> tuple[ExpertConfig, ExpertConfig, ExpertConfig]:
        """In sequence order: understanding, generation, action."""
        return (self.und, self.gen, self.act)


# --- tables derived from the sizes, the same in both runtimes ----------------------------------


def phi_index(si: int, num_scales: int, num_phis: int) -> int:
    """Which Phi VAR applies at scale ``si``: ``argmin |ticks - si / (SN - 1)|``.

    ``ticks = linspace(1/(3K), 1 - 1/(3K), K)`` when K == 4, else
    ``linspace(1/(2K), 1 - 1/(2K), K)``; K=4, SN=10 gives [0,0,1,1,1,2,2,3,3,3].
    """
    k = num_phis
    margin = 1 / 3 / k if k == 4 else 1 / 2 / k
    ticks = np.linspace(margin, 1 - margin, k)
    return int(np.argmin(np.abs(ticks - si / (num_scales - 1))))


def level_ids(patch_nums: tuple[int, ...]) -> np.ndarray:
    """[sum pn^2] int32: the scale index of each output token (the original's `lvl_1L`)."""
    return np.concatenate([np.full(pn * pn, i, np.int32) for i, pn in enumerate(patch_nums)])


def generation_block_starts(config: ForesightConfig) -> np.ndarray:
    """Block starts of the generation tokens: the `num_cond + 1` prefix (680 tokens at full
    size), then one block per predicted scale 1 .. S-1. int32 [num_cond + sum(scale_lengths)]."""
    starts = [0] * config.num_cond + [1]
    for length in config.scale_lengths[1:]:
        starts += [1] + [0] * (length - 1)
    return np.asarray(starts, np.int32)


def action_block_starts(chunk_size: int) -> np.ndarray:
    """Block starts of the action tokens: the state token is one block, the chunk another.
    int32 [1 + chunk_size]."""
    starts = np.zeros(1 + chunk_size, np.int32)
    starts[:2] = 1
    return starts


def from_official(official: Mapping[str, Any]) -> F1Config:
    """The official F1 config.json dict (any size) -> F1Config (sizes only).

    Everything the file does not state is fixed by the architecture and takes the original's
    value. An f1-jax export also carries the run's own settings under `f1_jax.config`: its
    foresight sampling rule (top-k / top-p) is the one the run's JAX policy samples with.
    """
    sizes = official_config.read_sizes(official)
    ours = (sizes["embedded"] or {}).get("foresight", {})
    vqvae = VQVAEConfig(**sizes["vqvae"])
    foresight = ForesightConfig(
        z_channels=vqvae.z_channels,
        vocab_size=vqvae.vocab_size,
        patch_nums=vqvae.patch_nums,
        top_k=int(ours.get("top_k", ForesightConfig.top_k)),
        top_p=float(ours.get("top_p", ForesightConfig.top_p)),
        **sizes["foresight"],
    )
    experts = {name: ExpertConfig(name, **e) for name, e in sizes["experts"].items()}
    return F1Config(
        siglip=SiglipConfig(**sizes["siglip"]),
        und=experts["und"],
        gen=experts["gen"],
        act=experts["act"],
        vocab_size=sizes["vocab_size"],
        vqvae=vqvae,
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
