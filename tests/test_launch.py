"""The launcher's config resolution and overrides."""

import pytest

from f1_jax import launch


def test_recipes_load_and_overrides_apply():
    for name in launch.RECIPES:
        assert launch.load_config(name).model.size in ("full", "debug")
    config = launch.load_config("stage2")
    rest, overrides = launch.split_overrides(
        [
            "--workdir=/tmp/x",
            "--config.train.steps=7",
            "--config.optimizer.lr.gen=1e-4",
            "--config.model.precision=parity",
            "--config.mesh.shape=(2,-1,1)",
            "--config.train.async_checkpoints=false",
        ]
    )
    assert rest == ["--workdir=/tmp/x"]
    for key, value in overrides:
        launch.apply_override(config, key, value)
    assert config.train.steps == 7 and config.optimizer.lr.gen == 1e-4
    assert config.model.precision == "parity" and tuple(config.mesh.shape) == (2, -1, 1)
    assert config.train.async_checkpoints is False


def test_unknown_fields_name_the_valid_ones():
    config = launch.load_config("debug")
    with pytest.raises(launch.ConfigError, match=r"train has no 'stepz'.*'steps'"):
        launch.apply_override(config, "train.stepz", "3")
    with pytest.raises(launch.ConfigError, match=r"config has no 'trian'"):
        launch.apply_override(config, "trian.steps", "3")
    with pytest.raises(launch.ConfigError, match=r"Expected type int"):
        launch.apply_override(config, "train.steps", "'many'")
    with pytest.raises(launch.ConfigError, match=r"Unknown config 'stage9'"):
        launch.load_config("stage9")
    with pytest.raises(launch.ConfigError, match=r"does not exist"):
        launch.load_config("/no/such/config.py")


def test_main_reports_bad_arguments(capsys):
    assert launch.main(["launch", "--config=debug"]) == 2  # no --workdir
    assert (
        launch.main(["launch", "--config=debug", "--workdir=/tmp/w", "--config.train.nope=1"]) == 2
    )
    assert "train has no 'nope'" in capsys.readouterr().err
