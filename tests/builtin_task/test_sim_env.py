"""The built-in simulated task: determinism, physics, scripted expert and baselines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from builtin_task import world as W
from builtin_task.env import SimEnv, eval_seeds, task_for_seed
from builtin_task.expert import (
    expert_action,
    expert_policy,
    noop_policy,
    random_policy,
    rollout,
)
from builtin_task.tasks import TASK_NAMES, TEMPLATES

SEEDS_PER_TASK = 20


def _trajectory(seed: int, policy_seed: int, steps: int = 15) -> list[dict]:
    env = SimEnv(task="pick_place", max_steps=steps)
    obs, acts, _ = rollout(env, random_policy(policy_seed), seed)
    return [dict(o, action=a) for o, a in zip(obs, acts)]


def test_same_seed_gives_identical_observations_and_trajectories():
    a, b = _trajectory(7, 1), _trajectory(7, 1)
    assert len(a) == len(b) == 15
    for x, y in zip(a, b):
        assert x["image"].tobytes() == y["image"].tobytes()
        assert x["wrist_image"].tobytes() == y["wrist_image"].tobytes()
        assert x["state"].tobytes() == y["state"].tobytes()
        assert x["instruction"] == y["instruction"]
    env = SimEnv()
    first, again = env.reset(3), env.reset(3)  # reset of a used env reproduces the layout too
    assert first["image"].tobytes() == again["image"].tobytes()


def test_different_seeds_differ():
    env = SimEnv(task="push")
    images = {env.reset(s)["image"].tobytes() for s in range(5)}
    assert len(images) == 5
    assert _trajectory(7, 1)[-1]["state"].tobytes() != _trajectory(7, 2)[-1]["state"].tobytes()


def test_observation_and_action_spaces():
    env = SimEnv()
    obs = env.reset(0)
    assert obs["image"].shape == obs["wrist_image"].shape == (256, 256, 3)
    assert obs["image"].dtype == obs["wrist_image"].dtype == np.uint8
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["state"][2:6], 0.0)
    assert obs["state"][6] == -obs["state"][7] == np.float32(W.FINGER_OPEN)
    assert obs["instruction"] == env.instruction and isinstance(obs["instruction"], str)
    assert [task_for_seed(s) for s in eval_seeds(3, start=30)] == list(TASK_NAMES)
    with pytest.raises(ValueError):
        env.step(np.zeros(6, np.float32))
    _, reward, done, info = env.step(np.zeros(7, np.float32))
    assert (reward, done, info["success"]) == (0.0, False, False)


def _world(gripper, blocks, closed=False, held=-1) -> W.World:
    return W.World(
        gripper=np.array(gripper, float),
        closed=closed,
        held=held,
        blocks=np.array(blocks, float),
        block_colors=("red", "blue")[: len(blocks)],
        targets=np.array([[0.8, 0.8], [0.2, 0.8]]),
        target_colors=("green", "yellow"),
    )


def _act(dx, dy, grip):
    return np.array([dx, dy, 0, 0, 0, 0, grip], np.float32)


def test_physics_push_hover_grasp_release():
    # Closed empty gripper pushes a block it moves into, by exactly the penetration.
    w = W.step_world(_world([0.5, 0.5 - W.CONTACT], [[0.5, 0.5]], closed=True), _act(0, 1, 1))
    np.testing.assert_allclose(w.gripper, [0.5, 0.5 - W.CONTACT + W.MAX_STEP])
    np.testing.assert_allclose(w.blocks[0], [0.5, 0.5 + W.MAX_STEP])
    # Pushed blocks push the blocks in front of them.
    w = W.step_world(
        _world([0.5, 0.5 - W.CONTACT], [[0.5, 0.5], [0.5, 0.5 + 2 * W.BLOCK_HALF]], closed=True),
        _act(0, 1, 1),
    )
    np.testing.assert_allclose(w.blocks[1], [0.5, 0.5 + 2 * W.BLOCK_HALF + W.MAX_STEP])
    # Open gripper hovers over blocks; speed is clipped to MAX_STEP.
    w = W.step_world(_world([0.5, 0.45], [[0.5, 0.5]]), _act(0, 5, -1))
    np.testing.assert_allclose(w.gripper, [0.5, 0.45 + W.MAX_STEP])
    np.testing.assert_allclose(w.blocks[0], [0.5, 0.5])
    # Closing over a block grasps it; it is carried with its offset and released on opening.
    w = W.step_world(_world([0.5, 0.49], [[0.5, 0.5]]), _act(1, 0, 1))
    assert w.held == 0 and W.proprio_state(w)[6] == np.float32(W.FINGER_HOLD)
    np.testing.assert_allclose(w.blocks[0] - w.gripper, [0.0, 0.01], atol=1e-12)
    w = W.step_world(w, _act(1, 0, -1))
    assert w.held == -1 and not w.closed
    np.testing.assert_allclose(w.blocks[0], [0.5 + W.MAX_STEP, 0.5])
    # Nothing leaves the table.
    w = W.step_world(_world([0.99, 0.99], [[0.96, 0.5]]), _act(1, 1, -1))
    assert np.all(w.gripper <= 1 - W.GRIPPER_RADIUS)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_solves_every_task(task):
    env = SimEnv(task=task, render_images=False)
    for seed in range(SEEDS_PER_TASK):
        obs, actions, success = rollout(env, expert_policy(env), seed)
        assert success, (task, seed)
        assert len(actions) < env.max_steps
        assert obs[0]["instruction"].split()[0] == TEMPLATES[task].split()[0]
        # No no-op actions (LIBERO "no_noops" convention): every step moves or toggles the grip.
        grips = [np.sign(a[6]) for a in actions]
        for t, a in enumerate(actions):
            toggles = t > 0 and grips[t] != grips[t - 1]
            assert np.linalg.norm(a[:2]) > 1e-6 or toggles, (task, seed, t)
        assert all(np.all(np.abs(a) <= 1.0) for a in actions)


def test_expert_recovers_after_disturbance():
    env = SimEnv(task="push", render_images=False)
    env.reset(4)
    while not env.world.closed:  # approach, then push for two steps
        env.step(expert_action(env.world, env.goal))
    for _ in range(2):
        env.step(expert_action(env.world, env.goal))
    # Knock the gripper sideways mid-push: the expert must let go, re-approach and finish.
    env.world = dataclasses.replace(env.world, gripper=env.world.gripper + [0.05, 0.0])
    done, info, reopened = False, {}, False
    while not done:
        action = expert_action(env.world, env.goal)
        reopened |= bool(action[6] < 0)
        _, _, done, info = env.step(action)
    assert reopened and info["success"]


def test_baselines_rarely_succeed():
    env = SimEnv(render_images=False)
    seeds = range(30)
    noop = [rollout(env, noop_policy, s)[2] for s in seeds]
    rand = [rollout(env, random_policy(s), s)[2] for s in seeds]
    assert sum(noop) == 0
    assert sum(rand) <= 3
