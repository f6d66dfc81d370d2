"""The fine-tuning recipe: one dataset given on the command line, the released F1's import (or a
stage-2 run) as its start, what it freezes; its --dry_run resolves all of it."""

import json
import os

import pytest

from data_pipelines.config import DatasetConfig
from f1_jax import recipes
from f1_jax.models.sizes import model_config_from
from f1_jax.training import setup
from test_launch import _launch

MY_ROBOT = {
    "name": "my_robot",
    "cameras": {"primary": "image", "wrist": "wrist_image"},
    "state": [{"key": "observation/state", "slice": [0, 8]}],
    "action": [{"key": "action", "slice": [0, 7]}],
    "gripper": {"dims": [6], "convention": "-1_open_1_closed"},
    "control_frequency": 20,
}


def test_recipe_states_its_start_and_frozen_groups(tmp_path):
    config = recipes.load_config("finetune")
    assert config.init.required and config.init.params_path == ""
    assert tuple(config.optimizer.frozen) == ("vqvae",)  # everything else trains, as stage 3
    assert config.model.size == "full" and config.model.chunk_size == 4
    model_config = model_config_from(config.model)
    with pytest.raises(ValueError, match="data.path is empty"):
        setup.data_config_from(config.data, model_config)
    # The fields reach the one dataset (as the command line's overrides do).
    rlds = tmp_path / "my_robot.json"
    rlds.write_text(json.dumps(MY_ROBOT))
    config.data.path = "/data/my_robot/1.0.0"
    config.data.rlds = str(rlds)
    config.data.name = "robot_a"
    assert config.data.datasets[0]["path"] == "/data/my_robot/1.0.0"
    (ds,) = setup.data_config_from(config.data, model_config).datasets
    assert (ds.name, ds.source, ds.path, ds.rlds) == ("robot_a", "rlds", config.data.path, MY_ROBOT)


def test_dry_run_resolves_the_dataset_and_the_start(tmp_path):
    rlds = tmp_path / "my_robot.json"
    rlds.write_text(json.dumps(MY_ROBOT))
    data = tmp_path / "my_robot" / "1.0.0"
    data.mkdir(parents=True)
    start = tmp_path / "f1_import"
    out = _launch(
        "--config=finetune",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.path={data}",
        f"--config.data.rlds={rlds}",
        f"--config.init.params_path={start}",
        "--dry_run",
    )
    assert out.returncode == 0, out.stderr
    decoder, text = json.JSONDecoder(), out.stdout
    config, end = decoder.raw_decode(text)
    report, _ = decoder.raw_decode(text[end:].lstrip())
    (dataset,) = config["data"]["datasets"]
    assert dataset["path"] == str(data) and dataset["rlds"] == str(rlds)
    assert dataset["name"] == "my_robot" and dataset["source"] == "rlds"
    assert report["datasets"] == [{"name": "my_robot", "path": str(data), "exists": True}]
    assert report["data_check"] == "ok"  # the RLDS configuration (its shards are read in the run)
    assert str(start) in json.dumps(report)
    assert not os.path.exists(tmp_path / "run")


LEROBOT = {
    "cameras": {"primary": "observation.images.top", "wrist": "observation.images.wrist"},
    "state": "observation.state",
    "gripper_dims": [6],
    "gripper_open": -1,
    "gripper_closed": 1,
}


def _lerobot_root(tmp_path) -> str:
    """A LeRobot root with only its meta/info.json: what the data check reads before it names a
    feature the mapping gets wrong (tests/test_readme_walk.py checks a real recording)."""
    root = tmp_path / "my_robot_lerobot"
    (root / "meta").mkdir(parents=True)
    video = {"dtype": "video", "shape": [32, 32, 3], "info": {"video.fps": 10}}
    features = {
        "observation.images.top": video,
        "observation.images.wrist": video,
        "observation.state": {"dtype": "float32", "shape": [8]},
        "action": {"dtype": "float32", "shape": [7]},
    }
    info = {"codebase_version": "v3.0", "fps": 10, "features": features, "splits": {}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    return str(root)


def test_a_lerobot_dataset_from_the_command_line(tmp_path):
    """data.lerobot (JSON text or a file; "" = none) reaches the one dataset; its cameras become
    the dataset's cameras; bad input is named by the launcher's data check (in --dry_run's
    report, and before a run starts)."""
    mapping = tmp_path / "my_robot.json"
    mapping.write_text(json.dumps(LEROBOT))
    config = recipes.load_config("finetune")
    config.model.size = "debug"
    config.data.source = "lerobot"
    config.data.path = _lerobot_root(tmp_path)
    model_config = model_config_from(config.model)
    for given in (str(mapping), json.dumps(LEROBOT)):
        config.data.lerobot = given
        (ds,) = setup.data_config_from(config.data, model_config).datasets
        assert ds.source == "lerobot" and ds.path == config.data.path and ds.rlds is None
        assert ds.cameras == LEROBOT["cameras"]
        assert ds.lerobot == {k: v for k, v in LEROBOT.items() if k != "cameras"}
    config.data.lerobot = ""  # none: the source's defaults (cameras from meta/info.json)
    (ds,) = setup.data_config_from(config.data, model_config).datasets
    assert ds.lerobot is None and ds.cameras is None

    def problem(**fields) -> str:
        bad = recipes.load_config("finetune")  # the command line's overrides, on a fresh recipe
        bad.model.size = "debug"
        bad.data.update({"source": "lerobot", "path": config.data.path, **fields})
        return setup.check_data(bad) or ""

    assert "cannot read the lerobot options file 'nope.json'" in problem(lerobot="nope.json")
    assert "not JSON" in problem(lerobot="{bad")
    assert "unknown lerobot options ['gripper_dim']" in problem(lerobot='{"gripper_dim": [6]}')
    assert "--config.data.source=lerobot" in problem(source="rlds", lerobot=str(mapping))
    assert "unknown cameras ['front']" in problem(lerobot='{"cameras": {"front": "x"}}')
    assert "must map camera names" in problem(lerobot='{"cameras": ["observation.images.top"]}')
    with pytest.raises(ValueError, match="cameras given twice"):
        DatasetConfig("r", "lerobot", "/d", cameras={"primary": "a"}, lerobot=json.dumps(LEROBOT))
    missing = problem(lerobot='{"cameras": {"primary": "observation.images.front"}}')
    assert "'observation.images.front' is not in meta/info.json" in missing
    assert "state feature 'state' is not in" in problem(lerobot='{"state": "state"}')
    assert "has no meta/info.json" in problem(path=str(tmp_path))
    # A real run stops before anything else, naming the problem, without a traceback.
    out = _launch(
        "--config=finetune",
        f"--workdir={tmp_path / 'run'}",
        "--config.data.source=lerobot",
        f"--config.data.path={config.data.path}",
        '--config.data.lerobot={"gripper_dim": [6]}',
        f"--config.init.params_path={tmp_path / 'f1_import'}",
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "unknown lerobot options ['gripper_dim']" in out.stderr
