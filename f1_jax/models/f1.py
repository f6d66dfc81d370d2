"""The whole F1 model: token assembly, the U -> G -> A mask, the training loss and sampling.

One sequence per sample, in expert order (docs/model.md, "Token layout"):
  understanding  camera patch tokens + instruction tokens        block 0 (bidirectional)
  generation     sos + 678 history tokens                         block 0 (with understanding)
                 token 679: last history token = scale-0 query   its own block
                 next-scale inputs of scales 1 .. S-1             one block per scale
  action         state token                                      its own block
                 noisy action chunk                               one bidirectional block
Each block sees itself and every earlier block; padding is invisible. Positions are
`cumsum(pad) - 1` over the whole sequence.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from f1_common import model_config, transforms
from f1_common.model_config import ForesightConfig
from f1_jax.models import masks
from f1_jax.models.action import (
    ActionInputs,
    euler_sample,
    flow_matching_loss,
    noisy_actions,
    sample_flow_time,
)
from f1_jax.models.foresight import (
    ForesightIO,
    mix_mask_embedding,
    sample_top_k_top_p,
)
from f1_jax.models.gemma import ATTENTION_KINDS, Embedder, ExpertStack, KVCache, initializer
from f1_jax.models.precision import get_precision
from f1_jax.models.siglip import SiglipEncoder
from f1_jax.models.vqvae import VQVAE

FORESIGHT_TRAINING_MODES = ("sampled", "teacher_forcing")
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class F1Config(model_config.F1Config):
    """The model's sizes (`f1_common.model_config.F1Config`, shared with the PyTorch runtime) and
    the JAX model's training and precision switches. `f1_jax/models/sizes.py` holds the named
    sizes."""

    precision: str = "default"
    remat_policy: str = "none"
    # "sampled": the original stage-2/3 path, coarser scales are sampled from the model's own logits.
    # "teacher_forcing": ground-truth next-scale inputs with the mask-embedding mixture (stage 1).
    foresight_training: str = "sampled"
    # Sampled training: run the prefix (cameras, instruction, history) once, with gradient, and
    # both sample the coarse scales and compute the loss over its KV cache (the block mask keeps
    # the prefix blind to what follows, so this is the joint pass, computed once). False: the
    # original's order, a gradient-free prefix pass to sample, then one joint pass.
    reuse_prefix: bool = True
    # Unroll the layer scans: more compile time; only for XLA's FLOP count, which counts a loop
    # body once (benchmarks/bench_train_step.py).
    unroll_layers: bool = False
    # The joint attention of the training passes: "xla", or "splash" (TPU splash attention,
    # skipping the tiles the block mask never attends; f1_jax/models/splash.py), or
    # "splash_interpret" (the same kernel in Pallas's interpreter: tests on a CPU).
    attention: str = "xla"
    # The frozen VQ-VAE encodes the frames one time step at a time (a loop over the T frames of
    # [B, T, h, w, 3]) instead of all B x T at once: its full-resolution activations, the step's
    # memory peak when frames are encoded in the step, shrink T-fold. The same codes (tested).
    encode_frames_by_step: bool = True
    action_loss_weight: float = 1.0
    foresight_loss_weight: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.foresight_training not in FORESIGHT_TRAINING_MODES:
            raise ValueError(
                f"foresight_training must be one of {FORESIGHT_TRAINING_MODES}, "
                f"got {self.foresight_training!r}."
            )
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}.")


# ---------------------------------------------------------------------------------------------
# Sequence layout: which token is real and where each attention block starts.


def layout_block_starts(
    num_und: int, foresight: ForesightConfig, chunk_size: int | None
) -> np.ndarray:
    """Block starts of [understanding | generation | action (if chunk_size)]: int32 [N], the
    same for every example (only which understanding tokens are real differs)."""
    groups = [np.zeros(num_und, np.int32), model_config.generation_block_starts(foresight)]
    if chunk_size is not None:
        groups.append(model_config.action_block_starts(chunk_size))
    return np.concatenate(groups)


def sequence_layout(
    und_pad: jax.Array, foresight: ForesightConfig, chunk_size: int | None
) -> tuple[jax.Array, jax.Array]:
    """Pad mask and block starts of [understanding | generation | action (if chunk_size)].

    Args:
      und_pad: [B, U] bool, the understanding tokens' pad mask.
    Returns:
      pad [B, N] bool and block_start [1, N] int32 (the same for every example: kept [1, N], a
      [B, N] copy of it would be a constant the size of the global batch on every device).
    """
    batch, num_und = und_pad.shape
    starts = layout_block_starts(num_und, foresight, chunk_size)
    pad = jnp.ones((batch, starts.size), bool).at[:, :num_und].set(und_pad.astype(bool))
    return pad, jnp.asarray(starts)[None]


def _codes_of_step(vqvae: VQVAE, carry: None, frames: jax.Array) -> tuple[None, jax.Array]:
    """The loop body of `F1.frame_codes`: codes [B, L] of one time step's frames [B, h, w, 3]."""
    return carry, jnp.concatenate(vqvae.img_to_idx_list(frames), axis=1)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean token cross-entropy in fp32. logits [B, n, V], labels [B, n]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))


