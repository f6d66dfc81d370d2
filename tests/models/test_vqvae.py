"""VAR VQ-VAE port: building blocks vs torch.nn.functional, quantizer invariants, param count.

The torch references below are written from VAR's published math (models/basic_vae.py,
models/quant.py) using only torch.nn.functional, with the Flax weights copied over.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from f1_common import model_config
from f1_jax.models import vqvae as vq
from f1_jax.models.resize import area_matrix
from f1_common.model_config import VQVAEConfig
from f1_jax.models.vqvae import VQVAE
from tolerances import assert_close

torch = pytest.importorskip("torch", reason="torch is the reference for the VQ-VAE parity tests")
F = torch.nn.functional

TINY = VQVAEConfig.tiny()


# ------------------------------------------------------------------------------ helpers


def _t(a) -> "torch.Tensor":
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _nchw(x) -> "torch.Tensor":
    return _t(x).permute(0, 3, 1, 2)


def _nhwc(x: "torch.Tensor") -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _random_params(module, *args, seed: int = 0):
    """Random params of the right tree/shapes without running the init computation.

    ``module.init`` under jit costs ~20 s of compile on 2 busy cores (one threefry kernel
    per parameter), so we take the shapes from ``jax.eval_shape`` and fill them with numpy:
    torch-like uniform(+-1/sqrt(fan_in)) kernels, small biases, GroupNorm scale/bias away
    from 1/0 (so a scale/bias mix-up is visible) and an N(0, 1) codebook.
    """
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
    assert set(shapes) == {"params"}
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        shape, name = leaf.shape, path[-1]
        if name == "kernel":
            bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
            val = rng.uniform(-bound, bound, shape)
        elif name == "embedding":
            val = rng.standard_normal(shape)
        elif name == "scale":
            val = 1.0 + 0.2 * rng.standard_normal(shape)
        else:  # conv and norm biases
            val = 0.1 * rng.standard_normal(shape)
        out[path] = jnp.asarray(val, jnp.float32)
    return traverse_util.unflatten_dict(out)


def _init(module, x: np.ndarray, seed: int = 0):
    return _random_params(module, jnp.asarray(x), seed=seed)


def _run(module, params, *args, method=None):
    """``module.apply`` under jit (eager op-by-op dispatch is slower); array args only."""
    fn = jax.jit(lambda v, *a: module.apply(v, *a, method=method))
    out = fn({"params": params}, *args)
    return jax.tree.map(np.asarray, out)


# ----------------------------------------------------------- torch reference functions

# The reduction lengths the torch reference performs, recorded as it runs: summed, they are the
# `terms` of the fp32 rounding bound for a composite block (tests/tolerances.py). Parallel
# branches (the shortcut) count too, which only over-counts.
_TERMS: list[int] = []


def _reference(fn, *args):
    """Runs a torch reference: (its NHWC numpy result, the reduction lengths it summed)."""
    _TERMS.clear()
    out = fn(*args)
    return _nhwc(out), sum(_TERMS)


def t_conv(x, p, stride: int = 1, padding: int = 1):
    w = _t(p["kernel"]).permute(3, 2, 0, 1)  # [kh,kw,I,O] -> [O,I,kh,kw]
    _TERMS.append(math.prod(w.shape[1:]) + 1)  # kernel x input channels, + bias
    return F.conv2d(x, w, _t(p["bias"]), stride=stride, padding=padding)


def t_gn(x, p, groups: int):
    # Mean and variance over a group (channels/groups x H x W), then normalise, scale, shift.
    _TERMS.append(2 * (x.shape[1] // groups) * x.shape[2] * x.shape[3] + 3)
    return F.group_norm(x, groups, _t(p["scale"]), _t(p["bias"]), eps=1e-6)


def t_resblock(x, p, groups: int):
    h = t_conv(F.silu(t_gn(x, p["norm1"], groups)), p["conv1"])
    h = t_conv(F.silu(t_gn(h, p["norm2"], groups)), p["conv2"])
    short = t_conv(x, p["nin_shortcut"], padding=0) if "nin_shortcut" in p else x
    _TERMS.append(1)  # the residual add
    return short + h


def t_attn(x, p, groups: int):
    b, c, hh, ww = x.shape
    qkv = t_conv(t_gn(x, p["norm"], groups), p["qkv"], padding=0)
    q, k, v = qkv.reshape(b, 3, c, hh * ww).unbind(1)  # [B, C, N] each
    _TERMS.append(c + 2 * hh * ww + 1)  # q.k over channels, softmax sum and p.v over keys, add
    w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=2)  # [B, Nq, Nk]
    h = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
    return x + t_conv(h, p["proj_out"], padding=0)


def t_down(x, p):
    return t_conv(F.pad(x, (0, 1, 0, 1)), p["conv"], stride=2, padding=0)


def t_up(x, p):
    return t_conv(F.interpolate(x, scale_factor=2, mode="nearest"), p["conv"])


def t_mid(h, p, groups: int):
    h = t_resblock(h, p["block_1"], groups)
    h = t_attn(h, p["attn_1"], groups)
    return t_resblock(h, p["block_2"], groups)


def t_encoder(x, p, cfg: VQVAEConfig):
    g, n = cfg.norm_groups, len(cfg.ch_mult)
    h = t_conv(x, p["conv_in"])
    for i in range(n):
        lvl = p[f"down_{i}"]
        for j in range(cfg.num_res_blocks):
            h = t_resblock(h, lvl[f"block_{j}"], g)
            if i == n - 1:
                h = t_attn(h, lvl[f"attn_{j}"], g)
        if i != n - 1:
            h = t_down(h, lvl["downsample"])
    h = t_mid(h, p["mid"], g)
    return t_conv(F.silu(t_gn(h, p["norm_out"], g)), p["conv_out"])


def t_decoder(z, p, cfg: VQVAEConfig):
    g, n = cfg.norm_groups, len(cfg.ch_mult)
    h = t_mid(t_conv(z, p["conv_in"]), p["mid"], g)
    for i in reversed(range(n)):
        lvl = p[f"up_{i}"]
        for j in range(cfg.num_res_blocks + 1):
            h = t_resblock(h, lvl[f"block_{j}"], g)
            if i == n - 1:
                h = t_attn(h, lvl[f"attn_{j}"], g)
        if i != 0:
            h = t_up(h, lvl["upsample"])
    return t_conv(F.silu(t_gn(h, p["norm_out"], g)), p["conv_out"])


def t_phi_index(si: int, sn: int, k: int) -> int:
    ticks = (
        np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
        if k == 4
        else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    )
    return int(np.argmin(np.abs(ticks - si / (sn - 1))))


def t_phi(h, qp, si: int, cfg: VQVAEConfig):
    p = qp["quant_resi"][f"qresi_ls_{t_phi_index(si, cfg.num_scales, cfg.share_quant_resi)}"]
    r = cfg.quant_resi
    return h * (1 - r) + t_conv(h, p) * r


def t_quantize(f, qp, cfg: VQVAEConfig):
    """VAR f_to_idxBl_or_fhat in torch: returns (idx list, f_hat list)."""
    emb = _t(qp["embedding"])
    b, c, L, _ = f.shape
    sn = cfg.num_scales
    f_rest, f_hat = f.clone(), torch.zeros_like(f)
    idxs, fhats = [], []
    for si, pn in enumerate(cfg.patch_nums):
        z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != sn - 1 else f_rest
        z = z.permute(0, 2, 3, 1).reshape(-1, c)
        d = (z**2).sum(1, keepdim=True) + (emb**2).sum(1)
        d.addmm_(z, emb.T, alpha=-2, beta=1)
        idx = d.argmin(1)
        h = emb[idx].view(b, pn, pn, c).permute(0, 3, 1, 2)
        if si != sn - 1:
            h = F.interpolate(h, size=(L, L), mode="bicubic")
        h = t_phi(h, qp, si, cfg)
        f_hat = f_hat + h
        f_rest = f_rest - h
        idxs.append(idx.view(b, pn * pn))
        fhats.append(f_hat.clone())
    return idxs, fhats


def t_var_input(idxs, qp, cfg: VQVAEConfig):
    """VAR idxBl_to_var_input in torch."""
    emb = _t(qp["embedding"])
    b, c, L = idxs[0].shape[0], cfg.z_channels, cfg.latent_size
    f_hat = torch.zeros(b, c, L, L)
    out = []
    for si in range(cfg.num_scales - 1):
        pn = cfg.patch_nums[si]
        h = emb[idxs[si]].transpose(1, 2).reshape(b, c, pn, pn)
        f_hat = f_hat + t_phi(F.interpolate(h, size=(L, L), mode="bicubic"), qp, si, cfg)
        nxt = cfg.patch_nums[si + 1]
        out.append(
            F.interpolate(f_hat, size=(nxt, nxt), mode="area").view(b, c, -1).transpose(1, 2)
        )
    return torch.cat(out, 1)


def _fhat_terms(si: int, cfg: VQVAEConfig = TINY) -> int:
    """Reduction lengths behind f_hat after scale `si`: per scale the bicubic upsampling (4 x 4
    taps), Phi (3 x 3 conv + bias, then (1 - r) h + r conv(h)) and the add into f_hat. (The area
    downsampling of the residual only feeds the argmin, whose indices are compared exactly.)"""
    return (si + 1) * (16 + (9 * cfg.z_channels + 1 + 2) + 1)


# The widest area window of a VAR input block (16 -> 2: 8 x 8 values averaged).
_AREA_TERMS = (TINY.latent_size // TINY.patch_nums[1]) ** 2


# ------------------------------------------------------------------- building blocks


def _rand(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("ks,stride,pad", [(3, 1, 1), (1, 1, 0), (3, 2, 0)])
def test_conv2d(ks: int, stride: int, pad: int) -> None:
    x = _rand((2, 9, 9, 12))
    m = vq.Conv2d(16, ks, stride=stride, padding=pad)
    p = _init(m, x)
    got = _run(m, p, jnp.asarray(x))
    want, terms = _reference(t_conv, _nchw(x), p, stride, pad)
    assert_close(got, want, terms=terms)


def test_group_norm() -> None:
    x = _rand((2, 5, 5, 64)) * 3 + 1
    m = vq._group_norm(32, 1e-6, jnp.float32, "norm")
    p = _init(m, x)
    got = _run(m, p, jnp.asarray(x))
    want, terms = _reference(t_gn, _nchw(x), p, 32)
    assert_close(got, want, terms=terms)


@pytest.mark.parametrize("cin,cout,groups", [(32, 32, 8), (32, 64, 8), (64, 64, 32)])
def test_resnet_block(cin: int, cout: int, groups: int) -> None:
    x = _rand((2, 8, 8, cin))
    m = vq.ResnetBlock(cout, norm_groups=groups)
    p = _init(m, x)
    assert ("nin_shortcut" in p) == (cin != cout)
    got = _run(m, p, jnp.asarray(x))
    want, terms = _reference(t_resblock, _nchw(x), p, groups)
    assert_close(got, want, terms=terms)


def test_attn_block() -> None:
    x = _rand((2, 6, 5, 64))
    m = vq.AttnBlock(norm_groups=32)
    p = _init(m, x)
    assert p["qkv"]["kernel"].shape == (1, 1, 64, 192)
    got = _run(m, p, jnp.asarray(x))
    want, terms = _reference(t_attn, _nchw(x), p, 32)
    assert_close(got, want, terms=terms)


@pytest.mark.parametrize("size", [8, 7])
def test_downsample(size: int) -> None:
    x = _rand((2, size, size, 16))
    m = vq.Downsample()
    p = _init(m, x)
    got = _run(m, p, jnp.asarray(x))
    want, terms = _reference(t_down, _nchw(x), p)
    assert got.shape == want.shape
    assert_close(got, want, terms=terms)


def test_upsample() -> None:
    x = _rand((2, 5, 4, 16))
    m = vq.Upsample()
    p = _init(m, x)
    got = _run(m, p, jnp.asarray(x))
    assert got.shape == (2, 10, 8, 16)
    want, terms = _reference(t_up, _nchw(x), p)
    assert_close(got, want, terms=terms)


def test_phi_index_schedule() -> None:
    assert [model_config.phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    for k in (1, 3, 6):  # non-4 K uses the 1/(2K) margin
        assert [model_config.phi_index(si, 10, k) for si in range(10)] == [
            t_phi_index(si, 10, k) for si in range(10)
        ]


# ------------------------------------------------------------------- tiny full model


@pytest.fixture(scope="module")
def tiny():
    """Tiny model, params, images, and every public method's output from ONE jit.

    One compiled graph instead of one per method keeps the module under ~15 s on 2 cores.
    """
    cfg = TINY
    model = VQVAE(cfg)
    s, L, zc = cfg.image_size, cfg.latent_size, cfg.z_channels
    img = np.clip(_rand((2, s, s, 3), seed=3) * 0.5, -1, 1)
    params = _random_params(model, jnp.asarray(img))

    @jax.jit
    def everything(v, x):
        def run(*args, method):
            return model.apply(v, *args, method=method)

        f = run(x, method=VQVAE.encode_latent)
        idx, fhat, rest = run(f, method=VQVAE.quantize_latent)
        out = dict(f=f, idx=idx, fhat=fhat, rest=rest)
        out["idx_direct"] = run(x, method=VQVAE.img_to_idx_list)
        out["var_in"] = run(idx, method=VQVAE.idx_list_to_var_input)
        out["fhat_from_idx"] = run(idx, method=VQVAE.idx_list_to_fhat)
        out["img_from_idx"] = run(idx, method=VQVAE.idx_list_to_img)
        out["img_from_fhat"] = run(fhat[-1], method=VQVAE.fhat_to_img)
        # VAR's inference loop: si is static, so the loop is unrolled Python.
        f_hat, steps = jnp.zeros((x.shape[0], L, L, zc)), []
        for si in range(cfg.num_scales):
            h = run(idx[si], method=VQVAE.embed_scale)
            f_hat, nxt = model.apply(v, si, f_hat, h, method=VQVAE.next_autoregressive_input)
            steps.append((h, f_hat, nxt))
        out["ar"] = steps
        return out

    out = jax.tree.map(np.asarray, everything({"params": params}, jnp.asarray(img)))
    return dict(model=model, params=params, img=img, **out)


def test_tiny_encoder_matches_torch(tiny) -> None:
    p, cfg = tiny["params"], TINY
    encode = lambda x: t_conv(t_encoder(x, p["encoder"], cfg), p["quant_conv"])
    want, terms = _reference(encode, _nchw(tiny["img"]))
    assert tiny["f"].shape == (2, cfg.latent_size, cfg.latent_size, cfg.z_channels)
    assert_close(tiny["f"], want, terms=terms)


def test_tiny_quantizer_matches_torch(tiny) -> None:
    qp, cfg = tiny["params"]["quantize"], TINY
    idxs, fhats = t_quantize(_nchw(tiny["f"]), qp, cfg)
    for si, pn in enumerate(cfg.patch_nums):
        assert tiny["idx"][si].shape == (2, pn * pn) and tiny["idx"][si].dtype == np.int32
        np.testing.assert_array_equal(tiny["idx"][si], idxs[si].numpy())
        assert_close(tiny["fhat"][si], _nhwc(fhats[si]), terms=_fhat_terms(si))
    # Block si + 1 = area(f_hat after scale si); the last f_hat averaged is that of scale SN - 2.
    want = t_var_input(idxs, qp, cfg).numpy()
    assert_close(tiny["var_in"], want, terms=_fhat_terms(cfg.num_scales - 2) + _AREA_TERMS)


def test_residual_decomposition(tiny) -> None:
    # After the last scale, f_hat + residual reconstructs the encoder latent: f_hat sums SN
    # scale contributions, the residual subtracts them from f (2 SN + 1 adds at the magnitude of
    # the partial f_hat's and f).
    scale = max(np.abs(tiny["f"]).max(), max(np.abs(fh).max() for fh in tiny["fhat"]))
    assert_close(
        tiny["fhat"][-1] + tiny["rest"], tiny["f"], terms=2 * TINY.num_scales + 1, scale=scale
    )


def test_img_to_idx_list(tiny) -> None:
    assert len(tiny["idx_direct"]) == TINY.num_scales
    for a, b in zip(tiny["idx_direct"], tiny["idx"]):
        np.testing.assert_array_equal(a, b)


def test_decode_from_indices_equals_decode_fhat(tiny) -> None:
    last = TINY.num_scales - 1
    assert_close(tiny["fhat_from_idx"], tiny["fhat"][-1], terms=_fhat_terms(last))
    # fhat_to_img = clamp(decoder(post_quant_conv(f_hat))), decoder checked against torch.
    p = tiny["params"]
    decode = lambda f: t_decoder(t_conv(f, p["post_quant_conv"]), p["decoder"], TINY).clamp(-1, 1)
    want, decoder_terms = _reference(decode, _nchw(tiny["fhat"][-1]))
    img_idx, img_fhat = tiny["img_from_idx"], tiny["img_from_fhat"]
    assert img_idx.shape == (2, TINY.image_size, TINY.image_size, 3)
    assert_close(img_idx, img_fhat, terms=_fhat_terms(last) + decoder_terms)
    assert np.abs(img_idx).max() <= 1.0  # clamped like VAR
    assert_close(img_fhat, want, terms=decoder_terms)


def test_var_input_layout(tiny) -> None:
    cfg, var_in = TINY, tiny["var_in"]
    assert var_in.shape == (2, cfg.var_input_len, cfg.z_channels)
    start = 0
    for si, pn in enumerate(cfg.patch_nums[1:]):
        # Block for scale si+1 = area-downsampled cumulative f_hat after scale si.
        m = area_matrix(cfg.latent_size, pn)  # numpy: no per-size jit compiles
        want = np.einsum("ph,bhwc,qw->bpqc", m, tiny["fhat"][si], m)
        got = var_in[:, start : start + pn * pn]
        # var_in recomputes f_hat from the indices, then averages it (float64 reference here).
        assert_close(got, want.reshape(2, pn * pn, -1), terms=_fhat_terms(si) + _AREA_TERMS)
        start += pn * pn
    assert start == cfg.var_input_len


def test_next_autoregressive_input_reproduces_encoding(tiny) -> None:
    cfg, var_in = TINY, tiny["var_in"]
    start = 0
    for si, pn in enumerate(cfg.patch_nums):
        h, f_hat, nxt = tiny["ar"][si]
        assert h.shape == (2, pn, pn, cfg.z_channels)
        assert_close(f_hat, tiny["fhat"][si], terms=_fhat_terms(si))
        if si < cfg.num_scales - 1:
            pn2 = cfg.patch_nums[si + 1]
            assert nxt.shape == (2, pn2, pn2, cfg.z_channels)
            block = var_in[:, start : start + pn2 * pn2].reshape(2, pn2, pn2, cfg.z_channels)
            assert_close(nxt, block, terms=_fhat_terms(si) + _AREA_TERMS)
            start += pn2 * pn2
        else:
            np.testing.assert_array_equal(nxt, f_hat)  # the last scale returns f_hat itself


# ------------------------------------------------------------------- full size


def test_full_config_constants() -> None:
    cfg = VQVAEConfig.full()
    assert cfg.image_size == 256 and cfg.latent_size == 16
    assert cfg.num_tokens == 680 and cfg.var_input_len == 679
    assert [model_config.phi_index(si, cfg.num_scales, cfg.num_phis) for si in range(10)] == [
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]


def test_full_param_count_and_names() -> None:
    cfg = VQVAEConfig.full()
    model = VQVAE(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
    assert set(shapes) == {"params"}  # no ema_vocab_hit_SV buffer
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    assert sum(math.prod(a.shape) for a in flat.values()) == 108_948_355
    assert len(flat) == 323  # torch state dict: 323 parameters + 1 buffer
    expected = {
        "encoder/conv_in/kernel": (3, 3, 3, 160),
        "encoder/down_0/block_0/norm1/scale": (160,),
        "encoder/down_2/block_0/nin_shortcut/kernel": (1, 1, 160, 320),
        "encoder/down_3/downsample/conv/kernel": (3, 3, 320, 320),
        "encoder/down_4/attn_1/qkv/kernel": (1, 1, 640, 1920),
        "encoder/mid/attn_1/proj_out/kernel": (1, 1, 640, 640),
        "encoder/conv_out/kernel": (3, 3, 640, 32),
        "quant_conv/kernel": (3, 3, 32, 32),
        "post_quant_conv/bias": (32,),
        "quantize/embedding": (4096, 32),
        "quantize/quant_resi/qresi_ls_3/kernel": (3, 3, 32, 32),
        "decoder/conv_in/kernel": (3, 3, 32, 640),
        "decoder/up_4/attn_2/norm/bias": (640,),
        "decoder/up_4/upsample/conv/kernel": (3, 3, 640, 640),
        "decoder/up_3/block_0/nin_shortcut/kernel": (1, 1, 640, 320),
        "decoder/up_0/block_2/conv2/kernel": (3, 3, 160, 160),
        "decoder/conv_out/kernel": (3, 3, 160, 3),
    }
    for name, shape in expected.items():
        assert flat[name].shape == shape, name
    assert not any(k.startswith("encoder/down_4/downsample") for k in flat)
    assert not any(k.startswith("decoder/up_0/upsample") for k in flat)
    groups = {
        "encoder": 44_107_872,
        "decoder": 64_653_923,
        "quantize": 168_064,
    }
    for prefix, n in groups.items():
        assert sum(math.prod(a.shape) for k, a in flat.items() if k.startswith(prefix + "/")) == n


@pytest.mark.parametrize(
    "overrides,phis",
    [
        ({}, [f"qresi_ls_{k}" for k in range(4)]),
        ({"share_quant_resi": 0}, [f"qresi_ls_{k}" for k in range(10)]),  # one Phi per scale
        ({"share_quant_resi": 1}, ["qresi"]),
        ({"quant_resi": 0.0}, []),  # VAR uses nn.Identity: no Phi params
    ],
)
def test_phi_bank_modes(overrides, phis) -> None:
    cfg = dataclasses.replace(TINY, **overrides)
    s = cfg.image_size
    shapes = jax.eval_shape(lambda: VQVAE(cfg).init(jax.random.key(0), jnp.zeros((1, s, s, 3))))
    got = sorted(shapes["params"]["quantize"].get("quant_resi", {}))
    assert got == sorted(phis)
