"""The policies the harness drives, behind the project's one policy interface.

    policy.reset()                      at the start of every episode
    policy.observe(observation)         a step executed open-loop from a chunk (history)
    policy.infer(observation, seed=...) -> {"actions": f32 [chunk, 7] in robot units}
    policy.metadata                     what the harness records about it

`load_policy` loads an f1-jax checkpoint through `inference.load_policy` (either runtime) and
checks that it is a LIBERO model; `ServerPolicy` drives any openpi-protocol websocket server
(f1-jax's `inference.serve` or openpi's own, e.g. π0 on LIBERO) through the real `openpi_client`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inference.interface import backends
from inference.interface import load_policy as load_any_policy
from libero_eval import conventions


def load_policy(checkpoint: str, backend: str = "jax", dataset: str | None = None):
    """An f1-jax checkpoint as a harness policy (`inference.interface.Policy`). backend "jax": a
    run, an export or an import; "torch": an export. dataset: whose statistics (default first).
    ValueError unless its statistics are LIBERO's (state 8, action 7)."""
    if backend not in backends():
        raise ValueError(f"unknown backend {backend!r}; expected one of {backends()}")
    policy = load_any_policy(checkpoint, backend, dataset=dataset)
    meta = policy.metadata
    if meta["state_dim"] != conventions.STATE_DIM or meta["action_dim"] != conventions.ACTION_DIM:
        raise ValueError(
            f"{checkpoint} takes a state of {meta['state_dim']} dims and returns "
            f"{meta['action_dim']}-dim actions; LIBERO's are {conventions.STATE_DIM} (eef pos, "
            f"axis-angle, finger qpos) and {conventions.ACTION_DIM}: not a LIBERO model"
        )
    return policy


# openpi's LIBERO example sends these keys (and resizes with padding to 224 on the client).
OPENPI_KEYS = {"primary": "observation/image", "wrist": "observation/wrist_image"}
OPENPI_STATE, OPENPI_PROMPT, OPENPI_IMAGE_SIZE = "observation/state", "prompt", 224
KEY_STYLES = ("auto", "f1", "openpi")


class ServerPolicy:
    """A policy behind an openpi-protocol websocket server, one connection per worker.

    Key style from the server's metadata: f1-jax's server (its metadata lists `observation_keys`
    and a `key_map`) gets standard camera names, "state", "instruction", "reset": True on an
    episode's first request and the steps executed open-loop as "observe": True messages, so its
    frame history counts environment steps exactly as a local policy's; any other server gets
    openpi's LIBERO example keys ("observation/image", "observation/wrist_image",
    "observation/state", "prompt") on the steps it acts on only.
    key_style: "auto" (from the metadata), "f1" or "openpi". image_size: resize the cameras with
    padding on the client first (default: none for f1-jax, whose contract resizes; 224 for
    openpi servers, as openpi's example does).
    """

    def __init__(self, address: str, image_size: int | None = None, key_style: str = "auto"):
        if key_style not in KEY_STYLES:
            raise ValueError(f"key_style must be one of {KEY_STYLES}, got {key_style!r}")
        from openpi_client import websocket_client_policy  # deferred: only for --server

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--server must be HOST:PORT, got {address!r}")
        self.client = websocket_client_policy.WebsocketClientPolicy(host, int(port))
        server = dict(self.client.get_server_metadata() or {})
        keys = set(server.get("observation_keys", ()))
        if key_style == "auto":
            self.f1_style = "key_map" in server and {"primary", "wrist", "state"} <= keys
        else:
            self.f1_style = key_style == "f1"
        self.image_size = (
            image_size if image_size else (None if self.f1_style else OPENPI_IMAGE_SIZE)
        )
        self._first = True
        self.metadata = {
            "kind": "server",
            "server": address,
            "key_style": "f1" if self.f1_style else "openpi",
            "image_size": self.image_size,
            "server_metadata": _jsonable(server),
        }

    def reset(self) -> None:
        self._first = True

    def observe(self, observation: Mapping[str, Any]) -> None:
        """f1-jax's server: the frame enters its history; other servers see only the steps they
        act on."""
        if self.f1_style:
            reply = self.client.infer({**self._request(observation), "observe": True})
            if "observed" not in reply:
                raise RuntimeError(f"the server did not take an 'observe' message: {reply}")

    def _image(self, frame: np.ndarray) -> np.ndarray:
        if self.image_size is None:
            return frame
        from openpi_client import image_tools  # deferred: only for --server

        size = self.image_size
        return image_tools.convert_to_uint8(image_tools.resize_with_pad(frame, size, size))

    def _request(self, observation: Mapping[str, Any]) -> dict:
        if self.f1_style:
            request = {k: self._image(observation[k]) for k in ("primary", "wrist")}
            request["state"] = observation["state"]
            request["instruction"] = observation["instruction"]
            if self._first:
                request["reset"] = True
        else:
            request = {OPENPI_KEYS[k]: self._image(observation[k]) for k in ("primary", "wrist")}
            request[OPENPI_STATE] = observation["state"]
            request[OPENPI_PROMPT] = observation["instruction"]
        self._first = False
        return request

    def infer(self, observation: Mapping[str, Any], seed: Any = None) -> dict:
        """seed: unused (a server samples with its own seed path: (its seed, request n))."""
        return self.client.infer(self._request(observation))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
