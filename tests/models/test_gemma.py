"""The multi-expert Gemma stack: parity with transformers' GemmaModel, with a naive joint
attention, cached vs uncached passes, full-size parameter counts and bad-input errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models import masks
from f1_common.model_config import ExpertConfig
from f1_jax.models.gemma import Embedder, ExpertStack, initializer
from f1_jax.models.precision import get_precision
from tolerances import assert_close, transformer_terms

PARITY = get_precision("parity")
THREE = (
    ExpertConfig("und", 48, 96, depth=2, num_heads=4, num_kv_heads=2, head_dim=8),
    ExpertConfig("gen", 32, 64, depth=2, num_heads=4, num_kv_heads=2, head_dim=8),
    ExpertConfig("act", 24, 40, depth=2, num_heads=4, num_kv_heads=2, head_dim=8),
)


def _random_params(stack: ExpertStack, inputs, positions, mask, seed=0) -> dict:
    """Initialises, then replaces every weight (norm scales included) by a random value."""
    params = nn.unbox(jax.jit(stack.init)(jax.random.key(seed), inputs, positions, mask))
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.RandomState(seed)
    return jax.tree.unflatten(
        tree, [rng.normal(0, 0.2, x.shape).astype(np.float32) for x in leaves]
    )


def _terms(experts, keys: int) -> int:
    """Reduction lengths behind an output of the joint stack (the widest expert's; see
    tests/tolerances.py): it is what an fp32 rounding bound scales with."""
    e = max(experts, key=lambda e: e.width)
    return transformer_terms(
        depth=e.depth,
        width=e.width,
        mlp_dim=max(x.mlp_dim for x in experts),
        num_heads=e.num_heads,
        head_dim=e.head_dim,
        keys=keys,
    )


def _tokens(experts, lengths, batch=2, seed=1):
    rng = np.random.RandomState(seed)
    return [
        None if n is None else rng.normal(0, 1, (batch, n, e.width)).astype(np.float32)
        for e, n in zip(experts, lengths)
    ]


# ---------------------------------------------------------------------------------------------
# Naive float64 reference: concatenate, attend, split, written out layer by layer.


def _rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * (1 + scale)


def _rope(x, pos, base=10_000.0):
    half = x.shape[-1] // 2
    freq = 1.0 / base ** (np.arange(half) * 2.0 / x.shape[-1])
    ang = pos[..., None, None].astype(np.float64) * freq
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate(
        [x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1
    )


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def naive_stack(params, experts, xs, positions, mask):
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    xs = [None if x is None else x.astype(np.float64) for x in xs]
    e0 = experts[0]
    for layer in range(e0.depth):
        qs, ks, vs = [], [], []
        for e, x in zip(experts, xs):
            if x is None:
                continue
            w = jax.tree.map(lambda a: a[layer], p64["layers"][e.name])
            h = _rms(x, w["pre_attention_norm"]["scale"])
            qs.append(np.einsum("btd,ndh->btnh", h, w["q_einsum"]))
            ks.append(np.einsum("btd,kdh->btkh", h, w["kv_einsum"][0]))
            vs.append(np.einsum("btd,kdh->btkh", h, w["kv_einsum"][1]))
        q, k, v = (np.concatenate(t, 1) for t in (qs, ks, vs))
        q, k = _rope(q, positions), _rope(k, positions)
        groups = e0.num_heads // e0.num_kv_heads
        k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
        logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(e0.head_dim)
        logits = np.where(mask[:, None], logits, -1e30)  # fully masked (padding) rows: uniform
        logits = logits - logits.max(-1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        attended = np.einsum("bnts,bsnh->btnh", probs, v)
        start = 0
        for i, (e, x) in enumerate(zip(experts, xs)):
            if x is None:
                continue
            w = jax.tree.map(lambda a: a[layer], p64["layers"][e.name])
            part = attended[:, start : start + x.shape[1]]
            start += x.shape[1]
            x = x + np.einsum("btnh,nhd->btd", part, w["attn_vec_einsum"])
            h = _rms(x, w["pre_ffw_norm"]["scale"])
            hidden = _gelu_tanh(h @ w["gating_einsum"][0]) * (h @ w["gating_einsum"][1])
            xs[i] = x + hidden @ w["linear"]
    return [
        None if x is None else _rms(x, p64[f"final_norm_{e.name}"]["scale"])
        for e, x in zip(experts, xs)
    ]


@pytest.mark.parametrize(
    "experts,lengths",
    [
        (THREE[:1], (7,)),
        (THREE[:2], (5, 4)),
        (THREE, (5, 4, 3)),
        (THREE, (5, None, 3)),  # an absent expert is skipped
    ],
)
def test_joint_attention_matches_naive(experts, lengths):
    xs = _tokens(experts, lengths)
    total = sum(n for n in lengths if n is not None)
    pad = np.ones((2, total), bool)
    pad[1, 1] = False  # a padded token must be invisible as a key
    block_start = np.zeros((2, total), np.int32)
    block_start[:, lengths[0] :] = 1  # prefix bidirectional, later tokens causal
    mask = np.asarray(masks.block_attention_mask(jnp.asarray(pad), jnp.asarray(block_start)))
    positions = np.asarray(masks.positions_from_pad(jnp.asarray(pad)))
    stack = ExpertStack(experts, PARITY)
    init_xs = _tokens(experts, [n if n is not None else 2 for n in lengths])
    init_total = sum(x.shape[1] for x in init_xs)
    params = _random_params(
        stack,
        init_xs,
        jnp.zeros((2, init_total), jnp.int32),
        jnp.ones((2, init_total, init_total), bool),
    )
    got, cache = jax.jit(stack.apply)(params, xs, positions, mask)
    want = naive_stack(params, experts, xs, positions, mask)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert_close(g, w, terms=_terms(experts, total))  # float64 reference
    assert cache[0].shape == (2, 2, total, 2, 8)


def test_cached_passes_equal_one_full_pass():
    """Prefix pass fills the cache, a generation pass appends to it, the action pass reads it."""
    lengths = (6, 5, 3)
    xs = _tokens(THREE, lengths)
    total = sum(lengths)
    pad = np.ones((2, total), bool)
    pad[0, 4:6] = False  # right-padded language tokens in sample 0
    block_start = np.array([0] * 6 + [0, 0, 0, 1, 1] + [1, 1, 0], np.int32)[None].repeat(2, 0)
    mask = masks.block_attention_mask(jnp.asarray(pad), jnp.asarray(block_start))
    positions = masks.positions_from_pad(jnp.asarray(pad))
    stack = ExpertStack(THREE, PARITY)
    params = _random_params(stack, xs, positions, mask)
    full, _ = jax.jit(stack.apply)(params, xs, positions, mask)

    p1, p2 = 9, 11  # prefix = und + 3 gen tokens; then 2 gen tokens; then the action tokens
    out1, cache = jax.jit(stack.apply)(
        params, [xs[0], xs[1][:, :3], None], positions[:, :p1], mask[:, :p1, :p1]
    )
    out2, cache = jax.jit(stack.apply)(
        params, [None, xs[1][:, 3:], None], positions[:, p1:p2], mask[:, p1:p2, :p2], kv_cache=cache
    )
    assert cache[0].shape[2] == p2
    out3, _ = jax.jit(stack.apply)(
        params, [None, None, xs[2]], positions[:, p2:], mask[:, p2:], kv_cache=cache
    )
    again, _ = jax.jit(stack.apply)(
        params, [None, None, xs[2]], positions[:, p2:], mask[:, p2:], kv_cache=cache
    )

    real = pad[:, :6]
    terms = _terms(THREE, total)  # cached and full passes attend over different key counts
    assert_close(np.asarray(out1[0])[real], np.asarray(full[0])[real], terms=terms)
    assert_close(out1[1], full[1][:, :3], terms=terms)
    assert_close(out2[1], full[1][:, 3:], terms=terms)
    assert_close(out3[2], full[2], terms=terms)
    np.testing.assert_array_equal(out3[2], again[2])  # reading the cache left it unchanged


def test_one_expert_matches_transformers_gemma():
    torch = pytest.importorskip("torch", reason="parity tests need the optional torch extra")
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
    expert = ExpertConfig("und", 64, 128, depth=2, num_heads=4, num_kv_heads=1, head_dim=16)
    torch.manual_seed(0)
    hf = transformers.GemmaModel(
        transformers.GemmaConfig(
            vocab_size=11,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            rms_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh",
            attn_implementation="eager",
        )
    ).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    tokens = np.random.RandomState(0).randint(0, 11, (2, 7))
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(tokens)).last_hidden_state.numpy()

    sd = {k: v.numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    n, k, h, d = 4, 1, 16, 64
    per_layer = lambda name, f: np.stack([f(sd[f"layers.{i}.{name}"]) for i in range(2)])
    layers = {
        "q_einsum": per_layer(
            "self_attn.q_proj.weight", lambda w: w.reshape(n, h, d).transpose(0, 2, 1)
        ),
        "kv_einsum": np.stack(
            [
                per_layer(
                    "self_attn.k_proj.weight", lambda w: w.reshape(k, h, d).transpose(0, 2, 1)
                ),
                per_layer(
                    "self_attn.v_proj.weight", lambda w: w.reshape(k, h, d).transpose(0, 2, 1)
                ),
            ],
            1,
        ),
        "attn_vec_einsum": per_layer("self_attn.o_proj.weight", lambda w: w.T.reshape(n, h, d)),
        "gating_einsum": np.stack(
            [
                per_layer("mlp.gate_proj.weight", np.transpose),
                per_layer("mlp.up_proj.weight", np.transpose),
            ],
            1,
        ),
        "linear": per_layer("mlp.down_proj.weight", np.transpose),
        "pre_attention_norm": {"scale": per_layer("input_layernorm.weight", lambda w: w)},
        "pre_ffw_norm": {"scale": per_layer("post_attention_layernorm.weight", lambda w: w)},
    }
    params = {"params": {"layers": {"und": layers}, "final_norm_und": {"scale": sd["norm.weight"]}}}
    pad = jnp.ones((2, 7), bool)
    mask = masks.block_attention_mask(pad, jnp.ones((2, 7), jnp.int32))  # all 1s: causal
    # Token ids in, so both sides include the sqrt(width) embedding scale.
    x = Embedder(11, 64).apply({"params": {"input_embedding": sd["embed_tokens.weight"]}}, tokens)
    got, _ = ExpertStack((expert,), PARITY).apply(params, [x], masks.positions_from_pad(pad), mask)
    assert_close(got[0], want, terms=1 + _terms((expert,), keys=7))  # 1: the embedding scale


def test_full_size_parameter_counts_without_allocation():
    und = ExpertConfig("und", 2048, 16384, depth=18)
    act = ExpertConfig("act", 1024, 4096, depth=18)
    stack = ExpertStack((und, act), get_precision("default"))
    shapes = jax.eval_shape(
        stack.init,
        jax.random.key(0),
        [
            jax.ShapeDtypeStruct((1, 4, 2048), jnp.float32),
            jax.ShapeDtypeStruct((1, 4, 1024), jnp.float32),
        ],
        jax.ShapeDtypeStruct((1, 8), jnp.int32),
        jax.ShapeDtypeStruct((1, 8, 8), bool),
    )
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    layers = nn.unbox(shapes)["params"]["layers"]
    assert count(layers["und"]) == 1_981_882_368  # Gemma-2B layers: 1981.88 M
    assert count(layers["act"]) == 311_463_936  # action expert layers: 311.46 M
    emb = jax.eval_shape(
        Embedder(257_152, 2048).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4), jnp.int32)
    )
    assert count(emb) == 526_647_296  # embedding: 526.65 M


def _call(stack, xs, positions, mask, cache=None):
    return jax.jit(stack.init)(jax.random.key(0), xs, positions, mask, kv_cache=cache)


def test_mismatched_heads_or_depth_are_rejected():
    for bad in (
        ExpertConfig("act", 24, 40, depth=3, num_heads=4, num_kv_heads=2, head_dim=8),
        ExpertConfig("act", 24, 40, depth=2, num_heads=8, num_kv_heads=2, head_dim=8),
    ):
        stack = ExpertStack((THREE[0], bad), PARITY)
        field = "depth" if bad.depth == 3 else "num_heads"
        with pytest.raises(ValueError, match=f"All experts must share {field}"):
            _call(
                stack,
                _tokens((THREE[0], bad), (2, 2)),
                jnp.zeros((2, 4), jnp.int32),
                jnp.ones((2, 4, 4), bool),
            )


def test_bad_masks_and_missing_experts_are_rejected():
    stack = ExpertStack(THREE, PARITY)
    xs = _tokens(THREE, (2, 2, 2))
    with pytest.raises(ValueError, match=r"Attention mask must be \[B, T, S\]"):
        _call(stack, xs, jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 6, 5), bool))
    with pytest.raises(ValueError, match=r"positions must be \[B, T\]"):
        _call(stack, xs, jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 6, 6), bool))
    with pytest.raises(
        ValueError, match=r"Got 2 token groups for 3 experts \['und', 'gen', 'act'\]"
    ):
        _call(stack, xs[:2], jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="Every expert input is None"):
        _call(stack, [None, None, None], jnp.zeros((2, 0), jnp.int32), jnp.ones((2, 0, 0), bool))
    with pytest.raises(ValueError, match="Expert 'gen' expects tokens"):
        _call(stack, [xs[0], xs[2], None], jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4, 4), bool))


def test_params_missing_an_expert_fail_by_name():
    stack = ExpertStack(THREE, PARITY)
    xs = _tokens(THREE, (2, 2, 2))
    positions, mask = jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 6, 6), bool)
    params = nn.unbox(_call(stack, xs, positions, mask))
    del params["params"]["layers"]["act"]
    with pytest.raises(Exception, match="act"):
        jax.jit(stack.apply)(params, xs, positions, mask)


@pytest.mark.parametrize("param_init", ["gemma", "fan_in"])
def test_param_init_scales(param_init):
    """ "gemma": N(0, 0.02) everywhere (HF Gemma); "fan_in": std 1/sqrt(inputs summed over)."""
    experts = tuple(
        ExpertConfig(
            e.name,
            64,
            256,
            depth=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            param_init=param_init,
        )
        for e in THREE
    )
    stack = ExpertStack(experts, PARITY)
    lengths = (5, 3, 2)
    inputs = _tokens(experts, lengths)
    pad = jnp.ones((2, sum(lengths)), bool)
    params = nn.unbox(
        stack.init(
            jax.random.key(0),
            inputs,
            masks.positions_from_pad(pad),
            masks.block_attention_mask(pad, jnp.zeros_like(pad)),
        )
    )["params"]["layers"]["und"]
    fan_in = {
        "q_einsum": 64,
        "kv_einsum": 64,
        "attn_vec_einsum": 4 * 16,
        "gating_einsum": 64,
        "linear": 256,
    }
    for name, fan in fan_in.items():
        expected = 0.02 if param_init == "gemma" else fan**-0.5
        assert abs(float(np.std(params[name])) / expected - 1) < 0.1, name
    embedder = Embedder(512, 64, initializer(experts[0], 64))
    table = embedder.init(jax.random.key(1), jnp.zeros((1, 2), jnp.int32))["params"]
    expected = 0.02 if param_init == "gemma" else 64**-0.5
    assert abs(float(np.std(nn.unbox(table)["input_embedding"])) / expected - 1) < 0.1


def test_unknown_param_init_is_rejected():
    with pytest.raises(ValueError, match="param_init must be one of"):
        ExpertConfig("und", 64, 128, depth=1, param_init="xavier")
