"""A policy server for robots: `python -m inference.serve --checkpoint DIR --backend jax|torch --port N`.

Wire-compatible with openpi's client (`pip install openpi-client`):

    from openpi_client import websocket_client_policy
    client = websocket_client_policy.WebsocketClientPolicy("ROBOT_PC", 8000)
    client.get_server_metadata()          # sent by the server on connect
    out = client.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "...",
                        "reset": True})    # reset: True on the first step of an episode
    out["actions"]                        # [K, action_dim] in robot units

Protocol: a websocket; every message is msgpack with NumPy arrays as maps {b"__ndarray__": True,
b"data", b"dtype", b"shape"} (openpi's `msgpack_numpy`). On connect the server sends its metadata;
then each binary message is one observation and each reply one action dict (with
`server_timing`). A bad observation (missing camera, wrong image shape or dtype, wrong state
width, unknown key) is answered with a text message naming the problem, which the client raises
as RuntimeError; the connection and the server stay up.

Each connection has its own episode state (frame history, frame-code cache): one robot per
connection. Inference runs off the event loop, one request at a time per device. The n-th
request of a connection (from 0, counted since its last reset) samples with
`fold_in(key(seed), n)` (JAX) or a torch generator seeded from (seed, n) (PyTorch), so a run
is reproducible request for request.
"""

import asyncio
import concurrent.futures
import http
import logging
import time
import traceback
from typing import Any, Protocol

import jax
import msgpack
import numpy as np
from absl import app, flags
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from f1_common import transforms
from inference.jax_policy import Policy

log = logging.getLogger("inference.serve")

CONTROL_KEYS = ("reset", "return_foresight")  # request options, not observation fields
INSTRUCTION_KEYS = ("instruction", "prompt")  # openpi clients send "prompt"


# ---------------------------------------------------------------------------------------------
# msgpack with NumPy arrays, as openpi-client encodes them.


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_unpack_hook)


# ---------------------------------------------------------------------------------------------
# Backends: one shared model, one episode state per connection.


class Session(Protocol):
    def reset(self) -> None: ...

    def infer(self, observation: dict, request: int, return_foresight: bool) -> dict: ...


class JaxSession:
    """One connection's episode on the JAX policy (a fork: shared weights and programs)."""

    def __init__(self, policy: Policy, seed: int):
        self.policy, self.key = policy.fork(), jax.random.key(seed)

    def reset(self) -> None:
        self.policy.reset()

    def infer(self, observation: dict, request: int, return_foresight: bool) -> dict:
        rng = jax.random.fold_in(self.key, request)
        return self.policy.infer(observation, rng, return_foresight=return_foresight)


class TorchSession:
    """One connection's episode on the PyTorch runtime."""

    def __init__(self, policy, seed: int):
        self.policy, self.seed = policy.fork(), seed

    def reset(self) -> None:
        self.policy.reset()

    def infer(self, observation: dict, request: int, return_foresight: bool) -> dict:
        seed = int(np.random.SeedSequence([self.seed, request]).generate_state(1)[0])
        return self.policy.infer(observation, seed=seed, return_foresight=return_foresight)


def check_observation(observation: Any, allowed: set[str]) -> dict:
    """The observation as a dict with `instruction`, or ValueError naming what is wrong
    (camera, shape and state problems are named by the observation transform itself)."""
    if not isinstance(observation, dict):
        raise ValueError(
            f"an observation must be a map of names to values, got {type(observation).__name__}"
        )
    observation = {k.decode() if isinstance(k, bytes) else k: v for k, v in observation.items()}
    unknown = sorted(k for k in observation if k not in allowed)
    if unknown:
        raise ValueError(f"unknown observation keys {unknown}; expected some of {sorted(allowed)}")
    if "instruction" not in observation and "prompt" in observation:
        observation["instruction"] = observation.pop("prompt")
    for key, value in observation.items():
        if isinstance(value, bytes):
            observation[key] = value.decode()
    return observation


