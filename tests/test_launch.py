"""The launcher: recipe names and files, overrides, readable errors, --help and --dry_run."""

import json
import os
import subprocess
import sys

import pytest

from f1_jax import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    """`python -m f1_jax.launch ARGS` as a user runs it (a fresh process: absl flags are global)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's laptop
    return subprocess.run(
        [sys.executable, "-m", "f1_jax.launch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_recipes_load_and_fields_are_checked():
    for name in recipes.RECIPES:
        assert recipes.load_config(name).model.size in ("full", "debug")
    config = recipes.load_config("stage2")
    recipes.check_field(config, "optimizer.lr.gen")
    with pytest.raises(recipes.ConfigError, match=r"train has no 'stepz'.*'steps'"):
        recipes.check_field(recipes.load_config("debug"), "train.stepz")
    with pytest.raises(recipes.ConfigError, match=r"config has no 'trian'"):
        recipes.check_field(config, "trian.steps")
    with pytest.raises(recipes.ConfigError, match=r"Unknown config 'stage9'"):
        recipes.recipe_path("stage9")
    with pytest.raises(recipes.ConfigError, match=r"does not exist"):
        recipes.recipe_path("/no/such/config.py")
    assert recipes.recipe_path("stage2").endswith(os.path.join("configs", "stage2.py"))


def test_config_file_with_argument(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from configs.stage3 import stage3_config\n"
        "def get_config(name='libero_goal_no_noops'):\n"
        "    return stage3_config(name, 'libero', chunk_size=4)\n"
    )
    config = recipes.load_config(f"{path}:libero_10_no_noops")
    assert config.data.datasets[0]["name"] == "libero_10_no_noops"


def test_dry_run_prints_the_resolved_config_mesh_and_paths(tmp_path):
    out = _launch(
        "--config=stage2",
        f"--workdir={tmp_path / 'run'}",
        "--config.train.steps=7",
        "--config.mesh.shape=(1,-1,1)",
        "--config.train.async_checkpoints=false",
        "--dry_run",
    )
    assert out.returncode == 0, out.stderr
    decoder, text = json.JSONDecoder(), out.stdout
    config, end = decoder.raw_decode(text)
    report, _ = decoder.raw_decode(text[end:].lstrip())
    assert config["train"]["steps"] == 7 and config["train"]["async_checkpoints"] is False
    assert report["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert report["resumes_from_step"] is None
    assert report["paths"]["metrics"] == str(tmp_path / "run" / "metrics.jsonl")
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_bad_arguments_are_named_without_a_traceback(tmp_path):
    unknown = _launch("--config=debug", f"--workdir={tmp_path}", "--config.train.nope=1")
    assert unknown.returncode == 2
    assert "train has no 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = _launch("--config=debug")
    assert missing.returncode != 0 and "workdir" in missing.stderr
    recipe = _launch("--config=stage9", f"--workdir={tmp_path}")
    assert recipe.returncode == 2 and "Unknown config 'stage9'" in recipe.stderr
    # configs/stage3.py holds the stage-3 recipes' shared body, not a get_config()
    helper = _launch("--config=stage3", f"--workdir={tmp_path}")
    assert helper.returncode == 2 and "not a recipe" in helper.stderr
    assert "stage3_libero" in helper.stderr and "Traceback" not in helper.stderr
    typed = _launch("--config=debug", f"--workdir={tmp_path}", "--config.train.steps=many")
    assert typed.returncode != 0 and "train.steps" in typed.stderr


def test_help_lists_the_flags():
    out = _launch("--help")  # absl prints the usage and exits with status 1
    for flag in ("--config", "--workdir", "dry_run", "allow_config_change"):
        assert flag in out.stdout
    assert "--flagfile" in _launch("--helpfull").stdout
