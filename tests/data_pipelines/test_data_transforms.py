"""Windows, normalisation, image ops and tokenisation (pure functions, values by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import schema, statistics
from f1_common import image_tools as images
from f1_common import transforms
from f1_common.tokenizer import Tokenizer


def test_frame_window_clamps_at_both_ends():
    idx, pad = transforms.frame_indices(2, 10, (-9, -6, -3, 0, 3))
    np.testing.assert_array_equal(idx, [0, 0, 0, 2, 5])
    np.testing.assert_array_equal(pad, [True, True, True, False, False])
    idx, pad = transforms.frame_indices(8, 10, (-9, -6, -3, 0, 3))
    np.testing.assert_array_equal(idx, [0, 2, 5, 8, 9])
    np.testing.assert_array_equal(pad, [True, False, False, False, True])


def test_action_chunk_pads_past_the_end():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)
    chunk, pad = transforms.action_chunk(actions, 3, 4)
    np.testing.assert_array_equal(chunk, [[6, 7], [8, 9], [8, 9], [8, 9]])
    np.testing.assert_array_equal(pad, [False, False, True, True])


def test_pad_to_32():
    x, mask = transforms.pad_to(np.ones((2, 7), np.float32))
    assert x.shape == (2, 32) and x[:, 7:].sum() == 0 and mask.sum() == 7


def test_normalize_modes_and_inverse():
    stats = statistics.array_stats(np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]]))
    assert stats["mean"] == [2.0, 10.0] and stats["count"] == 3
    x = np.array([[4.0, 10.0]], np.float32)
    y = transforms.normalize(x, stats, "mean_std")
    np.testing.assert_allclose(y, [[2 / (np.sqrt(8 / 3) + 1e-8), 0.0]], rtol=1e-6)
    q01, q99 = np.quantile([0, 2, 4], 0.01), np.quantile([0, 2, 4], 0.99)
    yq = transforms.normalize(x, stats, "quantile")
    np.testing.assert_allclose(yq[0, 0], (4 - q01) / (q99 - q01 + 1e-8) * 2 - 1, rtol=1e-6)
    np.testing.assert_allclose(yq[0, 1], -1.0)  # constant dim: (x - q01) = 0
    for mode in transforms.NORM_MODES:
        padded, _ = transforms.pad_to(transforms.normalize(x, stats, mode))
        np.testing.assert_allclose(transforms.unnormalize(padded, stats, mode), x, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown norm mode"):
        transforms.normalize(x, stats, "min_max_typo")


def test_resize_with_pad_pads_left_and_top():
    img = np.full((10, 20, 3), 200, np.uint8)
    out = images.resize_with_pad(img, 16, 16)
    assert out.shape == (16, 16, 3)
    assert out[:8].max() == 0 and (out[8:] == 200).all()  # 10x20 -> 8x16 at the bottom
    tall = images.resize_with_pad(np.full((20, 10, 3), 9, np.uint8), 16, 16)
    assert tall[:, :8].max() == 0 and (tall[:, 8:] == 9).all()


def test_bilinear_matches_torch_half_pixel_rule_by_hand():
    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 1] = 100
    out = images.resize_bilinear(img, 1, 4)
    # src x = (i + .5) / 2 - .5 clamped at 0 -> 0, .25, .75, 1 (edge) -> 0, 25, 75, 100
    np.testing.assert_array_equal(out[0, :, 0], [0, 25, 75, 100])
    down = images.resize_bilinear(np.arange(4, dtype=np.uint8).reshape(1, 4, 1) * 10, 1, 2)
    np.testing.assert_array_equal(down[0, :, 0], [5, 25])  # no antialias: taps at x = .5, 2.5


def test_resize_short_side_and_crop():
    img = np.zeros((16, 20, 3), np.uint8)
    assert images.resize_short_side(img, 32).shape == (32, 40, 3)
    assert images.crop_origin((36, 40), 32, None) == (2, 4)
    rng = np.random.default_rng(0)
    o = images.crop_origin((36, 40), 32, rng)
    assert 0 <= o[0] <= 4 and 0 <= o[1] <= 8


@pytest.mark.parametrize("shape", [(64, 64), (60, 80), (80, 60)])
def test_box_resize_crop_matches_resize_then_crop(shape):
    img = np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)
    full = images.resize_short_side(img, 72)
    for origin in [(0, 0), (full.shape[0] - 64, full.shape[1] - 64), (3, 5)]:
        part = images.resize_short_side_and_crop(img, 72, 64, origin)
        ref = full[origin[0] : origin[0] + 64, origin[1] : origin[1] + 64]
        diff = np.abs(part.astype(int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_color_augment_is_seeded():
    img = np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    kw = dict(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.5, 1.5))
    a = images.color_augment(img, np.random.default_rng(5), **kw)
    b = images.color_augment(img, np.random.default_rng(5), **kw)
    c = images.color_augment(img, np.random.default_rng(6), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tokenizer_pads_to_48(tokenizer_path):
    tok = Tokenizer(tokenizer_path, 48)
    tokens, mask = tok.encode("pick_up the black bowl")
    ids = tok.sp.encode("pick up the black bowl", add_bos=True) + tok.sp.encode("\n")
    assert tokens.shape == mask.shape == (48,) and tokens.dtype == np.int32
    assert mask.sum() == len(ids) and tokens[0] == tok.sp.bos_id()
    np.testing.assert_array_equal(tokens[: len(ids)], ids)
    assert (tokens[len(ids) :] == 0).all()
    long_tokens, long_mask = Tokenizer(tokenizer_path, 4).encode("pick up the black bowl " * 5)
    assert long_mask.all() and long_tokens.shape == (4,)
    with pytest.raises(FileNotFoundError):
        Tokenizer("/no/such/tokenizer.model")


def test_step_record_standard_schema():
    frames = np.empty(3, object)
    frames[:] = [b"a", b"b", b"c"]
    ep = schema.StdEpisode(
        "bridge",
        4,
        {"primary": frames},
        np.ones((3, 8), np.float32),
        np.ones((3, 7), np.float32),
        "wipe",
        (0, 3),
    )
    rec = schema.step_record(ep, 1)
    assert rec["dataset_name"] == "bridge" and rec["episode_id"] == 4 and rec["step_id"] == 1
    assert rec["images"] == {"primary": b"b", "secondary": b"", "wrist": b""}
    assert rec["image_mask"].tolist() == [True, False, False]
    assert rec["state"].shape == rec["action"].shape == (32,)
    assert rec["state_mask"].sum() == 8 and rec["action_mask"].sum() == 7
    assert rec["language_instruction"] == "wipe"
    with pytest.raises(ValueError, match="same T"):
        schema.StdEpisode("x", 0, {}, np.ones((3, 8)), np.ones((2, 7)), "", (0, 3))
    with pytest.raises(ValueError, match="unknown camera"):
        schema.StdEpisode("x", 0, {"top": frames}, np.ones((3, 8)), np.ones((3, 7)), "", (0, 3))
