"""The README's walk "Bring your own robot: from a LeRobot recording to a served policy", run as
written: its JSON mapping, its commands (statistics -> fine-tune -> export -> serve) and its
openpi-client code are read from README.md and run as subprocesses, at the debug size, on a
LeRobot v3.0 recording written by the real `lerobot` (tests/data_pipelines/lerobot_fixtures.py).

What the test changes, and only this: it runs in a scratch folder holding the README's relative
paths (`my_robot.json`, a stand-in for step 0's `ckpt/f1` and `paligemma/tokenizer.model`),
`/data/my_robot_lerobot` is the recording, the fine-tune gets DEBUG_SIZE appended, the server
runs on the CPU on a free loopback port, and the client's `ROBOT_PC` is that port's host.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.append(os.path.join(HERE, "data_pipelines"))  # the LeRobot fixture machinery

import lerobot_fixtures as lf
import lerobot_writer as W

websocket_client_policy = pytest.importorskip(
    "openpi_client.websocket_client_policy",
    reason="the test extra installs openpi-client (with --no-deps: it declares numpy<2)",
)
pytest.importorskip("torch", reason="the served export runs on the PyTorch runtime")

SECTION = "### Bring your own robot: from a LeRobot recording to a served policy"
DATA = "/data/my_robot_lerobot"
# The fine-tune at the debug size, in seconds on a CPU: the model, fp32, no rematerialisation,
# teacher-forced foresight (half the compile of sampled foresight), the recording's two cameras,
# two steps of batch 2.
DEBUG_SIZE = (
    "--config.model.size=debug",
    "--config.model.precision=parity",
    "--config.model.remat_policy=none",
    "--config.model.foresight_training=teacher_forcing",
    "--config.data.cameras=('primary','wrist')",
    "--config.data.batch_size=2",
    "--config.data.num_workers=0",
    "--config.optimizer.warmup_steps=0",
    "--config.train.steps=2",
    "--config.train.checkpoint_every=2",
    "--config.train.async_checkpoints=false",
)
TIMEOUT_S = 300


def readme_walk() -> dict:
    """{"json": mapping, "commands": [argv, ...], "client": python source} of the section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(SECTION)
    end = re.compile(r"^##", re.MULTILINE).search(text, start + len(SECTION))  # the next heading
    section = text[start : end.start() if end else None]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    by_kind = {}
    for kind, body in blocks:
        assert kind not in by_kind, f"two {kind} blocks in the README's walk"
        by_kind[kind] = body
    commands = []
    for line in by_kind["bash"].replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(shlex.split(line))
    return {"json": json.loads(by_kind["json"]), "commands": commands, "client": by_kind["python"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    """One CPU device, as on a user's laptop, with the suite's LLVM level and its persistent
    compilation cache (tests/conftest.py)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=1"
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "f1_jax_test_compile_cache"
    )
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return env


def _run(argv: list[str], cwd: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv[1:]] if argv[0] == "python" else argv,
        check=False,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> str:
    """A LeRobot v3.0 recording written by lerobot 0.4.4 (the suite's fixture, one layout)."""
    root = os.path.join(os.fspath(tmp_path_factory.mktemp("walk_lerobot")), "my_robot_lerobot")
    return lf.finish_writer(
        lf.start_writer(lf.VERSIONS["v3.0"], root, lf.CODECS["v3.0"], lf.LENGTHS["v3.0"]), root
    )


def _stand_in_for_step_0(cwd: str) -> None:
    """`ckpt/f1` and `paligemma/tokenizer.model` at the debug size: random parameters of the
    fine-tune's model (what `conversion import f1` writes: OUTPUT/params) and a tokenizer trained
    on a few instructions."""
    import flax.linen as nn
    import jax

    from f1_common.tokenizer import train_tokenizer
    from f1_jax import recipes
    from f1_jax.models.f1 import F1
    from f1_jax.models.sizes import model_config_from
    from f1_jax.training import checkpoints, state

    config = recipes.load_config("finetune")
    config.model.size = "debug"
    abstract = nn.unbox(state.abstract_params(F1(model_config_from(config.model))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)
    checkpoints.save_params(os.path.join(cwd, "ckpt", "f1", "params"), params)
    os.makedirs(os.path.join(cwd, "paligemma"))
    texts = [W.task(0), W.task(1), "push the cup to the left", "close the drawer"] * 8
    train_tokenizer(texts, os.path.join(cwd, "paligemma", "tokenizer.model"), 64)


def _wait_ready(process: subprocess.Popen, port: int, log_path: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        if process.poll() is not None:
            with open(log_path) as f:
                pytest.fail(f"the server exited ({process.returncode}):\n{f.read()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.read().decode().strip() == "ready":
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not get ready"
        time.sleep(0.3)


def test_readme_walk_lerobot_to_served_actions(recording, tmp_path):
    walk = readme_walk()
    stats, finetune, export, serve = walk["commands"][1:]  # [0]: the release's import (a stand-in)
    assert walk["commands"][0][:4] == ["python", "-m", "conversion", "import"]
    assert stats[:4] == ["python", "-m", "data_pipelines.convert", "stats"]
    assert finetune[:3] == ["python", "-m", "f1_jax.launch"]
    assert export[:4] == ["python", "-m", "conversion", "export"]
    assert serve[:3] == ["python", "-m", "inference.serve"]
    cwd = str(tmp_path)
    with open(os.path.join(cwd, "my_robot.json"), "w") as f:
        json.dump(walk["json"], f)
    _stand_in_for_step_0(cwd)

    def here(argv: list[str]) -> list[str]:
        return [a.replace(DATA, recording) for a in argv]

    # 1. statistics, cached beside the recording
    report = json.loads(_run(here(stats), cwd).strip().splitlines()[-1])
    assert report["episodes_kept"] == 3 and report["skipped"] == []
    assert report["cameras"] == walk["json"]["cameras"]
    (cache,) = glob.glob(os.path.join(recording, "f1_dataset_summary_*.json"))
    with open(cache) as f:
        summary = json.load(f)
    actions = np.concatenate(
        [[W.action(e, t) for t in range(n)] for e, n in enumerate(lf.LENGTHS["v3.0"])]
    )
    np.testing.assert_allclose(summary["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)

    # 2. fine-tune: finds step 1's statistics (no second cache file), trains, checkpoints
    _run(here(finetune) + list(DEBUG_SIZE), cwd)
    assert glob.glob(os.path.join(recording, "f1_dataset_summary_*.json")) == [cache]
    assert os.path.isdir(os.path.join(cwd, "runs", "my_robot", "checkpoints", "2"))

    # 3. export
    _run(here(export), cwd)
    with open(os.path.join(cwd, "f1_my_robot", "norm_stats.json")) as f:
        norm_stats = json.load(f)["datasets"]["my_robot"]
    assert norm_stats["cameras"] == walk["json"]["cameras"]
    np.testing.assert_allclose(norm_stats["action"]["mean"], summary["action"]["mean"])

    # 4. serve on the CPU on a free loopback port; stopped when the test ends, whatever happens
    port = _free_port()
    argv = [{"cuda": "cpu", "8000": str(port)}.get(a, a) for a in here(serve)]
    assert "cpu" in argv and str(port) in argv
    log_path = os.path.join(cwd, "server.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, *argv[1:], "--host", "127.0.0.1"],
            cwd=cwd,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(process, port, log_path)
        # 5. openpi's client, the README's code as written, on a frame of the recording
        top, wrist, state = W.scene(1, 5, 0), W.scene(1, 5, 1), W.state(1, 5)
        client_code = walk["client"].replace('"ROBOT_PC", 8000', f'"127.0.0.1", {port}')
        namespace = {"top": top, "wrist": wrist, "state": state}
        # the README's own client code, run as a user pastes it (the point of this test)
        exec(compile(client_code, "README.md (the walk's client)", "exec"), namespace)  # noqa: S102
        served = namespace["out"]["actions"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert served.shape == (4, W.ACTION_DIM) and served.dtype == np.float32

    # Robot units: the in-process PyTorch runtime on the same observation and seed path (the
    # server's first request of a connection: (seed 0, request 0)) ...
    from inference.interface import load_policy

    policy = load_policy(os.path.join(cwd, "f1_my_robot"), "torch", device="cpu")
    observation = {
        "observation.images.top": top,
        "observation.images.wrist": wrist,
        "state": state,
        "instruction": re.search(r'"prompt": "([^"]*)"', walk["client"]).group(1),
    }
    np.testing.assert_array_equal(served, policy.fork().infer(observation, seed=(0, 0))["actions"])
    # ... whose normalised actions, un-normalised with step 1's statistics of the recording, are
    # the served ones (mean/std of its `action` rows; the gripper in its own -1/+1 convention).
    fork = policy.fork()
    normalised = fork.infer_normalized(fork.preprocess(observation), seed=(0, 0))["actions"]
    mean, std = (np.asarray(summary["action"][k], np.float32) for k in ("mean", "std"))
    np.testing.assert_allclose(
        served, normalised[:, : W.ACTION_DIM] * std + mean, rtol=1e-5, atol=1e-5
    )
