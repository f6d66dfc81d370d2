"""Policy: checkpoint loading, training-identical preprocessing, robot-unit actions, one jit."""

import dataclasses

import jax
import numpy as np
import pytest

from data_pipelines import make_train_iterator
from data_pipelines.pipeline import eval_config, load_summaries
from data_pipelines.sample import SampleBuilder
from f1_common import image_tools, transforms
from inference.jax_policy import Policy, read_checkpoint_info, serving_config
from f1_jax.training import setup


def _data_config(policy):
    """The run's data pipeline in eval mode (what the policy's preprocessing must equal)."""
    info = policy.info
    return eval_config(setup.data_config_from(info.config.data, info.model_config))


def _episode(policy, episode: int = 0):
    """The standardised stored episode `episode` of the policy's first dataset."""
    config = _data_config(policy)
    readers, summaries = load_summaries(config, progress=False)
    return SampleBuilder(config, readers, summaries).episode(0, episode)


def _observation(ep, t: int) -> dict:
    return {
        "primary": image_tools.decode_image(ep.images["primary"][t]),
        "wrist_image": image_tools.decode_image(ep.images["wrist"][t]),  # dataset key also works
        "state": ep.state[t],
        "instruction": ep.language,
    }


def _pipeline_examples(policy, episode: int, steps: set[int]) -> dict[int, dict]:
    """The data pipeline's eval examples of (dataset 0, episode, t) for t in steps."""
    cfg = dataclasses.replace(_data_config(policy), batch_size=1)
    found = {}
    for batch in make_train_iterator(cfg, seed=0):
        if int(batch["dataset_index"][0]) == 0 and int(batch["episode_index"][0]) == episode:
            t = int(batch["step_index"][0])
            if t in steps:
                found[t] = {k: v[0] for k, v in batch.items()}
        if len(found) == len(steps):
            return found
    raise AssertionError(f"steps {steps - set(found)} not in the pipeline")


def test_preprocessing_matches_the_data_pipeline(policy):
    ep = _episode(policy)
    steps = {0, 2, min(11, ep.length - 1)}  # clamped history at the start, then a full window
    expected = _pipeline_examples(policy, 0, steps)
    policy.reset()
    for t in range(max(steps) + 1):
        obs = _observation(ep, t)
        if t not in steps:
            policy.observe(obs)
            continue
        got = policy.preprocess(obs)
        want = expected[t]
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        np.testing.assert_array_equal(got["token_mask"], want["token_mask"])
        np.testing.assert_array_equal(got["image_mask"], want["image_mask"])
        np.testing.assert_array_equal(got["state"], want["state"])
        assert set(got) == set(policy.spec.example_spec(training=False))
        for key, ours, theirs in (
            ("images", got["images"], want["images"]),
            ("gen_frames", got["gen_frames"], want["gen_frames"][:4]),
        ):
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, key
            assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, (key, t)
    policy.reset()


def test_actions_are_unnormalised_with_the_training_statistics(policy):
    ep = _episode(policy)
    obs = _observation(ep, 0)
    stats = policy.info.dataset_stats
    policy.reset()
    normalised = policy.infer_normalized(
        policy.preprocess(obs), jax.random.key(7), return_foresight=True
    )["actions"]
    policy.reset()
    out = policy.infer(obs, seed=7, return_foresight=True)
    chunk = policy.model.config.action.chunk_size
    assert normalised.shape == (chunk, policy.spec.action_dim)
    assert out["actions"].shape == (chunk, 7) and out["actions"].dtype == np.float32
    assert np.isfinite(normalised).all() and np.isfinite(out["actions"]).all()
    np.testing.assert_allclose(
        out["actions"],
        transforms.unnormalize(normalised, stats["action"], stats["norm_mode"]),
        rtol=1e-5,
        atol=1e-5,
    )
    mean, std = np.asarray(stats["action"]["mean"]), np.asarray(stats["action"]["std"])
    np.testing.assert_allclose(out["actions"], normalised[:, :7] * std + mean, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out["actions"], normalised[:, :7])  # the statistics are not trivial
    assert out["foresight_image"].dtype == np.uint8
    assert out["foresight_image"].shape == (32, 32, 3)
    assert out["foresight_tokens"].ndim == 1
    policy.reset()


def test_inference_is_compiled_once(policy):
    ep = _episode(policy)
    policy.reset()
    policy.infer(_observation(ep, 0), seed=0, return_foresight=True)
    compiled = policy.compiled_count()  # 1 or 2: the server's warm-up compiles the other mode
    for t in range(1, 4):
        policy.infer(_observation(ep, t), seed=t, return_foresight=True)
    assert compiled <= 2 and policy.compiled_count() == compiled  # no compile per call
    policy.reset()


def test_dataset_choice_and_clear_errors(sim_run, tmp_path):
    info = read_checkpoint_info(sim_run["workdir"] + "/checkpoints", dataset="sim_b")
    assert info.dataset_name == "sim_b" and info.dataset_stats["norm_mode"] == "quantile"
    assert info.cameras == {"primary": "image", "wrist": "wrist_image"}
    with pytest.raises(KeyError, match="sim_a"):
        read_checkpoint_info(sim_run["workdir"], dataset="nope")
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        Policy.load(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="No complete checkpoint"):
        read_checkpoint_info(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="step 99"):
        read_checkpoint_info(sim_run["workdir"], step=99)


def test_bad_observations_are_rejected(policy):
    policy.reset()
    ep = _episode(policy)
    obs = _observation(ep, 0)
    with pytest.raises(ValueError, match="uint8"):
        policy.preprocess(dict(obs, primary=obs["primary"] / 255.0))
    with pytest.raises(KeyError, match="wrist"):
        policy.preprocess({k: v for k, v in obs.items() if k != "wrist_image"})
    with pytest.raises(ValueError, match="8"):
        policy.preprocess(dict(obs, state=np.zeros(5)))
    assert policy.history.count == 0  # a rejected observation leaves no frame behind


def test_frame_history_clamps_like_training_windows():
    offsets = (-9, -6, -3, 0)
    history = transforms.FrameHistory(offsets)
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(25)]
    for t, frame in enumerate(frames):
        history.push(frame)
        got, frame_index = history.window()
        idx, _ = transforms.frame_indices(t, t + 1, offsets)
        np.testing.assert_array_equal(got[:, 0, 0, 0], idx)
        np.testing.assert_array_equal(frame_index, idx)
    history.reset()
    with pytest.raises(RuntimeError):
        history.window()


def test_a_run_trained_with_splash_attention_is_served_with_xla_attention(policy):
    """Splash attention is a TPU training kernel; the policy computes the same with XLA's
    attention on any backend, so a run's `model.attention` never reaches serving."""
    trained = dataclasses.replace(policy.info.model_config, attention="splash")
    served = serving_config(trained, top_k=5)
    assert served.attention == "xla" and served.foresight.top_k == 5
    assert dataclasses.replace(served, attention="splash", foresight=trained.foresight) == trained
