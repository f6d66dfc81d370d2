"""End-to-end iterator: batch spec, determinism, host slicing, exact resume with workers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipelines import pipeline
from data_pipelines.config import DataConfig, DatasetConfig
from f1_common import transforms
from dp_fixtures import LIBERO_LENGTHS, small_config


@pytest.fixture(scope="module")
def mixture(libero_dir, bridge_dir, fractal_dir, agibot_dir, tokenizer_path, tmp_path_factory):
    stats_dir = str(tmp_path_factory.mktemp("stats"))
    return small_config(
        [
            DatasetConfig("libero", "libero", libero_dir, weight=2.0),
            DatasetConfig("bridge", "bridge", bridge_dir, weight=1.0, norm_mode="quantile"),
            DatasetConfig("fractal", "fractal", fractal_dir, weight=1.0),
            DatasetConfig("agibot", "agibot", agibot_dir["path"], weight=1.0),
        ],
        tokenizer_path,
        stats_dir=stats_dir,
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_keys_shapes_dtypes(mixture):
    it = pipeline.make_train_iterator(mixture, seed=0)
    b = next(it)
    obs = mixture.observation
    B, H, F = 4, obs.chunk_size, len(obs.frame_offsets)
    und, crop = obs.und_image_size, obs.gen_crop
    expected = {
        "images": ((B, 3, und, und, 3), np.uint8),
        "image_mask": ((B, 3), bool),
        "gen_frames": ((B, F, crop, crop, 3), np.uint8),
        "state": ((B, 32), np.float32),
        "actions": ((B, H, 32), np.float32),
        "action_mask": ((B, 32), bool),
        "action_is_pad": ((B, H), bool),
        "tokens": ((B, 48), np.int32),
        "token_mask": ((B, 48), bool),
        "dataset_index": ((B,), np.int32),
        "episode_index": ((B,), np.int32),
        "step_index": ((B,), np.int32),
        "replaced": ((B, 3), np.int32),
    }
    # The one description of the batch: the observation contract's example, plus bookkeeping.
    spec = mixture.observation.example_spec()
    assert set(b) == set(expected) == set(spec) | set(pipeline.HOST_ONLY_KEYS)
    for k, (shape, dtype) in expected.items():
        assert b[k].shape == shape and b[k].dtype == dtype, k
        if k in spec:
            assert (B, *spec[k][0]) == shape and spec[k][1] == dtype, k
    # Padded dims are zero and masked; masks match each dataset's dims.
    dims = {0: (8, 7), 1: (8, 7), 2: (8, 7), 3: (16, 16)}
    for i, d in enumerate(b["dataset_index"]):
        ds_, da = dims[int(d)]
        assert b["action_mask"][i].sum() == da
        assert not b["state"][i, ds_:].any() and not b["actions"][i, :, da:].any()


def test_window_content_matches_episode(libero_dir, tokenizer_path, tmp_path):
    cfg = small_config(
        [DatasetConfig("libero", "libero", libero_dir)],
        tokenizer_path,
        stats_dir=str(tmp_path),
        train=False,
        shuffle=False,
        num_epochs=1,
        batch_size=1,
        chunk_size=4,
        gen_resize=16,
        gen_crop=16,
    )
    it = pipeline.make_train_iterator(cfg, seed=0)
    stats = pipeline.dataset_statistics(cfg)["libero"]
    seen = 0
    for b in it:
        t, L = int(b["step_index"][0]), None
        raw_state = transforms.unnormalize(b["state"][0], stats["state"], "mean_std")
        ep = int(round(float(raw_state[0] - t))) // 100  # state[0] = 100 * ep + t
        L = LIBERO_LENGTHS[ep]
        np.testing.assert_allclose(raw_state, np.arange(8) + 100 * ep + t, atol=1e-3)
        actions = transforms.unnormalize(b["actions"][0], stats["action"], stats["norm_mode"])
        steps = np.minimum(np.arange(t, t + 4), L - 1)
        np.testing.assert_allclose(actions[:, 0], steps, atol=1e-3)
        np.testing.assert_array_equal(b["action_is_pad"][0], np.arange(t, t + 4) >= L)
        # Primary camera frames at offsets -9,-6,-3,0,+3 (clamped) have value 10 * step + 50 * ep.
        frames = np.clip(t + np.array([-9, -6, -3, 0, 3]), 0, L - 1)
        means = b["gen_frames"][0].reshape(5, -1).mean(1)
        np.testing.assert_allclose(means, 10 * frames + 50 * ep, atol=2)
        assert b["image_mask"][0].tolist() == [True, False, True]
        assert b["images"][0, 1].max() == 0  # absent secondary camera is zeros
        seen += 1
    assert seen == sum(LIBERO_LENGTHS)


def test_same_seed_same_batches(mixture):
    a = take(pipeline.make_train_iterator(mixture, seed=3), 3)
    b = take(pipeline.make_train_iterator(mixture, seed=3), 3)
    c = take(pipeline.make_train_iterator(mixture, seed=4), 3)
    for x, y in zip(a, b):
        assert_batches_equal(x, y)
    assert any(
        not np.array_equal(x["step_index"], z["step_index"])
        or not np.array_equal(x["images"], z["images"])
        for x, z in zip(a, c)
    )


def test_hosts_read_disjoint_slices_covering_the_data(libero_dir, tokenizer_path, tmp_path):
    cfg = small_config(
        [DatasetConfig("libero", "libero", libero_dir)],
        tokenizer_path,
        stats_dir=str(tmp_path),
        num_epochs=1,
        batch_size=2,
    )
    per_host = []
    for host in range(2):
        frames = set()
        for b in pipeline.make_train_iterator(cfg, seed=7, process_index=host, process_count=2):
            assert len(b["step_index"]) <= 1
            frames |= set(zip(b["episode_index"].tolist(), b["step_index"].tolist()))
        per_host.append(frames)
    assert not per_host[0] & per_host[1]
    assert len(per_host[0] | per_host[1]) == sum(LIBERO_LENGTHS)


def test_mixture_follows_weights(mixture):
    cfg = dataclasses.replace(mixture, batch_size=16)
    counts = np.zeros(4)
    for b in take(pipeline.make_train_iterator(cfg, seed=0), 5):
        counts += np.bincount(b["dataset_index"], minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), [0.4, 0.2, 0.2, 0.2], atol=0.08)


def test_balanced_weights_scale_with_transitions(mixture):
    _, summaries = pipeline.load_summaries(mixture, progress=False)
    n = np.array([s.num_transitions for s in summaries], float)
    np.testing.assert_array_equal(n, [18, 6, 12, 25])
    w = pipeline.mixture_weights(dataclasses.replace(mixture, balance_weights=True), summaries)
    np.testing.assert_allclose(w, np.array([2, 1, 1, 1]) * n / (np.array([2, 1, 1, 1]) * n).sum())


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_from_checkpointed_state_with_workers(mixture, workers):
    cfg = dataclasses.replace(mixture, num_workers=workers)
    n = 3
    it = pipeline.make_train_iterator(cfg, seed=11)
    try:
        reference = take(it, n + 2)
    finally:
        it.close()
    it = pipeline.make_train_iterator(cfg, seed=11)
    try:
        take(it, n)
        state = it.get_state()
    finally:
        it.close()
    restored = pipeline.make_train_iterator(cfg, seed=11)
    try:
        restored.set_state(state)
        assert_batches_equal(next(restored), reference[n])
        assert_batches_equal(next(restored), reference[n + 1])
    finally:
        restored.close()
    # The worker count does not change the data either.
    plain = take(pipeline.make_train_iterator(dataclasses.replace(mixture, num_workers=0), 11), 1)
    assert_batches_equal(plain[0], reference[0])


def test_bad_config_errors(libero_dir, tokenizer_path):
    with pytest.raises(ValueError, match="unknown source"):
        DatasetConfig("x", "droid", libero_dir)
    with pytest.raises(ValueError, match="unique"):
        small_config([DatasetConfig("a", "libero", libero_dir)] * 2, tokenizer_path)
    with pytest.raises(ValueError, match="unknown DataConfig fields"):
        DataConfig.from_mapping({"datasets": [], "tokenizer_path": tokenizer_path, "bach": 1})
    cfg = DataConfig.from_mapping(
        {
            "datasets": [{"name": "a", "source": "libero", "path": libero_dir}],
            "tokenizer_path": tokenizer_path,
            "history_offsets": [-2, 0],
        }
    )
    assert cfg.observation.frame_offsets == (-2, 0, 3)
    given = {"datasets": [{"name": "a", "source": "libero", "path": libero_dir}]}
    given["tokenizer_path"] = tokenizer_path
    as_one = DataConfig.from_mapping({**given, "observation": {"history_offsets": [-2, 0]}})
    assert as_one == cfg
    with pytest.raises(ValueError, match="side by side"):
        DataConfig.from_mapping({**given, "observation": cfg.observation, "max_token_len": 8})
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_train_iterator(
            small_config([DatasetConfig("a", "libero", libero_dir)], tokenizer_path), 0, 0, 3
        )


def test_orbax_round_trip_of_iterator_state(mixture, tmp_path):
    """The iterator state saved by Orbax next to a model checkpoint restores the next batch."""
    import grain
    import orbax.checkpoint as ocp

    reference = take(pipeline.make_train_iterator(mixture, seed=5), 3)
    it = pipeline.make_train_iterator(mixture, seed=5)
    take(it, 2)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mgr:
        mgr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mgr.wait_until_finished()
    restored = pipeline.make_train_iterator(mixture, seed=5)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mgr:
        mgr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    assert_batches_equal(next(restored), reference[2])


def test_array_record_copy_feeds_the_pipeline(
    libero_dir, libero_array_record_dir, tokenizer_path, tmp_path
):
    def batches(path):
        cfg = small_config(
            [DatasetConfig("libero", "libero", path)],
            tokenizer_path,
            stats_dir=str(tmp_path / path.replace("/", "_")),
        )
        return take(pipeline.make_train_iterator(cfg, seed=1), 2)

    for a, b in zip(batches(libero_dir), batches(libero_array_record_dir)):
        assert_batches_equal(a, b)


def test_eval_mode_is_seed_independent(libero_dir, tokenizer_path, tmp_path):
    cfg = pipeline.eval_config(
        small_config(
            [DatasetConfig("libero", "libero", libero_dir)], tokenizer_path, stats_dir=str(tmp_path)
        )
    )
    a = list(pipeline.make_train_iterator(cfg, seed=0))
    b = list(pipeline.make_train_iterator(cfg, seed=99))
    assert len(a) == len(b) == -(-sum(LIBERO_LENGTHS) // cfg.batch_size)
    for x, y in zip(a, b):
        assert_batches_equal(x, y)


def _gradient_episode(length: int):
    import io

    from PIL import Image

    from data_pipelines import schema

    y, x = np.mgrid[0:16, 0:16]
    img = np.stack([x * 16, y * 16, (x + y) * 8], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")  # lossless: frames compare exactly
    frames = np.empty(length, object)
    frames[:] = [buf.getvalue()] * length
    return schema.StdEpisode(
        "g",
        0,
        {"primary": frames},
        np.zeros((length, 8), np.float32),
        np.zeros((length, 7), np.float32),
        "pick up the black bowl",
        (0, length),
    )


def test_one_crop_shared_by_all_generation_frames(libero_dir, tokenizer_path, tmp_path):
    from data_pipelines.sample import SampleBuilder

    cfg = small_config(
        [DatasetConfig("libero", "libero", libero_dir)],
        tokenizer_path,
        stats_dir=str(tmp_path),
        gen_resize=24,
        gen_crop=16,
    )
    readers, summaries = pipeline.load_summaries(cfg, progress=False)
    builder = SampleBuilder(cfg, readers, summaries)
    builder.episode = lambda d, record: _gradient_episode(12)
    crops = set()
    for seed in range(6):
        ex = builder(np.array([0, 0, 5]), np.random.default_rng(seed))
        frames = ex["gen_frames"]
        for k in range(1, len(frames)):
            np.testing.assert_array_equal(frames[k], frames[0])  # same frame, same crop
        crops.add(frames[0].tobytes())
    assert len(crops) > 1  # the crop is random across samples
    centred = SampleBuilder(dataclasses.replace(cfg, train=False), readers, summaries)
    centred.episode = builder.episode
    a = centred(np.array([0, 0, 5]), np.random.default_rng(0))
    b = centred(np.array([0, 0, 5]), np.random.default_rng(1))
    assert_batches_equal(a, b)  # eval: centred crop, no augmentation


def test_narrow_state_and_action_widths(libero_dir, tokenizer_path, tmp_path):
    """A model with 8-dim states and 7-dim actions gets batches padded to exactly those widths."""
    common = dict(stats_dir=str(tmp_path), train=False, shuffle=False, batch_size=2, chunk_size=4)
    wide = next(
        pipeline.make_train_iterator(
            small_config([DatasetConfig("libero", "libero", libero_dir)], tokenizer_path, **common),
            seed=0,
        )
    )
    narrow_cfg = small_config(
        [DatasetConfig("libero", "libero", libero_dir)],
        tokenizer_path,
        state_dim=8,
        action_dim=7,
        **common,
    )
    narrow = next(pipeline.make_train_iterator(narrow_cfg, seed=0))
    assert narrow["state"].shape == (2, 8) and narrow["actions"].shape == (2, 4, 7)
    assert narrow["action_mask"].all()
    np.testing.assert_array_equal(narrow["state"], wide["state"][:, :8])
    np.testing.assert_array_equal(narrow["actions"], wide["actions"][..., :7])
    with pytest.raises(ValueError, match="action_dim must be in"):
        small_config([DatasetConfig("a", "libero", libero_dir)], tokenizer_path, action_dim=33)
    too_narrow = small_config(
        [DatasetConfig("libero", "libero", libero_dir)], tokenizer_path, action_dim=6, **common
    )
    with pytest.raises(Exception, match="cannot pad last dim 7 down to 6"):
        next(pipeline.make_train_iterator(too_narrow, seed=0))
