"""A real two-process run on one machine (jax.distributed, two local CPU processes, gloo
collectives): SIGTERM to ONE process makes BOTH save the same step and exit cleanly, and the
restarted pair continues with the losses of an uninterrupted run."""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STEPS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pair(workdir: str, data: dict, init: str, preempt_rank1: int = 0) -> list[str]:
    """Runs both processes to the end; returns their outputs."""
    port = str(_free_port())
    env = dict(os.environ, F1_TEST_DATA=json.dumps(data), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env["F1_TEST_INIT"] = init
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=1"
    # The three pairs compile the same step: share one persistent compilation cache.
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "f1_jax_test_compile_cache"
    )
    script = os.path.join(HERE, "two_process_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(rank), port, workdir, str(STEPS), str(preempt)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, preempt in ((0, 0), (1, preempt_rank1))
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0 and "EXIT OK" in out, f"process {rank}:\n{out[-3000:]}"
    return outputs


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_sigterm_to_one_process_saves_the_same_step_on_both(tiny_data, tiny_init, tmp_path):
    init = tiny_init
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    _pair(straight, tiny_data, init)

    outputs = _pair(interrupted, tiny_data, init, preempt_rank1=2)
    steps = [re.findall(r"Preemption at step (\d+)", out) for out in outputs]
    assert steps[0] and steps[0] == steps[1], steps  # both processes named the same step
    saved = int(steps[0][0])
    assert saved < STEPS
    assert sorted(int(s) for s in os.listdir(os.path.join(interrupted, "checkpoints"))) == [saved]

    _pair(interrupted, tiny_data, init)  # the same command again: resumes at the saved step
    want, got = _losses(straight), _losses(interrupted)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(saved + 1, STEPS + 1):
        np.testing.assert_allclose(got[step], want[step], rtol=1e-6, err_msg=f"step {step}")
