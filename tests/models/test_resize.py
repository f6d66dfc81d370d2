"""The resize matrices must reproduce torch.nn.functional.interpolate ('area', 'bicubic')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models.resize import area_matrix, bicubic_matrix, resize_area, resize_bicubic
from tolerances import EPS32, assert_close

torch = pytest.importorskip("torch", reason="torch is the reference for the resize parity tests")
F = torch.nn.functional

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13)  # every scale VAR resizes (16 is never resized)
AREA_PAIRS = [(16, pn) for pn in VAR_SCALES] + [(16, 16), (32, 16), (7, 3), (5, 9)]
BICUBIC_PAIRS = [(pn, 16) for pn in VAR_SCALES] + [(16, 16), (2, 8), (16, 32), (3, 2)]
# For ratios whose in/out is inexact in float32 (e.g. 7 -> 11, 16 -> 5), torch's own fp32
# bicubic sits ~2e-6 from its float64 result on N(0, 1) data (weights are computed in
# float32 from a rounded source coordinate), so no fp32 implementation can promise 1e-6
# there; those pairs are checked against torch fp32 and fp64 with a weight-error bound (below).
BICUBIC_INEXACT_PAIRS = [(7, 11), (16, 5), (5, 9), (4, 12)]
# Keys' kernel with A = -0.75 has sum |w| <= 1.375 over its 4 taps (at t = 1/2): a bicubic
# output's partial sums stay below 1.375**2 max |x| (the `scale` of the rounding bound).
BICUBIC_GAIN = 1.375**2
BICUBIC_TERMS = 4 * 4  # torch sums 4 x 4 taps per output (ours: 2 passes of <= 4 nonzeros)


def _area_window(in_size: int, out_size: int) -> int:
    """The widest adaptive-pooling window on one axis: [floor(i in/out), ceil((i+1) in/out))."""
    return max(-(-(i + 1) * in_size // out_size) - i * in_size // out_size for i in range(out_size))


def _area_terms(in_size: int, out_size: int) -> int:
    """torch sums a whole 2-D window in one pass (ours: two passes over the same values)."""
    return _area_window(in_size, out_size) ** 2


def _abs_area(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per output, sum |weight * value| = the area average of |x| (weights are positive)."""
    return _torch_resize(np.abs(x), size, "area")


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
    size = (out_size, out_size)
    assert_close(got, want, terms=_area_terms(in_size, out_size), scale=_abs_area(x, size))


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
    assert_close(got, want, terms=BICUBIC_TERMS, scale=BICUBIC_GAIN * np.abs(x).max())


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
    # Explicit: the tap weights' own fp32 error dominates the summation's. torch and we evaluate
    # the Keys polynomial (intermediates up to |8A| = 6) in fp32 from an fp32 source coordinate,
    # with different contractions: weights differ by ~8 eps32 (<= 6.5 eps32 measured vs both
    # torch fp32 and fp64); over 4 x 4 taps of sum |w| <= 1.375 per axis that moves an output by
    # up to 88 eps32 max |x| if all align, ~30 eps32 max |x| for random signs. 5 -> 9 uses 36%.
    tol = 32 * EPS32 * np.abs(x).max()
    np.testing.assert_allclose(got, want32, rtol=0, atol=tol)
    np.testing.assert_allclose(got, want64, rtol=0, atol=tol)


def test_non_square_and_extra_batch_dims() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 8, 4)).astype(np.float32)
    flat = x.reshape(6, 16, 8, 4)
    for fn, mode, size in ((resize_area, "area", (13, 3)), (resize_bicubic, "bicubic", (32, 16))):
        got = np.asarray(fn(jnp.asarray(x), size))
        want = _torch_resize(flat, size, mode).reshape(2, 3, *size, 4)
        if mode == "area":
            terms = _area_window(16, size[0]) * _area_window(8, size[1])
            scale = _abs_area(flat, size).reshape(want.shape)
        else:
            terms, scale = BICUBIC_TERMS, BICUBIC_GAIN * np.abs(x).max()
        assert_close(got, want, terms=terms, scale=scale)


def test_area_windows_overlap_like_adaptive_pooling() -> None:
    # 16 -> 6: windows [0,3) [2,6) [5,8) [8,11) [10,14) [13,16) (unequal, overlapping).
    m = area_matrix(16, 6)
    windows = [tuple(np.flatnonzero(row)[[0, -1]] + [0, 1]) for row in m]
    assert windows == [(0, 3), (2, 6), (5, 8), (8, 11), (10, 14), (13, 16)]
    np.testing.assert_allclose(m.sum(axis=1), 1.0)  # float64 rows of 1/len: rtol 1e-7 default


def test_bicubic_properties() -> None:
    # Same size is the identity; 1 -> n is a constant map; rows sum to one. Explicit: the float64
    # matrix holds fp32 tap weights (Keys polynomial evaluated in fp32, intermediates <= 6):
    # each is off by a few eps32 (1 eps32 ~ 1.2e-7), so 1e-7 for the identity (t = 0: the taps
    # are exactly 0, 1, 0, 0 up to a rounding at most) and 1e-6 ~ 8 eps32 for 4-tap sums.
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
    # Explicit: bf16 keeps 8 significant bits, ulp(1) = 2**-7 = 7.8e-3; each resize rounds once.
    np.testing.assert_allclose(np.asarray(y, np.float32), 1.0, atol=1e-2)
