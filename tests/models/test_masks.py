"""The cumulative block mask and position ids (docs/model.md, "Token layout")."""

import jax.numpy as jnp
import numpy as np
import pytest

from f1_jax.models import masks


def test_block_mask_by_hand():
    pad = jnp.asarray([[True, True, False, True, True, True]])
    starts = jnp.asarray([[0, 0, 0, 1, 1, 0]])
    got = np.asarray(masks.block_attention_mask(pad, starts))[0].astype(int)
    want = np.array(
        [
            [1, 1, 0, 0, 0, 0],  # prefix block: bidirectional, blind to padding and later blocks
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],  # a padded query sees nothing
            [1, 1, 0, 1, 0, 0],  # second block: prefix + itself
            [1, 1, 0, 1, 1, 1],  # third block: everything before + itself, both ways
            [1, 1, 0, 1, 1, 1],
        ]
    )
    np.testing.assert_array_equal(got, want)


def test_suffix_mask_sees_real_prefix_only():
    prefix_pad = jnp.asarray([[True, False, True]])
    got = np.asarray(
        masks.suffix_attention_mask(prefix_pad, jnp.ones((1, 3), bool), jnp.asarray([[1, 1, 0]]))
    )[0].astype(int)
    np.testing.assert_array_equal(got, [[1, 0, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1]])


def test_positions_skip_padding_and_continue():
    pad = jnp.asarray([[True, True, False, True], [True, False, False, True]])
    np.testing.assert_array_equal(masks.positions_from_pad(pad), [[0, 1, 1, 2], [0, 0, 0, 1]])
    later = masks.positions_from_pad(jnp.ones((2, 2), bool), offset=jnp.sum(pad, axis=1))
    np.testing.assert_array_equal(later, [[3, 4], [2, 3]])


def test_shape_errors():
    with pytest.raises(ValueError, match=r"pad must be \[B, N\] and block_start"):
        masks.block_attention_mask(jnp.ones((2, 3), bool), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"\[B, N\] or \[1, N\]"):
        masks.block_attention_mask(jnp.ones((2, 3), bool), jnp.ones((3, 3), jnp.int32))


def test_one_layout_for_the_batch_equals_its_copy_per_example():
    """block_start [1, N] (what the model passes: one layout for every example) gives the mask of
    the same starts copied per example."""
    pad = jnp.asarray([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]], bool)
    starts = jnp.asarray([[0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(
        masks.block_attention_mask(pad, starts),
        masks.block_attention_mask(pad, jnp.broadcast_to(starts, pad.shape)),
    )


def test_block_mask_factors_equal_the_dense_mask_and_slice_like_it():
    """`BlockMask` (per-example pad, static blocks: what splash attention takes) is the dense
    block mask, also sliced as the model slices it (prefix, a sampled scale, the suffix)."""
    rng = np.random.default_rng(0)
    starts = np.array([0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1], np.int32)
    pad = jnp.asarray(rng.random((3, starts.size)) > 0.3)
    factored = masks.BlockMask.from_layout(pad, starts)
    dense = masks.block_attention_mask(pad, jnp.broadcast_to(jnp.asarray(starts), pad.shape))
    assert factored.shape == dense.shape
    np.testing.assert_array_equal(factored.dense(), dense)
    for index in [
        (slice(None), slice(None, 6), slice(None, 6)),
        (slice(None), slice(6, 9), slice(None, 9)),
        (slice(None), slice(9, None)),
    ]:
        np.testing.assert_array_equal(factored[index].dense(), dense[index])
    with pytest.raises(IndexError):
        factored[0]
