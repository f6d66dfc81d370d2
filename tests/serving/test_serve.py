"""The policy server on loopback, driven by openpi's real client (`openpi-client` from PyPI)."""

import asyncio
import re
import socket
import threading

import jax
import numpy as np
import pytest

from builtin_task import SimEnv
from conversion.cli import main as conversion_main
from inference import serve

websocket_client_policy = pytest.importorskip(
    "openpi_client.websocket_client_policy",
    reason="the test extra installs openpi-client (with --no-deps: it declares numpy<2)",
)

SEED = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(policy, backend: str):
    """Serves `policy` on a free loopback port in a thread; yields {"port", "metadata"}."""
    port = _free_port()
    meta = serve.metadata(policy, backend, chunk_steps=0)
    instance = serve.PolicyServer(policy, backend, meta, seed=SEED)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready, stop = asyncio.Event(), asyncio.Event()
    running = asyncio.run_coroutine_threadsafe(instance.run("127.0.0.1", port, ready, stop), loop)
    asyncio.run_coroutine_threadsafe(ready.wait(), loop).result(timeout=60)
    yield {"port": port, "metadata": meta}
    loop.call_soon_threadsafe(stop.set)
    running.result(timeout=30)  # the server closed its connections and stopped listening
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(policy):
    """The JAX backend serving the session's tiny run."""
    yield from _start(policy, "jax")


@pytest.fixture(scope="module")
def torch_policy(sim_run, tmp_path_factory):
    pytest.importorskip("torch", reason="the torch backend needs torch (the test extra)")
    from f1_torch.policy import TorchPolicy

    export = str(tmp_path_factory.mktemp("serve_export") / "export")
    assert conversion_main(["export", "--run", sim_run["workdir"], "--output", export]) == 0
    return TorchPolicy.from_export(export)


def _client(server):
    return websocket_client_policy.WebsocketClientPolicy("127.0.0.1", server["port"])


def test_metadata_on_connect(server):
    meta = _client(server).get_server_metadata()
    assert meta["backend"] == "jax" and meta["action_dim"] == 7 and meta["state_dim"] == 8
    assert {"primary", "wrist_image", "state", "instruction", "reset"} <= set(
        meta["observation_keys"]
    )


def test_hundred_requests_match_the_in_process_policy(server, policy):
    """100 closed-loop requests (two episodes): the served chunks equal the in-process policy's
    with the same seed, bit for bit."""
    client, local = _client(server), policy.fork()
    key = jax.random.key(SEED)
    env = SimEnv(image_size=32)
    sent = 0
    for episode in range(2):
        obs = env.reset(100 + episode)
        local.reset()
        for step in range(50):
            request = dict(obs, reset=step == 0)
            served = client.infer(request)
            expected = local.infer(obs, jax.random.fold_in(key, step))
            np.testing.assert_array_equal(served["actions"], expected["actions"])
            assert served["actions"].dtype == np.float32 and served["server_timing"]["infer_ms"] > 0
            sent += 1
            obs, _, done, _ = env.step(served["actions"][0])
            if done:
                obs = env.reset(200 + step)
    assert sent == 100


def test_bad_requests_get_named_errors_and_the_server_keeps_serving(server):
    client = _client(server)
    obs = SimEnv(image_size=32).reset(7)
    bad = {
        "wrist": {k: v for k, v in obs.items() if k not in ("wrist", "wrist_image")},
        "uint8 [H, W, 3]": dict(obs, image=np.transpose(obs["image"], (2, 0, 1)).copy()),
        "8": dict(obs, state=np.zeros(5, np.float32)),
        "colour": dict(obs, colour=np.zeros(3)),
    }
    for name, request in bad.items():
        with pytest.raises(RuntimeError, match=re.escape(name)):
            client.infer(dict(request, reset=True))
    out = client.infer(dict(obs, reset=True))  # the same connection still answers
    assert out["actions"].shape == (4, 7)


def test_first_k_actions_option(policy):
    meta = serve.metadata(policy, "jax", chunk_steps=2)
    instance = serve.PolicyServer(policy, "jax", meta, seed=SEED, chunk_steps=2)
    session = instance.session()
    obs = SimEnv(image_size=32).reset(3)
    out = instance._answer(session, dict(obs), 0)
    assert out["actions"].shape == (2, 7) and meta["actions_per_reply"] == 2


def test_the_torch_backend_serves_the_export_like_the_in_process_runtime(torch_policy):
    local = torch_policy.fork()
    for running in _start(torch_policy, "torch"):
        client = websocket_client_policy.WebsocketClientPolicy("127.0.0.1", running["port"])
        assert client.get_server_metadata()["backend"] == "torch"
        env = SimEnv(image_size=32)
        obs = env.reset(11)
        local.reset()
        for step in range(10):
            served = client.infer(dict(obs, reset=step == 0))
            seed = int(np.random.SeedSequence([SEED, step]).generate_state(1)[0])
            expected = local.infer(obs, seed=seed)
            np.testing.assert_array_equal(served["actions"], expected["actions"])
            obs, _, done, _ = env.step(served["actions"][0])
            assert not done
