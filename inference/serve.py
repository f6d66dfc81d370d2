"""A policy server for robots: `python -m inference.serve --checkpoint DIR --backend jax|torch`.

Wire-compatible with openpi's clients (`pip install openpi-client`), unchanged:

    from openpi_client import websocket_client_policy
    client = websocket_client_policy.WebsocketClientPolicy("ROBOT_PC", 8000)
    client.get_server_metadata()          # sent by the server on connect
    out = client.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "..."})
    out["actions"]                        # [K, action_dim] in robot units

With `--key_map libero` (or `aloha`, or `FROM=TO,...`) the server reads openpi's own example
clients' keys (`observation/image`, `observation/wrist_image`, `observation/state`, `prompt`;
ALOHA's nested `images` dict of CHW images). Nested maps are flattened with "/"; CHW images are
accepted; keys the model does not read are ignored with one warning per connection.

Protocol: a websocket; every message is msgpack with NumPy arrays as maps {b"__ndarray__": True,
b"data", b"dtype", b"shape"} (openpi's `msgpack_numpy`). On connect the server sends its metadata;
then each binary message is one observation and each reply one action dict (with
`server_timing`). Errors come back as a text message, which openpi's client raises as
RuntimeError: "bad observation: ..." names what is wrong with the request; "server error: ..."
is a fault of the server (out of memory, a device error), logged with its traceback. Either way
the episode is as it was before the request, and the connection and the server stay up.

Episodes: a connection is one episode (one robot); a changed instruction starts a new one (logged);
`"reset": True` starts one explicitly. The frame history counts environment steps, so a client that
executes several actions per request either sends the frames of the steps in between as
`"observe": True` messages (answered with `{"observed": 1}`; exact), or the server is started with
`--chunk_steps K`: it replies with K actions and assumes all K run before the next request, the
newest frame standing in for the K-1 unseen ones.

The n-th request of an episode samples with the seed path (seed, n): reproducible request for
request. The policy is warmed up (compiled, for JAX) before the port opens; `GET /healthz`
answers "ready". The server imports no JAX unless `--backend jax` is chosen.
"""

import argparse
import asyncio
import concurrent.futures
import http
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from inference.interface import Policy, backends, load_policy

log = logging.getLogger("inference.serve")

CONTROL_KEYS = ("reset", "return_foresight", "observe")  # request options, not observation fields

# openpi's example clients (examples/libero, examples/aloha_real): their keys -> ours.
KEY_MAP_PRESETS: dict[str, dict[str, str]] = {
    "libero": {
        "observation/image": "primary",
        "observation/wrist_image": "wrist",
        "observation/state": "state",
        "prompt": "instruction",
    },
    "aloha": {
        "images/cam_high": "primary",
        "images/cam_low": "secondary",
        "images/cam_left_wrist": "wrist",
        "state": "state",
        "prompt": "instruction",
    },
}
DEFAULT_KEY_MAP = {"prompt": "instruction"}


def parse_key_map(text: str) -> dict[str, str]:
    """"libero", "aloha" or "FROM=TO,..." -> {client key: observation key}."""
    if not text:
        return dict(DEFAULT_KEY_MAP)
    if text in KEY_MAP_PRESETS:
        return dict(KEY_MAP_PRESETS[text])
    mapping = dict(DEFAULT_KEY_MAP)
    for item in text.split(","):
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(
                f"--key_map takes FROM=TO pairs separated by commas or a preset "
                f"({', '.join(KEY_MAP_PRESETS)}); got {item!r}"
            )
        mapping[source.strip()] = target.strip()
    return mapping


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


