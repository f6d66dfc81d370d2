"""Per-patch labels of the simulated cameras agree with the rendered pixels."""

import dataclasses

import numpy as np
import pytest

from builtin_task import labels as L
from builtin_task import render, tasks
from builtin_task import world as W

SIDE, SIZE = 7, 56  # the debug model's 7 x 7 patches of 8 px


def _pixel_cover(with_block: np.ndarray, without_block: np.ndarray) -> np.ndarray:
    """float [SIDE * SIDE]: fraction of each patch's pixels that the block changes."""
    hit = np.any(with_block != without_block, axis=-1)
    p = SIZE // SIDE
    return hit.reshape(SIDE, p, SIDE, p).mean(axis=(1, 3)).reshape(-1)


def _without_block(world: W.World, index: int) -> W.World:
    keep = [i for i in range(len(world.blocks)) if i != index]
    colors = tuple(world.block_colors[i] for i in keep)
    return dataclasses.replace(world, held=-1, blocks=world.blocks[keep], block_colors=colors)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("camera", ["primary", "wrist"])
def test_named_block_labels_match_the_rendered_block(seed, camera):
    """Every patch labelled NAMED_BLOCK shows the block (its pixels change when the block is
    removed from the scene), and every patch mostly covered by it is labelled."""
    world, goal = tasks.sample_layout(tasks.TASK_NAMES[seed % 3], np.random.default_rng(seed))
    world = W.step_world(world, np.array([0.3, 0.8, 0, 0, 0, 0, -1.0]))  # off the home strip
    draw = render.render_top if camera == "primary" else render.render_wrist
    image = draw(world, SIZE)
    labels = L.view_patch_labels(world, goal, *render.camera_windows(world)[camera], SIDE)
    cover = _pixel_cover(image, draw(_without_block(world, goal.block), SIZE))
    named = labels == L.NAMED_BLOCK
    assert np.all(cover[named] > 0.05)
    assert np.all(named[cover > 0.3])
    if camera == "primary":
        assert named.any()  # the top view always shows the block


def test_square_labels_only_where_the_task_names_a_square():
    world, goal = tasks.sample_layout("push", np.random.default_rng(3))
    labels = L.view_patch_labels(world, goal, (0.5, 0.5), render.TOP_HALF_WIDTH, SIDE)
    assert (labels == L.NAMED_SQUARE).any()
    reach = tasks.Goal("reach", goal.block, goal.target)
    labels = L.view_patch_labels(world, reach, (0.5, 0.5), render.TOP_HALF_WIDTH, SIDE)
    assert not (labels == L.NAMED_SQUARE).any()
    assert (labels == L.NAMED_BLOCK).any()


def test_block_at_a_known_place_marks_the_patches_it_covers():
    """A block centred on the corner of four top-view patches covers a quarter of each."""
    world, goal = tasks.sample_layout("reach", np.random.default_rng(0))
    step = 2 * render.TOP_HALF_WIDTH / SIDE
    corner = (0.5 - render.TOP_HALF_WIDTH + 3 * step, 0.5 + render.TOP_HALF_WIDTH - 3 * step)
    blocks = world.blocks.copy()
    blocks[goal.block] = corner
    world = dataclasses.replace(world, blocks=blocks)
    labels = L.view_patch_labels(world, goal, (0.5, 0.5), render.TOP_HALF_WIDTH, SIDE)
    expected = np.zeros((SIDE, SIDE), bool)
    expected[2:4, 2:4] = True  # rows 2-3 and columns 2-3 meet at that corner
    np.testing.assert_array_equal(labels.reshape(SIDE, SIDE) == L.NAMED_BLOCK, expected)


def test_cameras_the_simulator_does_not_render_are_background():
    world, goal = tasks.sample_layout("pick_place", np.random.default_rng(1))
    labels = L.patch_labels(world, goal, ("primary", "secondary", "wrist"), SIDE)
    assert labels.shape == (3 * SIDE * SIDE,)
    assert np.all(labels[SIDE * SIDE : 2 * SIDE * SIDE] == L.BACKGROUND)
    assert (labels[: SIDE * SIDE] == L.NAMED_BLOCK).any()
