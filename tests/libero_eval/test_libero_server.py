"""--server: the harness drives f1-jax's policy server through openpi's real client, with the
LIBERO observation in f1-jax's keys and a reset on every episode's first request."""

import asyncio
import socket
import threading

import jax
import numpy as np
import pytest
from libero_setup import make_libero_export

from f1_jax import serve
from f1_jax.policy import Policy
from libero_eval import conventions
from libero_eval.policies import ServerPolicy

SEED = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The synthetic LIBERO export served by f1-jax's server on a loopback port."""
    policy = Policy.from_checkpoint(make_libero_export(str(tmp_path_factory.mktemp("srv"))))
    port = _free_port()
    instance = serve.PolicyServer(policy, "jax", serve.metadata(policy, "jax", 0), seed=SEED)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready, stop = asyncio.Event(), asyncio.Event()
    running = asyncio.run_coroutine_threadsafe(instance.run("127.0.0.1", port, ready, stop), loop)
    asyncio.run_coroutine_threadsafe(ready.wait(), loop).result(timeout=60)
    yield {"port": port, "policy": policy}
    loop.call_soon_threadsafe(stop.set)
    running.result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _raw(seed: int) -> dict:
    """A simulator observation's fields (what conventions.observation reads)."""
    rng = np.random.default_rng(seed)
    image = lambda: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    quat = rng.normal(size=4)
    return {
        "agentview_image": image(),
        "robot0_eye_in_hand_image": image(),
        "robot0_eef_pos": rng.normal(size=3),
        "robot0_eef_quat": quat / np.linalg.norm(quat),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }


def test_server_policy_sends_f1_keys_and_resets_each_episode(served):
    client = ServerPolicy(f"127.0.0.1:{served['port']}")
    assert client.metadata["key_style"] == "f1" and client.image_size is None
    assert client.metadata["server_metadata"]["state_dim"] == conventions.STATE_DIM
    obs = [conventions.observation(_raw(i), "open the top drawer") for i in range(2)]

    # what the server computes for an episode's requests 0 and 1 (fold_in(key(SEED), n))
    local = served["policy"].fork()
    local.reset()
    key = jax.random.key(SEED)
    expected = [local.infer(o, jax.random.fold_in(key, n))["actions"] for n, o in enumerate(obs)]

    for _ in range(2):  # two episodes: the reset restarts the server's history and request count
        client.reset()
        for o, want in zip(obs, expected):
            got = conventions.check_actions(client.infer(o)["actions"])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_server_address_must_be_host_port():
    with pytest.raises(ValueError, match="HOST:PORT"):
        ServerPolicy("localhost")
