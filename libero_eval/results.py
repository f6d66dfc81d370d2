"""results.json: every finished episode, the success per task and per suite with 95% Wilson
intervals, rewritten atomically after each episode so that a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from f1_common.success_rates import success_stats

RESULTS_FILE = "results.json"
# Settings that change what an episode is; a resumed run must agree on all of them.
PROTOCOL_KEYS = (
    "suite",
    "policy",
    "max_steps",
    "settle_steps",
    "replan_steps",
    "seed",
    "resolution",
    "binarize_gripper",
)


def summarize(episodes: list[Mapping[str, Any]], instructions: Mapping[int, str]) -> dict:
    """{"suite": stats, "per_task": {task id: stats + instruction}} over finished episodes."""
    per_task = {}
    for task in sorted({int(e["task"]) for e in episodes}):
        row = success_stats(e["success"] for e in episodes if int(e["task"]) == task)
        row["instruction"] = instructions.get(task, "")
        per_task[str(task)] = row
    return {"suite": success_stats(e["success"] for e in episodes), "per_task": per_task}


def load(output_dir: str, meta: Mapping[str, Any]) -> list[dict]:
    """The finished episodes of an earlier run in `output_dir` (none if there is no results
    file); ValueError when that run's protocol differs, naming the settings."""
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        previous = json.load(f)
    old = previous.get("meta", {})
    differ = [k for k in PROTOCOL_KEYS if old.get(k) != meta.get(k)]
    if differ:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path} holds a run with other settings ({details}); resume with the same settings "
            "or choose another --output"
        )
    return list(previous.get("episodes", []))


def write(
    output_dir: str,
    meta: Mapping[str, Any],
    episodes: list[Mapping[str, Any]],
    instructions: Mapping[int, str],
    planned: int,
) -> dict:
    """Writes results.json (temporary file + rename: a kill never leaves half a file)."""
    episodes = sorted(episodes, key=lambda e: (int(e["task"]), int(e["episode"])))
    results = {
        "meta": dict(meta),
        **summarize(episodes, instructions),
        "complete": len(episodes) >= planned,
        "episodes": episodes,
    }
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """Rows: tasks then the suite; 'rate [lo, hi] k/n' and the instruction."""

    def cell(s):
        lo, hi = s["ci95"]
        return f"{100 * s['rate']:5.1f}% [{100 * lo:5.1f}, {100 * hi:5.1f}] {s['successes']}/{s['episodes']}"

    lines = [f"{'task':>5}  {'success [95% CI]':<30}  instruction"]
    for task, s in results["per_task"].items():
        lines.append(f"{task:>5}  {cell(s):<30}  {s['instruction']}")
    lines.append(f"{'suite':>5}  {cell(results['suite']):<30}  {results['meta']['suite']}")
    return "\n".join(lines)
