"""The simulated dataset writer: its RLDS output reads back through the LIBERO source."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from f1_common.image_tools import decode_image
from data_pipelines.reader import EpisodeReader
from builtin_task import writer
from builtin_task.env import SimEnv
from builtin_task.expert import expert_policy, rollout
from data_pipelines.sources import libero

NUM_EPISODES = 4
SEED = 3


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    root = os.fspath(tmp_path_factory.mktemp("sim"))
    return root, writer.generate_dataset(root, "f1_sim_test", NUM_EPISODES, SEED, progress=False)


def test_dataset_reads_back_through_libero_source(sim_dataset):
    _, path = sim_dataset
    reader = EpisodeReader(path)
    assert len(reader) == NUM_EPISODES
    seeds = writer.episode_seeds(SEED, NUM_EPISODES)
    found = set()
    for rec in range(len(reader)):  # TFDS shuffles records: match them by file_path
        raw = reader.decode(rec)
        file_path = raw["episode_metadata"]["file_path"]
        file_path = file_path.decode() if isinstance(file_path, bytes) else str(file_path)
        _, task, seed_text = file_path.split("/")
        seed = int(seed_text.removeprefix("seed_"))
        index = seeds.index(seed)
        assert task == writer.episode_task(index)
        found.add(seed)

        env = SimEnv()
        obs, actions, success = rollout(env, expert_policy(env), seed, task)
        assert success
        std = libero.standardize(raw, "f1_sim", rec)
        assert std.language == obs[0]["instruction"]
        np.testing.assert_array_equal(std.state, np.stack([o["state"] for o in obs]))
        np.testing.assert_array_equal(std.action, np.stack(actions))
        assert set(std.images) == {"primary", "wrist"}
        for t in (0, len(obs) // 2, len(obs) - 1):  # JPEG round trip stays close
            for cam, key in (("primary", "image"), ("wrist", "wrist_image")):
                img = decode_image(std.images[cam][t])
                assert img.shape == (256, 256, 3)
                err = np.abs(img.astype(np.int32) - obs[t][key].astype(np.int32))
                assert err.mean() < 3.0 and np.percentile(err, 99) < 40, (cam, t, err.mean())
        steps = raw["steps"]
        n = len(actions)
        np.testing.assert_array_equal(steps["is_first"], np.arange(n) == 0)
        np.testing.assert_array_equal(steps["is_last"], np.arange(n) == n - 1)
        np.testing.assert_array_equal(steps["is_terminal"], np.arange(n) == n - 1)
        np.testing.assert_array_equal(steps["reward"], (np.arange(n) == n - 1).astype(np.float32))
        np.testing.assert_array_equal(steps["discount"], np.ones(n, np.float32))
        np.testing.assert_array_equal(steps["observation"]["joint_state"], np.zeros((n, 7)))
    assert found == set(seeds)


def test_existing_dataset_is_reused_not_rewritten(sim_dataset):
    root, path = sim_dataset
    shard = [f for f in os.listdir(path) if ".tfrecord" in f][0]
    mtime = os.path.getmtime(os.path.join(path, shard))
    assert writer.generate_dataset(root, "f1_sim_test", NUM_EPISODES, SEED, progress=False) == path
    assert os.path.getmtime(os.path.join(path, shard)) == mtime
    with open(os.path.join(path, "f1_sim_generation.json")) as f:
        assert json.load(f)["num_episodes"] == NUM_EPISODES
    with pytest.raises(FileExistsError):  # different settings never silently reuse the data
        writer.generate_dataset(root, "f1_sim_test", NUM_EPISODES + 1, SEED, progress=False)


def test_cli_writes_a_dataset(tmp_path):
    out = writer.main(
        ["--data_dir", os.fspath(tmp_path), "--episodes", "2", "--seed", "1", "--image_size", "64"]
    )
    reader = EpisodeReader(out)
    assert len(reader) == 2
    std = libero.standardize(reader.decode(0), "f1_sim", 0)
    assert decode_image(std.images["primary"][0]).shape == (64, 64, 3)
