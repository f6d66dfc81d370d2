"""The journey a user walks, at the debug size on the built-in task's data: stage 1 -> stage 2
initialised from the stage-1 workdir -> stage 3 from stage 2's -> `export --run` -> the export's
actions equal the run's in robot units (so the statistics travelled)."""

import logging
import os

import jax
import numpy as np
import pytest

from builtin_task import SimEnv, writer
from builtin_task.prepare import all_instructions
from conversion.cli import main as conversion_main
from f1_jax import recipes
from f1_jax.models.f1 import F1
from f1_jax.models.sizes import model_config_from
from inference.jax_policy import Policy
from f1_common.tokenizer import train_tokenizer
from f1_jax.training import checkpoints, state, trainer


def _stage(name: str, data: dict, init: str, steps: int = 2):
    """The recipe `name` at the debug size on the built-in data, for a few steps."""
    c = recipes.load_config(name)
    c.model.size = "debug"
    c.model.precision = "parity"
    c.model.remat_policy = "none"
    c.model.num_scales = 4  # the debug VQ-VAE has 4 scales (stage 1 predicts 10 at full size)
    c.model.chunk_size = 4
    c.data.datasets = [{"name": "f1_sim", "source": "libero", "path": data["train"]}]
    c.data.tokenizer_path = data["tokenizer"]
    c.data.balance_weights = False
    c.data.batch_size = 4
    c.data.num_workers = 0
    c.data.max_token_len = 16
    c.data.stats_dir = data["root"]
    c.mesh.shape = (1, 1, 1)
    c.mesh.num_devices = 1
    c.optimizer.warmup_steps = 0
    c.train.steps = steps
    c.train.log_every = 1
    c.train.checkpoint_every = steps
    c.train.async_checkpoints = False
    c.init.params_path = init
    return c


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    root = os.fspath(tmp_path_factory.mktemp("journey"))
    train = writer.generate_dataset(root, "f1_sim", 3, seed=0, image_size=32, progress=False)
    tokenizer = train_tokenizer(all_instructions() * 4, os.path.join(root, "tok.model"), 96)
    return {"root": root, "train": train, "tokenizer": tokenizer}


def test_stage_1_2_3_export_and_the_robot_units_match(sim_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="f1_jax")
    # Stage 1 starts from a parameter checkpoint (what `compose-stage1` writes at full size).
    config = _stage("stage1", sim_data, init="")
    model = F1(model_config_from(config.model))
    init = str(tmp_path / "stage1_init")
    checkpoints.save_params(init, jax.jit(lambda k: state.init_params(model, k))(jax.random.key(0)))
    with pytest.raises(trainer.MissingInitError, match="init.params_path"):
        trainer.train(config, str(tmp_path / "no_init"))

    runs = {name: str(tmp_path / name) for name in ("stage1", "stage2", "stage3")}
    trainer.train(_stage("stage1", sim_data, init), runs["stage1"])
    trainer.train(_stage("stage2", sim_data, runs["stage1"]), runs["stage2"])
    stage3 = _stage("stage3_libero", sim_data, f"{runs['stage2']}:2")
    # Stage 2's optimizer settings, so stage 3 reuses stage 2's compiled step (the persistent
    # compilation cache): the journey is what this test checks, not stage 3's schedule.
    stage3.optimizer = _stage("stage2", sim_data, "").optimizer
    trainer.train(stage3, runs["stage3"])
    handoffs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Initialised")]
    assert len(handoffs) == 3 and all("fresh: nothing" in m for m in handoffs), handoffs
    assert "step 2 (params)" in handoffs[1] and "step 2 (params)" in handoffs[2]

    # Stage 1 trained only the generation expert: its action expert is the init's, untouched.
    stage1 = checkpoints.restore_params_on_host(os.path.join(runs["stage1"], "checkpoints"), 2)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stage1)
    start = checkpoints.load_params(init, abstract)
    np.testing.assert_array_equal(
        stage1["stack"]["layers"]["act"]["linear"], start["stack"]["layers"]["act"]["linear"]
    )
    assert (
        np.abs(
            stage1["stack"]["layers"]["gen"]["linear"] - start["stack"]["layers"]["gen"]["linear"]
        ).max()
        > 0
    )

    export = str(tmp_path / "robot")
    assert (
        conversion_main(["export", "--run", runs["stage3"], "--output", export, "--no-progress"])
        == 0
    )
    from_run, from_export = Policy.load(runs["stage3"]), Policy.load(export)
    env = SimEnv(image_size=32)
    for seed in (4, 5):
        obs = env.reset(seed)
        from_run.reset()
        from_export.reset()
        for t in range(3):
            a = from_run.infer(obs, seed=t)["actions"]
            b = from_export.infer(obs, seed=t)["actions"]
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
            # Robot units: the statistics are not trivial, so a lost statistic would show.
            assert np.abs(a).max() > 0 and a.shape == (4, 7)
            obs, _, done, _ = env.step(a[0])
            if done:
                break
