"""One policy interface for every runtime, and the registry of backends.

    policy = load_policy("f1_export/", backend="torch", device="cuda", dtype="bf16")
    policy.reset()                                   # at every episode start
    out = policy.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "..."}, seed=0)
    out["actions"]                                   # float32 [chunk, action_dim], robot units
    policy.observe(obs)                              # a step executed open-loop from a chunk
    policy.metadata                                  # what a client sends and gets back

A backend is a class with the methods of `Policy` below; `register_backend` names it. The JAX
policy (`inference.jax_policy.Policy`: a run, an import or an export) and the PyTorch runtime
(`f1_torch.policy.TorchPolicy`: an export) are registered here. Their modules are imported only
when their backend is chosen, so a robot computer with PyTorch alone never imports JAX.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np


class Policy(Protocol):
    """What the server, the built-in evaluation and the LIBERO harness call."""

    backend: str  # the registry name

    @classmethod
    def load(cls, checkpoint: str, **options: Any) -> Policy:
        """Loads a checkpoint directory (what each backend accepts: its docstring)."""
        ...

    @property
    def metadata(self) -> dict[str, Any]:
        """backend, source, dataset, cameras, state_dim, action_dim, chunk_size,
        history_offsets, observation_keys."""
        ...

    def reset(self) -> None:
        """Starts a new episode: forgets the frame history and the frame-code cache."""
        ...

    def observe(self, observation: Mapping[str, Any]) -> None:
        """Records a step's frame without inferring (steps executed open-loop from a chunk)."""
        ...

    def skip(self, steps: int) -> None:
        """Counts `steps` environment steps executed without an observation."""
        ...

    def infer(
        self,
        observation: Mapping[str, Any],
        *,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        return_foresight: bool = False,
    ) -> dict[str, np.ndarray]:
        """One control step: {"actions": float32 [chunk, action_dim] in robot units} (+
        "foresight_tokens", "foresight_image" with return_foresight). seed: the step's
        randomness (foresight sampling, starting noise); noise: the starting noise itself."""
        ...

    def fork(self) -> Policy:
        """Another episode state sharing the weights and compiled programs (one per robot)."""
        ...

    def save_episode(self) -> Any:
        """The episode state (history, frame codes), for `restore_episode`."""
        ...

    def restore_episode(self, state: Any) -> None:
        """Puts back a state from `save_episode`: a failed request leaves no trace."""
        ...


# backend name -> "module:Class". Imported on first use only.
_BACKENDS: dict[str, str] = {
    "jax": "inference.jax_policy:Policy",
    "torch": "f1_torch.policy:TorchPolicy",
}


def register_backend(name: str, target: str) -> None:
    """Makes `load_policy(..., backend=name)` load with `target` ("module:Class")."""
    if ":" not in target:
        raise ValueError(f"a backend is 'module:Class', got {target!r}")
    _BACKENDS[name] = target


def backends() -> tuple[str, ...]:
    return tuple(sorted(_BACKENDS))


def backend_class(name: str) -> type:
    """The policy class registered as `name` (imports its runtime now)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; registered: {', '.join(backends())}")
    module, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_policy(checkpoint: str, backend: str = "jax", **options: Any) -> Policy:
    """The policy of `backend` loaded from `checkpoint`; options go to its `load` (options set
    to None are left to the backend's defaults)."""
    options = {k: v for k, v in options.items() if v is not None}
    return backend_class(backend).load(checkpoint, **options)
