"""Foresight (generation expert I/O): embeddings vs hand-written references, VAR sampler, masking.

References are written from the original's formulas (docs/model.md, "Foresight") and VAR's
`sample_with_top_k_top_p_` rule, with the Flax weights copied over.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from f1_common import model_config
from f1_common.model_config import ForesightConfig
from f1_jax.models import foresight as fs
from f1_jax.models.foresight import ForesightIO
from tolerances import assert_close

torch = pytest.importorskip("torch", reason="torch is the reference for the parity tests")
F = torch.nn.functional

TINY = ForesightConfig(width=32, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4), num_scales=4)


# ------------------------------------------------------------------------------ helpers


def _random_params(config: ForesightConfig, seed: int = 0) -> dict:
    """Params with the module's tree, every entry random (so every term shows in the outputs)."""
    module = ForesightIO(config)
    history = jnp.zeros((1, config.history_frames, config.num_cond, config.z_channels))
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), history))["params"]
    rng = np.random.default_rng(seed)
    flat = {
        path: jnp.asarray(0.5 * rng.standard_normal(leaf.shape), jnp.float32)
        for path, leaf in traverse_util.flatten_dict(shapes).items()
    }
    return traverse_util.unflatten_dict(flat)


@functools.lru_cache(maxsize=None)
def _jitted(config: ForesightConfig, method: str, *static):
    """module.apply(method) under jit; extra static args (e.g. `start`) are bound here."""
    module = ForesightIO(config)
    fn = getattr(ForesightIO, method)
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, *static, method=fn))


def _np(params) -> dict:
    return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def _ref_pos_lvl(p: dict, config: ForesightConfig) -> np.ndarray:
    """[num_cond + num_tokens, width]: posl = cat(zeros(num_cond), pos) + cat(zeros, lvl[lvl_1L])."""
    lvl_1l = np.concatenate([np.full(pn * pn, i) for i, pn in enumerate(config.patch_nums)])
    out_part = p["wm_output_position_embedding"][0] + p["lvl_embed"]["embedding"][lvl_1l]
    return np.concatenate([np.zeros((config.num_cond, config.width)), out_part], axis=0)


# ------------------------------------------------------------------------------ config


def test_config_derived_sizes():
    c = ForesightConfig()
    assert (c.num_tokens, c.num_cond, c.num_predicted) == (680, 679, 30)
    assert c.scale_lengths == (1, 4, 9, 16) and c.scale_starts == (0, 1, 5, 14)
    c10 = ForesightConfig(num_scales=10)
    assert c10.num_predicted == 680 and c10.scale_starts[-1] == 424
    assert (TINY.num_tokens, TINY.num_cond) == (30, 29)
    np.testing.assert_array_equal(model_config.level_ids((1, 2, 3)), [0] + [1] * 4 + [2] * 9)
    assert (
        model_config.level_ids(c.patch_nums).shape == (680,)
        and model_config.level_ids(c.patch_nums)[-1] == 9
    )
    for bad in (
        dict(num_scales=0),
        dict(num_scales=11),
        dict(patch_nums=(2, 3)),
        dict(history_frames=8),
        dict(history_frames=3),
        dict(mask_token_prob=1.5),
    ):
        with pytest.raises(ValueError):
            ForesightConfig(**bad)


