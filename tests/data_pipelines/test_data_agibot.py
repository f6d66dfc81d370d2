"""AgiBot raw -> segment records converter and the AgiBot source."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from f1_common import image_tools as images
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import agibot, agibot_tar
from dp_fixtures import (
    AGIBOT_CAM_OFFSET,
    AGIBOT_EFF_INDEX,
    AGIBOT_INDEX_LEN,
    AGIBOT_MP4_CODEC,
    AGIBOT_MP4_FRAMES,
    AGIBOT_MP4_PROPRIO,
    AGIBOT_MP4_SIZE,
    AGIBOT_T,
    _write_agibot_h5,
    agibot_arrays,
    agibot_mp4_colour,
    pack_agibot_release,
    write_agibot_mp4_raw,
    write_agibot_raw,
)


def test_convert_report(agibot_dir):
    assert agibot_dir["episodes"] == 1
    assert agibot_dir["segments"] == 3  # all 25 frames although the index arrays are shorter
    assert 352 in agibot_dir["skipped_broken_tasks"]
    assert [s[:2] for s in agibot_dir["skipped"]] == [[327, 2]]  # its h5 is missing
    assert agibot_dir["trimmed"] == []


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
        [s.action[slice(*s.sample_range)] for _, (_, s) in sorted(segs.items())]
    )
    assert state.shape == action.shape == (AGIBOT_T, 16)
    t = np.arange(AGIBOT_T, dtype=np.float32)
    j = np.arange(14, dtype=np.float32) / 100
    np.testing.assert_allclose(state[:, :7], t[:, None] + j[:7], atol=1e-5)  # left arm
    np.testing.assert_allclose(state[:, 7], 4 * t, atol=1e-5)  # left gripper, mm
    np.testing.assert_allclose(state[:, 8:15], t[:, None] + j[7:], atol=1e-5)  # right arm
    np.testing.assert_allclose(state[:, 15], 120 - 4 * t, atol=1e-5)  # right gripper, mm
    nxt = np.minimum(t + 1, AGIBOT_T - 1)  # +1 action shift, last frame repeats
    np.testing.assert_allclose(action[:, :7], 1000 + nxt[:, None] + j[:7], atol=1e-3)
    # Release layout: one effector row per frame (closedness), although `index` is shorter.
    np.testing.assert_allclose(action[:, 7], nxt / 100, atol=1e-6)
    np.testing.assert_allclose(action[:, 15], 1 - nxt / 100, atol=1e-6)

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


# --------------------------------------------------------------- real mp4 videos decoded by PyAV

MP4_TOL = 8  # max |decoded - written| per channel after mpeg4/yuv420p (+ JPEG q95 in records);
# palette colours are >= 100 apart in some channel, so a wrong frame cannot pass.


@pytest.fixture(scope="module")
def agibot_mp4(tmp_path_factory):
    """Raw tree with real mp4 cameras encoded at test time, converted end-to-end."""
    av = pytest.importorskip(
        "av",
        reason="PyAV (`pip install av`, in the `test` extra) is needed to encode the mp4 "
        "fixture and to test the converter's PyAV decoding path",
    )
    if AGIBOT_MP4_CODEC not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {AGIBOT_MP4_CODEC!r} codec")
    raw = write_agibot_mp4_raw(os.fspath(tmp_path_factory.mktemp("agibot_mp4_raw")))
    out = os.fspath(tmp_path_factory.mktemp("agibot_mp4_rlds"))
    report = agibot.convert(
        raw, out, segment_len=4, context_before=1, context_after=2, image_size=12
    )
    return raw, report


def _video(raw, episode, cam):
    return os.path.join(raw, "observations", "327", str(episode), "videos", f"{cam}_color.mp4")


def test_mp4_frames_decode_to_written_colours(agibot_mp4):
    raw, _ = agibot_mp4
    for cam in AGIBOT_CAM_OFFSET:
        frames = list(agibot.iter_video_frames(_video(raw, 1, cam)))
        assert len(frames) == AGIBOT_MP4_FRAMES, cam
        for t, f in enumerate(frames):
            assert f.dtype == np.uint8 and f.shape == (*AGIBOT_MP4_SIZE, 3)
            err = np.abs(f.astype(int) - agibot_mp4_colour(cam, t).astype(int)).max()
            assert err <= MP4_TOL, (cam, t, err)


def test_mp4_corrupt_videos_raise_naming_the_file(agibot_mp4):
    raw, _ = agibot_mp4
    for episode, cam in ((2, "head"), (3, "hand_left")):
        path = _video(raw, episode, cam)
        with pytest.raises(RuntimeError, match=f"cannot decode {path}"):
            list(agibot.iter_video_frames(path))


def test_mp4_convert_report_skips_corrupt_episodes(agibot_mp4):
    raw, report = agibot_mp4
    assert report["episodes"] == 1
    assert report["segments"] == 2  # 8 frames in segments of 4
    assert report["trimmed"] == [[327, 1, AGIBOT_MP4_PROPRIO - AGIBOT_MP4_FRAMES]]
    assert [s[:2] for s in report["skipped"]] == [[327, 2], [327, 3]]
    for (_, episode, reason), cam in zip(report["skipped"], ("head", "hand_left")):
        assert reason.startswith("RuntimeError: cannot decode ")
        assert _video(raw, episode, cam) in reason


def test_mp4_segments_state_action_and_images(agibot_mp4):
    _, report = agibot_mp4
    reader = EpisodeReader(report["path"])
    segs = {}
    for i in range(len(reader)):
        raw = reader.decode(i)
        segs[int(raw["episode_metadata"]["segment_index"])] = (raw, agibot.standardize(raw, "a", i))
    n = AGIBOT_MP4_FRAMES  # the 9th proprio row has no video frame: the common prefix is kept
    starts = {k: int(r["episode_metadata"]["frame_start"]) for k, (r, _) in segs.items()}
    assert starts == {0: 0, 1: 3}
    assert {k: s.sample_range for k, (_, s) in segs.items()} == {0: (0, 4), 1: (1, 5)}
    assert {k: s.length for k, (_, s) in segs.items()} == {0: 6, 1: 5}

    state = np.concatenate([s.state[slice(*s.sample_range)] for _, (_, s) in sorted(segs.items())])
    action = np.concatenate(
        [s.action[slice(*s.sample_range)] for _, (_, s) in sorted(segs.items())]
    )
    assert state.shape == action.shape == (n, 16)
    t = np.arange(n, dtype=np.float32)
    j = np.arange(14, dtype=np.float32) / 100
    np.testing.assert_allclose(state[:, :7], t[:, None] + j[:7], atol=1e-5)
    np.testing.assert_allclose(state[:, 7], 4 * t, atol=1e-5)
    np.testing.assert_allclose(state[:, 8:15], t[:, None] + j[7:], atol=1e-5)
    np.testing.assert_allclose(state[:, 15], 120 - 4 * t, atol=1e-5)
    # +1 shift happens before the prefix cut, so the last kept frame gets proprio row 8's action.
    nxt = np.minimum(t + 1, AGIBOT_MP4_PROPRIO - 1)
    np.testing.assert_allclose(action[:, :7], 1000 + nxt[:, None] + j[:7], atol=1e-3)
    np.testing.assert_allclose(action[:, 8:15], 1000 + nxt[:, None] + j[7:], atol=1e-3)
    np.testing.assert_allclose(action[:, 7], nxt / 100, atol=1e-6)
    np.testing.assert_allclose(action[:, 15], 1 - nxt / 100, atol=1e-6)

    views = {"primary": "head", "secondary": "hand_left", "wrist": "hand_right"}
    for k, (raw, std) in segs.items():
        assert std.language == "Stack the cups"
        assert set(std.images) == set(views)
        f0 = int(raw["episode_metadata"]["frame_start"])
        for view, cam in views.items():
            assert len(std.images[view]) == std.length
            for step, data in enumerate(std.images[view]):
                img = images.decode_image(data)
                assert img.shape == (12, 16, 3)  # short side resized to image_size, aspect kept
                err = np.abs(img.astype(int) - agibot_mp4_colour(cam, f0 + step).astype(int))
                assert err.max() <= MP4_TOL, (k, view, step, err.max())


# ------------------------------------------------ the release's layout, archives and reports


def test_release_layout_index_shorter_than_rows_keeps_every_frame(tmp_path):
    arrays = agibot_arrays()
    # As in a real file (1221 of 1278): fewer index entries than frames, one row per frame.
    assert len(arrays["action/joint/index"]) == AGIBOT_INDEX_LEN < AGIBOT_T
    assert len(arrays["action/effector/index"]) < AGIBOT_INDEX_LEN
    assert len(arrays["action/effector/position"]) == AGIBOT_T
    h5 = str(tmp_path / "proprio_stats.h5")
    _write_agibot_h5(h5, arrays)
    state, action = agibot.read_proprio(h5)
    assert state.shape == action.shape == (AGIBOT_T, 16)
    np.testing.assert_array_equal(action[:, 7], arrays["action/effector/position"][:, 0])
    np.testing.assert_array_equal(action[:, 15], arrays["action/effector/position"][:, 1])
    np.testing.assert_array_equal(action[:, 8:15], arrays["action/joint/position"][:, 7:])
    np.testing.assert_array_equal(state[:, 7], arrays["state/effector/position"][:, 0])


def test_sparse_action_rows_hold_the_latest_command():
    rows = np.array([[1.0], [2.0], [3.0]], np.float32)
    out = agibot.per_frame_actions(rows, np.array([2, 5, 7]), 10, "x")
    # Frames before the first command take the first one; then each command holds.
    np.testing.assert_array_equal(out[:, 0], [1, 1, 1, 1, 1, 2, 2, 3, 3, 3])
    with pytest.raises(ValueError, match="x: 3 action rows for 10 frames and an index of 2"):
        agibot.per_frame_actions(rows, np.array([2, 5]), 10, "x")
    with pytest.raises(ValueError, match="x: 3 action rows for 2 frames"):
        agibot.per_frame_actions(rows, None, 2, "x")
    with pytest.raises(ValueError, match="x: no action rows"):
        agibot.per_frame_actions(rows[:0], None, 2, "x")


@pytest.fixture(scope="module")
def agibot_release(tmp_path_factory):
    """The raw tree (episode 1 release layout, 2 missing, 3 sparse) unpacked and as .tar files."""
    raw = write_agibot_raw(os.fspath(tmp_path_factory.mktemp("agibot_raw3")), sparse_episode=True)
    packed = pack_agibot_release(raw, os.fspath(tmp_path_factory.mktemp("agibot_release")))
    return raw, packed


CONVERT_ARGS = dict(segment_len=10, context_before=3, context_after=4, image_size=8)


def test_tar_release_converts_like_the_unpacked_tree(agibot_release, tmp_path):
    raw, packed = agibot_release
    a = agibot.convert(raw, str(tmp_path / "a"), **CONVERT_ARGS)
    b = agibot.convert(packed, str(tmp_path / "b"), **CONVERT_ARGS)
    assert (a["archives"], b["archives"]) == (0, 2)
    assert a["episodes"] == b["episodes"] == 2 and a["segments"] == b["segments"] == 6
    for report in (a, b):
        assert [s[:2] for s in report["skipped"]] == [[327, 2]]
        assert "missing AgiBot proprio file" in report["skipped"][0][2]
        with open(os.path.join(report["path"], agibot.REPORT_FILE)) as f:
            assert json.load(f)["skipped"] == report["skipped"]
    ra, rb = EpisodeReader(a["path"]), EpisodeReader(b["path"])
    assert len(ra) == len(rb) == 6
    for i in range(len(ra)):
        assert ra.serialized(i) == rb.serialized(i)  # same records, byte for byte

    # Episode 3 (sparse effector rows): every frame holds the latest commanded closedness.
    segs = [agibot.standardize(rb.decode(i), "a", i) for i in range(len(rb))]
    metas = [rb.decode(i)["episode_metadata"] for i in range(len(rb))]
    ep3 = sorted(
        (int(m["segment_index"]), s) for m, s in zip(metas, segs) if int(m["episode_id"]) == 3
    )
    action = np.concatenate([s.action[slice(*s.sample_range)] for _, s in ep3])
    nxt = np.minimum(np.arange(AGIBOT_T) + 1, AGIBOT_T - 1)
    latest = AGIBOT_EFF_INDEX[np.searchsorted(AGIBOT_EFF_INDEX, nxt, side="right") - 1]
    np.testing.assert_allclose(action[:, 7], latest / 100, atol=1e-6)


def test_compressed_tar_is_refused_by_name(agibot_release, tmp_path):
    raw, _ = agibot_release
    packed = pack_agibot_release(raw, str(tmp_path / "gz"), compress=True)
    tar = os.path.join(packed, "observations", "327", "1-3.tar.gz")
    with pytest.raises(agibot_tar.ArchiveError, match=re.escape(tar) + ".*tar -xf"):
        agibot.convert(packed, str(tmp_path / "out"), **CONVERT_ARGS)


def test_folder_of_archives_without_task_info_is_named(agibot_release, tmp_path):
    _, packed = agibot_release
    obs = os.path.join(packed, "observations")
    with pytest.raises(FileNotFoundError, match=r"no task_info/ folder; it holds 1 archive"):
        agibot.convert(obs, str(tmp_path / "out"), **CONVERT_ARGS)


def test_nothing_converted_lists_every_reason(tmp_path):
    raw = tmp_path / "raw"
    (raw / "task_info").mkdir(parents=True)
    (raw / "task_info" / "task_327.json").write_text(
        json.dumps([{"episode_id": e, "task_name": "x"} for e in (4, 5)])
    )
    with pytest.raises(ValueError) as e:
        agibot.convert(str(raw), str(tmp_path / "out"), **CONVERT_ARGS)
    msg = str(e.value)
    assert "no AgiBot episode" in msg and "No examples were yielded" not in msg
    for ep in (4, 5):
        assert f"task 327 episode {ep}: FileNotFoundError: missing AgiBot proprio file" in msg
