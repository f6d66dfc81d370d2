"""RLDS datasets by configuration: the named datasets as configurations give the samples the
module code gave (recorded digests); a configuration of one's own reads, keys its statistics
cache on its content and names what is wrong; `convert stats` runs on it."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

from data_pipelines import convert, pipeline, summary
from data_pipelines.config import DataConfig, DatasetConfig
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import NAMED_RLDS, UnsupportedDatasetError, get_source, libero
from data_pipelines.sources.rlds import ConfigError
from dp_fixtures import small_config
from f1_common.export_layout import read_official_stats
from rlds_digests import GOLDEN, all_digests

# What each named configuration does to records, pinned with its TRANSFORM_VERSION: changing a
# configuration without bumping its version (which keys the statistics cache) fails here.
PINNED = {
    "libero": ("libero-v1", "258e243e069fa32b"),
    "bridge": ("bridge-v1", "e761fb496683a96b"),
    "fractal": ("fractal-v1", "adcdad568318dcef"),
    "agibot": ("agibot-v1", "5be895143a7d2a12"),
}

# LIBERO described as one's own dataset would be (no version: keyed on content).
MY_ROBOT = {
    "name": "my_robot",
    "cameras": {"primary": "image", "wrist": "wrist_image"},
    "state": [{"key": "observation/state", "slice": [0, 6]}, {"zeros": 1}],
    "action": [
        {"key": "action", "slice": [0, 6]},
        {"key": "action", "slice": [6, 7], "op": "identity"},
    ],
    "language": "language_instruction",
    "gripper": {"dims": [6], "convention": "-1_open_1_closed"},
    "control_frequency": 20,
}


def test_named_sources_give_the_recorded_samples(
    libero_dir, bridge_dir, fractal_dir, agibot_dir, tokenizer_path, tmp_path
):
    dirs = {
        "libero": libero_dir,
        "bridge": bridge_dir,
        "fractal": fractal_dir,
        "agibot": agibot_dir["path"],
    }
    now = all_digests(dirs, tokenizer_path, str(tmp_path))
    if os.environ.get("F1_RECORD_RLDS_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert now["episodes"] == golden["episodes"]
    assert now["mixture"] == golden["mixture"]


def test_named_configurations_pin_their_version():
    for kind in NAMED_RLDS:
        source = get_source(kind)
        assert (source.TRANSFORM_VERSION, source.spec.fingerprint()) == PINNED[kind], kind


def test_own_configuration_reads_and_keys_its_cache_on_content(libero_dir, tmp_path):
    reader = EpisodeReader(libero_dir)
    mine = DatasetConfig("mine", "rlds", libero_dir, rlds=MY_ROBOT)
    source = get_source("rlds", MY_ROBOT, "mine")
    named = get_source("libero")
    for i in range(len(reader)):
        raw = reader.decode(i)
        ep, ref = source.standardize(raw, "mine", i), named.standardize(raw, "l", i)
        np.testing.assert_array_equal(ep.state[:, :6], ref.state[:, :6])
        assert (ep.state[:, 6] == 0).all() and ep.state.shape[1] == 7
        np.testing.assert_array_equal(ep.action, ref.action)
        assert ep.language == ref.language and set(ep.images) == set(ref.images)
    assert source.GRIPPER_OPEN_POSITIVE == named.GRIPPER_OPEN_POSITIVE
    assert source.TRANSFORM_VERSION.startswith("rlds-") and source.CONTROL_FREQUENCY == 20
    key = summary.summary_key(reader, mine, "native")
    changed = copy.deepcopy(MY_ROBOT)
    changed["state"][0]["slice"] = [0, 7]
    assert (
        summary.summary_key(
            reader, DatasetConfig("mine", "rlds", libero_dir, rlds=changed), "native"
        )
        != key
    )
    renamed = {**MY_ROBOT, "name": "other", "control_frequency": 10}  # messages only: same key
    assert (
        summary.summary_key(
            reader, DatasetConfig("mine", "rlds", libero_dir, rlds=renamed), "native"
        )
        == key
    )
    # From a JSON file, as a recipe or the command line gives it.
    path = tmp_path / "my_robot.json"
    path.write_text(json.dumps(MY_ROBOT))
    from_file = DatasetConfig("mine", "rlds", libero_dir, rlds=str(path))
    assert from_file.rlds == MY_ROBOT and summary.summary_key(reader, from_file, "native") == key
    # A named configuration's cache key changes with its pinned version.
    ds = DatasetConfig("l", "libero", libero_dir)
    before = summary.summary_key(reader, ds, "native")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(libero.SPEC, "version", "libero-v2")
        assert summary.summary_key(reader, ds, "native") != before


def test_configuration_errors_name_the_dataset_and_field(libero_dir, tokenizer_path, tmp_path):
    def bad(change, match):
        cfg = {**copy.deepcopy(MY_ROBOT), **change}
        with pytest.raises(ConfigError, match=match):
            DatasetConfig("mine", "rlds", libero_dir, rlds=cfg)

    bad(
        {"action": [{"key": "action", "op": "smooth"}]}, r"'mine'.*action\[0\].*unknown op 'smooth'"
    )
    bad({"gripper": {"dims": [9], "convention": "-1_open_1_closed"}}, r"'mine'.*gripper dims \[9\]")
    bad({"gripper": {"dims": [6], "convention": "open"}}, r"unknown gripper convention 'open'")
    bad({"cameras": {"front": "image"}}, r"unknown cameras \['front'\]")
    bad({"colour": 1}, r"unknown fields \['colour'\]")
    bad({"state": [{"key": "observation/state", "slice": [0, 40]}]}, "more than 32")
    with pytest.raises(ValueError, match="needs its configuration"):
        DatasetConfig("mine", "rlds", libero_dir)
    with pytest.raises(ValueError, match="for source 'rlds'"):
        DatasetConfig("l", "libero", libero_dir, rlds=MY_ROBOT)
    with pytest.raises(ConfigError, match="cannot read rlds config"):
        DatasetConfig("mine", "rlds", libero_dir, rlds=str(tmp_path / "missing.json"))
    # A feature the dataset lacks: named with the dataset before any record is read.
    missing = {**MY_ROBOT, "state": [{"key": "observation/joint_pos"}]}
    narrow = {**MY_ROBOT, "action": [{"key": "action", "slice": [0, 9]}]}
    for cfg, what in ((missing, "steps/observation/joint_pos is missing"), (narrow, "at least 9")):
        data = small_config(
            [DatasetConfig("mine", "rlds", libero_dir, rlds=cfg)],
            tokenizer_path,
            stats_dir=str(tmp_path),
        )
        with pytest.raises(UnsupportedDatasetError, match=f"'mine'.*{what}"):
            pipeline.load_summaries(data, progress=False)


def test_stats_cli_on_a_configured_dataset(libero_dir, tmp_path, capsys):
    path = tmp_path / "my_robot.json"
    path.write_text(json.dumps(MY_ROBOT))
    args = ["stats", "--source", "rlds", "--rlds_config", str(path), "--path", libero_dir]
    args += ["--name", "my_robot", "--stats_dir", str(tmp_path), "--official_stats", str(tmp_path)]
    assert convert.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        out["name"] == "my_robot" and out["episodes_kept"] == 3 and out["control_frequency"] == 20
    )
    assert out["cameras"] == MY_ROBOT["cameras"]
    with open(out["official_stats"]) as f:
        stats = read_official_stats(f.read(), out["official_stats"])
    assert len(stats["state"]["mean"]) == 7 and len(stats["action"]["mean"]) == 7
    assert stats["action"]["count"] == 18  # every step of the 6 + 9 + 3 step episodes


def test_one_dataset_fields_of_a_data_section(libero_dir, tokenizer_path):
    base = {"tokenizer_path": tokenizer_path, "datasets": []}
    single = {"name": "mine", "source": "rlds", "path": libero_dir, "rlds": json.dumps(MY_ROBOT)}
    (ds,) = DataConfig.from_mapping({**base, **single}).datasets
    assert (ds.name, ds.source, ds.path, ds.rlds) == ("mine", "rlds", libero_dir, MY_ROBOT)
    other = {**base, "datasets": [{"name": "l", "source": "libero", "path": "/elsewhere"}]}
    with pytest.raises(ValueError, match="data.path .* is used by no dataset"):
        DataConfig.from_mapping({**other, **single})
