"""Generates the built-in simulated dataset: scripted-expert episodes written as a LIBERO-schema
RLDS/TFDS dataset (read back by the `libero` source like the released LIBERO data).

    python -m builtin_task.writer --data_dir ~/f1_data --episodes 200 --seed 0

Episode i uses env seed `seed * TRAIN_SEED_STRIDE + i` and task TASK_NAMES[i % 3] (balanced);
evaluation seeds (env.EVAL_SEED_BASE and up) never collide with them for seed < 1000.
Per step: observation/{image, wrist_image} uint8 [S, S, 3] (JPEG), observation/state f32[8],
observation/joint_state f32[7] (all zeros: the simulated arm has no joints), action f32[7],
language_instruction, reward (1 on the final, successful step), discount 1, is_first, is_last,
is_terminal (= last step, every expert episode ends in success). The final observation after
the last action is not stored (RLDS pairs o_t with a_t, as LIBERO does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from builtin_task import env as sim_env
from builtin_task.expert import expert_policy, rollout
from builtin_task.tasks import TASK_NAMES
from data_pipelines.sources import libero

TRAIN_SEED_STRIDE = 1_000_000
VERSION = "1.0.0"
GENERATOR_VERSION = "f1-sim-v1"  # bump when the env, tasks or expert change
_META_FILE = "f1_sim_generation.json"


def episode_seeds(seed: int, num_episodes: int) -> list[int]:
    """Env seeds of the episodes of a dataset generated with `seed`."""
    if not 0 <= num_episodes <= TRAIN_SEED_STRIDE:
        raise ValueError(f"num_episodes must be in [0, {TRAIN_SEED_STRIDE}]")
    return [seed * TRAIN_SEED_STRIDE + i for i in range(num_episodes)]


def episode_task(index: int) -> str:
    """Task of the index-th episode (cycles so every prefix is balanced)."""
    return TASK_NAMES[index % len(TASK_NAMES)]


def expert_episode(env: sim_env.SimEnv, seed: int, task: str) -> dict[str, Any]:
    """One expert episode as an RLDS episode dict (steps per libero.feature_spec)."""
    observations, actions, success = rollout(env, expert_policy(env), seed, task)
    if not success:  # the expert is tested to solve every layout; never store failures
        raise RuntimeError(f"scripted expert failed on seed {seed} task {task}")
    n = len(actions)
    steps = []
    for t, (obs, action) in enumerate(zip(observations, actions)):
        last = t == n - 1
        steps.append(
            {
                "observation": {
                    "image": obs["image"],
                    "wrist_image": obs["wrist_image"],
                    "state": obs["state"],
                    "joint_state": np.zeros(7, np.float32),
                },
                "action": action,
                "discount": 1.0,
                "reward": float(last),
                "is_first": t == 0,
                "is_last": last,
                "is_terminal": last,
                "language_instruction": obs["instruction"],
            }
        )
    return {"steps": steps, "episode_metadata": {"file_path": f"f1_sim/{task}/seed_{seed}"}}


def _generation_meta(num_episodes: int, seed: int, image_size: int) -> dict[str, Any]:
    return {
        "generator": GENERATOR_VERSION,
        "num_episodes": num_episodes,
        "seed": seed,
        "image_size": image_size,
    }


def _complete(dataset_dir: str, meta: dict[str, Any]) -> bool:
    """Whether dataset_dir holds a finished dataset generated with exactly `meta`."""
    info_path = os.path.join(dataset_dir, "dataset_info.json")
    meta_path = os.path.join(dataset_dir, _META_FILE)
    if not (os.path.exists(info_path) and os.path.exists(meta_path)):
        return False
    with open(meta_path) as f:
        found = json.load(f)
    if found != meta:
        raise FileExistsError(
            f"{dataset_dir} holds a simulated dataset generated with {found}, not {meta}; "
            "choose another --data_dir or name, or delete it"
        )
    return True


def generate_dataset(
    data_dir: str,
    name: str = "f1_sim",
    num_episodes: int = 200,
    seed: int = 0,
    image_size: int = 256,
    progress: bool = True,
) -> str:
    """Writes `num_episodes` expert episodes under data_dir/name/1.0.0 and returns that dir.

    Skips generation when a complete dataset with the same settings is already there (a
    partial one left by an interrupted run is removed and regenerated).
    """
    dataset_dir = os.path.join(data_dir, name, VERSION)
    meta = _generation_meta(num_episodes, seed, image_size)
    if _complete(dataset_dir, meta):
        return dataset_dir
    if os.path.isdir(dataset_dir):
        shutil.rmtree(dataset_dir)  # no dataset_info/meta: an interrupted earlier run
    env = sim_env.SimEnv(image_size=image_size)
    seeds = episode_seeds(seed, num_episodes)

    def episodes() -> Iterator[dict[str, Any]]:
        bar = tqdm(total=num_episodes, desc=f"simulating {name}", unit="ep", disable=not progress)
        for i, s in enumerate(seeds):
            yield expert_episode(env, s, episode_task(i))
            bar.update(1)
        bar.close()

    out = libero.write_dataset(data_dir, name, episodes(), image_size=(image_size, image_size))
    with open(os.path.join(out, _META_FILE), "w") as f:  # written last: marks completion
        json.dump(meta, f)
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    p.add_argument("--name", default="f1_sim", help="dataset name (subdirectory)")
    p.add_argument("--episodes", type=int, default=200, help="number of expert episodes")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (selects env seeds)")
    p.add_argument("--image_size", type=int, default=256, help="square image side in pixels")
    args = p.parse_args(argv)
    out = generate_dataset(
        os.path.expanduser(args.data_dir), args.name, args.episodes, args.seed, args.image_size
    )
    print(out)
    return out


if __name__ == "__main__":
    main()
