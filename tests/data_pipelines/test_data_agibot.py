"""AgiBot raw -> segment records converter and the AgiBot source."""

from __future__ import annotations

import numpy as np

from data_pipelines import images
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import agibot
from dp_fixtures import AGIBOT_EFF_INDEX, AGIBOT_T


def test_convert_report(agibot_dir):
    assert agibot_dir["episodes"] == 1
    assert agibot_dir["segments"] == 3
    assert 352 in agibot_dir["skipped_broken_tasks"]
    assert [s[:2] for s in agibot_dir["skipped"]] == [[327, 2]]  # its h5 is missing


def test_segments_state_action_shift_and_text(agibot_dir):
    reader = EpisodeReader(agibot_dir["path"])
    segs = {}
    for i in range(len(reader)):
        raw = reader.decode(i)
        segs[int(raw["episode_metadata"]["segment_index"])] = (raw, agibot.standardize(raw, "a", i))
    # 25 frames, segments of 10 with 3 frames of context before and 4 after.
    starts = {k: int(r["episode_metadata"]["frame_start"]) for k, (r, _) in segs.items()}
    assert starts == {0: 0, 1: 7, 2: 17}
    assert {k: s.sample_range for k, (_, s) in segs.items()} == {0: (0, 10), 1: (3, 13), 2: (3, 8)}
    assert {k: s.length for k, (_, s) in segs.items()} == {0: 14, 1: 17, 2: 8}

    # Reassemble the full episode from the sampleable parts and check it by hand.
    state = np.concatenate([s.state[slice(*s.sample_range)] for _, (_, s) in sorted(segs.items())])
    action = np.concatenate(
        [s.action[slice(*s.sample_range)] for _, (_, s) in sorted(segs.items())])
    assert state.shape == action.shape == (AGIBOT_T, 16)
    t = np.arange(AGIBOT_T, dtype=np.float32)
    j = np.arange(14, dtype=np.float32) / 100
    np.testing.assert_allclose(state[:, :7], t[:, None] + j[:7], atol=1e-5)      # left arm
    np.testing.assert_allclose(state[:, 7], t / 10, atol=1e-6)                   # left gripper
    np.testing.assert_allclose(state[:, 8:15], t[:, None] + j[7:], atol=1e-5)    # right arm
    np.testing.assert_allclose(state[:, 15], -t / 10, atol=1e-6)                 # right gripper
    nxt = np.minimum(t + 1, AGIBOT_T - 1)  # +1 action shift, last frame repeats
    np.testing.assert_allclose(action[:, :7], 1000 + nxt[:, None] + j[:7], atol=1e-3)
    # Effector actions exist only at AGIBOT_EFF_INDEX frames; others are back-filled from state.
    left = np.where(np.isin(nxt, AGIBOT_EFF_INDEX), 9 * (nxt + 0.5), nxt / 10)
    right = np.where(np.isin(nxt, AGIBOT_EFF_INDEX), 9 * (nxt + 0.25), -nxt / 10)
    np.testing.assert_allclose(action[:, 7], left, atol=1e-4)
    np.testing.assert_allclose(action[:, 15], right, atol=1e-4)

    raw0, std0 = segs[0]
    assert std0.language == "Pick up the apple"
    assert set(std0.images) == {"primary", "secondary", "wrist"}
    head = images.decode_image(std0.images["primary"][4])
    assert head.shape == (8, 11, 3)  # short side resized to image_size, aspect kept
    assert abs(head.mean() - 20) <= 2
    assert abs(images.decode_image(std0.images["wrist"][4]).mean() - 220) <= 2


def test_segment_bounds_cover_each_frame_once():
    bounds = agibot.segment_bounds(1302, 128, 9, 52)
    covered = np.concatenate([np.arange(s, e) for _, _, s, e in bounds])
    np.testing.assert_array_equal(covered, np.arange(1302))
    assert all(rs <= s and e <= re_ for rs, re_, s, e in bounds)


def test_agibot_stats_count_each_frame_once(agibot_dir, tmp_path):
    from data_pipelines import summary
    from data_pipelines.config import DatasetConfig
    ds = DatasetConfig("agibot", "agibot", agibot_dir["path"])
    s = summary.load_or_compute(EpisodeReader(ds.path), ds, str(tmp_path), progress=False)
    assert s.state_stats["count"] == AGIBOT_T == s.num_transitions
    np.testing.assert_allclose(s.state_stats["mean"][0], np.arange(AGIBOT_T).mean(), rtol=1e-6)
