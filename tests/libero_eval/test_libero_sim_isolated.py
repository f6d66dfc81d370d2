"""The real-simulator tests (test_libero_sim.py) in an interpreter of their own: MuJoCo's EGL
context segfaulted when it was created in a test worker that had already run many other tests."""

import os
import pathlib
import subprocess
import sys

from tests.libero_eval.libero_setup import requires_libero

ROOT = pathlib.Path(__file__).resolve().parents[2]


@requires_libero
def test_the_simulator_tests_pass_in_their_own_process():
    env = {**os.environ, "F1_LIBERO_SIM_PROCESS": "1"}
    env.pop("XLA_FLAGS", None)  # its conftest sets them again
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/libero_eval/test_libero_sim.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout, result.stdout[-3000:]
