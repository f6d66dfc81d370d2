"""Frames as stored VQ-VAE codes: the store holds exactly the codes the model computes, the
pipeline ships them, and the train step computes the same loss and gradients without the VQ-VAE."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from train_fixtures import tiny_config

from data_pipelines import make_train_iterator
from data_pipelines.frame_codes import FrameCodeStore
from data_pipelines.pipeline import eval_config
from f1_common import image_tools, transforms
from f1_jax.models.f1 import F1, model_inputs
from f1_jax.models.sizes import model_config_from
from f1_jax.training import frame_codes, setup, state, trainer
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import standardize_record
from tolerances import assert_close


def _setup(tiny_data, codes: bool):
    config = tiny_config(tiny_data)
    config.data.frame_codes = codes
    model_config = model_config_from(config.model)
    data = eval_config(setup.data_config_from(config.data, model_config))
    return config, F1(model_config), dataclasses.replace(data, batch_size=4)


def test_stored_codes_are_the_models_and_the_step_needs_no_vqvae(tiny_data):
    config, model, frames_data = _setup(tiny_data, codes=False)
    _, _, codes_data = _setup(tiny_data, codes=True)
    assert codes_data.observation.frame_codes == model.config.vqvae.num_tokens
    params = jax.jit(lambda k: state.init_params(model, k))(jax.random.key(0))
    codes_data = frame_codes.ensure_frame_codes(codes_data, model, params["vqvae"], progress=False)
    store = FrameCodeStore(codes_data.frame_code_stores[0])

    # 1. The store holds what F1.frame_codes computes on the contract's centred crop.
    ds = frames_data.datasets[0]
    episode = standardize_record(ds.source, EpisodeReader(ds.path).decode(1), ds.name, 1, None)
    crops = np.stack(
        [transforms.generation_crop(image_tools.decode_image(b), frames_data.observation)
         for b in episode.images["primary"]]
    )  # fmt: skip
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, method=F1.frame_codes))
    want = np.asarray(apply(params, jnp.asarray(crops, jnp.float32)[:, None] / 127.5 - 1))[:, 0]
    np.testing.assert_array_equal(store.frames(1, np.arange(len(crops))), want)

    # 2. The same samples, shipped as frames and as codes: codes equal the frames' encoding.
    frames_batch = next(make_train_iterator(frames_data, seed=0))
    codes_batch = next(make_train_iterator(codes_data, seed=0))
    assert "gen_codes" in codes_batch and "gen_frames" not in codes_batch
    assert codes_batch["gen_codes"].shape == (4, 5, model.config.vqvae.num_tokens)
    encoded = apply(params, model_inputs(frames_batch)["history"])
    np.testing.assert_array_equal(codes_batch["gen_codes"][:, :4], np.asarray(encoded))

    # 3. One step's loss and gradients from codes equal those from frames (no VQ-VAE run).
    def loss_and_grads(batch):
        inputs = model_inputs({k: v for k, v in batch.items() if k not in ("replaced",)})
        fn = jax.value_and_grad(
            lambda p: model.apply({"params": p}, inputs, jax.random.key(3)), has_aux=True
        )
        return jax.jit(fn)(params)

    (loss_f, m_f), g_f = loss_and_grads(frames_batch)
    (loss_c, m_c), g_c = loss_and_grads(codes_batch)
    for name in m_f:  # the same inputs to the stack: only the programs' fusion may differ
        assert_close(m_c[name], m_f[name], terms=1000, scale=1.0)
    largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_f))
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_f)):
        assert_close(a, b, terms=2000, scale=max(float(jnp.abs(b).max()), 1e-6 * largest))


def test_a_run_from_codes_writes_its_stores_once(tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tiny_data, steps=2)
    config.data.frame_codes = True
    config.data.stats_dir = str(tmp_path / "stats")
    trainer.train(config, str(tmp_path / "run"))
    stores = [p for p in os.listdir(tmp_path / "stats") if p.startswith("f1_frame_codes_")]
    assert len(stores) == 1
    # A second run (same VQ-VAE, same data) reuses the store without encoding anything.
    monkeypatch.setattr(
        frame_codes, "encode_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError)
    )
    config.train.steps = 3
    trainer.train(config, str(tmp_path / "run"))
