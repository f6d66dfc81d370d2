"""Closed-loop evaluation writes results with baselines, picture strips and a GIF."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from builtin_task import eval_seeds, evaluate, task_for_seed
from conversion.cli import main as conversion_main
from f1_common.success_rates import wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    summary = evaluate.summarize([("reach", True), ("push", False), ("reach", False)])
    assert summary["overall"]["successes"] == 1 and summary["per_task"]["reach"]["episodes"] == 2
    assert summary["overall"]["ci95"] == list(wilson_interval(1, 3))


def test_run_writes_results_strips_and_gif(sim_run, tmp_path):
    out = str(tmp_path / "evaluation")
    results = evaluate.run(
        os.path.join(sim_run["workdir"], "checkpoints"),
        2,
        out,
        action_horizon=2,
        max_steps=10,
        progress=False,
    )
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    for name in ("policy", "noop", "random"):
        overall = saved[name]["overall"]
        assert overall["episodes"] == 2 and 0 <= overall["rate"] <= 1
        assert 0 <= overall["ci95"][0] <= overall["rate"] <= overall["ci95"][1] <= 1
        # the same held-out seeds (tasks cycle with the seed) for every policy
        assert set(saved[name]["per_task"]) == {task_for_seed(s) for s in eval_seeds(2)}
    assert saved["noop"]["overall"]["successes"] == 0
    assert saved["meta"]["image_size"] == 32 and saved["meta"]["action_horizon"] == 2
    assert results["policy"] == saved["policy"]
    strips = sorted(os.listdir(os.path.join(out, "strips")))
    assert strips == ["episode_000.png", "episode_001.png"]
    strip = np.asarray(Image.open(os.path.join(out, "strips", strips[0])))
    assert strip.ndim == 3 and strip.shape[0] > 96
    with Image.open(os.path.join(out, "rollouts.gif")) as gif:
        assert gif.n_frames > 2


def test_the_export_gives_the_same_outcomes_in_jax_and_in_the_torch_runtime(sim_run, tmp_path):
    """The run exported, then evaluated closed loop by both runtimes on the same held-out seeds:
    with greedy foresight and the same starting noise they compute the same policy, so every
    episode ends the same way (same success, same length)."""
    pytest.importorskip("torch", reason="the torch runtime needs torch (the test extra)")
    export = str(tmp_path / "export")
    assert conversion_main(["export", "--run", sim_run["workdir"], "--output", export]) == 0
    results = {
        backend: evaluate.run(
            export,
            3,
            str(tmp_path / backend),
            max_steps=12,
            progress=False,
            backend=backend,
            greedy_foresight=True,
            shared_noise=True,
            image_size=32,
            gif_episodes=0,
        )
        for backend in ("jax", "torch")
    }
    jax_eps, torch_eps = results["jax"]["episodes"], results["torch"]["episodes"]
    assert [(e["seed"], e["success"], e["steps"]) for e in jax_eps] == [
        (e["seed"], e["success"], e["steps"]) for e in torch_eps
    ]
    assert results["jax"]["policy"] == results["torch"]["policy"]
    with pytest.raises(ValueError, match="image_size"):
        evaluate.run(export, 1, str(tmp_path / "x"), progress=False)