def test_full_size_parameter_count():
    """The reference's 5.66 M "WM extras": 5,664,000 without the 32-value mask_embedding buffer."""
    c = ForesightConfig(num_scales=10)
    history = jax.ShapeDtypeStruct((1, 4, 679, 32), jnp.float32)
    shapes = nn.unbox(jax.eval_shape(ForesightIO(c).init, jax.random.key(0), history))["params"]
    sizes = {
        "/".join(k): int(np.prod(v.shape)) for k, v in traverse_util.flatten_dict(shapes).items()
    }
    expected = {
        "temporal_conv/kernel": 4 * 32 * 32,
        "temporal_conv/bias": 32,
        "wm_hist_pos_embs": 679 * 32,
        "wm_embeddings/kernel": 32 * 1024,
        "wm_embeddings/bias": 1024,
        "wm_sos_token_embs": 1024,
        "wm_cond_pos_embs": 680 * 1024,
        "wm_output_position_embedding": 680 * 1024,
        "lvl_embed/embedding": 10 * 1024,
        "wm_out_layer_norm/scale": 1024,
        "wm_out_layer_norm/bias": 1024,
        "wm_out_proj/kernel": 1024 * 4096,
        "wm_out_proj/bias": 4096,
        "mask_embedding": 32,
    }
    assert sizes == expected
    assert sum(sizes.values()) - sizes["mask_embedding"] == 5_664_000
    # num_scales does not change the tables (checkpoints load at any stage).
    shapes4 = nn.unbox(
        jax.eval_shape(ForesightIO(ForesightConfig()).init, jax.random.key(0), history)
    )["params"]
    assert jax.tree.map(lambda x: x.shape, shapes4) == jax.tree.map(lambda x: x.shape, shapes)


