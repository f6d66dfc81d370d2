"""`python -m f1_jax.launch --config=NAME_OR_PATH --workdir=DIR [--config.FIELD=VALUE ...]`

NAME is a recipe in configs/ (stage1, stage2, stage3_libero, stage3_bridge, debug) or a path to a
Python file defining `get_config()`. Overrides walk the config by dotted path; an unknown field is
an error that lists the valid names. Run the same command on every host of a pod: JAX's
distributed runtime is initialised when the environment says there are several processes.
"""

import ast
import importlib
import importlib.util
import logging
import os
import sys
from typing import Sequence

import ml_collections

CONFIG_PREFIX = "--config."
RECIPES = ("debug", "stage1", "stage2", "stage3_libero", "stage3_bridge")


class ConfigError(ValueError):
    """A bad --config name, path or override."""


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """The recipe `configs/<name>.py` or the file at `name_or_path`, as a ConfigDict."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"Config file {name_or_path!r} does not exist.")
        spec = importlib.util.spec_from_file_location("f1_user_config", name_or_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"configs.{name_or_path}")
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"Unknown config {name_or_path!r}; recipes: {list(RECIPES)}, "
                "or give a path to a .py file with get_config()."
            ) from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{name_or_path!r} defines no get_config().")
    return module.get_config()


def _parse_value(text: str, current):
    """Parses an override with the type of the field it replaces."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"Expected a boolean, got {text!r}.")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"Cannot parse {text!r} as a {type(current).__name__}.") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and not isinstance(value, type(current)):
        if not (isinstance(current, (list, tuple)) and isinstance(value, (list, tuple))):
            raise ConfigError(f"Expected type {type(current).__name__}, got {text!r}.")
    return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets `config.<dotted>` from the command-line text `text`."""
    node, parts = config, dotted.split(".")
    for depth, key in enumerate(parts):
        here = ".".join(parts[:depth]) or "config"
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or key not in node:
            valid = (
                sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
            )
            raise ConfigError(
                f"Unknown config field {dotted!r}: {here} has no {key!r}. "
                f"Valid fields of {here}: {valid}"
            )
        if depth == len(parts) - 1:
            try:
                node[key] = _parse_value(text, node[key])
            except ConfigError as e:
                raise ConfigError(f"--config.{dotted}: {e}") from None
        else:
            node = node[key]


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=v` overrides from the other arguments."""
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith(CONFIG_PREFIX):
            if "=" not in arg:
                raise ConfigError(f"Override {arg!r} needs a value: {arg}=VALUE.")
            key, value = arg[len(CONFIG_PREFIX) :].split("=", 1)
            overrides.append((key, value))
        else:
            rest.append(arg)
    return rest, overrides


def _flag(rest: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(rest):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(rest):
            return rest[i + 1]
    return None


def maybe_initialize_distributed() -> None:
    """Initialises JAX's multi-process runtime when the environment describes several processes.

    Cloud TPU VMs (several workers), SLURM jobs with several tasks, or an explicit coordinator
    (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID) all qualify.
    """
    import jax

    tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    several = (
        ("," in tpu_workers)
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "JAX_COORDINATOR_ADDRESS" in os.environ
    )
    if several:
        jax.distributed.initialize()


def main(argv: Sequence[str]) -> int:
    rest, overrides = split_overrides(argv[1:])
    unknown = [
        a for a in rest if a.startswith("--") and a.split("=")[0] not in ("--config", "--workdir")
    ]
    name, workdir = _flag(rest, "config"), _flag(rest, "workdir")
    if unknown or not name or not workdir:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        if unknown:
            print(f"Unknown arguments: {unknown}", file=sys.stderr)
        return 2
    try:
        config = load_config(name)
        for key, value in overrides:
            apply_override(config, key, value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    maybe_initialize_distributed()
    import jax

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if jax.process_index() == 0:  # our progress; Orbax and TFDS stay at warnings
        logging.getLogger("f1_jax").setLevel(logging.INFO)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from f1_jax.training import trainer

    if config.sim.enabled:
        from f1_jax import builtin_task

        builtin_task.prepare(config, workdir)
    metrics = trainer.train(config, workdir)
    if config.sim.enabled and config.sim.evaluate_episodes and jax.process_index() == 0:
        from f1_jax import evaluate

        evaluate.run(
            os.path.join(workdir, "checkpoints"),
            config.sim.evaluate_episodes,
            os.path.join(workdir, "evaluation"),
        )
    logging.getLogger("f1_jax").info("Done: %s", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
