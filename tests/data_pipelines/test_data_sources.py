"""Each source's standardisation on fixtures written in its exact TFDS feature spec."""

from __future__ import annotations

import numpy as np
import pytest

from f1_common import image_tools as images
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import bridge, fractal, get_source, libero
from dp_fixtures import LIBERO_LENGTHS, LIBERO_TEXTS


def records_by(reader: EpisodeReader, key: str) -> dict:
    """TFDS shuffles episodes on write: map a metadata field to the record index."""
    out = {}
    for i in range(len(reader)):
        meta = reader.decode(i)["episode_metadata"]
        v = meta[key]
        out[v.decode() if isinstance(v, bytes) else int(v)] = i
    return out


def test_libero_standardize(libero_dir):
    reader = EpisodeReader(libero_dir)
    assert len(reader) == 3
    rec = records_by(reader, "file_path")
    for ep, n in enumerate(LIBERO_LENGTHS):
        std = libero.standardize(reader.decode(rec[f"/demo/{ep}.hdf5"]), "libero", 7)
        assert std.length == n and std.sample_range == (0, n)
        assert std.language == LIBERO_TEXTS[ep]
        t = np.arange(n, dtype=np.float32)[:, None]
        np.testing.assert_array_equal(std.state, np.arange(8, dtype=np.float32) + 100 * ep + t)
        np.testing.assert_array_equal(std.action[:, 0], np.arange(n))
        np.testing.assert_array_equal(std.action[:, 6], (-1.0) ** np.arange(n))  # raw convention
        assert set(std.images) == {"primary", "wrist"}
        img = images.decode_image(std.images["primary"][n - 1])
        assert img.shape == (16, 16, 3)
        assert abs(int(img.mean().round()) - (10 * (n - 1) + 50 * ep)) <= 2


def test_bridge_relabel_and_gripper(bridge_dir):
    reader = EpisodeReader(bridge_dir)
    rec = records_by(reader, "episode_id")
    std = bridge.standardize(reader.decode(rec[0]), "bridge", 0)
    # Step 0 dropped; movement = reached-state deltas of steps 1..5; gripper [1,.5,.7,.01,.3]
    # binarised by hand: 1 -> open, .5/.7 take the next decided value (.01 -> closed), trailing
    # .3 undecided -> closed; the last step (no successor) is dropped.
    expected_action = np.array(
        [
            [1, 2, 3, 0.1, 0.2, 0.3, 1],
            [2, 0, -2, 0.1, -0.1, -0.3, 0],
            [1, 1, 1, 0.2, 0.2, 0.2, 0],
            [2, 0, -2, 0, 0, 0, 0],
        ],
        np.float32,
    )
    np.testing.assert_allclose(std.action, expected_action, atol=1e-6)
    expected_state = np.array(
        [
            [1, 2, 3, 0.1, 0.2, 0.3, 0, 1],
            [2, 4, 6, 0.2, 0.4, 0.6, 0, 0.9],
            [4, 4, 4, 0.3, 0.3, 0.3, 0, 0.5],
            [5, 5, 5, 0.5, 0.5, 0.5, 0, 0.2],
        ],
        np.float32,
    )
    np.testing.assert_allclose(std.state, expected_state, atol=1e-6)
    assert set(std.images) == {"primary", "secondary"}
    # Images follow the dropped first step: image_0 of raw steps 1..4 = 20, 40, 60, 80.
    means = [images.decode_image(b).mean() for b in std.images["primary"]]
    np.testing.assert_allclose(means, [20, 40, 60, 80], atol=2)

    std1 = bridge.standardize(reader.decode(rec[1]), "bridge", 1)
    assert set(std1.images) == {"primary"}  # has_image_1 False: dummy secondary camera dropped
    # gripper [.99, .6, .98] after the drop: .6 undecided -> next decided (open).
    np.testing.assert_allclose(
        std1.action, [[0, 1, 0, 0, 0, 1, 1], [2, 0, 0, 0, 0, 0, 1]], atol=1e-6
    )


def test_bridge_binarize_gripper_by_hand():
    np.testing.assert_array_equal(
        bridge.binarize_gripper(np.array([0.2, 0.99, 0.5, 0.03, 0.6])), [1, 1, 0, 0, 0]
    )


def test_bridge_too_short_episode_is_rejected(bridge_dir):
    reader = EpisodeReader(bridge_dir)
    rec = records_by(reader, "episode_id")
    with pytest.raises(ValueError, match="need >= 3"):
        bridge.standardize(reader.decode(rec[2]), "bridge", 2)


def test_fractal_standardize(fractal_dir):
    reader = EpisodeReader(fractal_dir)
    by_grip = {}
    for i in range(len(reader)):
        std = fractal.standardize(reader.decode(i), "fractal", i)
        rel = reader.decode(i)["steps"]["action"]["gripper_closedness_action"]
        by_grip[round(float(np.abs(rel).sum()), 2)] = std
    std = by_grip[2.05]
    # relative [0, 0, +1 close, 0, -1 open, .05 keep]: before the first command the gripper is
    # open (opposite of "close"), then closed, then open again -> 1 open / 0 closed.
    np.testing.assert_array_equal(std.action[:, 6], [1, 1, 0, 0, 1, 1])
    t = np.arange(6, dtype=np.float32)[:, None]
    np.testing.assert_allclose(std.action[:, :3], t * [1, 2, 3])
    np.testing.assert_allclose(std.action[:, 3:6], t * np.float32([0.1, 0.2, 0.3]), atol=1e-6)
    np.testing.assert_allclose(std.state[:, :7], np.arange(7) + t)
    np.testing.assert_array_equal(std.state[:, 7], [0, 0, 1, 1, 0, 0])
    assert std.language == "pick coke can"
    assert set(std.images) == {"primary"}
    assert images.decode_image(std.images["primary"][0]).shape == (16, 20, 3)
    # No gripper command at all: open throughout.
    np.testing.assert_array_equal(by_grip[0.0].action[:, 6], np.ones(6))


def test_camera_mapping_override(libero_dir):
    reader = EpisodeReader(libero_dir)
    std = libero.standardize(
        reader.decode(0), "libero", 0, {"primary": "wrist_image", "wrist": None}
    )
    assert set(std.images) == {"primary"}
    with pytest.raises(ValueError, match="not in observation"):
        libero.standardize(reader.decode(0), "libero", 0, {"primary": "image_9"})


def test_unknown_source_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset source"):
        get_source("droid")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EpisodeReader(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        EpisodeReader(str(tmp_path))
