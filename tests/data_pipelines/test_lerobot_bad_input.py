"""Bad LeRobot input is named by episode and counted, never a crash or silence: copies of the
real-lerobot fixtures damaged one way per episode, and configurations that do not fit."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

import lerobot_fixtures as lf
import lerobot_writer as W
from data_pipelines import pipeline
from data_pipelines.config import DatasetConfig
from data_pipelines.sources import UnsupportedDatasetError, lerobot, open_reader
from data_pipelines.summary import load_or_compute
from dp_fixtures import small_config

pa = pytest.importorskip(
    "pyarrow", reason="the lerobot source needs pyarrow: pip install -e '.[test]'"
)
pytest.importorskip(
    "av", reason="the lerobot source decodes videos with PyAV: pip install -e '.[test]'"
)

TOP, WRIST = W.VIDEO_KEYS


@pytest.fixture(scope="module")
def damaged_v2(lerobot_v2_dir, tmp_path_factory):
    """The v2.1 fixture with, per episode: 0 a garbled wrist-video packet (found only when a
    sample decodes it), 1 a top video cut to 8 of 14 frames, 2 timestamps at 15 fps, 3 no
    observation.state column, 4 an empty task, 5 a parquet that is not parquet."""
    root = lf.copy_dataset(lerobot_v2_dir, os.fspath(tmp_path_factory.mktemp("bad") / "v2"))
    lf.garble_packet(lf.v2_video(root, WRIST, 0), 5)
    lf.cut_video(lf.v2_video(root, TOP, 1), 8)

    def fps15(t):
        ts = pa.array(np.arange(t.num_rows, dtype=np.float32) / 15.0)
        return t.set_column(t.column_names.index("timestamp"), "timestamp", ts)

    lf.rewrite_parquet(lf.v2_data(root, 2), fps15)
    lf.rewrite_parquet(lf.v2_data(root, 3), lambda t: t.drop_columns(["observation.state"]))
    empty = lf.add_task(root, "")

    def empty_task(t):
        col = pa.array(np.full(t.num_rows, empty, np.int64))
        return t.set_column(t.column_names.index("task_index"), "task_index", col)

    lf.rewrite_parquet(lf.v2_data(root, 4), empty_task)
    with open(lf.v2_data(root, 5), "wb") as f:
        f.write(b"PAR1 this is not a parquet file")
    return root


def test_each_bad_episode_is_named_and_counted(damaged_v2, tmp_path):
    ds = DatasetConfig("bad", "lerobot", damaged_v2)
    summary = load_or_compute(open_reader(ds), ds, str(tmp_path), progress=False)
    counts = summary.counts()
    assert counts["records"] == 6 and counts["episodes_kept"] == 2  # episodes 0 and 4
    assert counts["unusable"] == 3 and counts["corrupt"] == 1 and counts["zero_steps"] == 0
    assert counts["empty_instruction"] == 1 and summary.empty_instruction == (4,)
    why = {s.record: (s.kind, s.reason) for s in summary.skipped}
    assert why[1][0] == "unusable" and "episode 1" in why[1][1]
    assert "has no frame for 6 of 14 rows" in why[1][1] and TOP in why[1][1]
    assert why[2][0] == "unusable" and "episode 2" in why[2][1] and "wrong fps" in why[2][1]
    assert why[3][0] == "unusable" and "episode 3" in why[3][1]
    assert "observation.state" in why[3][1] and "missing" in why[3][1]
    assert why[5][0] == "corrupt" and "episode 5" in why[5][1] and "parquet" in why[5][1]
    described = summary.describe()
    for e in (1, 2, 3, 5):
        assert f"episode_00000{e}.parquet" in described
    # drop_unlabeled leaves the empty-task episode out of sampling, as for RLDS.
    assert summary.num_sampled(False) == 12 + 13 and summary.num_sampled(True) == 12


def test_rows_that_disagree_with_the_metadata(lerobot_v2_dir, tmp_path):
    """Episode 1: an unknown task index; 2: a NaN action; 3: no rows; 4: a row missing."""
    root = lf.copy_dataset(lerobot_v2_dir, os.fspath(tmp_path / "v2"))

    def column(name, values):
        def change(t):
            return t.set_column(t.column_names.index(name), name, pa.array(values(t)))

        return change

    lf.rewrite_parquet(lf.v2_data(root, 1), column("task_index", lambda t: [99] * t.num_rows))

    def nan_action(t):
        a = np.stack(t.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
        a[3, 2] = np.nan
        return t.set_column(
            t.column_names.index("action"), "action", pa.FixedSizeListArray.from_arrays(
                pa.array(a.ravel()), a.shape[1]))  # fmt: skip

    lf.rewrite_parquet(lf.v2_data(root, 2), nan_action)
    lf.rewrite_parquet(lf.v2_data(root, 3), lambda t: t.slice(0, 0))
    lf.rewrite_parquet(lf.v2_data(root, 4), lambda t: t.slice(0, t.num_rows - 1))
    ds = DatasetConfig("rows", "lerobot", root)
    summary = load_or_compute(open_reader(ds), ds, str(tmp_path), progress=False)
    why = {s.record: (s.kind, s.reason) for s in summary.skipped}
    assert sorted(why) == [1, 2, 3, 4] and summary.counts()["episodes_kept"] == 2
    assert why[1][0] == "unusable" and "episode 1" in why[1][1] and "task_index 99" in why[1][1]
    assert why[2][0] == "unusable" and "episode 2" in why[2][1] and "NaN" in why[2][1]
    assert why[3][0] == "zero_steps"
    assert why[4][0] == "unusable" and "holds 12 rows, the episode metadata says 13" in why[4][1]


def test_undecodable_frame_is_replaced_counted_and_named(
    damaged_v2, tokenizer_path, tmp_path, caplog
):
    cfg = small_config(
        [DatasetConfig("bad", "lerobot", damaged_v2, cameras={"wrist": WRIST})],
        tokenizer_path,
        stats_dir=str(tmp_path),
        max_bad_fraction=0.5,  # 1 of 6 episodes is corrupt already
        gen_camera="wrist",
        history_offsets=(0,),
        target_offsets=(1,),
    )
    cfg = pipeline.eval_config(cfg)
    with caplog.at_level(logging.WARNING):
        batches = list(pipeline.make_train_iterator(cfg, seed=0))
    replaced = np.concatenate([b["replaced"] for b in batches])
    bad = replaced[:, 2] != 0
    assert bad.any() and (replaced[bad, 0] == 0).all() and (replaced[bad, 2] == 2).all()
    # One pass over the usable episodes: with only the wrist camera read, episode 1's short top
    # video does not matter and it is sampled too.
    assert len(replaced) == 12 + 14 + 13
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "episode 0" in logged and "undecodable image" in logged and WRIST in logged


def test_short_video_of_a_v3_file_names_the_episode(lerobot_v3_dir, tmp_path):
    """v3.0 keeps all episodes in one mp4: cutting its end leaves only the last episode short."""
    root = lf.copy_dataset(lerobot_v3_dir, os.fspath(tmp_path / "v3"))
    video = os.path.join(root, "videos", TOP, "chunk-000", "file-000.mp4")
    lf.cut_video(video, 12 + 16 + 6)  # episode 2 keeps 6 of its 10 frames
    ds = DatasetConfig("short", "lerobot", root, cameras={"primary": TOP})
    summary = load_or_compute(open_reader(ds), ds, str(tmp_path), progress=False)
    assert summary.counts()["episodes_kept"] == 2 and summary.unusable == (2,)
    (skip,) = summary.skipped
    assert "episode 2" in skip.reason and "no frame for 4 of 10 rows" in skip.reason


def test_configurations_that_do_not_fit_are_refused(lerobot_v3_dir, lerobot_v2_dir):
    def refused(match, **kw):
        with pytest.raises(UnsupportedDatasetError, match=match) as e:
            lerobot.LeRobotReader(lerobot_v3_dir, name="mine", **kw)
        assert "'mine'" in str(e.value) and "v3.0" in str(e.value)

    refused("fps 10, the configuration expects 15", options={"fps": 15})
    refused("state feature 'observation.joints' is not in", options={"state": "observation.joints"})
    refused("camera 'wrist' feature 'nope' is not in", cameras={"wrist": "nope"})
    refused("camera 'primary' feature 'action' is float32", cameras={"primary": "action"})
    refused(r"gripper dims \[7\] outside the 7 action dims", options={"gripper_dims": [7]})
    refused(
        "state is 40 wide, the model takes at most 32", options={"state": ["observation.state"] * 5}
    )
    with pytest.raises(ValueError, match="unknown lerobot options"):
        DatasetConfig("x", "lerobot", lerobot_v3_dir, lerobot={"gripper": 6})
    with pytest.raises(ValueError, match="given for source 'libero'"):
        DatasetConfig("x", "libero", lerobot_v3_dir, lerobot={"fps": 10})
    with pytest.raises(ValueError, match="gripper_open and gripper_closed must differ"):
        DatasetConfig("x", "lerobot", lerobot_v3_dir, lerobot={"gripper_open": 0.0})
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        lerobot.LeRobotReader(os.path.dirname(lerobot_v3_dir))
    with pytest.raises(KeyError, match="split 'test'"):
        lerobot.LeRobotReader(lerobot_v2_dir, split="test")


def test_wrong_fps_in_info_json_and_unknown_version(lerobot_v2_dir, tmp_path):
    root = lf.copy_dataset(lerobot_v2_dir, os.fspath(tmp_path / "v2"))
    info_path = os.path.join(root, "meta", "info.json")
    with open(info_path) as f:
        info = json.load(f)
    # info.json claims 20 fps while the rows and videos run at 10: every episode is named.
    with open(info_path, "w") as f:
        json.dump({**info, "fps": 20, "features": _video_fps(info["features"], 20)}, f)
    ds = DatasetConfig("fast", "lerobot", root)
    with pytest.raises(ValueError, match="no readable episodes") as e:
        load_or_compute(open_reader(ds), ds, str(tmp_path), progress=False)
    assert "unusable 6" in str(e.value)
    with open(info_path, "w") as f:
        json.dump({**info, "codebase_version": "v1.6"}, f)
    with pytest.raises(UnsupportedDatasetError, match="codebase_version 'v1.6'"):
        open_reader(ds)


def _video_fps(features: dict, fps: int) -> dict:
    out = json.loads(json.dumps(features))
    for f in out.values():
        if f.get("dtype") == "video":
            f["info"]["video.fps"] = fps
    return out