class PolicyServer:
    """Serves one loaded policy to any number of websocket connections."""

    def __init__(
        self, policy: Any, backend: str, metadata: dict, seed: int = 0, chunk_steps: int = 0
    ):
        self.policy = policy
        self.backend = backend
        self.metadata = metadata
        self.seed = seed
        self.chunk_steps = chunk_steps
        self.allowed = set(metadata["observation_keys"])
        # One device: requests run one at a time, off the event loop.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def session(self) -> Session:
        if self.backend == "torch":
            return TorchSession(self.policy, self.seed)
        return JaxSession(self.policy, self.seed)

    def _answer(self, session: Session, observation: dict, request: int) -> dict:
        start = time.perf_counter()
        return_foresight = bool(observation.pop("return_foresight", False))
        out = session.infer(observation, request, return_foresight)
        if self.chunk_steps:
            out["actions"] = out["actions"][: self.chunk_steps]
        out = {k: np.asarray(v) for k, v in out.items()}
        out["server_timing"] = {"infer_ms": 1e3 * (time.perf_counter() - start)}
        return out

    async def handle(self, connection: ServerConnection) -> None:
        log.info("connection from %s", connection.remote_address)
        session, request = self.session(), 0
        loop = asyncio.get_running_loop()
        await connection.send(packb(self.metadata))
        while True:
            try:
                message = await connection.recv()
            except ConnectionClosed:
                break
            try:
                if isinstance(message, str):
                    raise ValueError("observations are binary msgpack messages, got text")
                observation = check_observation(unpackb(message), self.allowed)
                if observation.pop("reset", False):
                    await loop.run_in_executor(self.executor, session.reset)
                    request = 0
                answer = await loop.run_in_executor(
                    self.executor, self._answer, session, observation, request
                )
                request += 1
                await connection.send(packb(answer))
            except ConnectionClosed:
                break
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                log.warning("bad request from %s: %s", connection.remote_address, text)
                await connection.send(f"bad observation: {text}")
            except Exception:  # keep serving: the robot gets the traceback, the server lives
                log.exception("inference failed")
                await connection.send(f"inference failed:\n{traceback.format_exc()}")

    @staticmethod
    def _health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def run(
        self,
        host: str,
        port: int,
        ready: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serves until cancelled (or until `stop` is set); sets `ready` once listening."""
        async with serve(
            self.handle,
            host,
            port,
            compression=None,
            max_size=None,
            process_request=self._health,
        ) as server:
            if ready is not None:
                ready.set()
            log.info("serving %s policy on ws://%s:%d", self.backend, host, port)
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()


def metadata(policy: Any, backend: str, chunk_steps: int) -> dict:
    """What a client learns on connect: the observation it must send and the actions it gets.
    policy: a JAX `Policy` or a `f1_torch.TorchPolicy` (both hold their ObservationTransform)."""
    spec, transform = policy.spec, policy.transform
    cameras = dict(transform.cameras)
    keys = {"state", *INSTRUCTION_KEYS, *CONTROL_KEYS, *transforms.CAMERAS}
    keys |= {k for k in cameras.values() if k}
    if backend == "jax":
        info = policy.info
        source = {"kind": info.kind, "path": str(info.directory), "step": info.step}
        dataset = info.dataset_name
    else:
        source, dataset = dict(policy.contract.source), policy.dataset
    return {
        "backend": backend,
        "source": source,
        "dataset": dataset,
        "cameras": {k: v for k, v in cameras.items() if v},
        "state_dim": transform.state_width,
        "action_dim": transform.action_dim,
        "chunk_size": spec.chunk_size,
        "actions_per_reply": chunk_steps or spec.chunk_size,
        "history_offsets": list(spec.history_offsets),
        "observation_keys": sorted(keys),
    }


def load(checkpoint: str, backend: str, dataset: str | None, device: str, dtype: str):
    """The policy of `backend` (jax: a run, an export or an import; torch: an export)."""
    if backend == "jax":
        return Policy.from_checkpoint(checkpoint, dataset=dataset)
    import torch  # deferred: torch is needed only for --backend torch

    from f1_torch.policy import TorchPolicy  # deferred: as above

    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("no CUDA device: the torch backend runs on the CPU")
        device = "cpu"
    return TorchPolicy.from_export(checkpoint, device=device, dtype=dtype, dataset=dataset)


_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run, an export or an import directory.")
_BACKEND = flags.DEFINE_enum("backend", "jax", ["jax", "torch"], "jax: f1_jax; torch: f1_torch.")
_HOST = flags.DEFINE_string("host", "0.0.0.0", "Interface to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_DATASET = flags.DEFINE_string("dataset", None, "Whose statistics (default: the first).")
_CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", 0, "Return only the first K actions (0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (noise and foresight).")
_DEVICE = flags.DEFINE_string("device", "cuda", "torch backend: device (falls back to cpu).")
_DTYPE = flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16"], "torch backend: dtype.")
flags.mark_flag_as_required("checkpoint")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    policy = load(_CHECKPOINT.value, _BACKEND.value, _DATASET.value, _DEVICE.value, _DTYPE.value)
    server = PolicyServer(
        policy,
        _BACKEND.value,
        metadata(policy, _BACKEND.value, _CHUNK_STEPS.value),
        seed=_SEED.value,
        chunk_steps=_CHUNK_STEPS.value,
    )
    asyncio.run(server.run(_HOST.value, _PORT.value))


if __name__ == "__main__":
    app.run(main)
