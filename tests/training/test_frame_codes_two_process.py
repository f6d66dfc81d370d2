"""Frame codes encoded by every process: two real processes (jax.distributed, two local CPU
processes) each encode only their share of the records and write their part of the store; the
store then holds codes bit-identical to one process's."""

import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
from train_fixtures import frame_codes_setup

from data_pipelines.frame_codes import FrameCodeStore, part_ranges
from data_pipelines.pipeline import load_summaries
from f1_jax.training import frame_codes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(data: dict, init: str, stats_dir: str) -> list[str]:
    port = str(_free_port())
    env = dict(os.environ, F1_TEST_DATA=json.dumps(data), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env["F1_TEST_INIT"] = init
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=1"
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "f1_jax_test_compile_cache"
    )
    script = os.path.join(HERE, "frame_codes_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(rank), port, stats_dir],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0 and "ENCODED" in out, f"process {rank}:\n{out[-3000:]}"
    return outputs


def _line(output: str, tag: str) -> str:
    return [line for line in output.splitlines() if line.startswith(tag + " ")][-1][len(tag) + 1 :]


def test_two_processes_encode_their_shares_into_one_store(
    tiny_data, tiny_init, tmp_path, monkeypatch
):
    monkeypatch.setenv("F1_TEST_INIT", tiny_init)
    data, model, vqvae = frame_codes_setup(tiny_data, str(tmp_path / "one"))
    one = FrameCodeStore(
        frame_codes.ensure_frame_codes(data, model, vqvae, progress=False).frame_code_stores[0]
    )
    outputs = _two_processes(tiny_data, tiny_init, str(tmp_path / "two"))
    paths = {_line(out, "STORE") for out in outputs}
    assert len(paths) == 1  # both processes name the same store
    two = FrameCodeStore(paths.pop())
    assert (one.parts, two.parts) == (1, 2)

    # Each process encoded exactly its share: disjoint, contiguous, together every record.
    _, (summary,) = load_summaries(data, progress=False)
    encoded = [json.loads(_line(out, "ENCODED")) for out in outputs]
    usable = np.flatnonzero(summary.lengths > 0)
    for rank, (first, stop) in enumerate(part_ranges(summary.lengths, 2)):
        assert encoded[rank] == [int(r) for r in usable if first <= r < stop], rank
        assert encoded[rank], f"process {rank} encoded nothing"
    assert sorted(encoded[0] + encoded[1]) == usable.tolist()

    # The codes are bit-identical to one process's.
    for record in usable.tolist():
        frames = np.arange(summary.lengths[record])
        np.testing.assert_array_equal(two.frames(record, frames), one.frames(record, frames))
    np.testing.assert_array_equal(two.blank, one.blank)
