"""F1 inference: understanding tokens, history codes, foresight on a KV cache, Euler denoising.

    model = load_model(export_dir, dtype="bf16", device="cuda")   # f1_torch.loader
    codes = model.frame_codes(frames)                  # [N, h, w, 3] -> [N, sum(pn^2)]
    actions, foresight = model.sample_actions(inputs, history_codes=codes.view(1, 4, -1),
                                              return_foresight=True)

The same steps as f1_jax/models/f1.py `sample_actions`: a prefix pass over the understanding
tokens and the generation prefix fills the KV cache; each foresight scale samples its codes and
appends the next scale's tokens to the cache; the action expert then reads the cache (never
writes it) for `num_steps` Euler steps. Inputs are the observation contract's example
(f1_common.transforms.ObservationSpec.example_spec) with a batch axis, as torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from f1_common.model_config import F1Config, action_block_starts
from f1_torch import masks
from f1_torch.action import ActionInputs, euler_sample
from f1_torch.foresight import ForesightIO, sample_codes
from f1_torch.gemma import ExpertStack, KVCache
from f1_torch.precision import compute_dtype, exact_fp32
from f1_torch.siglip import SiglipVision
from f1_torch.vqvae import VQVAE

Inputs = dict[str, torch.Tensor]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Channels-last images -> fp32 NCHW in [-1, 1]: uint8 maps [0, 255] -> [-1, 1] (x / 127.5 -
    1, as the JAX model); float inputs are taken to be in [-1, 1] already.
    [..., H, W, 3] -> [..., 3, H, W]."""
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    return x.movedim(-1, -3)


