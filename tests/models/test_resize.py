"""The resize matrices must reproduce torch.nn.functional.interpolate ('area', 'bicubic')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models.resize import area_matrix, bicubic_matrix, resize_area, resize_bicubic

torch = pytest.importorskip("torch", reason="torch is the reference for the resize parity tests")
F = torch.nn.functional

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13)  # every scale VAR resizes (16 is never resized)
AREA_PAIRS = [(16, pn) for pn in VAR_SCALES] + [(16, 16), (32, 16), (7, 3), (5, 9)]
BICUBIC_PAIRS = [(pn, 16) for pn in VAR_SCALES] + [(16, 16), (2, 8), (16, 32), (3, 2)]
# For ratios whose in/out is inexact in float32 (e.g. 7 -> 11, 16 -> 5), torch's own fp32
# bicubic sits ~2e-6 from its float64 result on N(0, 1) data (weights are computed in
# float32 from a rounded source coordinate), so no fp32 implementation can promise 1e-6
# there; those pairs are checked against torch fp32 and fp64 at 4 ulp(4) = 4e-6.
BICUBIC_INEXACT_PAIRS = [(7, 11), (16, 5), (5, 9), (4, 12)]


def _torch_resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """NHWC numpy -> torch NCHW interpolate -> NHWC numpy."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(xt, size=size, mode=mode, **kwargs).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("in_size,out_size", AREA_PAIRS)
def test_area_matches_torch(in_size: int, out_size: int) -> None:
    x = (
        np.random.default_rng(in_size * 100 + out_size)
        .standard_normal((2, in_size, in_size, 8))
        .astype(np.float32)
    )
    want = _torch_resize(x, (out_size, out_size), "area")
    got = np.asarray(resize_area(jnp.asarray(x), (out_size, out_size)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_size,out_size", BICUBIC_PAIRS)
def test_bicubic_matches_torch(in_size: int, out_size: int) -> None:
    x = (
        np.random.default_rng(in_size * 100 + out_size)
        .standard_normal((2, in_size, in_size, 8))
        .astype(np.float32)
    )
    want = _torch_resize(x, (out_size, out_size), "bicubic")
    got = np.asarray(resize_bicubic(jnp.asarray(x), (out_size, out_size)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_size,out_size", BICUBIC_INEXACT_PAIRS)
def test_bicubic_inexact_ratios_match_torch_to_rounding(in_size: int, out_size: int) -> None:
    x = (
        np.random.default_rng(in_size * 100 + out_size)
        .standard_normal((2, in_size, in_size, 8))
        .astype(np.float32)
    )
    got = np.asarray(resize_bicubic(jnp.asarray(x), (out_size, out_size)))
    want32 = _torch_resize(x, (out_size, out_size), "bicubic")
    want64 = _torch_resize(x.astype(np.float64), (out_size, out_size), "bicubic")
    np.testing.assert_allclose(got, want32, rtol=0, atol=4e-6)
    np.testing.assert_allclose(got, want64, rtol=0, atol=4e-6)


def test_non_square_and_extra_batch_dims() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 8, 4)).astype(np.float32)
    flat = x.reshape(6, 16, 8, 4)
    for fn, mode, size in ((resize_area, "area", (13, 3)), (resize_bicubic, "bicubic", (32, 16))):
        got = np.asarray(fn(jnp.asarray(x), size))
        want = _torch_resize(flat, size, mode).reshape(2, 3, *size, 4)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_area_windows_overlap_like_adaptive_pooling() -> None:
    # 16 -> 6: windows [0,3) [2,6) [5,8) [8,11) [10,14) [13,16) (unequal, overlapping).
    m = area_matrix(16, 6)
    windows = [tuple(np.flatnonzero(row)[[0, -1]] + [0, 1]) for row in m]
    assert windows == [(0, 3), (2, 6), (5, 8), (8, 11), (10, 14), (13, 16)]
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


def test_bicubic_properties() -> None:
    # Same size is the identity; 1 -> n is a constant map; rows sum to one.
    np.testing.assert_allclose(bicubic_matrix(16, 16), np.eye(16), atol=1e-7)
    np.testing.assert_allclose(bicubic_matrix(1, 16), np.ones((16, 1)), atol=1e-6)
    for pn in VAR_SCALES:
        np.testing.assert_allclose(bicubic_matrix(pn, 16).sum(axis=1), 1.0, atol=1e-6)


def test_matrices_are_cached_and_read_only() -> None:
    assert area_matrix(16, 13) is area_matrix(16, 13)
    with pytest.raises(ValueError):
        bicubic_matrix(5, 16)[0, 0] = 1.0


def test_jit_and_dtype() -> None:
    x = jnp.ones((1, 16, 16, 2), jnp.bfloat16)
    y = jax.jit(lambda a: resize_bicubic(resize_area(a, (5, 5)), (16, 16)))(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (1, 16, 16, 2)
    np.testing.assert_allclose(np.asarray(y, np.float32), 1.0, atol=1e-2)
