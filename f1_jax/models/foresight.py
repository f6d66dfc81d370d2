"""The generation expert's inputs and outputs: visual foresight by VAR next-scale prediction.

docs/model.md, "Foresight". The generation expert (a Gemma
stack, see gemma.py) never sees code indices: it sees continuous VQ-VAE next-scale inputs
[.., z] embedded by one shared Linear `wm_embeddings`.

Token layout of the generation prefix (L = sum(pn^2) = 680 output tokens, L - 1 = 679 cond tokens):
  index 0           SOS (`wm_sos_token_embs`)
  index 1 .. 678    temporally down-sampled history tokens
  index 679         last history token; it also carries the position + level embedding of output
                    token 0, so its expert output is the scale-0 query (logits of output token 0).
Output token j (j >= 1) is predicted from the next-scale input placed after the prefix; that input
carries `posl[679 + j]`. `posl` = cat(zeros(679), pos + lvl) is the original's table of
position + level embeddings over the prefix and the output tokens.

Everything here is fp32 (outside the expert stack in the original) with HIGHEST matmul precision.
Parameter names equal the original's module names, so conversion is a rename plus layout changes:
  temporal_conv/{kernel [k, z, z] (torch weight.transpose(2, 1, 0)), bias}
  wm_hist_pos_embs [1, L-1, z], wm_sos_token_embs [1, 1, W], wm_cond_pos_embs [1, L, W],
  wm_output_position_embedding [1, L, W], lvl_embed/embedding [len(patch_nums), W],
  wm_embeddings/{kernel [z, W], bias}, wm_out_layer_norm/{scale, bias}, wm_out_proj/{kernel, bias},
  mask_embedding [1, 1, z] (a buffer in the original; see `mask_embedding_value`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from f1_common.model_config import ForesightConfig, level_ids

_HIGHEST = jax.lax.Precision.HIGHEST


def _torch_trunc_normal(std: float, bound: float = 2.0):
    """torch.nn.init.trunc_normal_(mean 0, std, a=-2, b=2): the bounds are absolute, not in stds."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)

    return init


