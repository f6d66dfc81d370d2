"""The configs a run directory has run under, and the check that a resume does not change it.

Every start or resume writes its config to `configs/config_<step>.json` (and `config.json`, the
latest). Resuming under a config that differs in anything but run length, logging, evaluation,
checkpoint cadence, the mesh or data-loader throughput stops with the differing fields, unless
the caller allows it explicitly. The run length (`train.steps`) is also the length of a decaying
learning-rate schedule (cosine): it may change only under the constant schedule.
"""

import json
from typing import Any, Mapping

from etils import epath

# Fields a resume may change: they do not change what is trained or on what.
RESUMABLE_PREFIXES = (
    "train.log_every",
    "train.check_every_step",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.keep_period",
    "train.async_checkpoints",
    "eval_data",
    "mesh",
    "sharding_rules",
    "init",  # read only when a run starts
    "model.unroll_layers",  # the same program, unrolled
    "model.reuse_prefix",  # the same loss and gradients (tested), computed once
    "model.encode_frames_by_step",  # the same codes (tested), in less memory
    "data.num_workers",
    "data.read_threads",
    "data.prefetch_buffer_size",
    "data.stats_dir",
    "sim.evaluate_episodes",
)


# Changing it moves every later step's learning rate, unless the schedule is constant.
RUN_LENGTH = "train.steps"
_WHY = {RUN_LENGTH: "the length of the {schedule} learning-rate schedule: every later step's rate"}


def _schedule_independent_of_length(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("optimizer.schedule") == b.get("optimizer.schedule") == "constant"


class ConfigChangedError(ValueError):
    """A run was resumed under a config that changes what it trains."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": value} of a nested dict (lists of dicts are indexed: "data.datasets.0.path")."""
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, Mapping) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two configs, resumable ones excluded."""
    a, b = flatten(old), flatten(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    changed = [k for k in changed if not any(k.startswith(p) for p in RESUMABLE_PREFIXES)]
    if RUN_LENGTH in changed and _schedule_independent_of_length(a, b):
        changed.remove(RUN_LENGTH)
    return changed


def check_resume(previous_json: str, current_json: str, allow_changes: bool) -> list[str]:
    """Raises ConfigChangedError listing the changed fields unless `allow_changes`; returns them."""
    old, new = json.loads(previous_json), json.loads(current_json)
    changed = changed_fields(old, new)
    if changed and not allow_changes:
        a, b = flatten(old), flatten(new)
        lines = []
        for k in changed:
            why = _WHY.get(k, "").format(schedule=b.get("optimizer.schedule", "?"))
            lines.append(
                f"  {k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
                + (f" ({why} changes)" if why else "")
            )
        raise ConfigChangedError(
            "This run directory was trained under another config; resuming would change:\n"
            + "\n".join(lines)
            + "\nUse a new --workdir, or pass --allow_config_change to resume anyway."
        )
    return changed


def record_config(config_dir: epath.Path, latest: epath.Path, step: int, config_json: str) -> None:
    """Writes the config a run (re)starts with: `configs/config_<step>.json` and `config.json`."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"config_{step:08d}.json").write_text(config_json)
    latest.write_text(config_json)
