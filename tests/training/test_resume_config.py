"""Resuming a run under another config stops with the changed fields, unless allowed; every
config a run ran under is kept."""

import json
import shutil

import pytest
from etils import epath

from f1_jax.training import run_config, trainer


def test_changed_fields_ignore_run_length_logging_and_mesh():
    old = {"train": {"steps": 10, "log_every": 5, "seed": 1},
           "optimizer": {"schedule": "constant", "lr": {"gen": 1e-4}},
           "mesh": {"shape": [1, -1, 1]}, "data": {"datasets": [{"path": "/a"}]}}  # fmt: skip
    new = json.loads(json.dumps(old))
    new["train"].update(steps=20, log_every=1)
    new["mesh"]["shape"] = [2, -1, 1]
    assert run_config.changed_fields(old, new) == []
    new["optimizer"]["lr"]["gen"] = 5e-5
    new["data"]["datasets"][0]["path"] = "/b"
    new["train"]["seed"] = 2
    assert run_config.changed_fields(old, new) == [
        "data.datasets.0.path",
        "optimizer.lr.gen",
        "train.seed",
    ]


def test_more_steps_under_a_cosine_schedule_stop_unless_allowed():
    """train.steps is the cosine schedule's length: changing it on resume changes the learning
    rate of every later step, so it is named (the constant schedule does not depend on it)."""
    old = {"train": {"steps": 10}, "optimizer": {"schedule": "cosine", "warmup_steps": 2}}
    new = json.loads(json.dumps(old))
    new["train"]["steps"] = 20
    assert run_config.changed_fields(old, new) == ["train.steps"]
    with pytest.raises(run_config.ConfigChangedError) as error:
        run_config.check_resume(json.dumps(old), json.dumps(new), allow_changes=False)
    message = str(error.value)
    assert "train.steps: 10 -> 20" in message and "cosine learning-rate schedule" in message
    assert "--allow_config_change" in message
    assert run_config.check_resume(json.dumps(old), json.dumps(new), True) == ["train.steps"]
    # Constant before and after: the run length is free to change.
    for config in (old, new):
        config["optimizer"]["schedule"] = "constant"
    assert run_config.changed_fields(old, new) == []
    # From constant to cosine: the schedule itself is named as well.
    new["optimizer"]["schedule"] = "cosine"
    assert run_config.changed_fields(old, new) == ["optimizer.schedule", "train.steps"]


def test_resume_under_another_config_stops_naming_the_fields(sim_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(sim_run["workdir"], workdir)  # a run with a checkpoint at step 3
    config = sim_run["config"].copy_and_resolve_references()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    changed = config.copy_and_resolve_references()
    changed.optimizer.lr.gen = 1e-2
    changed.model.chunk_size = 8
    with pytest.raises(run_config.ConfigChangedError) as error:
        trainer.train(changed, str(workdir))
    message = str(error.value)
    assert "optimizer.lr.gen: 5e-05 -> 0.01" in message and "model.chunk_size: 4 -> 8" in message
    assert "--allow_config_change" in message
    # Allowed explicitly, the check reports instead of stopping.
    previous = (workdir / "config.json").read_text()
    assert run_config.check_resume(previous, changed.to_json_best_effort(), True) == [
        "model.chunk_size",
        "optimizer.lr.gen",
    ]


def test_every_start_keeps_its_config(tmp_path):

    history, latest = epath.Path(tmp_path / "configs"), epath.Path(tmp_path / "config.json")
    run_config.record_config(history, latest, 0, '{"a": 1}')
    run_config.record_config(history, latest, 250, '{"a": 2}')
    assert sorted(p.name for p in history.iterdir()) == [
        "config_00000000.json",
        "config_00000250.json",
    ]
    assert latest.read_text() == '{"a": 2}'