def _torch_uniform(fan_in: int):
    """torch's default Linear / Conv init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _boxed(init, axes: tuple[str | None, ...]):
    """Attaches logical axis names (read by the sharding rules) to an initializer."""
    return nn.with_logical_partitioning(init, axes)


def _dense(features: int, fan_in: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
    """fp32 Linear with torch's default init; the kernel is torch's weight transposed."""
    return nn.Dense(
        features,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=_HIGHEST,
        kernel_init=_boxed(_torch_uniform(fan_in), axes),
        bias_init=_boxed(_torch_uniform(fan_in), axes[1:]),
        name=name,
    )


def _conv_over_time(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """Conv1d over the time axis, applied independently at each token position (no padding).

    Args:
      x: [B, T, P, z] (time oldest first); kernel: [k, z_in, z_out]; bias: [z_out].
    Returns:
      [B, T_out, P, z_out].
    """
    b, t, p, z = x.shape
    per_token = jnp.transpose(x, (0, 2, 1, 3)).reshape(b * p, t, z)  # rows = (batch, position)
    out = jax.lax.conv_general_dilated(
        per_token,
        kernel,
        window_strides=(stride,),
        padding="VALID",
        dimension_numbers=("NWC", "WIO", "NWC"),
        precision=_HIGHEST,
    )
    out = out + bias
    return jnp.transpose(out.reshape(b, p, out.shape[1], out.shape[2]), (0, 2, 1, 3))


class _TemporalConv(nn.Module):
    """torch Conv1d(z, z, k, stride) over time per token; params kernel [k, in, out], bias [out]."""

    features: int
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, P, z] -> [B, T_out, P, features]."""
        fan_in = x.shape[-1] * self.kernel_size
        kernel = self.param(
            "kernel",
            _boxed(_torch_uniform(fan_in), (None, None, None)),
            (self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param(
            "bias", _boxed(_torch_uniform(fan_in), (None,)), (self.features,), jnp.float32
        )
        return _conv_over_time(x.astype(jnp.float32), kernel, bias, self.stride)


class ForesightIO(nn.Module):
    """Embeds the history / next-scale inputs of the generation expert and reads out code logits.

    setup()-based so each method can be applied on its own (`apply(..., method=...)`). `__call__`
    exists to build the full parameter tree with `init` / `eval_shape`: linen creates a submodule's
    parameters lazily, on its first use, so a single method would not touch all of them.
    """

    config: ForesightConfig

    def setup(self):
        c = self.config
        std = math.sqrt(1.0 / c.width / 3.0)  # VAR's init_std for every embedding table
        emb_init = _torch_trunc_normal(std)
        self.temporal_conv = _TemporalConv(c.z_channels, c.temporal_kernel, c.temporal_stride)
        self.wm_hist_pos_embs = self.param(
            "wm_hist_pos_embs",
            _boxed(emb_init, (None, None, None)),
            (1, c.num_cond, c.z_channels),
            jnp.float32,
        )
        self.wm_embeddings = _dense(c.width, c.z_channels, (None, "embed"), "wm_embeddings")
        self.wm_sos_token_embs = self.param(
            "wm_sos_token_embs",
            _boxed(emb_init, (None, None, "embed")),
            (1, 1, c.width),
            jnp.float32,
        )
        # The prefix is SOS + num_cond history tokens (the original's first_l = pn0^2 + L - 1).
        self.wm_cond_pos_embs = self.param(
            "wm_cond_pos_embs",
            _boxed(emb_init, (None, None, "embed")),
            (1, c.num_tokens, c.width),
            jnp.float32,
        )
        # Full-size tables whatever num_scales is, so checkpoints load; only the first
        # num_predicted output positions are read when fewer scales are predicted.
        self.wm_output_position_embedding = self.param(
            "wm_output_position_embedding",
            _boxed(emb_init, (None, None, "embed")),
            (1, c.num_tokens, c.width),
            jnp.float32,
        )
        self.lvl_embed = nn.Embed(
            c.num_levels,
            c.width,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            embedding_init=_boxed(emb_init, (None, "embed")),
            name="lvl_embed",
        )
        self.wm_out_layer_norm = nn.LayerNorm(
            epsilon=1e-5,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            use_fast_variance=False,
            scale_init=_boxed(nn.initializers.ones_init(), ("embed",)),
            bias_init=_boxed(nn.initializers.zeros_init(), ("embed",)),
            name="wm_out_layer_norm",
        )
        self.wm_out_proj = _dense(c.vocab_size, c.width, ("embed", "vocab"), "wm_out_proj")
        # A registered *buffer* in the original (initialised, saved in checkpoints, never trained).
        self.mask_embedding = self.param(
            "mask_embedding",
            _boxed(emb_init, (None, None, None)),
            (1, 1, c.z_channels),
            jnp.float32,
        )

    def __call__(self, history: jax.Array) -> jax.Array:
        """Init entry point: `embed_history(history)`, touching the read-out head too.

        The head's result is discarded (and removed by XLA under jit); it is only here so that
        `init` creates the `wm_out_layer_norm` / `wm_out_proj` parameters.
        """
        prefix = self.embed_history(history)
        self.logits(jnp.zeros((1, 1, self.config.width), jnp.float32))
        return prefix

    def _pos_lvl(self, start: int, stop: int) -> jax.Array:
        """Position + level embeddings of output tokens start..stop-1: [1, stop - start, width]."""
        lvl = self.lvl_embed(jnp.asarray(level_ids(self.config.patch_nums)[start:stop]))
        return self.wm_output_position_embedding[:, start:stop] + lvl[None]

    def embed_history(self, history: jax.Array) -> jax.Array:
        """Generation prefix tokens from the history frames' next-scale inputs.

        Args:
          history: [B, T, num_cond, z] next-scale inputs of the T history frames, oldest first.
        Returns:
          [B, num_cond + 1, width]: SOS then the history tokens; the last one also carries the
          position + level embedding of output token 0 (it is the scale-0 query).
        """
        c = self.config
        expected = (c.history_frames, c.num_cond, c.z_channels)
        if history.ndim != 4 or history.shape[1:] != expected:
            raise ValueError(
                f"history must be [B, {', '.join(map(str, expected))}], got {history.shape}."
            )
        cond = self.temporal_conv(history)[:, 0] + self.wm_hist_pos_embs  # [B, num_cond, z]
        cond = self.wm_embeddings(cond)
        sos = jnp.broadcast_to(self.wm_sos_token_embs, (cond.shape[0], 1, c.width))
        prefix = jnp.concatenate([sos, cond], axis=1) + self.wm_cond_pos_embs
        # posl[:num_cond + 1] is zero except its last row: only the query token gets pos[0] + lvl[0].
        return prefix.at[:, -1:].add(self._pos_lvl(0, 1))

    def embed_scale_inputs(self, x: jax.Array, start: int) -> jax.Array:
        """Embeds the next-scale inputs of output tokens start..start+n-1.

        Args:
          x: [B, n, z] continuous next-scale inputs (teacher-forced or from the sampled codes).
          start: number of output tokens already produced (1 for scale 1, 5 for scale 2, ...); static.
        Returns:
          [B, n, width] = wm_embeddings(x) + posl[num_cond + start : num_cond + start + n].
        """
        c = self.config
        if x.ndim != 3 or x.shape[-1] != c.z_channels:
            raise ValueError(f"x must be [B, n, {c.z_channels}], got {x.shape}.")
        n = x.shape[1]
        if start < 0 or start + n > c.num_tokens:
            raise ValueError(
                f"Output tokens {start}..{start + n - 1} are outside 0..{c.num_tokens - 1}."
            )
        return self.wm_embeddings(x.astype(jnp.float32)) + self._pos_lvl(start, start + n)

    def logits(self, gen_out: jax.Array) -> jax.Array:
        """[B, n, width] generation expert outputs -> [B, n, vocab] fp32 code logits."""
        return self.wm_out_proj(self.wm_out_layer_norm(gen_out.astype(jnp.float32)))

    def mask_embedding_value(self) -> jax.Array:
        """[1, 1, z] masking token for stage-1 teacher forcing.

        The original registers it as a buffer: saved in checkpoints but never trained. It stays a
        parameter here (so conversion keeps it) and stop_gradient makes it receive no update.
        """
        return jax.lax.stop_gradient(self.mask_embedding)


def _top_k_top_p_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """VAR's `sample_with_top_k_top_p_` filtering: removed logits become -inf. [.., V] -> [.., V].

    top-k (top_k > 0; top_k >= V keeps everything, where VAR would fail or keep all): remove
    logits < the k-th largest, so ties with it are kept. top-p (top_p > 0), on the top-k result:
    sort ascending, remove the tokens whose cumulative softmax is <= 1 - top_p, never the largest.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p > 0:
        order = jnp.argsort(logits, axis=-1, stable=True)  # ascending
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = (cum <= 1.0 - top_p).at[..., -1].set(False)
        # Undo the sort: position order[j] gets the decision made for sorted slot j.
        remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def sample_top_k_top_p(rng: jax.Array, logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Samples one code per token with VAR's top-k / top-p rule, temperature 1.

    Args:
      rng: PRNG key; the same key gives the same sample.
      logits: [B, n, V].
      top_k, top_p: static; top_k <= 0 or >= V disables top-k, top_p <= 0 disables top-p (top_p
        >= 1 removes only zero-probability tokens, i.e. nothing that could be drawn).
    Returns:
      [B, n] int32 codes.
    """
    if top_k == 1:
        # Exactly greedy. VAR's rule agrees except for exact ties at the maximum, where it draws
        # uniformly among the tied codes and argmax takes the first.
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = _top_k_top_p_logits(logits, top_k, top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def mix_mask_embedding(
    rng: jax.Array,
    inputs: jax.Array,
    mask_embedding: jax.Array,
    sample_prob: float,
    token_prob: float,
) -> jax.Array:
    """Stage-1 teacher forcing, the original's mask method "mixture".

    As in F1's `embed_wm_inputs`: a sample is chosen with prob sample_prob (uniform < p) AND,
    independently, each of its tokens with prob token_prob; chosen tokens are replaced by the mask
    embedding. So a token is masked with prob sample_prob * token_prob, all in ~10 % of samples.

    Args:
      rng: PRNG key.
      inputs: [B, n, z] ground-truth next-scale inputs.
      mask_embedding: [1, 1, z]; never trained (a buffer in the original), hence stop_gradient.
    Returns:
      [B, n, z], same dtype as inputs.
    """
    b, n, _ = inputs.shape
    sample_key, token_key = jax.random.split(rng)
    sample_flags = jax.random.uniform(sample_key, (b, 1, 1)) < sample_prob
    token_flags = jax.random.uniform(token_key, (b, n, 1)) < token_prob
    mask = jax.lax.stop_gradient(mask_embedding).astype(inputs.dtype)
    return jnp.where(sample_flags & token_flags, mask, inputs)
