"""Closed-loop evaluation of a checkpoint in the built-in simulator, against no-op and random.

    python -m builtin_task.evaluate --checkpoint WORKDIR[/checkpoints] --episodes 60 \
        [--output DIR] [--action_horizon K] [--seed S] [--step N] [--dataset NAME] [--use_ema]
        [--backend jax|torch] [--match_backends] [--image_size PX]

Every policy runs on the same held-out seeds (`builtin_task.eval_seeds`). Writes to the
output directory (default WORKDIR/evaluation): results.json (success rate per task and overall
with 95% Wilson intervals, per episode outcomes), strips/episode_XXX.png (a few frames, and the
predicted foresight beside the true frame it predicts) and rollouts.gif (the first rollouts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
import tqdm
from PIL import Image

from builtin_task import MAX_STEPS, SimEnv, eval_seeds, make_policy
from f1_common import transforms
from f1_common.success_rates import success_stats
from inference.interface import backends, load_policy


def summarize(outcomes: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """[(task, success)] -> {"overall": stats, "per_task": {task: stats}}; stats = successes,
    episodes, rate, ci95 [lo, hi] (`f1_common.success_rates.success_stats`)."""
    tasks = sorted({t for t, _ in outcomes})
    return {
        "overall": success_stats(s for _, s in outcomes),
        "per_task": {t: success_stats(s for u, s in outcomes if u == t) for t in tasks},
    }


def format_table(results: dict[str, dict], names: Sequence[str]) -> str:
    """Rows: tasks then overall; columns: policies; cells 'rate [lo, hi] k/n'."""
    tasks = sorted(set().union(*(results[n]["per_task"] for n in names)))
    cell = lambda s: (
        f"{100 * s['rate']:5.1f}% [{100 * s['ci95'][0]:4.1f}, "
        f"{100 * s['ci95'][1]:5.1f}] {s['successes']}/{s['episodes']}"
    )
    rows = [["task", *names]]
    for t in tasks:
        rows.append(
            [
                t,
                *(
                    cell(results[n]["per_task"][t]) if t in results[n]["per_task"] else "-"
                    for n in names
                ),
            ]
        )
    rows.append(["overall", *(cell(results[n]["overall"]) for n in names)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- pictures ----------------------------------------------------------------------------------


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    # Crisp pixels when enlarging small frames, smooth when shrinking large ones.
    resample = Image.NEAREST if image.shape[0] < size else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def episode_strip(
    frames: Sequence[np.ndarray],
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    tile: int,
    num_frames: int = 6,
    gap: int = 2,
) -> np.ndarray:
    """uint8 picture: row 1, `num_frames` evenly spaced frames of the episode; row 2, pairs
    (predicted foresight | true frame it predicts), white gaps between tiles."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(num_frames, len(frames))).astype(int))
    top = [_tile(frames[i], tile) for i in picks]
    bottom = []
    for predicted, true in pairs[: max(1, num_frames // 2)]:
        bottom += [_tile(predicted, tile), _tile(true, tile)]
    columns = max(len(top), len(bottom))
    out = np.full((2 * tile + gap, columns * (tile + gap) - gap, 3), 255, np.uint8)
    for row, tiles in enumerate((top, bottom)):
        for c, t in enumerate(tiles):
            y, x = row * (tile + gap), c * (tile + gap)
            out[y : y + tile, x : x + tile] = t
    return out


def save_png(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)


def save_gif(path: str, frames: Sequence[np.ndarray], duration_ms: int = 120) -> None:
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)


# --- rollouts ----------------------------------------------------------------------------------


def baseline_episode(env, act: Callable[[dict], np.ndarray], seed: int) -> tuple[str, bool, int]:
    """One episode of a baseline; returns (task, success, steps)."""
    obs = env.reset(seed)
    done, info = False, {"success": False, "steps": 0}
    while not done:
        obs, _, done, info = env.step(act(obs))
    return env.goal.task, bool(info["success"]), int(info["steps"])


Actor = Callable[[dict, int, int], dict]  # (observation, episode seed, step) -> policy output


def make_actor(policy, seed: int, shared_noise: bool) -> Actor:
    """How one inference is drawn: the seed path (seed, episode seed, step), which the JAX
    backend folds into a key and the PyTorch backend draws through NumPy's SeedSequence.
    shared_noise: the starting noise of the denoising comes from NumPy, seeded the same way, for
    every backend (with greedy foresight, the two runtimes then compute the same function and
    must reach the same outcomes).
    """
    chunk, width = policy.spec.chunk_size, policy.spec.action_dim

    def act(obs: dict, episode: int, step: int) -> dict:
        noise = None
        if shared_noise:
            rng = np.random.default_rng([seed, episode, step])
            noise = rng.standard_normal((chunk, width)).astype(np.float32)
        return policy.infer(obs, seed=(seed, episode, step), noise=noise, return_foresight=True)

    return act


def policy_episode(
    env, policy, act: Actor, seed: int, action_horizon: int | None, record: bool
) -> dict[str, Any]:
    """One closed-loop episode: infer a chunk, execute its first `action_horizon` actions (every
    executed step's frame still enters the policy's history), repeat until done.

    Returns task, success, steps and, if record: frames (primary camera after 0..steps steps),
    foresights [(step inferred at, predicted frame)] and pairs [(predicted, true frame)].
    """
    spec = policy.spec
    obs = env.reset(seed)
    policy.reset()
    frames, foresights = [obs["image"]], []
    done, info, step = False, {"success": False, "steps": 0}, 0
    while not done:
        out = act(obs, seed, step)
        if record:
            foresights.append((step, out["foresight_image"]))
        actions = out["actions"][:action_horizon] if action_horizon else out["actions"]
        for k, action in enumerate(actions):
            obs, _, done, info = env.step(action)
            step += 1
            if record:
                frames.append(obs["image"])
            if done:
                break
            if k < len(actions) - 1:
                policy.observe(obs)  # the next infer() pushes its own frame
    result = {"task": env.goal.task, "success": bool(info["success"]), "steps": int(info["steps"])}
    if record:
        ahead = spec.target_offsets[0]
        # The foresight predicts the generation camera `ahead` steps later, centre-cropped like
        # training frames; compare with that crop (only where the episode lasted long enough).
        result["frames"] = frames
        result["foresights"] = foresights
        result["pairs"] = [
            (pred, transforms.generation_crop(frames[s + ahead], spec))
            for s, pred in foresights
            if s + ahead < len(frames)
        ]
    return result


def _sim_image_size(config) -> int | None:
    sim = config.get("sim") if config is not None else None
    if sim is not None and "image_size" in sim:
        return int(sim.image_size)
    return None


def _gif_frame(frame: np.ndarray, foresight: np.ndarray | None, tile: int) -> np.ndarray:
    """Current frame | latest foresight (black before the first one)."""
    right = np.zeros((tile, tile, 3), np.uint8) if foresight is None else _tile(foresight, tile)
    return np.concatenate([_tile(frame, tile), np.full((tile, 2, 3), 255, np.uint8), right], axis=1)


def run(
    checkpoint: str,
    episodes: int,
    output_dir: str,
    action_horizon: int | None = None,
    *,
    seed: int = 0,
    step: int | None = None,
    dataset: str | None = None,
    use_ema: bool = False,
    image_size: int | None = None,
    max_steps: int | None = None,
    gif_episodes: int = 3,
    progress: bool = True,
    backend: str = "jax",
    greedy_foresight: bool = False,
    shared_noise: bool = False,
) -> dict[str, Any]:
    """Evaluates `checkpoint` on `episodes` held-out seeds.

    checkpoint: backend "jax": a run (workdir or checkpoints/), an export or an import; "torch":
      an export (`python -m conversion export --run`), run by the PyTorch runtime.
    action_horizon: actions executed per inferred chunk (default: the whole chunk).
    image_size: simulator camera size; default the recorded `config.sim.image_size` of a run
      (the size of its training data); required for exports, which carry no recipe.
    greedy_foresight, shared_noise: the deterministic mode in which both backends compute the
      same function (see make_actor).
    Returns (and writes to output_dir/results.json) the summary with "policy", "noop", "random".
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    top_k = 1 if greedy_foresight else None
    run_options = {"step": step, "use_ema": use_ema or None}  # a run's options (JAX backend)
    if backend != "jax" and any(v is not None for v in run_options.values()):
        raise ValueError(
            f"step and use_ema select a run's checkpoint: the {backend} backend loads an export"
        )
    policy = load_policy(checkpoint, backend, dataset=dataset, top_k=top_k, **run_options)
    # A run records its recipe, and with it the simulator image size it was trained at.
    config = getattr(getattr(policy, "info", None), "config", None)
    chunk = policy.spec.chunk_size
    if action_horizon is not None and not 1 <= action_horizon <= chunk:
        raise ValueError(f"action_horizon must be in [1, {chunk}], got {action_horizon}")
    size = image_size or _sim_image_size(config)
    if size is None:
        raise ValueError(
            f"{checkpoint} records no simulator image size: pass image_size (--image_size), the "
            "size its training data was rendered at (the debug recipe's sim.image_size, 64)."
        )
    act = make_actor(policy, seed, shared_noise)
    env_kwargs = {"max_steps": max_steps or MAX_STEPS}
    if size:
        env_kwargs["image_size"] = size
    env = SimEnv(**env_kwargs)
    blind = SimEnv(render_images=False, max_steps=env_kwargs["max_steps"])  # baselines: no pixels
    seeds = eval_seeds(episodes)
    os.makedirs(output_dir, exist_ok=True)
    tile = max(policy.spec.gen_crop, 96)

    outcomes: dict[str, list[tuple[str, bool]]] = {"policy": [], "noop": [], "random": []}
    details, gif = [], []
    bar = tqdm.tqdm(
        seeds, desc="evaluate", unit="episode", disable=not progress, dynamic_ncols=True
    )
    for i, s in enumerate(bar):
        ep = policy_episode(env, policy, act, s, action_horizon, record=True)
        outcomes["policy"].append((ep["task"], ep["success"]))
        strip = episode_strip(ep["frames"], ep["pairs"], tile)
        save_png(os.path.join(output_dir, "strips", f"episode_{i:03d}.png"), strip)
        if i < gif_episodes:
            gif += episode_gif_frames(ep, tile)
        baseline = {}
        for name in ("noop", "random"):
            task, success, _ = baseline_episode(blind, make_policy(name, blind, seed=s), s)
            outcomes[name].append((task, success))
            baseline[name] = success
        details.append(
            {
                "seed": s,
                "task": ep["task"],
                "success": ep["success"],
                "steps": ep["steps"],
                **{f"{k}_success": v for k, v in baseline.items()},
            }
        )
        done = outcomes["policy"]
        bar.set_postfix(success=f"{sum(x for _, x in done)}/{len(done)}", refresh=False)
    bar.close()
    if gif:
        save_gif(os.path.join(output_dir, "rollouts.gif"), gif)

    results: dict[str, Any] = {name: summarize(o) for name, o in outcomes.items()}
    results["meta"] = {
        "checkpoint": str(checkpoint),
        "backend": backend,
        "step": policy.metadata["source"].get("step"),
        "dataset": policy.metadata["dataset"],
        "use_ema": use_ema,
        "greedy_foresight": greedy_foresight,
        "shared_noise": shared_noise,
        "episodes": episodes,
        "seeds": [int(s) for s in seeds],
        "action_horizon": action_horizon or chunk,
        "chunk_size": chunk,
        "image_size": env.image_size,
        "max_steps": env_kwargs["max_steps"],
        "seed": seed,
    }
    results["episodes"] = details
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results, ("policy", "noop", "random")))
    print(f"Wrote {os.path.join(output_dir, 'results.json')}")
    return results


def episode_gif_frames(ep: dict[str, Any], tile: int) -> list[np.ndarray]:
    """GIF frames of one recorded episode: each frame beside the latest predicted foresight."""
    out, latest, pending = [], None, list(ep["foresights"])
    for j, frame in enumerate(ep["frames"]):
        while pending and pending[0][0] <= j:
            latest = pending.pop(0)[1]
        out.append(_gif_frame(frame, latest, tile))
    return out


def default_output(checkpoint: str) -> str:
    """WORKDIR/evaluation for WORKDIR or WORKDIR/checkpoints."""
    path = os.path.abspath(checkpoint).rstrip(os.sep)
    if os.path.basename(path) == "checkpoints":
        path = os.path.dirname(path)
    return os.path.join(path, "evaluation")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m builtin_task.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run (workdir or checkpoints/), an export or an import (torch backend: an export)",
    )
    parser.add_argument("--backend", choices=backends(), default="jax")
    parser.add_argument(
        "--match_backends",
        action="store_true",
        help="greedy foresight and NumPy starting noise: both backends compute the same policy",
    )
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--output", default=None, help="default: WORKDIR/evaluation")
    parser.add_argument(
        "--action_horizon",
        type=int,
        default=None,
        help="actions executed per chunk (default: the whole chunk)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the policy")
    parser.add_argument("--step", type=int, default=None, help="default: latest checkpoint")
    parser.add_argument("--dataset", default=None, help="statistics to use (default: first)")
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument(
        "--image_size", type=int, default=None, help="simulator size (default: the run's)"
    )
    parser.add_argument("--gif_episodes", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        run(
            args.checkpoint,
            args.episodes,
            args.output or default_output(args.checkpoint),
            args.action_horizon,
            seed=args.seed,
            step=args.step,
            dataset=args.dataset,
            use_ema=args.use_ema,
            image_size=args.image_size,
            gif_episodes=args.gif_episodes,
            backend=args.backend,
            greedy_foresight=args.match_backends,
            shared_noise=args.match_backends,
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # no KeyError quotes
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