# ---------------------------------------------------------------------------------------------


class F1(nn.Module):
    """F1: SigLIP + three Gemma experts in one joint attention + foresight + flow matching.

    Inputs are dicts of arrays (all images NHWC floats in [-1, 1]):
      images [B, C, H, W, 3], image_masks [B, C] bool, tokens [B, L] int32, token_mask [B, L] bool,
      state [B, state_dim], history [B, 4, h, w, 3] (oldest first);
      training also: target_frame [B, h, w, 3], actions [B, chunk, action_dim],
      action_is_pad [B, chunk] bool.
    """

    config: F1Config

    def setup(self):
        c = self.config
        precision = get_precision(c.precision)
        self.siglip = SiglipEncoder(c.siglip, precision, c.remat_policy, c.unroll_layers)
        self.embedder = Embedder(c.vocab_size, c.und.width, initializer(c.und, c.und.width))
        self.stack = ExpertStack(
            c.experts,
            precision,
            remat_policy=c.remat_policy,
            unroll=c.unroll_layers,
            attention=c.attention,
        )
        self.foresight = ForesightIO(c.foresight)
        self.action_io = ActionInputs(c.action, precision)
        self.vqvae = VQVAE(c.vqvae)
        self._precision = precision

    # --- token groups ----------------------------------------------------------------------------

    def _layout(
        self, und_pad: jax.Array, chunk_size: int | None
    ) -> tuple[jax.Array, jax.Array | masks.BlockMask]:
        """The sequence's pad [B, N] and its block mask: dense for XLA's attention, factored
        (`masks.BlockMask`) for splash attention."""
        pad, starts = sequence_layout(und_pad, self.config.foresight, chunk_size)
        if self.config.attention == "xla":
            return pad, masks.block_attention_mask(pad, starts)
        static = layout_block_starts(und_pad.shape[1], self.config.foresight, chunk_size)
        return pad, masks.BlockMask.from_layout(pad, static)

    def embed_understanding(self, obs: Batch) -> tuple[jax.Array, jax.Array]:
        """Camera patch tokens then instruction tokens: [B, U, und.width] and pad [B, U]."""
        images = obs["images"]
        batch, cams = images.shape[:2]
        patches = self.siglip(images.reshape(batch * cams, *images.shape[2:]))
        patches = patches.reshape(batch, cams * patches.shape[1], patches.shape[2])
        image_pad = jnp.repeat(obs["image_masks"].astype(bool), patches.shape[1] // cams, axis=1)
        words = self._precision.cast(self.embedder(obs["tokens"]))
        tokens = jnp.concatenate([self._precision.cast(patches), words], axis=1)
        return tokens, jnp.concatenate([image_pad, obs["token_mask"].astype(bool)], axis=1)

    def frame_codes(self, frames: jax.Array) -> jax.Array:
        """The frozen VQ-VAE's multi-scale codes of [B, T, h, w, 3] frames: int32 [B, T, L],
        each frame's per-scale index maps concatenated (L = sum(pn^2), 680 at full size)."""
        batch, steps = frames.shape[:2]
        if self.config.encode_frames_by_step and steps > 1:
            scan = nn.scan(_codes_of_step, variable_broadcast="params", split_rngs={"params": False})
            _, codes = scan(self.vqvae, None, jnp.moveaxis(frames, 1, 0))  # [T, B, L]
            return jnp.moveaxis(codes, 0, 1)
        idx_list = self.vqvae.img_to_idx_list(frames.reshape(batch * steps, *frames.shape[2:]))
        return jnp.concatenate(idx_list, axis=1).reshape(batch, steps, -1)

    def codes_to_inputs(self, codes: jax.Array) -> jax.Array:
        """Multi-scale codes [B, T, L] -> next-scale inputs [B, T, L - 1, z] (teacher-forcing
        layout), exactly: the codes are all the VQ-VAE keeps of a frame."""
        batch, steps = codes.shape[:2]
        var_input = self.vqvae.idx_list_to_var_input(self._scales(codes.reshape(batch * steps, -1)))
        return jax.lax.stop_gradient(var_input.reshape(batch, steps, *var_input.shape[1:]))

    def encode_frames(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The frozen VQ-VAE on [B, T, h, w, 3] frames.

        Returns:
          next-scale inputs [B, T, 679, z] (teacher-forcing layout) and code indices [B, T, 680].
        """
        codes = self.frame_codes(frames)
        return self.codes_to_inputs(codes), codes

    def sample_foresight(
        self, und_tokens: jax.Array, und_pad: jax.Array, gen_prefix: jax.Array, rng: jax.Array
    ) -> tuple[dict[str, jax.Array], KVCache, jax.Array]:
        """Prefix pass, then next-scale sampling scale by scale on the growing KV cache.

        Returns:
          foresight: tokens [B, n] int32, logits [B, n, V], scale_inputs [B, n - s0, z] (the sampled
            next-scale inputs fed back), f_hat [B, L, L, z]; n = tokens of the predicted scales.
          The KV cache over understanding + all generation tokens, and its pad mask [B, P].
        """
        pad, mask = self._layout(und_pad, chunk_size=None)
        positions = masks.positions_from_pad(pad)
        end = und_tokens.shape[1] + gen_prefix.shape[1]
        (_, gen_out, _), cache = self.stack(
            [und_tokens, gen_prefix, None], positions[:, :end], mask[:, :end, :end]
        )
        foresight, cache = self.sample_scales(gen_out[:, -1:], cache, positions, mask, end, rng)
        return foresight, cache, pad

    def sample_scales(
        self,
        query: jax.Array,
        cache: KVCache,
        positions: jax.Array,
        mask: jax.Array,
        end: int,
        rng: jax.Array,
    ) -> tuple[dict[str, jax.Array], KVCache]:
        """Next-scale sampling after the prefix: scale 0 from the prefix's last output, each later
        scale from its inputs run over the growing KV cache.

        Args:
          query: [B, 1, gen.width] the scale-0 query's output (the prefix's last token).
          cache: the prefix's KV cache ([depth, B, end, K, H]).
          positions, mask: [B, N] and [B, N, N] of a sequence layout whose first `end` tokens are
            the prefix and whose next ones the generation scales.
        Returns:
          the foresight dict of `sample_foresight` and the cache grown by every fed-back scale.
        """
        fc = self.config.foresight
        batch, z = query.shape[0], fc.z_channels
        side = fc.patch_nums[-1]
        f_hat = jnp.zeros((batch, side, side, z), jnp.float32)
        logits = self.foresight.logits(query)
        all_tokens, all_logits, fed_back = [], [], []
        for si in range(fc.num_scales):
            if si > 0:
                start = end
                end = start + fc.scale_lengths[si]
                x = self.foresight.embed_scale_inputs(
                    next_input.reshape(batch, -1, z), fc.scale_starts[si]
                )
                fed_back.append(next_input.reshape(batch, -1, z))
                (_, gen_out, _), cache = self.stack(
                    [None, x, None],
                    positions[:, start:end],
                    mask[:, start:end, :end],
                    kv_cache=cache,
                )
                logits = self.foresight.logits(gen_out)
            idx = sample_top_k_top_p(jax.random.fold_in(rng, si), logits, fc.top_k, fc.top_p)
            f_hat, next_input = self.vqvae.next_autoregressive_input(
                si, f_hat, self.vqvae.embed_scale(idx)
            )
            all_tokens.append(idx)
            all_logits.append(logits)
        scale_inputs = (
            jnp.concatenate(fed_back, axis=1) if fed_back else jnp.zeros((batch, 0, z), jnp.float32)
        )
        foresight = {
            "tokens": jnp.concatenate(all_tokens, axis=1),
            "logits": jnp.concatenate(all_logits, axis=1),
            "scale_inputs": scale_inputs,
            "f_hat": f_hat,
        }
        return foresight, cache

    # --- inference pieces (composed by `sample_actions`) ----------------------------------------

    def encode_prefix(
        self, obs: Batch, rng: jax.Array
    ) -> tuple[dict[str, jax.Array], KVCache, jax.Array]:
        """Everything before denoising: understanding, history, foresight. See `sample_foresight`.

        The history comes as frames (obs["history"]) or, already encoded, as their multi-scale
        codes (obs["history_codes"] int32 [B, T, L], see `frame_codes`: a closed-loop policy
        encodes each frame once).
        """
        und_tokens, und_pad = self.embed_understanding(obs)
        if "history_codes" in obs:
            history = self.codes_to_inputs(obs["history_codes"])
        else:
            history, _ = self.encode_frames(obs["history"])
        return self.sample_foresight(
            und_tokens, und_pad, self.foresight.embed_history(history), rng
        )

    def velocity(
        self, cache: KVCache, prefix_pad: jax.Array, state: jax.Array, x_t: jax.Array, t: jax.Array
    ) -> jax.Array:
        """One denoising evaluation: the action expert reads the prefix cache (never writes it)."""
        batch, chunk = x_t.shape[:2]
        suffix = self.action_io(self._pad_to(state, self.config.action.state_dim), x_t, t)
        pad = jnp.ones((batch, 1 + chunk), bool)
        starts = jnp.asarray(model_config.action_block_starts(chunk))[None]
        mask = masks.suffix_attention_mask(prefix_pad, pad, starts)
        positions = masks.positions_from_pad(pad, offset=jnp.sum(prefix_pad, axis=1))
        (_, _, out), _ = self.stack([None, None, suffix], positions, mask, kv_cache=cache)
        return self.action_io.velocity(out[:, 1:])

    def decode_foresight(self, f_hat: jax.Array) -> jax.Array:
        """The foresight's accumulated latent decoded to an image [B, h, w, 3] in [-1, 1]."""
        return self.vqvae.fhat_to_img(f_hat)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """A frame's multi-scale codes [B, L] decoded to an image [B, h, w, 3] in [-1, 1]."""
        return self.vqvae.idx_list_to_img(self._scales(codes))

    def _scales(self, codes: jax.Array) -> list[jax.Array]:
        """[B, L] concatenated codes -> the per-scale index maps [B, pn^2]."""
        sizes = [pn * pn for pn in self.config.vqvae.patch_nums]
        starts = np.cumsum([0] + sizes[:-1])
        return [codes[:, s : s + n] for s, n in zip(starts, sizes)]

    # --- training -----------------------------------------------------------------------------

    def __call__(self, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The training loss `w_a * action MSE + w_f * foresight CE` and metrics."""
        c, fc = self.config, self.config.foresight
        rng_fore, rng_mask, rng_time, rng_noise = jax.random.split(rng, 4)
        und_tokens, und_pad = self.embed_understanding(batch)
        if "target_codes" in batch:  # frames stored as codes: no VQ-VAE in the step
            codes = jnp.concatenate([batch["history_codes"], batch["target_codes"][:, None]], 1)
            var_inputs = self.codes_to_inputs(codes)
        else:
            frames = jnp.concatenate([batch["history"], batch["target_frame"][:, None]], axis=1)
            var_inputs, codes = self.encode_frames(frames)
        gen_prefix = self.foresight.embed_history(var_inputs[:, :-1])
        targets = codes[:, -1, : fc.num_predicted]

        with_actions = c.action_loss_weight > 0 or self.is_initializing()
        act_tokens = None
        if with_actions:
            actions = self._pad_to(batch["actions"], c.action.action_dim)
            t = sample_flow_time(rng_time, actions.shape[0])
            noise = jax.random.normal(rng_noise, actions.shape, jnp.float32)
            act_tokens = self.action_io(
                self._pad_to(batch["state"], c.action.state_dim),
                noisy_actions(actions, noise, t),
                t,
            )
        pad, mask = self._layout(und_pad, c.action.chunk_size if with_actions else None)
        positions = masks.positions_from_pad(pad)
        gen_prefix = self._precision.cast(gen_prefix)

        num_fed = fc.num_predicted - fc.scale_lengths[0]
        if c.foresight_training == "sampled" and c.reuse_prefix:
            # The prefix once, with gradient; the scales are sampled on its cache (no gradient:
            # their inputs are stop_gradient), then scales + actions run over the same cache.
            end = und_tokens.shape[1] + gen_prefix.shape[1]
            (_, prefix_out, _), cache = self.stack(
                [und_tokens, gen_prefix, None], positions[:, :end], mask[:, :end, :end]
            )
            foresight, _ = self.sample_scales(
                jax.lax.stop_gradient(prefix_out[:, -1:]),
                jax.lax.stop_gradient(cache),
                positions,
                mask,
                end,
                rng_fore,
            )
            scale_inputs = jax.lax.stop_gradient(foresight["scale_inputs"])
            scale_tokens = self.foresight.embed_scale_inputs(scale_inputs, fc.scale_lengths[0])
            if num_fed or act_tokens is not None:
                (_, gen_out, act_out), _ = self.stack(
                    [None, self._precision.cast(scale_tokens) if num_fed else None, act_tokens],
                    positions[:, end:],
                    mask[:, end:],
                    kv_cache=cache,
                )
            gen_out = (
                prefix_out[:, -1:]
                if not num_fed
                else jnp.concatenate([prefix_out[:, -1:].astype(gen_out.dtype), gen_out], axis=1)
            )
        else:
            if c.foresight_training == "sampled":
                foresight, _, _ = self.sample_foresight(und_tokens, und_pad, gen_prefix, rng_fore)
                scale_inputs = jax.lax.stop_gradient(foresight["scale_inputs"])
            else:
                scale_inputs = mix_mask_embedding(
                    rng_mask,
                    var_inputs[:, -1, :num_fed],
                    self.foresight.mask_embedding_value(),
                    fc.mask_sample_prob,
                    fc.mask_token_prob,
                )
            gen_tokens = jnp.concatenate(
                [
                    gen_prefix,
                    self._precision.cast(
                        self.foresight.embed_scale_inputs(scale_inputs, fc.scale_lengths[0])
                    ),
                ],
                axis=1,
            )
            (_, gen_out, act_out), _ = self.stack(
                [und_tokens, gen_tokens, act_tokens], positions, mask
            )
            first = fc.num_cond  # the scale-0 query is the last history token
            gen_out = gen_out[:, first : first + fc.num_predicted]

        logits = self.foresight.logits(gen_out)
        foresight_loss = _cross_entropy(logits, targets)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        metrics = {
            "foresight_loss": foresight_loss,
            "wm_acc_mean": jnp.mean(correct),
            "wm_acc_tail": jnp.mean(correct[:, -fc.scale_lengths[-1] :]),
        }
        loss = c.foresight_loss_weight * foresight_loss
        if with_actions:
            velocity = self.action_io.velocity(act_out[:, 1:])
            action_loss = flow_matching_loss(velocity, noise, actions, batch["action_is_pad"])
            metrics["action_loss"] = action_loss
            loss = loss + c.action_loss_weight * action_loss
        if self.is_initializing():
            self.vqvae(batch["history"][:, 0])  # creates the decoder and every Phi, unused
        metrics["loss"] = loss
        return loss, metrics

    @staticmethod
    def _pad_to(x: jax.Array, dim: int) -> jax.Array:
        """Zero-pads the last axis to `dim` (states and actions are padded to 32 in F1)."""
        if x.shape[-1] > dim:
            raise ValueError(f"Got {x.shape[-1]} dims, more than the model's {dim}.")
        return jnp.pad(x.astype(jnp.float32), [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])])


def sample_actions(
    model: F1,
    params: Any,
    obs: Batch,
    rng: jax.Array,
    noise: jax.Array | None = None,
    *,
    return_foresight: bool = False,
) -> jax.Array | tuple[jax.Array, dict]:
    """Prefix pass + foresight scales, then `num_steps` Euler steps on the cached prefix.

    Args:
      obs: the observation dict (see F1); rng: key for the foresight sampling and the noise.
      noise: optional [B, chunk, action_dim] starting noise (not modified).
    Returns:
      actions [B, chunk, action_dim] (normalised units), and with `return_foresight` a dict of the
      foresight tokens [B, n], logits [B, n, V], f_hat and the decoded image [B, h, w, 3].
    """
    c = model.config
    rng_fore, rng_noise = jax.random.split(rng)
    foresight, cache, prefix_pad = model.apply(params, obs, rng_fore, method=F1.encode_prefix)
    batch = prefix_pad.shape[0]
    if noise is None:
        noise = jax.random.normal(rng_noise, (batch, c.action.chunk_size, c.action.action_dim))

    def velocity_fn(x_t, t):
        return model.apply(params, cache, prefix_pad, obs["state"], x_t, t, method=F1.velocity)

    actions = euler_sample(velocity_fn, noise, c.action.num_steps)
    if not return_foresight:
        return actions
    foresight = dict(foresight)
    foresight["image"] = model.apply(params, foresight["f_hat"], method=F1.decode_foresight)
    return actions, foresight


# ---------------------------------------------------------------------------------------------
# Inputs: the observation contract's sizes for this model, and the batch -> model-input step.

# Fields of a recipe's `data` section that shape the model's inputs beyond the model's own sizes.
RECIPE_OBSERVATION_FIELDS = (
    "cameras",
    "gen_camera",
    "history_offsets",
    "target_offsets",
    "max_token_len",
)


def observation_spec(
    config: F1Config, data: Mapping[str, Any] | None = None
) -> transforms.ObservationSpec:
    """The observation contract of this model: image sizes, chunk and padding widths come from
    the model; cameras, frame offsets and token budget from `data` (a recipe's data section, or
    any mapping with some of RECIPE_OBSERVATION_FIELDS; the others keep their defaults), and whether
    training batches carry frames as VQ-VAE codes (`data.frame_codes`, a bool there)."""
    fields = {k: data[k] for k in RECIPE_OBSERVATION_FIELDS if data is not None and k in data}
    if data is not None and data.get("frame_codes"):
        fields["frame_codes"] = config.vqvae.num_tokens
    frame = config.vqvae.image_size
    spec = transforms.ObservationSpec.from_mapping(
        {
            "und_image_size": config.siglip.image_size,
            "gen_resize": int(round(1.125 * frame)),  # the original's 288 / 256
            "gen_crop": frame,
            "chunk_size": config.action.chunk_size,
            "state_dim": config.action.state_dim,
            "action_dim": config.action.action_dim,
            **fields,
        }
    )
    if len(spec.history_offsets) != config.foresight.history_frames:
        raise ValueError(
            f"data.history_offsets must have {config.foresight.history_frames} entries, got "
            f"{spec.history_offsets}."
        )
    return spec


def to_unit_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1] (float inputs are assumed to be in [-1, 1] already)."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return images.astype(jnp.float32)


def model_inputs(batch: Batch, num_history: int = 4) -> Batch:
    """A batch of the observation contract (`ObservationSpec.example_spec` keys, uint8 images)
    -> F1's inputs. Runs inside the jitted step, so images travel to the device as uint8.

    gen_frames [B, num_history (+ 1), h, w, 3] holds the history frames, then the target frame;
    instead of them, gen_codes int32 [B, num_history (+ 1), L] (training from stored codes) or
    history_codes int32 [B, num_history, L] (a policy's cached codes) carry them already encoded
    (`F1.frame_codes`).
    """
    inputs = {
        "images": to_unit_range(batch["images"]),
        "image_masks": batch["image_mask"].astype(bool),
        "tokens": batch["tokens"].astype(jnp.int32),
        "token_mask": batch["token_mask"].astype(bool),
        "state": batch["state"].astype(jnp.float32),
    }
    if "gen_frames" in batch:
        frames = to_unit_range(batch["gen_frames"])
        inputs["history"] = frames[:, :num_history]
        if frames.shape[1] > num_history:
            inputs["target_frame"] = frames[:, num_history]
    if "gen_codes" in batch:
        codes = batch["gen_codes"].astype(jnp.int32)
        inputs["history_codes"] = codes[:, :num_history]
        if codes.shape[1] > num_history:
            inputs["target_codes"] = codes[:, num_history]
    if "history_codes" in batch:
        inputs["history_codes"] = batch["history_codes"].astype(jnp.int32)
    if "actions" in batch:
        inputs["actions"] = batch["actions"].astype(jnp.float32)
        inputs["action_is_pad"] = batch["action_is_pad"].astype(bool)
    return inputs


def example_batch(
    config: F1Config,
    batch_size: int,
    *,
    num_cameras: int = 2,
    num_tokens: int = 16,
    seed: int = 0,
) -> Batch:
    """Random model inputs with the shapes `config` expects (for init, tests, benchmarks): the
    observation contract's example with `num_cameras` cameras and `num_tokens` tokens, filled
    with random values and turned into model inputs. The last token and action step are padding."""
    spec = dataclasses.replace(
        observation_spec(config),
        cameras=transforms.CAMERAS[:num_cameras],
        max_token_len=num_tokens,
    )
    rng = np.random.RandomState(seed)
    batch = {}
    for name, (shape, dtype) in spec.example_spec().items():
        shape = (batch_size, *shape)
        if dtype == np.uint8:
            batch[name] = rng.randint(0, 256, shape).astype(np.uint8)
        elif dtype == np.float32:
            batch[name] = rng.uniform(-1, 1, shape).astype(np.float32)
        elif name == "tokens":
            batch[name] = rng.randint(0, config.vocab_size, shape).astype(np.int32)
        else:
            batch[name] = np.ones(shape, bool)
    batch["token_mask"][:, -1] = False
    batch["action_is_pad"] = np.zeros_like(batch["action_is_pad"])
    batch["action_is_pad"][:, -1] = True
    inputs = model_inputs(batch, config.foresight.history_frames)
    return {k: np.asarray(v) for k, v in inputs.items()}
