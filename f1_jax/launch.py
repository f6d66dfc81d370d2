"""Trains F1: `python -m f1_jax.launch --config=RECIPE --workdir=DIR_OR_URI [overrides] [--dry_run]`.

RECIPE is a recipe name in configs/ (debug, stage1, stage2, stage3_libero, stage3_bridge) or a
path to a Python file defining `get_config()`; `--config=FILE.py:ARG` passes ARG to
`get_config(ARG)`. `--config.FIELD=VALUE` overrides a field by dotted path, with the field's
type (`(2,-1,1)` for tuples, `true`/`false` for booleans); an unknown field stops with the valid
names at that level. `--flagfile=FILE` reads flags from a file, `--help` lists them.
`--dry_run` prints the resolved config, mesh and paths and exits without training.

Run the same command on every host of a pod: JAX's distributed runtime is initialised when the
environment says there are several processes. A recipe may name `hooks`, a module whose
`before_training(config, workdir)` and `after_training(config, workdir, metrics)` run around
training on every host (the `debug` recipe's built-in task prepares its data that way).
"""

import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags
from absl import logging as absl_logging

from f1_jax import recipes
from f1_jax.training import checkpoints, run_config, setup, sharding, trainer

_CONFIG = recipes.define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory, local or a URI (gs://...); a run there is resumed."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the resolved config, mesh and paths, then exit without training."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a run even though the config changes what it trains (run length, logging, "
    "evaluation, checkpointing and the mesh may always change).",
)
flags.mark_flags_as_required(["config", "workdir"])

log = logging.getLogger("f1_jax")


def maybe_initialize_distributed() -> None:
    """Initialises JAX's multi-process runtime when the environment describes several processes.

    Cloud TPU VMs (several workers), SLURM jobs with several tasks, or an explicit coordinator
    (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID) all qualify.
    """
    tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    several = (
        ("," in tpu_workers)
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "JAX_COORDINATOR_ADDRESS" in os.environ
    )
    if several:
        jax.distributed.initialize()


def load_hooks(config: ml_collections.ConfigDict) -> Any:
    """The module named by `config.hooks` (empty: none)."""
    name = config.get("hooks", "")
    if not name:
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise recipes.ConfigError(
            f"config.hooks names {name!r}, which cannot be imported: {e}"
        ) from e


def _describe_init(params_path: str) -> str | None:
    """What `init.params_path` resolves to (a run's step or a parameter checkpoint), or why not."""
    if not params_path:
        return None
    try:
        kind, path, step = checkpoints.params_source(params_path)
    except (FileNotFoundError, ValueError) as e:
        return f"error: {e}"
    return f"run {path} step {step}" if kind == "run" else f"parameters {path}"


def _describe_data(config: ml_collections.ConfigDict) -> str:
    """Why the data section cannot be used ("error: ..."; `setup.check_data`), or "ok"."""
    if config.get("hooks", ""):  # the debug recipe prepares its data in before_training
        return f"prepared by {config.hooks}"
    problem = setup.check_data(config)
    return f"error: {problem}" if problem else "ok"


def dry_run_report(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """What a run with `config` in `workdir` would use: mesh, paths, datasets, starting weights."""
    devices = jax.devices()[: config.mesh.num_devices or None]
    shape = sharding.resolve_mesh_shape(config.mesh.shape, len(devices))
    run_dir = checkpoints.RunDir(workdir)
    datasets = [
        {"name": d["name"], "path": d["path"], "exists": checkpoints.exists(d["path"])}
        for d in config.data.datasets
    ]
    return {
        "workdir": str(run_dir.path),
        "resumes_from_step": run_dir.latest_step(),
        "paths": {name: str(p) for name, p in run_dir.files().items()},
        "mesh": dict(zip(sharding.MESH_AXES, shape)),
        "devices": f"{len(devices)} x {devices[0].platform}",
        "processes": jax.process_count(),
        "datasets": datasets,
        "init": {**dict(config.init), "resolved": _describe_init(config.init.params_path)},
        "data_check": _describe_data(config),
        "hooks": config.get("hooks", ""),
    }


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
    config, workdir = _CONFIG.value, _WORKDIR.value
    maybe_initialize_distributed()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if jax.process_index() == 0:  # our progress; Orbax and TFDS stay at warnings
        log.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        hooks = load_hooks(config)
    except recipes.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _DRY_RUN.value:
        print(config.to_json_best_effort(indent=2))
        print(json.dumps(dry_run_report(config, workdir), indent=2))
        return
    if hooks is not None:
        hooks.before_training(config, workdir)
    problem = setup.check_data(config)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        metrics = trainer.train(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except (run_config.ConfigChangedError, trainer.MissingInitError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if hooks is not None:
        hooks.after_training(config, workdir, metrics)
    log.info("Done: %s", metrics)


if __name__ == "__main__":
    app.run(main, flags_parser=recipes.parse_flags)
