"""The policies the harness drives, behind one small interface.

    policy.reset()                      at the start of every episode
    policy.observe(observation)         a step executed open-loop from a chunk (history)
    policy.infer(observation, seed)     -> {"actions": f32 [chunk, 7] in robot units}
    policy.metadata                     what the harness records about it

`load_policy` builds an f1-jax policy of either runtime (the interface issue 25's
`inference.load_policy` will offer; swapping to it is the one line in `load_policy`);
`ServerPolicy` drives any openpi-protocol websocket server (f1-jax's `serve` or openpi's own, e.g.
π0 on LIBERO) through the real `openpi_client`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from libero_eval import conventions

BACKENDS = ("jax", "torch")


class LocalPolicy:
    """An f1-jax `Policy` or `f1_torch.TorchPolicy` in this process."""

    def __init__(self, policy: Any, backend: str, checkpoint: str):
        self.policy, self.backend = policy, backend
        transform = policy.transform
        self.metadata = {
            "kind": "local",
            "backend": backend,
            "checkpoint": str(checkpoint),
            "chunk_size": int(policy.spec.chunk_size),
            "state_dim": int(transform.state_width),
            "action_dim": int(transform.action_dim),
            "observation_contract": {
                "und_image_size": int(policy.spec.und_image_size),
                "gen_crop": int(policy.spec.gen_crop),
                "cameras": {k: v for k, v in dict(transform.cameras).items() if v},
            },
        }
        if self.metadata["state_dim"] != conventions.STATE_DIM:
            raise ValueError(
                f"{checkpoint} expects a state of {self.metadata['state_dim']} dims; LIBERO's is "
                f"{conventions.STATE_DIM} (eef pos, axis-angle, finger qpos): not a LIBERO model"
            )
        if self.metadata["action_dim"] != conventions.ACTION_DIM:
            raise ValueError(
                f"{checkpoint} returns {self.metadata['action_dim']}-dim actions; LIBERO takes "
                f"{conventions.ACTION_DIM}: not a LIBERO model"
            )

    def reset(self) -> None:
        self.policy.reset()

    def observe(self, observation: Mapping[str, Any]) -> None:
        self.policy.observe(observation)

    def infer(self, observation: Mapping[str, Any], seed: int | None = None) -> dict:
        seed = 0 if seed is None else int(seed)
        if self.backend == "jax":
            import jax  # deferred: JAX only for the jax backend (workers of --server skip it)

            return self.policy.infer(observation, jax.random.key(seed))
        return self.policy.infer(observation, seed=seed)


def load_policy(checkpoint: str, backend: str = "jax", dataset: str | None = None) -> LocalPolicy:
    """An f1-jax checkpoint as a harness policy. backend "jax": a run, an export or an import;
    "torch": an export, on the PyTorch runtime. dataset: whose statistics (default the first)."""
    if backend == "jax":
        from f1_jax.policy import Policy  # deferred: JAX only for --backend jax

        return LocalPolicy(Policy.from_checkpoint(checkpoint, dataset=dataset), backend, checkpoint)
    if backend == "torch":
        from f1_torch.policy import TorchPolicy  # deferred: torch only for --backend torch

        policy = TorchPolicy.from_export(checkpoint, dataset=dataset)
        return LocalPolicy(policy, backend, checkpoint)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


# openpi's LIBERO example sends these keys (and resizes with padding to 224 on the client).
OPENPI_KEYS = {"primary": "observation/image", "wrist": "observation/wrist_image"}
OPENPI_STATE, OPENPI_PROMPT, OPENPI_IMAGE_SIZE = "observation/state", "prompt", 224


class ServerPolicy:
    """A policy behind an openpi-protocol websocket server, one connection per worker.

    Key style from the server's metadata: f1-jax's server lists `observation_keys` and gets
    standard camera names, "state", "prompt" and "reset": True on an episode's first request (it
    keeps a frame history per connection); any other server gets openpi's LIBERO example keys
    ("observation/image", "observation/wrist_image", "observation/state", "prompt").
    image_size: resize the cameras with padding on the client first (default: none for f1-jax,
    whose contract resizes; 224 for openpi servers, as openpi's example does).
    """

    def __init__(self, address: str, image_size: int | None = None):
        from openpi_client import websocket_client_policy  # deferred: only for --server

        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--server must be HOST:PORT, got {address!r}")
        self.client = websocket_client_policy.WebsocketClientPolicy(host, int(port))
        server = dict(self.client.get_server_metadata() or {})
        keys = set(server.get("observation_keys", ()))
        self.f1_style = {"primary", "wrist", "state", "reset"} <= keys
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
        """Nothing: a server sees only the observations it is asked to act on."""

    def _image(self, frame: np.ndarray) -> np.ndarray:
        if self.image_size is None:
            return frame
        from openpi_client import image_tools  # deferred: only for --server

        size = self.image_size
        return image_tools.convert_to_uint8(image_tools.resize_with_pad(frame, size, size))

    def infer(self, observation: Mapping[str, Any], seed: int | None = None) -> dict:
        """seed: unused (a server samples with its own seeding)."""
        if self.f1_style:
            request = {k: self._image(observation[k]) for k in ("primary", "wrist")}
            request["state"] = observation["state"]
            request["prompt"] = observation["instruction"]
            if self._first:
                request["reset"] = True
        else:
            request = {OPENPI_KEYS[k]: self._image(observation[k]) for k in ("primary", "wrist")}
            request[OPENPI_STATE] = observation["state"]
            request[OPENPI_PROMPT] = observation["instruction"]
        self._first = False
        return self.client.infer(request)


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
