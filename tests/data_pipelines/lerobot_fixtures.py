"""LeRobot fixtures written by the real `lerobot` package, and copies damaged on purpose.

Two lerobot versions cannot share one environment (and lerobot's torchvision wheel breaks
`import torchvision` for the rest of the suite), so each version lives in its own folder,
installed with `pip install --no-deps --target` under F1_LEROBOT_CACHE (default
~/.cache/f1_jax/test-lerobot; .ci/run fills it), and the writer (`lerobot_writer.py`) runs in a
subprocess with that folder first on PYTHONPATH. lerobot's own dependencies (datasets, pandas,
av, jsonlines, accelerate, torch) come from the `test` extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# lerobot 0.4.4 writes LeRobot v3.0, 0.3.3 writes v2.1. torchvision: the version lerobot imports
# (its C ops are never used; the writer defines the two op schemas lerobot's import needs).
VERSIONS = {"v3.0": "0.4.4", "v2.1": "0.3.3"}
TORCHVISION = "0.29.1"
LENGTHS = {"v3.0": [12, 16, 10], "v2.1": [12, 14, 10, 11, 13, 12]}  # frames per episode
CODECS = {"v3.0": "libsvtav1", "v2.1": "h264"}  # AV1 (lerobot's default) and H.264
WRITER_DEPS = ("torch", "datasets", "pandas", "av", "jsonlines", "accelerate")


def cache_root() -> str:
    return os.environ.get(
        "F1_LEROBOT_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "f1_jax", "test-lerobot"),
    )


def install_command(version: str, target: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        target,
        f"lerobot=={version}",
        f"torchvision=={TORCHVISION}",
    ]


def lerobot_path(version: str) -> str:
    """The folder holding lerobot==version (installed there on first use); skips the test,
    saying what to install, when that is impossible."""
    missing = [m for m in WRITER_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"the LeRobot fixtures need {missing}: pip install -e '.[test]' (lerobot's own "
            "dependencies are in the test extra)"
        )
    target = os.path.join(cache_root(), f"lerobot-{version}")
    if os.path.exists(os.path.join(target, "lerobot", "__init__.py")):
        return target
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"lerobot-{version}-", dir=cache_root())
    done = subprocess.run(
        install_command(version, tmp), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(
            f"cannot install lerobot=={version} for the fixture ({done.stderr.strip()[-300:]}); "
            f"run: {' '.join(install_command(version, target))}"
        )
    try:
        os.rename(tmp, target)  # atomic: a parallel worker may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def start_writer(version: str, root: str, codec: str, lengths: list[int]) -> subprocess.Popen:
    """Starts writing a fixture with lerobot==version (several can run at once)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([lerobot_path(version), HERE])
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [
        sys.executable,
        os.path.join(HERE, "lerobot_writer.py"),
        root,
        codec,
        json.dumps(lengths),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_writer(proc: subprocess.Popen, root: str) -> str:
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"lerobot writer failed for {root}:\n{err[-3000:]}")
    # lerobot keeps its temporary PNGs of video frames under images/; the real datasets
    # published on the Hub have none.
    shutil.rmtree(os.path.join(root, "images"), ignore_errors=True)
    return root


# ------------------------------------------------------------------ damaged copies


def copy_dataset(src: str, dst: str) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("f1_dataset_summary_*"))
    return dst


def v2_data(root: str, e: int) -> str:
    return os.path.join(root, "data", "chunk-000", f"episode_{e:06d}.parquet")


def v2_video(root: str, key: str, e: int) -> str:
    return os.path.join(root, "videos", "chunk-000", key, f"episode_{e:06d}.mp4")


def rewrite_parquet(path: str, change) -> None:
    """Rewrites a parquet file with `change(table) -> table`."""
    import pyarrow.parquet as pq

    pq.write_table(change(pq.read_table(path)), path)


def cut_video(path: str, keep: int) -> None:
    """Keeps only the first `keep` frames of a video (packets copied, nothing re-encoded)."""
    import av

    tmp = path + ".cut.mp4"
    with av.open(path) as src, av.open(tmp, "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream, opaque=True)  # remux, no codec
        kept = 0
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            if kept >= keep:
                break
            packet.stream = out
            dst.mux(packet)
            kept += 1
    os.replace(tmp, path)


def garble_packet(path: str, k: int) -> None:
    """Overwrites the payload of the k-th video packet with noise (the container stays valid)."""
    import av

    with av.open(path) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.pts is not None]
        pos, size = packets[k].pos, packets[k].size
    noise = np.random.default_rng(k).integers(0, 256, size, dtype=np.uint8).tobytes()
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(noise)


def set_task(root: str, task_index: int, text: str) -> None:
    """Changes one task's text in a v2.1 meta/tasks.jsonl."""
    path = os.path.join(root, "meta", "tasks.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        if r["task_index"] == task_index:
            r["task"] = text
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def add_task(root: str, text: str) -> int:
    """Appends a task to a v2.1 meta/tasks.jsonl; returns its index."""
    path = os.path.join(root, "meta", "tasks.jsonl")
    with open(path) as f:
        n = sum(1 for line in f if line.strip())
    with open(path, "a") as f:
        f.write(json.dumps({"task_index": n, "task": text}) + "\n")
    return n
