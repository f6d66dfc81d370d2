"""The policy server on loopback, driven by openpi's real client (`openpi-client` from PyPI)."""

import asyncio
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from builtin_task import SimEnv
from conversion.cli import main as conversion_main
from inference import serve
from inference.interface import load_policy

ROOT = pathlib.Path(__file__).resolve().parents[2]

websocket_client_policy = pytest.importorskip(
    "openpi_client.websocket_client_policy",
    reason="the test extra installs openpi-client (with --no-deps: it declares numpy<2)",
)

SEED = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(policy, chunk_steps: int = 0, key_map: str = ""):
    """Serves `policy` on a free loopback port in a thread; yields {"port", "server"}."""
    port = _free_port()
    instance = serve.PolicyServer(policy, SEED, chunk_steps, serve.parse_key_map(key_map))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready, stop = asyncio.Event(), asyncio.Event()
    running = asyncio.run_coroutine_threadsafe(instance.run("127.0.0.1", port, ready, stop), loop)
    asyncio.run_coroutine_threadsafe(ready.wait(), loop).result(timeout=120)
    yield {"port": port, "server": instance}
    loop.call_soon_threadsafe(stop.set)
    running.result(timeout=30)  # the server closed its connections and stopped listening
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(policy):
    """The JAX backend serving the session's tiny run."""
    yield from _start(policy)


@pytest.fixture(scope="module")
def export_dir(sim_run, tmp_path_factory) -> str:
    export = str(tmp_path_factory.mktemp("serve_export") / "export")
    assert conversion_main(["export", "--run", sim_run["workdir"], "--output", export]) == 0
    return export


@pytest.fixture(scope="module")
def torch_policy(export_dir):
    pytest.importorskip("torch", reason="the torch backend needs torch (the test extra)")
    return load_policy(export_dir, "torch")


def _client(port: int):
    return websocket_client_policy.WebsocketClientPolicy("127.0.0.1", port)


def _rollout(client, local, seeds, steps, chunk: int = 1, observe: bool = False, extra=None):
    """Drives `client` and the in-process `local` policy through the same episodes, executing
    `chunk` actions per request (with observe messages for the steps between, if `observe`);
    asserts every served chunk equals the local one. Returns the number of requests."""
    env, sent = SimEnv(image_size=32), 0
    for episode, seed in enumerate(seeds):
        obs = env.reset(seed)
        local.reset()
        request, actions = 0, None
        for step in range(steps):
            if step % chunk:
                if observe:
                    client.infer(dict(obs, observe=True))
                    local.observe(obs)
                else:
                    local.skip(1)
                obs, _, done, _ = env.step(actions[step % chunk])
                assert not done
                continue
            served = client.infer(dict(obs, **(extra or {}), reset=step == 0))
            expected = local.infer(obs, seed=(SEED, request))
            request += 1
            np.testing.assert_array_equal(
                served["actions"], expected["actions"][: len(served["actions"])]
            )
            assert served["actions"].dtype == np.float32 and served["server_timing"]["infer_ms"] > 0
            actions = served["actions"]
            sent += 1
            obs, _, done, _ = env.step(actions[0])
            if done:  # the policy's episode goes on (as a robot's would after a reset of the scene)
                obs = env.reset(200 + step)
    return sent


def test_metadata_on_connect(server):
    meta = _client(server["port"]).get_server_metadata()
    assert meta["backend"] == "jax" and meta["action_dim"] == 7 and meta["state_dim"] == 8
    assert {"primary", "wrist_image", "state", "instruction"} <= set(meta["observation_keys"])
    assert meta["key_map"] == {"prompt": "instruction"} and meta["actions_per_reply"] == 4


def test_hundred_requests_match_the_in_process_policy(server, policy):
    """100 closed-loop requests (two episodes): the served chunks equal the in-process policy's
    with the same seed path, bit for bit."""
    assert _rollout(_client(server["port"]), policy.fork(), (100, 101), 50) == 100


def test_bad_requests_get_named_errors_and_the_server_keeps_serving(server):
    client = _client(server["port"])
    obs = SimEnv(image_size=32).reset(7)
    bad = {
        "wrist": {k: v for k, v in obs.items() if k not in ("wrist", "wrist_image")},
        "uint8 [H, W, 3]": dict(obs, image=np.zeros((32, 32, 4), np.uint8)),
        "8": dict(obs, state=np.zeros(5, np.float32)),
    }
    for name, request in bad.items():
        with pytest.raises(RuntimeError, match="bad observation: .*" + re.escape(name)):
            client.infer(dict(request, reset=True))
    # Keys the model does not read are ignored (one warning per connection), CHW is accepted.
    out = client.infer(dict(obs, colour=np.zeros(3), image=obs["image"].transpose(2, 0, 1)))
    assert out["actions"].shape == (4, 7)


