"""The fine-tuning recipe: one dataset given on the command line, the released F1's import (or a
stage-2 run) as its start, what it freezes; its --dry_run resolves all of it."""

import json
import os

import pytest

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
    assert str(start) in json.dumps(report)
    assert not os.path.exists(tmp_path / "run")
