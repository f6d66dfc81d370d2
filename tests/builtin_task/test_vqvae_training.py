"""The VQ-VAE trainer: straight-through quantizer vs inference, codebook init, loss, save/load."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from builtin_task import prepare
from configs import debug
from f1_jax.models.sizes import get_model_config
from f1_jax.models.vqvae import VQVAE
from f1_jax.training import checkpoints
from builtin_task import vqvae_training as vt
from tolerances import assert_close

# The debug recipe's tokenizer: 32 px frames -> 8x8x8 latent, scales 1, 2, 4, 8.
CONFIG = get_model_config("debug").vqvae


def _fhat_terms(si: int) -> int:
    """Reduction lengths behind f_hat after scale `si` (tests/tolerances.py): per scale the bicubic
    upsampling (4 x 4 taps), Phi (3 x 3 conv + bias, then the (1 - r, r) mix) and the add."""
    return (si + 1) * (16 + 9 * CONFIG.z_channels + 1 + 2 + 1)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    out = vt.collect_sim_frames(num_episodes=6, seed=0)
    assert out.shape[1:] == (32, 32, 3) and out.dtype == np.uint8 and len(out) > 60
    return out


def test_pixel_weights_favour_objects(frames):
    x = vt.to_float(frames)
    mask = vt.object_mask(x)
    w = vt.pixel_weights(x)
    assert 0.02 < mask.mean() < 0.3  # sparse objects on a table
    near = np.zeros_like(mask)  # 4-neighbours of object pixels
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    near[:, :, 1:] |= mask[:, :, :-1]
    near[:, :, :-1] |= mask[:, :, 1:]
    table = ~mask & ~near
    assert table.mean() > 0.5
    assert np.all(w[table] == 1.0) and w[mask].min() > 1.0 and w[near & ~mask].min() > 1.0
    assert w[mask].mean() > 5 * w[table].mean()


def test_straight_through_forward_equals_inference_quantizer():
    params = vt.init_params(CONFIG, seed=0)
    f = jax.random.normal(jax.random.key(1), (3, 8, 8, 8)) * 0.7
    st = jax.jit(lambda p, x: vt.quantize_st(CONFIG, p, x))
    ref = jax.jit(lambda p, x: VQVAE(CONFIG).apply({"params": p}, x, method=VQVAE.quantize_latent))
    out = st(params, f)
    idx_ref, fhat_ref, _ = ref(params, f)
    assert sum(len(np.unique(np.asarray(i))) for i in idx_ref) > 10  # a non-trivial case
    for a, b in zip(out["idx_list"], idx_ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The same fp32 ops as quantize_latent in another jit program (fusion may differ).
    for si, (a, b) in enumerate(zip(out["fhat_list"], fhat_ref, strict=True)):
        assert_close(np.asarray(a), np.asarray(b), terms=_fhat_terms(si))
    # f_hat_st = sg(f_hat - f) + f: forward value f_hat (up to rounding), gradient identity.
    last = CONFIG.num_scales - 1
    scale = max(np.abs(np.asarray(fhat_ref[-1])).max(), np.abs(np.asarray(f)).max())
    assert_close(out["f_hat_st"], fhat_ref[-1], terms=_fhat_terms(last) + 2, scale=scale)
    g = jax.random.normal(jax.random.key(2), f.shape)

    def loss(p, x, w_st):
        o = vt.quantize_st(CONFIG, p, x)
        return w_st * jnp.sum(o["f_hat_st"] * g) + o["vq_loss"]

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
    gp_vq, gf_vq = grads(params, f, 0.0)
    _, gf = grads(params, f, 1.0)
    # gf sums g and the VQ loss's per-scale gradients (which gf_vq sums alone), then we subtract:
    # num_scales + 2 roundings at the magnitude of g plus the VQ gradients.
    scale = np.abs(np.asarray(g)).max() + np.abs(np.asarray(gf_vq)).max()
    assert_close(gf - gf_vq, g, terms=CONFIG.num_scales + 2, scale=scale)
    # The VQ loss trains the codebook (through f_hat) and the encoder output (commitment).
    assert np.abs(np.asarray(gf_vq)).sum() > 0
    assert np.abs(np.asarray(gp_vq["quantize"]["embedding"])).sum() > 0


def test_codebook_init_uses_many_codes(frames):
    params = vt.init_params(CONFIG, seed=0)
    x = jnp.asarray(vt.to_float(frames[::2]))
    to_idx = jax.jit(
        lambda p, i: VQVAE(CONFIG).apply({"params": p}, i, method=VQVAE.img_to_idx_list)
    )

    def used(p) -> int:
        return len(np.unique(np.concatenate([np.asarray(i).ravel() for i in to_idx(p, x)])))

    inited = vt.init_codebook(CONFIG, params, x, seed=0)
    assert used(params) < 40  # the N(0, 1) codebook is far from the latents: ~20-30 codes win
    assert used(inited) >= 56


def test_training_reduces_loss(frames):
    params, metrics = vt.train_vqvae(
        CONFIG,
        frames,
        steps=30,
        batch_size=4,
        learning_rate=5e-3,
        seed=0,
        progress=False,
    )
    assert metrics["final_loss"] < 0.5 * metrics["first_loss"], metrics
    assert metrics["codes_used"] >= 8, metrics  # collapsed to the table colour: 1-3 codes
    assert np.isfinite(metrics["mse"]) and metrics["object_mse"] > metrics["mse"]
    assert set(params) == {"encoder", "decoder", "quant_conv", "post_quant_conv", "quantize"}


def test_save_then_load_params_is_bit_exact(tmp_path):
    params = vt.init_params(CONFIG, seed=3)
    path = str(tmp_path / "vqvae")
    vt.save_vqvae(path, vt.init_params(CONFIG, seed=4))
    vt.save_vqvae(path, params)  # replaces the first checkpoint
    img = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    abstract = jax.eval_shape(lambda x: VQVAE(CONFIG).init(jax.random.key(0), x), img)["params"]
    loaded = checkpoints.load_params(path, abstract)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqvae"]  # no temp dirs left


def test_debug_recipe_trains_its_tokenizer_once(tmp_path, monkeypatch):
    """builtin_task.prepare_vqvae: trains and saves on first use (path keyed by the recipe), then
    reuses the saved tokenizer without training again."""

    config = debug.get_config()
    config.sim.vqvae_steps, config.sim.vqvae_episodes, config.sim.vqvae_batch_size = 3, 1, 4
    path = prepare.prepare_vqvae(config, str(tmp_path))
    assert os.path.isdir(path) and os.path.exists(path + ".json")
    abstract = jax.eval_shape(
        lambda: VQVAE(CONFIG).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    )
    loaded = checkpoints.load_params(path, abstract)
    assert jax.tree.structure(loaded) == jax.tree.structure(abstract)
    monkeypatch.setattr(vt, "train_vqvae", lambda *a, **k: pytest.fail("trained twice"))
    assert prepare.prepare_vqvae(config, str(tmp_path)) == path
    config.sim.vqvae_steps = 4  # a different recipe gets its own tokenizer
    with pytest.raises(pytest.fail.Exception, match="trained twice"):
        prepare.prepare_vqvae(config, str(tmp_path))
