"""Recipes by name and the `--config` flag that the entry points share (`f1_jax.launch`,
`f1_jax.aot`): `--config=NAME` is `configs/NAME.py`, a path to a file with `get_config()`, or
`FILE.py:ARG`; `--config.FIELD=VALUE` overrides a field, and an unknown field stops with the
valid names at its level (exit status 2).
"""

import importlib.util
import os
import sys
from typing import Sequence

import ml_collections
from absl import app
from ml_collections import config_flags

RECIPES = ("debug", "stage1", "stage2", "stage3_libero", "stage3_bridge", "finetune")


def define_config_flag():
    """The `--config` flag (recipe name or file, with `--config.FIELD=VALUE` overrides)."""
    return config_flags.DEFINE_config_file(
        "config",
        None,
        f"Recipe name ({', '.join(RECIPES)}) or path to a .py file with get_config(); "
        "FILE.py:ARG passes ARG to get_config.",
        lock_config=False,
    )


class ConfigError(ValueError):
    """A bad --config name, path or override."""


def recipe_path(name_or_path: str) -> str:
    """`configs/<name>.py` for a recipe name, else the path itself (with its `:ARG` suffix)."""
    path, sep, arg = name_or_path.partition(":")
    if path.endswith(".py") or os.sep in path:
        if not os.path.isfile(path):
            raise ConfigError(f"Config file {path!r} does not exist.")
        return name_or_path
    spec = importlib.util.find_spec(f"configs.{path}") if path.isidentifier() else None
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"Unknown config {path!r}; recipes: {list(RECIPES)}, "
            "or give a path to a .py file with get_config()."
        )
    return spec.origin + sep + arg


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """The recipe or file's `get_config()` (with its `:ARG`), as config_flags would load it."""
    path, _, arg = recipe_path(name_or_path).partition(":")
    spec = importlib.util.spec_from_file_location("f1_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(
            f"{name_or_path!r} defines no get_config(), so it is not a recipe; "
            f"recipes: {list(RECIPES)}."
        )
    return module.get_config(arg) if arg else module.get_config()


def check_field(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ConfigError naming the valid fields if `config.<dotted>` does not exist."""
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
        node = node[key]


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def resolve_argv(argv: Sequence[str]) -> list[str]:
    """Rewrites `--config=NAME` to the recipe's file, loads it once and checks every
    `--config.FIELD=` override against it, so a typo or a module that is not a recipe stops with
    the valid names instead of a traceback."""
    name = _flag_value(argv, "config")
    if name is None:
        return list(argv)
    resolved = recipe_path(name)
    out = []
    for arg in argv:
        if arg == f"--config={name}":
            arg = f"--config={resolved}"
        elif arg == name and out and out[-1] == "--config":
            arg = resolved
        out.append(arg)
    config = load_config(name)
    for arg in argv:
        if arg.startswith("--config."):
            check_field(config, arg[len("--config.") :].split("=", 1)[0])
    return out


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing with recipe names and readable errors (exit status 2)."""
    try:
        argv = resolve_argv(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)
