"""SigLIP tower + projector against transformers' SiglipVisionModel (fp32, random weights)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models.precision import get_precision
from f1_common.model_config import SiglipConfig
from f1_jax.models.siglip import SiglipEncoder, sincos_2d
from tolerances import assert_close, transformer_terms

torch = pytest.importorskip("torch", reason="parity tests need the optional torch extra")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")

CONFIG = SiglipConfig(
    image_size=28, patch_size=7, width=32, depth=2, mlp_dim=48, num_heads=4, out_width=40
)


def _hf_model(config: SiglipConfig):
    torch.manual_seed(0)
    hf_config = transformers.SiglipVisionConfig(
        hidden_size=config.width,
        intermediate_size=config.mlp_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        layer_norm_eps=config.eps,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
        attn_implementation="eager",
    )
    model = transformers.SiglipVisionModel(hf_config).eval()
    with torch.no_grad():  # Non-trivial norms and biases, so every weight matters.
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def siglip_params_from_hf(state: dict, depth: int, projector_w, projector_b) -> dict:
    """Maps a transformers SiglipVisionModel state dict onto our parameter tree."""
    # transformers < 5 prefixes every key with "vision_model."; newer versions do not.
    state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    get = lambda k: state[k].detach().numpy()
    per_layer = lambda k, f=lambda a: a: np.stack(
        [f(get(f"encoder.layers.{i}.{k}")) for i in range(depth)]
    )
    linear = lambda name: {
        "kernel": per_layer(f"{name}.weight", np.transpose),
        "bias": per_layer(f"{name}.bias"),
    }
    norm = lambda name: {"scale": per_layer(f"{name}.weight"), "bias": per_layer(f"{name}.bias")}
    layers = {
        "layer_norm1": norm("layer_norm1"),
        "layer_norm2": norm("layer_norm2"),
        "self_attn": {
            n: linear(f"self_attn.{n}") for n in ("q_proj", "k_proj", "v_proj", "out_proj")
        },
        "fc1": linear("mlp.fc1"),
        "fc2": linear("mlp.fc2"),
    }
    emb = "embeddings."
    return {
        "params": {
            "patch_embedding": {
                "kernel": get(emb + "patch_embedding.weight").transpose(2, 3, 1, 0),
                "bias": get(emb + "patch_embedding.bias"),
            },
            "position_embedding": get(emb + "position_embedding.weight"),
            "layers": layers,
            "post_layernorm": {
                "scale": get("post_layernorm.weight"),
                "bias": get("post_layernorm.bias"),
            },
            "projector": {"kernel": projector_w.T, "bias": projector_b},
        }
    }


def test_matches_transformers_siglip_and_projector():
    model = _hf_model(CONFIG)
    rng = np.random.RandomState(0)
    images = rng.uniform(-1, 1, (2, CONFIG.image_size, CONFIG.image_size, 3)).astype(np.float32)
    projector_w = rng.normal(0, 0.2, (CONFIG.out_width, CONFIG.width)).astype(np.float32)
    projector_b = rng.normal(0, 0.2, (CONFIG.out_width,)).astype(np.float32)
    with torch.no_grad():
        hidden = model(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))
        ).last_hidden_state
        expected = torch.nn.functional.linear(
            hidden, torch.from_numpy(projector_w), torch.from_numpy(projector_b)
        ).numpy()

    params = siglip_params_from_hf(model.state_dict(), CONFIG.depth, projector_w, projector_b)
    ours = SiglipEncoder(CONFIG, get_precision("parity"))
    ref_shapes = jax.tree.map(jnp.shape, nn.unbox(ours.init(jax.random.key(0), images)))
    assert jax.tree.map(jnp.shape, params) == ref_shapes
    got = np.asarray(ours.apply(params, images))

    assert got.shape == (2, CONFIG.num_patches, CONFIG.out_width)
    # Patch embedding (7 x 7 x 3 + bias) + position, the LayerNorm tower, the projector (+ bias).
    tower = transformer_terms(
        depth=CONFIG.depth,
        width=CONFIG.width,
        mlp_dim=CONFIG.mlp_dim,
        num_heads=CONFIG.num_heads,
        head_dim=CONFIG.width // CONFIG.num_heads,
        keys=CONFIG.num_patches,
        layer_norm=True,
    )
    assert_close(got, expected, terms=(CONFIG.patch_size**2 * 3 + 2, tower, CONFIG.width + 1))


def test_rejects_wrong_image_size():
    ours = SiglipEncoder(CONFIG, get_precision("parity"))
    with pytest.raises(ValueError, match="SigLIP expects images"):
        ours.init(jax.random.key(0), jnp.zeros((1, 30, 30, 3)))


def test_sincos2d_position_embedding_init():
    """The sincos2d option starts the learned embedding at row/column sinusoids plus the usual
    small normal; the default stays SigLIP's normal init."""
    table = sincos_2d(side=3, width=8, period=100.0)
    assert table.shape == (9, 8)
    # Patch (row 1, col 2) is index 5: column phases first, then row phases, lowest freq = 1.
    want = np.array([np.sin(2.0), np.cos(2.0), np.sin(1.0), 1 * np.cos(1.0)])
    # A float64 table rounded once to float32: relative to each value.
    assert_close(table[5, [0, 2, 4, 6]], want, terms=1, scale=np.abs(want))
    kw = dict(
        image_size=28, patch_size=14, width=32, depth=1, mlp_dim=32, num_heads=4, out_width=16
    )
    images = jnp.zeros((1, 28, 28, 3))

    def posemb(config):
        params = SiglipEncoder(config, get_precision("parity")).init(jax.random.key(0), images)
        return np.asarray(nn.unbox(params)["params"]["position_embedding"])

    normal = posemb(SiglipConfig(**kw))
    sincos = posemb(SiglipConfig(**kw, posemb_init="sincos2d"))
    # normal + sincos rounds at their sum's magnitude, then normal is subtracted again.
    table = sincos_2d(2, 32, 100.0)
    assert_close(sincos - normal, table, terms=2, scale=np.abs(normal) + np.abs(table))
    assert np.std(normal) < 0.5
    with pytest.raises(ValueError, match="posemb_init"):
        SiglipConfig(posemb_init="learned")
