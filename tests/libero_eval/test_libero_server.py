"""--server: the harness drives f1-jax's policy server through openpi's real client, in f1-jax's
keys (with a reset per episode and the open-loop steps as observe messages) and in openpi's LIBERO
example's keys."""

import asyncio
import socket
import threading

import numpy as np
import pytest
from openpi_client import image_tools

from inference import serve
from inference.interface import load_policy
from libero_eval import conventions
from libero_eval.policies import ServerPolicy
from tests.libero_eval.libero_setup import make_libero_export

SEED = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(make_libero_export(str(tmp_path_factory.mktemp("srv"))), "jax")


def _serve(policy, key_map: str):
    """f1-jax's server on a loopback port in a thread; yields the port."""
    port = _free_port()
    instance = serve.PolicyServer(policy, SEED, 0, serve.parse_key_map(key_map))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready, stop = asyncio.Event(), asyncio.Event()
    running = asyncio.run_coroutine_threadsafe(instance.run("127.0.0.1", port, ready, stop), loop)
    asyncio.run_coroutine_threadsafe(ready.wait(), loop).result(timeout=120)
    yield port
    loop.call_soon_threadsafe(stop.set)
    running.result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _raw(seed: int) -> dict:
    """A simulator observation's fields (what conventions.observation reads)."""
    rng = np.random.default_rng(seed)
    quat = rng.normal(size=4)
    return {
        "agentview_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "robot0_eef_pos": rng.normal(size=3),
        "robot0_eef_quat": quat / np.linalg.norm(quat),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }


OBS = [conventions.observation(_raw(i), "open the top drawer") for i in range(4)]


def _local_episode(policy, observations) -> list[np.ndarray]:
    """What the server computes: infer, observe, observe, infer; request n uses (SEED, n)."""
    local = policy.fork()
    local.reset()
    first = local.infer(observations[0], seed=(SEED, 0))["actions"]
    local.observe(observations[1])
    local.observe(observations[2])
    return [first, local.infer(observations[3], seed=(SEED, 1))["actions"]]


def _client_episode(client) -> list[np.ndarray]:
    client.reset()
    first = conventions.check_actions(client.infer(OBS[0])["actions"])
    client.observe(OBS[1])
    client.observe(OBS[2])
    return [first, conventions.check_actions(client.infer(OBS[3])["actions"])]


def test_f1_keys_reset_and_observe_messages(policy):
    for port in _serve(policy, ""):
        client = ServerPolicy(f"127.0.0.1:{port}")
        assert client.metadata["key_style"] == "f1" and client.image_size is None
        assert client.metadata["server_metadata"]["state_dim"] == conventions.STATE_DIM
        expected = _local_episode(policy, OBS)
        for _ in range(2):  # the reset restarts the server's history and request count
            for got, want in zip(_client_episode(client), expected):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_openpi_keys_with_the_client_side_resize(policy):
    """openpi's LIBERO keys, images padded to 224 on the client, as openpi's example sends."""
    for port in _serve(policy, "libero"):
        client = ServerPolicy(f"127.0.0.1:{port}", key_style="openpi")
        assert client.metadata["key_style"] == "openpi" and client.image_size == 224
        client.reset()
        got = conventions.check_actions(client.infer(OBS[0])["actions"])
        padded = {
            **OBS[0],
            **{
                k: image_tools.convert_to_uint8(image_tools.resize_with_pad(OBS[0][k], 224, 224))
                for k in ("primary", "wrist")
            },
        }
        local = policy.fork()
        local.reset()
        want = local.infer(padded, seed=(SEED, 0))["actions"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        client.observe(OBS[1])  # openpi servers see only the steps they act on: nothing sent


def test_server_address_must_be_host_port():
    with pytest.raises(ValueError, match="HOST:PORT"):
        ServerPolicy("localhost")
