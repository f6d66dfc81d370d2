"""Training on a simulated 8-device CPU mesh: mesh equivalence, real sharding, exact resume after
SIGTERM, frozen parameters, the NaN guard and logging."""

import json
import os
import signal

import flax.linen as nn
import ml_collections
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from train_fixtures import tiny_config
from data_pipelines import make_train_iterator
from f1_jax.models.f1 import F1
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import optimizer as opt
from f1_jax.models.sizes import model_config_from
from f1_jax.training import setup, sharding, trainer
from f1_jax.training import state as st
from f1_jax.training import step as steps


def _train_rows(workdir: str) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r for r in rows if r["split"] == "train"}


def test_meshes_give_the_same_losses_and_really_shard(tiny_data):
    assert jax.device_count() == 8
    config = tiny_config(tiny_data)
    model = F1(model_config_from(config.model))
    data_config = setup.data_config_from(config.data, model.config)
    batches = [b for _, b in zip(range(2), make_train_iterator(data_config, 0))]
    for b in batches:
        for key in ("dataset_index", "episode_index", "step_index"):
            b.pop(key)
    labels = opt.param_labels(nn.unbox(st.abstract_params(model)), config.optimizer.frozen)
    tx, _ = opt.make_optimizer(config.optimizer.to_dict(), 10, opt.split_frozen(labels, labels)[0])
    params = jax.jit(lambda k: st.init_params(model, k))(jax.random.key(0))
    rules = sharding.rules_from_config(config.sharding_rules)

    losses = {}
    for shape in [(1, 1, 1), (2, 4, 1), (2, 2, 2)]:  # data + fsdp; data + fsdp + tensor
        mesh = sharding.make_mesh(shape, devices=jax.devices()[: int(np.prod(shape))])
        _, _, state_sh = st.make_state_fns(model, tx, labels, mesh, rules, ema=False)
        trainable, _ = opt.split_frozen(params, labels)
        state = jax.device_put(
            st.TrainState(
                step=np.int32(0), params=params, opt_state=tx.init(trainable), ema_params=None
            ),
            state_sh,
        )
        with nn.logical_axis_rules(rules), jax.set_mesh(mesh):
            train_step = jax.jit(
                steps.make_train_step(model, tx, labels, seed=0), out_shardings=(state_sh, None)
            )
            losses[shape] = []
            for b in batches:
                state, metrics = train_step(state, sharding.host_batch_to_global(b, mesh))
                losses[shape].append(float(metrics["loss"]))
        if shape == (2, 2, 2):  # parameters and Adam moments are split across devices
            q = state.params["stack"]["layers"]["und"]["q_einsum"]
            assert q.sharding.spec == PartitionSpec(None, "tensor", "fsdp", None)
            assert q.addressable_shards[0].data.shape == (2, 2, 32, 16)  # of (2, 4, 64, 16)
            moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == q.shape]
            assert moments and all(m.sharding.spec == q.sharding.spec for m in moments)
    for shape, values in losses.items():
        np.testing.assert_allclose(values, losses[(1, 1, 1)], rtol=2e-5, err_msg=str(shape))


def test_resume_after_sigterm_matches_an_uninterrupted_run(
    tiny_data, tiny_init, tmp_path, monkeypatch
):
    steps_total = 5

    def config():
        c = tiny_config(tiny_data, steps=steps_total, mesh=(2, 1, 1))
        c.init.params_path = tiny_init  # train.seed's initialisation, without compiling it
        return c

    straight = os.fspath(tmp_path / "straight")
    trainer.train(config(), straight)

    # Second run: SIGTERM (a TPU preemption) arrives while step 3 is running.
    interrupted = os.fspath(tmp_path / "interrupted")
    original = trainer._global_batches

    def preempt_at_third(iterator, mesh):
        for index, batch in enumerate(original(iterator, mesh)):
            if index == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(trainer, "_global_batches", preempt_at_third)
    trainer.train(config(), interrupted)
    monkeypatch.setattr(trainer, "_global_batches", original)
    assert max(_train_rows(interrupted)) == 3
    assert sorted(os.listdir(os.path.join(interrupted, "checkpoints")))[-1] == "3"

    trainer.train(config(), interrupted)
    want, got = _train_rows(straight), _train_rows(interrupted)
    for step in (4, 5):  # the same batches, noise and foresight draws after the restart
        np.testing.assert_allclose(got[step]["loss"], want[step]["loss"], rtol=1e-6)

    # Frozen groups (vision, vqvae) are bit-identical to their initial values; others moved.
    model = F1(model_config_from(tiny_config(tiny_data).model))
    initial = jax.device_get(jax.jit(lambda k: st.init_params(model, k))(jax.random.key(42)))
    manager = ckpt.RunCheckpoints(os.path.join(straight, "checkpoints"), 1)
    final = jax.device_get(manager.restore_state(steps_total)["params"])
    manager.close()
    for group in ("siglip", "vqvae"):
        for a, b in zip(jax.tree.leaves(initial[group]), jax.tree.leaves(final[group])):
            np.testing.assert_array_equal(a, b)
    moved = (
        initial["stack"]["layers"]["gen"]["q_einsum"] - final["stack"]["layers"]["gen"]["q_einsum"]
    )
    assert np.abs(moved).max() > 0

    assert os.listdir(os.path.join(straight, "tensorboard"))
    assert "lr_gen" in want[1] and "steps_per_sec" in want[2]


def test_non_finite_loss_stops_with_the_step_named(tiny_data, tmp_path):
    config = tiny_config(tiny_data, steps=2)
    config.optimizer.lr = {"vision": 1e38, "und": 1e38, "gen": 1e38, "act": 1e38}
    config.optimizer.clip_norm = 1e38
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 2"):
        trainer.train(config, os.fspath(tmp_path / "nan"))


def test_accumulation_ema_and_in_loop_evaluation(tiny_data, tiny_init, tmp_path):
    workdir = os.fspath(tmp_path / "ema")
    config = tiny_config(tiny_data, steps=2)
    config.init.params_path = tiny_init  # train.seed's initialisation, without compiling it
    config.optimizer.grad_accum_steps = 2
    config.optimizer.ema_decay = 0.5
    config.train.checkpoint_every = 1
    config.train.eval_every = 2
    config.train.eval_batches = 1
    config.eval_data = ml_collections.ConfigDict(config.data.to_dict())
    config.eval_data.datasets = [{"name": "tiny", "source": "libero", "path": tiny_data["eval"]}]
    trainer.train(config, workdir)

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f if '"eval"' in line]
    assert evals and {"action_mse", "action_mse_robot_units", "wm_acc_mean"} <= evals[0].keys()

    model = F1(model_config_from(config.model))
    p0 = jax.device_get(jax.jit(lambda k: st.init_params(model, k))(jax.random.key(42)))
    manager = ckpt.RunCheckpoints(os.path.join(workdir, "checkpoints"), 1)
    s1, s2 = (jax.device_get(manager.restore_state(s)) for s in (1, 2))
    manager.close()
    leaf = lambda tree: tree["stack"]["layers"]["act"]["linear"]
    # ema_t = 0.5 ema_{t-1} + 0.5 p_t, starting from the initial parameters.
    np.testing.assert_allclose(
        leaf(s2["ema_params"]),
        0.25 * leaf(p0) + 0.25 * leaf(s1["params"]) + 0.5 * leaf(s2["params"]),
        rtol=1e-6,
        atol=1e-7,
    )
    assert np.abs(leaf(s2["params"]) - leaf(p0)).max() > 0