def _flatten(observation: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in observation.items():
        key = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _hwc(value: Any) -> Any:
    """A CHW image (openpi's ALOHA client) as HWC; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[0] == 3:
        if value.shape[-1] != 3:
            return np.ascontiguousarray(value.transpose(1, 2, 0))
    return value


def read_request(
    message: Any, key_map: Mapping[str, str], allowed: set[str]
) -> tuple[dict, dict, list[str]]:
    """A decoded message -> (observation, control options, ignored keys), or ValueError."""
    if not isinstance(message, Mapping):
        raise ValueError(
            f"an observation must be a map of names to values, got {type(message).__name__}"
        )
    observation, control, ignored = {}, {}, []
    for key, value in _flatten(message).items():
        key = key_map.get(key, key)
        if key in CONTROL_KEYS:
            control[key] = bool(value)
        elif key in allowed:
            observation[key] = value.decode() if isinstance(value, bytes) else _hwc(value)
        else:
            ignored.append(key)
    return observation, control, ignored


class Episode:
    """One connection's episode on a fork of the policy, with its request counter."""

    def __init__(self, policy: Policy, seed: int, chunk_steps: int):
        self.policy, self.seed, self.chunk_steps = policy.fork(), seed, chunk_steps
        self.request, self.instruction, self.steps = 0, None, 0

    def reset(self) -> None:
        self.policy.reset()
        self.request, self.instruction, self.steps = 0, None, 0

    def step(self, observation: dict, control: dict) -> dict:
        """Runs one request; on any error the episode is left as it was."""
        saved = self.policy.save_episode(), self.request, self.instruction, self.steps
        try:
            instruction = observation.get("instruction")
            if self.steps and instruction is not None and instruction != self.instruction:
                log.info("instruction changed (%r -> %r): new episode", self.instruction, instruction)
                self.reset()
            if control.get("observe") and self.chunk_steps > 1:
                raise ValueError(
                    "'observe' messages and --chunk_steps > 1 are two ways to time the history: "
                    "send the frames of executed steps, or let the server assume them, not both"
                )
            if self.steps and self.chunk_steps > 1:
                self.policy.skip(self.chunk_steps - 1)
            self.instruction = instruction if instruction is not None else self.instruction
            self.steps += 1
            if control.get("observe"):
                self.policy.observe(observation)
                return {"observed": np.int32(1)}
            out = self.policy.infer(
                observation,
                seed=(self.seed, self.request),
                return_foresight=control.get("return_foresight", False),
            )
            self.request += 1
            if self.chunk_steps:
                out["actions"] = out["actions"][: self.chunk_steps]
            return {k: np.asarray(v) for k, v in out.items()}
        except BaseException:
            state, self.request, self.instruction, self.steps = saved
            self.policy.restore_episode(state)
            raise


# What a bad request raises (from the observation contract); anything else is a server fault.
BAD_REQUEST = (KeyError, ValueError, TypeError)


def warm_up_observation(metadata: Mapping[str, Any], size: int = 224) -> dict:
    """A blank observation of the policy's shape, to compile and warm it before serving."""
    observation = {camera: np.zeros((size, size, 3), np.uint8) for camera in metadata["cameras"]}
    observation["state"] = np.zeros(metadata["state_dim"], np.float32)
    observation["instruction"] = "warm up"
    return observation


class PolicyServer:
    """Serves one loaded policy to any number of websocket connections.

    key_map: client key -> observation key (`parse_key_map`); chunk_steps: actions per reply, all
    executed by the client before its next request (0: the whole chunk, one step per request).
    """

    def __init__(
        self,
        policy: Policy,
        seed: int = 0,
        chunk_steps: int = 0,
        key_map: Mapping[str, str] | None = None,
    ):
        self.policy = policy
        self.seed = seed
        self.chunk_steps = chunk_steps
        self.key_map = dict(DEFAULT_KEY_MAP if key_map is None else key_map)
        self.metadata = {
            **policy.metadata,
            "actions_per_reply": chunk_steps or policy.metadata["chunk_size"],
            "key_map": self.key_map,
        }
        self.allowed = set(self.metadata["observation_keys"])
        self.ready = False
        # One device: requests run one at a time, off the event loop.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def warm_up(self) -> float:
        """Runs one request on a throw-away episode (JAX compiles here); returns seconds."""
        start = time.perf_counter()
        Episode(self.policy, self.seed, 0).step(warm_up_observation(self.policy.metadata), {})
        self.ready = True
        return time.perf_counter() - start

    def _answer(self, episode: Episode, observation: dict, control: dict) -> dict:
        start = time.perf_counter()
        out = episode.step(observation, control)
        out["server_timing"] = {"infer_ms": 1e3 * (time.perf_counter() - start)}
        return out

    async def handle(self, connection: ServerConnection) -> None:
        where = connection.remote_address
        log.info("connection from %s: a new episode", where)
        episode, warned = Episode(self.policy, self.seed, self.chunk_steps), False
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
                observation, control, ignored = read_request(
                    unpackb(message), self.key_map, self.allowed
                )
                if ignored and not warned:
                    log.warning("%s: ignoring keys the model does not read: %s", where, ignored)
                    warned = True
                if control.get("reset"):
                    await loop.run_in_executor(self.executor, episode.reset)
                answer = await loop.run_in_executor(
                    self.executor, self._answer, episode, observation, control
                )
                await connection.send(packb(answer))
            except ConnectionClosed:
                break
            except BAD_REQUEST as e:
                text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                log.warning("bad observation from %s: %s", where, text)
                await connection.send(f"bad observation: {text}")
            except Exception as e:  # a server fault: logged with its traceback, the server lives
                log.exception("server error while serving %s", where)
                await connection.send(f"server error: {type(e).__name__}: {e}")

    def _health(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            if self.ready:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "warming up\n")
        return None

    async def run(
        self,
        host: str,
        port: int,
        ready: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Warms up, then serves until cancelled (or until `stop` is set); sets `ready` once
        listening."""
        if not self.ready:
            seconds = await asyncio.get_running_loop().run_in_executor(self.executor, self.warm_up)
            log.info("warmed up in %.1f s", seconds)
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
            log.info("serving %s policy on ws://%s:%d", self.metadata["backend"], host, port)
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference.serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="a run, an export or an import")
    parser.add_argument("--backend", default="jax", choices=backends(), help="the runtime")
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dataset", help="whose statistics (default: the first)")
    parser.add_argument(
        "--chunk_steps", type=int, default=0, help="actions per reply, all executed (0: all)"
    )
    parser.add_argument(
        "--key_map",
        default="",
        help=f"client keys -> ours: a preset ({', '.join(KEY_MAP_PRESETS)}) or FROM=TO,...",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default="cuda", help="torch backend: device (else cpu)")
    parser.add_argument(
        "--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="torch backend"
    )
    parser.add_argument(
        "--attention", default="eager", choices=("eager", "sdpa"), help="torch backend: sdpa is "
        "torch's fused attention (equal to eager within 1e-5 in fp32; faster)"
    )
    parser.add_argument(
        "--rope", default="reciprocal", choices=("reciprocal", "divide"),
        help="torch backend: divide computes RoPE angles as the original F1 code does",
    )
    parser.add_argument("--compile", action="store_true", help="torch backend: torch.compile")
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> Policy:
    """The policy of --backend: jax loads a run, an export or an import; torch an export."""
    if args.backend != "torch":
        return load_policy(args.checkpoint, args.backend, dataset=args.dataset)
    return load_policy(
        args.checkpoint,
        "torch",
        dataset=args.dataset,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        rope=args.rope,
        compile=args.compile,
    )


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        key_map = parse_key_map(args.key_map)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    server = PolicyServer(load(args), args.seed, args.chunk_steps, key_map)
    asyncio.run(server.run(args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