def test_whole_chunks_with_observe_messages_keep_the_history_exact(server, policy):
    """The client executes all 4 actions of each chunk and sends the 3 frames in between as
    observe-only messages: the model sees the same history as a policy stepped every step."""
    assert _rollout(_client(server["port"]), policy.fork(), (102,), 16, 4, observe=True) == 4


def test_chunk_steps_server_holds_the_unseen_frames(policy):
    for running in _start(policy, chunk_steps=4):
        client = _client(running["port"])
        assert client.get_server_metadata()["actions_per_reply"] == 4
        assert _rollout(client, policy.fork(), (103,), 16, 4) == 4


def test_a_new_connection_and_a_changed_instruction_start_new_episodes(server, policy):
    env = SimEnv(image_size=32)
    obs = env.reset(104)
    first = _client(server["port"])
    for _ in range(3):
        first.infer(obs)
    fresh = policy.fork()
    expected = fresh.infer(obs, seed=(SEED, 0))["actions"]
    # A second connection starts from an empty history and request 0.
    np.testing.assert_array_equal(_client(server["port"]).infer(obs)["actions"], expected)
    # The first connection, given another instruction, starts over too.
    other = dict(obs, instruction=obs["instruction"] + " again")
    fresh.reset()
    expected = fresh.infer(other, seed=(SEED, 0))["actions"]
    np.testing.assert_array_equal(first.infer(other)["actions"], expected)


def test_a_server_fault_is_named_and_leaves_the_episode_unchanged(server, policy, monkeypatch):
    """An out-of-memory stand-in inside the model: the client gets a server error (not "bad
    observation"), and the next request answers as if the failed one had never been sent."""
    env, fail = SimEnv(image_size=32), {"now": False}
    original = type(policy).infer_normalized

    def flaky(self, *args, **kwargs):
        if fail["now"]:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while allocating (stand-in)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(policy), "infer_normalized", flaky)
    client, local = _client(server["port"]), policy.fork()
    obs = env.reset(105)
    np.testing.assert_array_equal(
        client.infer(obs)["actions"], local.infer(obs, seed=(SEED, 0))["actions"]
    )
    obs, *_ = env.step(np.zeros(7, np.float32))
    fail["now"] = True
    with pytest.raises(RuntimeError, match="server error: RuntimeError: RESOURCE_EXHAUSTED"):
        client.infer(obs)
    fail["now"] = False
    np.testing.assert_array_equal(
        client.infer(obs)["actions"], local.infer(obs, seed=(SEED, 1))["actions"]
    )


def test_the_torch_backend_serves_the_export_like_the_in_process_runtime(torch_policy):
    for running in _start(torch_policy):
        client = _client(running["port"])
        assert client.get_server_metadata()["backend"] == "torch"
        assert _rollout(client, torch_policy.fork(), (11,), 10) == 10


# A process in which JAX, Flax, TensorFlow and grain cannot be imported: a robot computer.
NO_JAX = """
import runpy, sys
# As if not installed: `import jax` raises ModuleNotFoundError, importlib's find_spec says None.
for name in ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "grain", "chex"):
    sys.modules[name] = None
sys.argv = ["inference.serve", *sys.argv[1:]]
runpy.run_module("inference.serve", run_name="__main__")
"""


def test_a_robot_without_jax_serves_openpi_libero_keys(export_dir, torch_policy, tmp_path):
    """The server in a process where JAX cannot be imported, driven by openpi's client with
    openpi's LIBERO example keys through --key_map, executing whole chunks (--chunk_steps):
    the same actions as the in-process PyTorch runtime."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    args = ["--checkpoint", export_dir, "--backend", "torch", "--device", "cpu"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--seed", str(SEED)]
    args += ["--key_map", "libero", "--chunk_steps", "2"]
    process = subprocess.Popen(
        [sys.executable, "-c", NO_JAX, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.read().decode().strip() == "ready":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        client = _client(port)
        assert client.get_server_metadata()["backend"] == "torch"
        env, local = SimEnv(image_size=32), torch_policy.fork()
        obs = env.reset(12)
        for request in range(4):
            served = client.infer(
                {
                    "observation/image": obs["image"],
                    "observation/wrist_image": obs["wrist_image"],
                    "observation/state": obs["state"],
                    "prompt": obs["instruction"],
                }
            )
            if request:
                local.skip(1)
            expected = local.infer(obs, seed=(SEED, request))["actions"][:2]
            np.testing.assert_array_equal(served["actions"], expected)
            for action in served["actions"]:  # the whole chunk, open loop
                obs, _, done, _ = env.step(action)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