class F1(nn.Module):
    """SigLIP + projector, word embedding, the three-expert stack, foresight and action I/O, and
    the VQ-VAE.

    dtype: 'fp32' / 'bf16' / 'fp16', the matmul dtype of SigLIP and the experts
      (f1_torch/precision.py lists what stays fp32).
    attention: 'eager' (explicit fp32 logits and softmax; the parity reference) or 'sdpa'
      (torch's fused scaled_dot_product_attention) in SigLIP and the experts; the VQ-VAE's
      attention stays eager, so frame codes do not depend on it.
    rope: 'reciprocal' (positions times the fp32 reciprocal of the timescale, as f1_jax) or
      'divide' (positions / timescale, as the original F1 code: the exact-fp32 mode).
    """

    def __init__(
        self,
        config: F1Config,
        dtype: str | torch.dtype = "fp32",
        attention: str = "eager",
        rope: str = "reciprocal",
    ):
        super().__init__()
        self.config = config
        self.dtype = compute_dtype(dtype)
        c = config
        self.siglip = SiglipVision(c.siglip, self.dtype, attention)
        self.projector = nn.Linear(c.siglip.width, c.siglip.out_width, dtype=self.dtype)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.und.width)
        self.stack = ExpertStack(c.experts, self.dtype, attention, rope)
        self.foresight = ForesightIO(c)
        self.action_io = ActionInputs(c.action)
        self.vae = VQVAE(c.vqvae)

    @property
    def device(self) -> torch.device:
        return self.foresight.wm_out_proj.weight.device

    def compile_parts(self) -> None:
        """torch.compile (in place) the parts that run on every call: SigLIP and the expert
        stack. Shapes are static per call site (prefix pass, each foresight scale, the
        denoising step), so each compiles once; the VQ-VAE stays eager (its codes must not
        depend on kernel choices)."""
        self.siglip.compile(dynamic=False)
        self.stack.compile(dynamic=False)

    # --- token groups ----------------------------------------------------------------------

    def embed_understanding(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera patch tokens then instruction tokens.

        inputs: images [B, C, S, S, 3] (uint8, or float in [-1, 1]), image_mask [B, C] bool,
          tokens [B, Lt] int, token_mask [B, Lt] bool.
        Returns:
          tokens [B, C * P + Lt, und.width] in the residual stream's dtype, pad [B, C * P + Lt]
          bool.
        """
        images, present = inputs["images"], inputs["image_mask"].bool()
        batch, cams = images.shape[:2]
        num_patches, width = self.config.siglip.num_patches, self.config.und.width
        flat = present.reshape(-1)
        stream = self.stack.stream_dtype
        patches = torch.zeros(batch * cams, num_patches, width, dtype=stream, device=images.device)
        if flat.any():
            # Absent cameras are masked out of attention (keys and queries), so their tokens can
            # be anything finite: skip SigLIP for them, the result is the same.
            chosen = to_unit_range(images.reshape(batch * cams, *images.shape[2:])[flat])
            patches[flat] = self.projector(self.siglip(chosen)).to(stream)
        patches = patches.view(batch, cams * num_patches, width)
        image_pad = present.repeat_interleave(num_patches, dim=1)
        scale = float(np.sqrt(np.float32(width)))
        words = (self.embed_tokens(inputs["tokens"].long()).float() * scale).to(stream)
        tokens = torch.cat([patches, words], dim=1)
        return tokens, torch.cat([image_pad, inputs["token_mask"].bool()], dim=1)

    def frame_codes(self, frames: torch.Tensor) -> torch.Tensor:
        """The frozen VQ-VAE's multi-scale codes of frames, scales concatenated.

        frames: [N, h, w, 3] uint8 (or float in [-1, 1]). Returns int64 [N, sum(pn^2)].
        Each frame is encoded on its own: convolution kernels chosen by batch size change the
        latent in its last bits (measured ~1e-5 on CPU), which at a near-tie changes a code, and
        a frame's codes must not depend on which frames it was encoded with (frame-code cache).
        """
        with exact_fp32():
            x = to_unit_range(frames)
            return torch.cat([self.vae.frame_codes(x[i : i + 1]) for i in range(x.shape[0])])

    def history_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """Next-scale inputs of the history frames rebuilt from their codes (VAR
        `idxBl_to_var_input`): [B, T, sum(pn^2)] -> fp32 [B, T, sum(pn^2) - 1, z]."""
        batch, steps = codes.shape[:2]
        with exact_fp32():
            inputs = self.vae.history_inputs(codes.reshape(batch * steps, -1))
        return inputs.view(batch, steps, *inputs.shape[1:])

    # --- inference ---------------------------------------------------------------------------

    def sample_foresight(
        self,
        und_tokens: torch.Tensor,
        und_pad: torch.Tensor,
        history_codes: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], KVCache, torch.Tensor]:
        """Prefix pass, then next-scale sampling scale by scale on the growing KV cache.

        Args:
          und_tokens [B, U, und.width], und_pad [B, U]; history_codes [B, T, sum(pn^2)].
        Returns:
          foresight: tokens [B, n] int64 and logits [B, n, V] of the n predicted codes, f_hat
            [B, z, L, L] (their accumulated latent); the KV cache (room left for the action
            suffix) and the prefix's pad mask [B, P].
        """
        c, vq = self.config, self.vae.quantize
        lengths = c.foresight.scale_lengths
        gen_prefix = self.foresight.embed_history(self.history_inputs(history_codes))
        pad, starts = masks.sequence_layout(und_pad, c.foresight)
        mask, positions = masks.block_attention_mask(pad, starts), masks.positions_from_pad(pad)
        batch, total = pad.shape
        cache = self.stack.new_cache(batch, total + 1 + c.action.chunk_size, pad.device)
        end = und_tokens.shape[1] + gen_prefix.shape[1]
        # Only the scale-0 query's output (the last prefix token) is read.
        outs = self.stack(
            [und_tokens, gen_prefix, None],
            positions[:, :end],
            mask[:, :end, :end],
            cache,
            commit=True,
            keep=[None, slice(-1, None), None],
        )
        logits = self.foresight.logits(outs[1])
        side, z = c.vqvae.latent_size, c.vqvae.z_channels
        f_hat = torch.zeros(batch, z, side, side, device=pad.device)
        all_tokens, all_logits, produced, next_input = [], [], 0, None
        for si, length in enumerate(lengths):
            if si > 0:
                start, end = end, end + length
                x = self.foresight.embed_scale_inputs(next_input, produced)
                outs = self.stack(
                    [None, x, None],
                    positions[:, start:end],
                    mask[:, start:end, :end],
                    cache,
                    commit=True,
                    keep=[None, slice(None), None],
                )
                logits = self.foresight.logits(outs[1])
            idx = sample_codes(logits, c.foresight.top_k, c.foresight.top_p, generator)
            with exact_fp32():
                f_hat, next_input = vq.next_input(si, f_hat, idx)
            all_tokens.append(idx)
            all_logits.append(logits)
            produced += length
        foresight = {
            "tokens": torch.cat(all_tokens, dim=1),
            "logits": torch.cat(all_logits, dim=1),
            "f_hat": f_hat,
        }
        return foresight, cache, pad

    def velocity(
        self,
        cache: KVCache,
        prefix_pad: torch.Tensor,
        state: torch.Tensor,
        x_t: torch.Tensor,
        t: np.ndarray,
    ) -> torch.Tensor:
        """One denoising evaluation on the cached prefix (the cache is read, never grown).

        state [B, state_dim] (zero-padded), x_t [B, chunk, action_dim], t float32 [B] (host).
        Returns fp32 velocities [B, chunk, action_dim]."""
        batch, chunk = x_t.shape[:2]
        pad = torch.ones(batch, 1 + chunk, dtype=torch.bool, device=x_t.device)
        starts = torch.from_numpy(action_block_starts(chunk)).to(x_t.device).expand(batch, -1)
        mask = masks.suffix_attention_mask(prefix_pad, pad, starts)
        positions = masks.positions_from_pad(pad, prefix_pad.long().sum(dim=1))
        suffix = self.action_io(state, x_t, t)
        outs = self.stack(
            [None, None, suffix],
            positions,
            mask,
            cache,
            commit=False,
            keep=[None, None, slice(1, None)],  # the state token's output is not read
        )
        return self.action_io.velocity(outs[2])

    def decode_foresight(self, f_hat: torch.Tensor) -> torch.Tensor:
        """The foresight latent [B, z, L, L] decoded to images [B, h, w, 3] in [-1, 1]."""
        with exact_fp32():
            return self.vae.fhat_to_img(f_hat).movedim(1, -1)

    @torch.inference_mode()
    def sample_actions(
        self,
        inputs: Inputs,
        history_codes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        return_foresight: bool = False,
        decode: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Prefix + foresight, then Euler denoising: f1_jax's `sample_actions`.

        Args:
          inputs: images [B, C, S, S, 3], image_mask [B, C], tokens [B, Lt], token_mask [B, Lt],
            state [B, <= state_dim], and gen_frames [B, T, h, w, 3] (the first T = 4 are the
            history) unless history_codes [B, 4, sum(pn^2)] (the frames' codes, e.g. from a
            frame-code cache) are given. Moved to the model's device.
          generator: randomness of the foresight sampling and of the noise (default: torch's).
          noise: [B, chunk, action_dim] starting noise (not modified); default N(0, 1).
          decode: with return_foresight, also decode the foresight to an image (the VQ-VAE
            decoder, the largest single cost at 256 px).
        Returns:
          actions [B, chunk, action_dim] fp32 (normalised units); with return_foresight also
          {"tokens" [B, n], "logits" [B, n, V], "f_hat" [B, z, L, L], and if decode "image"
          [B, h, w, 3] in [-1, 1]}.
        """
        c, device = self.config, self.device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with exact_fp32():
            und_tokens, und_pad = self.embed_understanding(inputs)
            if history_codes is not None:
                history_codes = history_codes.to(device)
            else:
                frames = inputs["gen_frames"][:, : c.foresight.history_frames]
                codes = self.frame_codes(frames.reshape(-1, *frames.shape[2:]))
                history_codes = codes.view(frames.shape[0], frames.shape[1], -1)
            foresight, cache, prefix_pad = self.sample_foresight(
                und_tokens, und_pad, history_codes, generator
            )
            batch = prefix_pad.shape[0]
            state = _pad_to(inputs["state"], c.action.state_dim)
            if noise is None:
                noise = torch.randn(
                    batch,
                    c.action.chunk_size,
                    c.action.action_dim,
                    generator=generator,
                    device=device,
                )

            def velocity_fn(x_t: torch.Tensor, t: np.ndarray) -> torch.Tensor:
                return self.velocity(cache, prefix_pad, state, x_t, t)

            actions = euler_sample(velocity_fn, noise.to(device), c.action.num_steps)
        if not return_foresight:
            return actions
        if decode:
            foresight["image"] = self.decode_foresight(foresight["f_hat"])
        return actions, foresight


def _pad_to(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-pads the last axis to `dim` (states and actions are padded to 32 in F1)."""
    if x.shape[-1] > dim:
        raise ValueError(f"Got {x.shape[-1]} dims, more than the model's {dim}.")
    return torch.nn.functional.pad(x.float(), (0, dim - x.shape[-1]))
