"""One policy from a run, its export and the import of that export: the same actions in robot
units; the frame-code cache changes nothing but the work done."""

import shutil

import numpy as np
import pytest

from builtin_task import SimEnv
from conversion.cli import main as conversion_main
from inference.jax_policy import Policy, checkpoint_kind


@pytest.fixture(scope="module")
def exported(sim_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_sources")
    export, imported = root / "export", root / "import"
    args = ["--no-progress"]
    assert (
        conversion_main(["export", "--run", sim_run["workdir"], "--output", str(export), *args])
        == 0
    )
    assert (
        conversion_main(["import", "f1", "--input", str(export), "--output", str(imported), *args])
        == 0
    )
    return {"export": str(export), "import": str(imported)}


def _rollout(policy, steps: int = 6, seed: int = 3) -> list[dict]:
    """Closed loop in the built-in simulator: infer every step, execute the first action."""
    env = SimEnv(image_size=32)
    obs = env.reset(seed)
    policy.reset()
    outputs = []
    for t in range(steps):
        out = policy.infer(obs, seed=t, return_foresight=True)
        outputs.append(out)
        obs, _, done, _ = env.step(out["actions"][0])
        if done:
            break
    return outputs


def test_run_export_and_import_give_the_same_robot_actions(sim_run, exported):
    assert checkpoint_kind(sim_run["workdir"]) == "run"
    assert checkpoint_kind(exported["export"]) == "export"
    assert checkpoint_kind(exported["import"]) == "import"
    run = _rollout(Policy.load(sim_run["workdir"]))
    for kind in ("export", "import"):
        policy = Policy.load(exported[kind])
        assert (
            policy.info.kind == kind
            and policy.info.dataset_stats
            == Policy.load(sim_run["workdir"]).info.dataset_stats
        )
        other = _rollout(policy)
        assert len(other) == len(run)
        for a, b in zip(run, other):  # fp32 weights: the same program on the same values
            np.testing.assert_allclose(b["actions"], a["actions"], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(b["foresight_tokens"], a["foresight_tokens"])


def test_frame_code_cache_is_bit_identical_and_encodes_each_frame_once(sim_run):
    cached = Policy.load(sim_run["workdir"])
    plain = cached.fork()
    plain.frame_cache.enabled = False
    with_cache, without = _rollout(cached), _rollout(plain)
    for a, b in zip(with_cache, without):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        np.testing.assert_array_equal(a["foresight_tokens"], b["foresight_tokens"])
        np.testing.assert_array_equal(a["foresight_image"], b["foresight_image"])
    steps = len(with_cache)
    assert cached.encoded_frames == steps  # one new frame per step
    assert plain.encoded_frames == 4 * steps  # the 4 history frames every step
    cached.reset()
    assert len(cached.frame_cache) == 0


def test_forks_keep_their_own_episodes(sim_run):
    policy = Policy.load(sim_run["workdir"])
    other = policy.fork()
    env = SimEnv(image_size=32)
    policy.reset()
    policy.infer(env.reset(1), seed=0)
    assert policy.history.count == 1 and other.history.count == 0
    assert other.params is policy.params and other._infer_fn is policy._infer_fn


def test_import_without_statistics_is_refused_by_name(tmp_path, exported):
    bare = tmp_path / "bare"
    shutil.copytree(exported["import"], bare)
    (bare / "norm_stats.json").unlink()
    with pytest.raises(FileNotFoundError, match="norm_stats.json"):
        Policy.load(str(bare))
    policy = Policy.load(str(bare), statistics=exported["export"])
    assert policy.info.kind == "import"
    with pytest.raises(ValueError, match="step and use_ema"):
        Policy.load(exported["export"], step=3)