def test_full_size_shapes_and_call():
    """Shapes at full size (abstractly), and __call__ == embed_history; bad shapes raise."""
    c = ForesightConfig()
    module = ForesightIO(c)
    history = jax.ShapeDtypeStruct((2, 4, 679, 32), jnp.float32)
    params = jax.eval_shape(module.init, jax.random.key(0), history)
    apply = lambda method, *a: jax.eval_shape(
        lambda v, *x: module.apply(v, *x, method=method), params, *a
    )
    assert apply(ForesightIO.embed_history, history).shape == (2, 680, 1024)
    x = jax.ShapeDtypeStruct((2, 4, 32), jnp.float32)
    assert apply(lambda m, v: m.embed_scale_inputs(v, 1), x).shape == (2, 4, 1024)
    out = apply(ForesightIO.logits, jax.ShapeDtypeStruct((2, 16, 1024), jnp.bfloat16))
    assert out.shape == (2, 16, 4096) and out.dtype == jnp.float32

    tiny_params = _random_params(TINY)
    hist = np.random.default_rng(0).standard_normal((1, 4, 29, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        jax.jit(ForesightIO(TINY).apply)({"params": tiny_params}, hist),
        _jitted(TINY, "embed_history")(tiny_params, hist),
    )
    with pytest.raises(ValueError):
        ForesightIO(TINY).apply(
            {"params": tiny_params}, hist[:, :3], method=ForesightIO.embed_history
        )


def test_init_statistics():
    """Embedding tables: trunc_normal std sqrt(1/width/3); LayerNorm ones/zeros."""
    c = ForesightConfig(width=256, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4, 5, 6, 8))
    history = jnp.zeros((1, 4, c.num_cond, 8))
    params = nn.unbox(jax.jit(ForesightIO(c).init)(jax.random.key(1), history))["params"]
    std = math.sqrt(1 / 256 / 3)
    for name in ("wm_cond_pos_embs", "wm_output_position_embedding"):
        assert abs(float(jnp.std(params[name])) / std - 1) < 0.02, name
    assert abs(float(jnp.std(params["lvl_embed"]["embedding"])) / std - 1) < 0.1
    np.testing.assert_array_equal(params["wm_out_layer_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(params["wm_out_layer_norm"]["bias"], 0.0)
    bound = 1 / math.sqrt(256)
    assert float(jnp.max(jnp.abs(params["wm_out_proj"]["kernel"]))) <= bound


# ------------------------------------------------------------------------------ embeddings


def test_temporal_conv_matches_torch_conv1d():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 29, 8)).astype(np.float32)
    kernel = rng.standard_normal((4, 8, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    got = np.asarray(jax.jit(fs._conv_over_time, static_argnums=3)(x, kernel, bias, 4))
    # The original: [B, T, P, z] -> [B*P, z, T], Conv1d weight [O, I, k] = kernel.transpose(2, 1, 0).
    xt = torch.from_numpy(x).permute(0, 2, 3, 1).reshape(2 * 29, 8, 4)
    want = F.conv1d(
        xt, torch.from_numpy(kernel.transpose(2, 1, 0).copy()), torch.from_numpy(bias), stride=4
    )
    want = want.permute(0, 2, 1).reshape(2, 29, 1, 8).permute(0, 2, 1, 3).numpy()
    assert got.shape == (2, 1, 29, 8)
    assert_close(got, want, terms=4 * 8 + 1)  # 4 frames x 8 channels, + bias


def test_embed_history_matches_reference():
    params = _random_params(TINY)
    hist = np.random.default_rng(1).standard_normal((2, 4, 29, 8)).astype(np.float32)
    got = np.asarray(_jitted(TINY, "embed_history")(params, hist))

    p = _np(params)
    cond = (
        np.einsum("btpi,tio->bpo", hist, p["temporal_conv"]["kernel"]) + p["temporal_conv"]["bias"]
    )
    cond = cond + p["wm_hist_pos_embs"]
    cond = cond @ p["wm_embeddings"]["kernel"] + p["wm_embeddings"]["bias"]
    sos = np.broadcast_to(p["wm_sos_token_embs"], (2, 1, 32))
    want = np.concatenate([sos, cond], axis=1) + p["wm_cond_pos_embs"]
    want = want + _ref_pos_lvl(p, TINY)[:30]
    assert got.shape == (2, 30, 32)
    # float64 reference; stages: temporal conv (4 x 8 + bias), + hist pos, wm_embeddings (8 +
    # bias), + cond pos, + output pos + lvl.
    assert_close(got, want, terms=(4 * 8 + 1, 1, 8 + 1, 1, 2))

    # Only the last prefix token (the scale-0 query) carries pos[0] + lvl[0].
    zeroed = dict(
        params,
        wm_output_position_embedding=jnp.zeros_like(params["wm_output_position_embedding"]),
        lvl_embed={"embedding": jnp.zeros_like(params["lvl_embed"]["embedding"])},
    )
    diff = got - np.asarray(_jitted(TINY, "embed_history")(zeroed, hist))
    np.testing.assert_array_equal(diff[:, :-1], 0.0)
    # A difference of two outputs: it rounds at their magnitude (two adds + the subtraction).
    assert_close(
        diff[:, -1],
        np.broadcast_to(
            p["wm_output_position_embedding"][0, 0] + p["lvl_embed"]["embedding"][0], (2, 32)
        ),
        terms=3,
        scale=np.abs(got[:, -1]).max(),
    )


@pytest.mark.parametrize("num_scales", [4, 2])
def test_embed_scale_inputs_uses_the_right_posl_slice(num_scales):
    config = ForesightConfig(
        width=32, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4), num_scales=num_scales
    )
    params = _random_params(config, seed=2)
    p = _np(params)
    posl = _ref_pos_lvl(p, config)
    rng = np.random.default_rng(3)
    for si in range(1, config.num_scales):
        start, n = config.scale_starts[si], config.scale_lengths[si]
        x = rng.standard_normal((2, n, 8)).astype(np.float32)
        got = np.asarray(_jitted(config, "embed_scale_inputs", start)(params, x))
        want = x @ p["wm_embeddings"]["kernel"] + p["wm_embeddings"]["bias"]
        want = want + posl[config.num_cond + start : config.num_cond + start + n]
        assert_close(got, want, terms=(8 + 1, 2))  # float64 ref: x @ kernel + bias, + pos + lvl
        # The same thing spelled out: output positions start.. and level si for the whole scale.
        spelled = (
            x @ p["wm_embeddings"]["kernel"]
            + p["wm_embeddings"]["bias"]
            + p["wm_output_position_embedding"][0, start : start + n]
            + p["lvl_embed"]["embedding"][si]
        )
        assert_close(got, spelled, terms=(8 + 1, 2))
    # Stage-1 teacher forcing: all num_cond inputs at once, starting at output token 1.
    x = rng.standard_normal((1, config.num_cond, 8)).astype(np.float32)
    got = np.asarray(_jitted(config, "embed_scale_inputs", 1)(params, x))
    want = (
        x @ p["wm_embeddings"]["kernel"] + p["wm_embeddings"]["bias"] + posl[config.num_cond + 1 :]
    )
    assert_close(got, want, terms=(8 + 1, 2))
    with pytest.raises(ValueError):
        ForesightIO(config).apply({"params": params}, x, 2, method=ForesightIO.embed_scale_inputs)


def test_logits_match_torch():
    params = _random_params(TINY, seed=4)
    gen_out = np.random.default_rng(5).standard_normal((2, 5, 32)).astype(np.float32) * 3 + 1
    got = np.asarray(_jitted(TINY, "logits")(params, jnp.asarray(gen_out, jnp.bfloat16)))
    assert got.dtype == np.float32 and got.shape == (2, 5, 64)
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    ln = params["wm_out_layer_norm"]
    x = t(jnp.asarray(gen_out, jnp.bfloat16).astype(jnp.float32))
    want = F.linear(
        F.layer_norm(x, (32,), t(ln["scale"]), t(ln["bias"]), eps=1e-5),
        t(params["wm_out_proj"]["kernel"]).T,
        t(params["wm_out_proj"]["bias"]),
    ).numpy()
    # LayerNorm over 32 (mean and variance), then the Linear (32 + bias).
    assert_close(got, want, terms=(2 * 32, 32 + 1))


def test_mask_embedding_is_not_trained():
    params = _random_params(TINY)
    grad = jax.grad(
        lambda p: jnp.sum(
            ForesightIO(TINY).apply({"params": p}, method=ForesightIO.mask_embedding_value) ** 2
        )
    )(params)
    np.testing.assert_array_equal(grad["mask_embedding"], 0.0)
    value = ForesightIO(TINY).apply({"params": params}, method=ForesightIO.mask_embedding_value)
    np.testing.assert_array_equal(value, params["mask_embedding"])


# ------------------------------------------------------------------------------ sampler


def _var_keep_numpy(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """VAR's sample_with_top_k_top_p_ filtering re-implemented in numpy; True = kept."""
    x = logits.astype(np.float32).copy()
    if top_k > 0:
        top_k = min(top_k, x.shape[-1])  # torch.topk fails for k > V; VAR's later copies clamp
        kth = -np.sort(-x, axis=-1)[..., top_k - 1 : top_k]
        x[x < kth] = -np.inf
    if top_p > 0:
        order = np.argsort(x, axis=-1, kind="stable")
        s = np.take_along_axis(x, order, axis=-1)
        e = np.exp(s - s[..., -1:])
        cum = np.cumsum(e / e.sum(-1, keepdims=True), axis=-1)
        remove = cum <= 1 - top_p
        remove[..., -1] = False
        np.put_along_axis(x, order, np.where(remove, -np.inf, s), axis=-1)
    return np.isfinite(x)


_sample = jax.jit(fs.sample_top_k_top_p, static_argnums=(2, 3))
_filter = jax.jit(fs._top_k_top_p_logits, static_argnums=(1, 2))


def test_top_k_1_is_argmax():
    logits = jax.random.normal(jax.random.key(0), (3, 30, 64))
    for seed in range(3):
        got = _sample(jax.random.key(seed), logits, 1, 0.95)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(got, jnp.argmax(logits, -1))


@pytest.mark.parametrize(
    "top_k,top_p",
    [
        (5, 0.0),
        (900, 0.95),
        (10, 0.5),
        (0, 0.8),
        (0, 0.05),
        (3, 0.999),
        (64, 0.9),
        (0, 0.0),
        (100, 1.0),
    ],
)
def test_kept_set_matches_var_rule(top_k, top_p):
    logits = np.asarray(jax.random.normal(jax.random.key(1), (4, 16, 64)) * 2.0)
    kept = np.isfinite(np.asarray(_filter(logits, top_k, top_p)))
    np.testing.assert_array_equal(kept, _var_keep_numpy(logits, top_k, top_p))
    assert kept.any(-1).all()
    # Kept logits are unchanged.
    np.testing.assert_array_equal(np.asarray(_filter(logits, top_k, top_p))[kept], logits[kept])


def test_top_k_ties_are_kept_and_top_token_always_kept():
    logits = np.array([[[3.0, 1.0, 2.0, 2.0, 0.0]]], np.float32)
    np.testing.assert_array_equal(np.isfinite(_filter(logits, 2, 0.0)), [[[1, 0, 1, 1, 0]]])
    # A dominant token: tiny top_p keeps only it.
    np.testing.assert_array_equal(np.isfinite(_filter(logits, 0, 1e-6)), [[[1, 0, 0, 0, 0]]])


def test_draws_stay_in_top_k_and_match_renormalised_probs():
    vocab, draws = 32, 20000
    base = np.asarray(jax.random.normal(jax.random.key(2), (vocab,))) * 1.5
    logits = jnp.broadcast_to(jnp.asarray(base, jnp.float32), (1, draws, vocab))
    for top_k, top_p in ((6, 0.0), (0, 0.7), (12, 0.9)):
        samples = np.asarray(_sample(jax.random.key(3), logits, top_k, top_p))[0]
        keep = _var_keep_numpy(base[None], top_k, top_p)[0]
        assert keep[samples].all(), (top_k, top_p)
        if top_k:
            assert set(samples) <= set(np.argsort(-base)[:top_k])
        probs = np.where(keep, np.exp(base - base.max()), 0.0)
        probs = probs / probs.sum()
        counts = np.bincount(samples, minlength=vocab)
        idx = np.flatnonzero(keep)
        expected = probs[idx] * draws
        chi2 = float(np.sum((counts[idx] - expected) ** 2 / expected))
        dof = max(len(idx) - 1, 1)
        assert chi2 < dof + 5 * math.sqrt(2 * dof) + 5, (top_k, top_p, chi2, dof)


def test_sampler_is_deterministic_per_key():
    logits = jax.random.normal(jax.random.key(4), (2, 30, 64))
    a = _sample(jax.random.key(7), logits, 900, 0.95)
    b = _sample(jax.random.key(7), logits, 900, 0.95)
    c = _sample(jax.random.key(8), logits, 900, 0.95)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 30) and (np.asarray(a) != np.asarray(c)).any()


# ------------------------------------------------------------------------------ masking


_mix = jax.jit(fs.mix_mask_embedding, static_argnums=(3, 4))


def test_mix_mask_embedding_rates_and_passthrough():
    b, n, z = 4000, 30, 4
    inputs = jax.random.normal(jax.random.key(0), (b, n, z))
    mask = jnp.full((1, 1, z), 7.0)
    out = np.asarray(_mix(jax.random.key(1), inputs, mask, 0.1, 0.15))
    masked = (out == 7.0).all(-1)
    untouched = (out == np.asarray(inputs)).all(-1)
    assert (masked ^ untouched).all()  # each token is either the mask or unchanged
    per_sample = masked.any(-1)
    # P(token masked) = 0.1 * 0.15; P(sample has any masked token) = 0.1 * (1 - 0.85^30).
    tok_rate = masked.mean()
    assert abs(tok_rate - 0.015) < 5 * math.sqrt(0.015 * 0.985 / (b * n)) + 0.1 * 0.015 * 0.3
    assert abs(per_sample.mean() - 0.1 * (1 - 0.85**30)) < 0.02
    # Within masked samples the per-token rate is ~0.15 (conditioned on >= 1 masked token).
    cond_rate = masked[per_sample].mean()
    assert abs(cond_rate - 0.15 / (1 - 0.85**30)) < 0.02
    np.testing.assert_array_equal(out, np.asarray(_mix(jax.random.key(1), inputs, mask, 0.1, 0.15)))
    assert (out != np.asarray(_mix(jax.random.key(2), inputs, mask, 0.1, 0.15))).any()
    # Edge probabilities.
    np.testing.assert_array_equal(_mix(jax.random.key(1), inputs, mask, 0.0, 1.0), inputs)
    np.testing.assert_array_equal(
        _mix(jax.random.key(1), inputs, mask, 1.0, 1.0), jnp.broadcast_to(mask, inputs.shape)
    )
