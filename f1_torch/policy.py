"""Closed-loop inference with an exported F1 in PyTorch.

    policy = TorchPolicy.load("EXPORT_DIR", device="cuda", dtype="bf16")
    policy.reset()                                             # at every episode start
    out = policy.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "..."}, seed=0)
    out["actions"]                                             # [chunk, action_dim], robot units

Observations become model inputs through the observation contract the export carries
(`norm_stats.json` -> `f1_common.transforms.DeploymentContract` -> `ObservationTransform`, the same
object the JAX `inference.jax_policy.Policy` and the training pipeline use), so the model sees what it
saw in training, and actions are returned in the robot's units.
"""

from __future__ import annotations

import copy
import warnings
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from f1_common import transforms
from f1_common.episode import EpisodeState
from f1_common.frame_cache import FrameCodeCache
from f1_common.model_config import F1Config, read_config, with_sampling
from f1_common.tokenizer import Tokenizer
from f1_torch.loader import load_model
from f1_torch.model import F1

# What the model reads from an example (`ObservationSpec.example_spec(training=False)`).
MODEL_KEYS = ("images", "image_mask", "tokens", "token_mask", "state")


def check_contract(config: F1Config, spec: transforms.ObservationSpec) -> None:
    """Raises ValueError unless the observation contract's sizes fit the model."""
    checks = {
        "und_image_size == SigLIP image size": spec.und_image_size == config.siglip.image_size,
        "gen_crop == VQ-VAE image size": spec.gen_crop == config.vqvae.image_size,
        "len(history_offsets) == history frames": len(spec.history_offsets)
        == config.foresight.history_frames,
        "chunk_size == the model's chunk": spec.chunk_size == config.action.chunk_size,
        "state_dim <= the model's state width": spec.state_dim <= config.action.state_dim,
        "action_dim <= the model's action width": spec.action_dim <= config.action.action_dim,
    }
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise ValueError(f"norm_stats.json does not fit config.json: {broken} must hold ({spec}).")


class TorchPolicy(EpisodeState):
    """An exported F1 behind the observation contract, with the episode's frame history and
    (by default) its frame-code cache.

    model: a loaded F1; contract: the export's DeploymentContract; dataset: whose
    statistics (un)normalise state and actions (default: the contract's default dataset);
    frame_cache: encode each generation frame once per episode (False: encode the whole history
    window on every call, e.g. to measure the cache's gain).
    """

    def __init__(
        self,
        model: F1,
        contract: transforms.DeploymentContract,
        dataset: str | None = None,
        tokenizer_path: str | None = None,
        frame_cache: bool = True,
    ):
        check_contract(model.config, contract.spec)
        self.model = model
        self.contract = contract
        self.spec = contract.spec
        self.dataset = dataset or contract.default_dataset
        self.tokenizer = Tokenizer(
            tokenizer_path or contract.tokenizer_path, contract.spec.max_token_len
        )
        self.transform = contract.transform(self.tokenizer, dataset)
        self.frame_cache = FrameCodeCache(enabled=frame_cache)

    backend = "torch"

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        *,
        dataset: str | None = None,
        tokenizer_path: str | None = None,
        frame_cache: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        num_steps: int | None = None,
        attention: str = "eager",
        rope: str = "reciprocal",
        compile: bool = False,
    ) -> TorchPolicy:
        """Loads `model.safetensors` + `config.json` + `norm_stats.json` (+ `tokenizer.model`).

        device: where the model runs; dtype: 'fp32' (parity with f1_jax), 'bf16' (as the
        released model runs) or 'fp16' (GPUs without bf16). attention: 'eager' or 'sdpa' (torch's
        fused attention); rope: 'reciprocal' (as f1_jax) or 'divide' (as the original F1 code);
        compile: torch.compile the model's parts (see `F1.compile_parts`). top_k / top_p: the
        foresight sampling rule (default VAR's 900 / 0.95 of the original; top_k 1 is greedy);
        num_steps: Euler steps (default config.json's).
        """
        directory = os.fspath(directory)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"no CUDA device: {directory} runs on the CPU")
            device = "cpu"
        config = with_sampling(
            read_config(directory), top_k=top_k, top_p=top_p, num_steps=num_steps
        )
        contract = transforms.read_deployment_contract(directory)
        model = load_model(
            directory,
            dtype=dtype,
            device=device,
            config=config,
            attention=attention,
            rope=rope,
            compile=compile,
        )
        return cls(model, contract, dataset, tokenizer_path, frame_cache)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def encoded_frames(self) -> int:
        """VQ-VAE encodings run by this policy (the frame-code cache's saving)."""
        return self.frame_cache.encoded_frames

    def fork(self) -> TorchPolicy:
        """A policy with its own episode state (history, frame codes) sharing the loaded model:
        one per robot or server connection."""
        other = copy.copy(self)
        other.transform = self.contract.transform(self.tokenizer, self.dataset)
        other.frame_cache = FrameCodeCache(enabled=self.frame_cache.enabled)
        return other

    @property
    def metadata(self) -> dict[str, Any]:
        """What a client sends and gets back (the server sends it on connect)."""
        return {
            "backend": self.backend,
            "source": dict(self.contract.source),
            "dataset": self.dataset,
            **self.transform.metadata(),
        }

    def preprocess(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Observation -> one example (`spec.example_spec(training=False)` keys + "frame_index").
        Pushes the current generation frame into the history: once per environment step."""
        return self.transform(observation)

    # --- model -----------------------------------------------------------------------------

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        return self.model.frame_codes(
            torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        )

    def model_inputs(self, example: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One example -> the model's inputs (MODEL_KEYS) with a batch axis, on the device."""
        return {
            k: torch.from_numpy(np.ascontiguousarray(example[k]))[None].to(self.device)
            for k in MODEL_KEYS
        }

    def history_codes(self, example: Mapping[str, np.ndarray]) -> torch.Tensor:
        """Codes of the example's history frames [T, sum(pn^2)], through the cache if enabled."""
        frames = example["gen_frames"][: len(self.spec.history_offsets)]
        with torch.inference_mode():
            return torch.stack(self.frame_cache.codes(frames, example["frame_index"], self._encode))

    def _generator(self, seed: int | Sequence[int] | None, generator: torch.Generator | None):
        if generator is not None and seed is not None:
            raise ValueError("Give seed or generator, not both.")
        if seed is None:
            return generator
        if not isinstance(seed, (int, np.integer)):  # a seed path: (run seed, episode, step)
            seed = int(np.random.SeedSequence([int(n) for n in seed]).generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def infer_normalized(
        self,
        example: Mapping[str, np.ndarray],
        *,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        noise: np.ndarray | torch.Tensor | None = None,
        return_foresight: bool = False,
    ) -> dict[str, np.ndarray]:
        """The model on one preprocessed example.

        Returns {"actions": float32 [chunk, model action width] in normalised units}, with
        return_foresight also "foresight_tokens" int32 [n] and "foresight_image" float32
        [h, w, 3] in [-1, 1].
        """
        inputs = self.model_inputs(example)
        codes = self.history_codes(example)[None]
        if noise is not None:
            noise = torch.as_tensor(noise, dtype=torch.float32).reshape(
                1, self.model.config.action.chunk_size, -1
            )
        out = self.model.sample_actions(
            inputs,
            history_codes=codes,
            generator=self._generator(seed, generator),
            noise=noise,
            return_foresight=return_foresight,
        )
        if not return_foresight:
            return {"actions": out[0].cpu().numpy()}
        actions, foresight = out
        return {
            "actions": actions[0].cpu().numpy(),
            "foresight_tokens": foresight["tokens"][0].to(torch.int32).cpu().numpy(),
            "foresight_image": foresight["image"][0].cpu().numpy(),
        }

    def infer(
        self,
        observation: Mapping[str, Any],
        *,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        noise: np.ndarray | torch.Tensor | None = None,
        return_foresight: bool = False,
    ) -> dict[str, np.ndarray]:
        """One control step.

        observation: camera images uint8 [H, W, 3] by standard name ("primary", "wrist", ...) or
          by the dataset's keys, "state" [Ds] in robot units, "instruction" str.
        seed / generator: randomness of the foresight sampling and the starting noise (one of
          them; neither: torch's global generator). A seed may be a path such as (run seed,
          episode, step), drawn through NumPy's SeedSequence. noise: [chunk, action width] starting noise.
        Returns {"actions": float32 [chunk, action_dim] in robot units}; with return_foresight
          also "foresight_tokens" int32 [n] and "foresight_image" uint8 [h, w, 3] (the predicted
          generation-camera frame `target_offsets[0]` steps ahead).
        """
        out = self.infer_normalized(
            self.preprocess(observation),
            seed=seed,
            generator=generator,
            noise=noise,
            return_foresight=return_foresight,
        )
        result = {"actions": self.transform.robot_actions(out["actions"])}
        if return_foresight:
            result["foresight_tokens"] = out["foresight_tokens"]
            result["foresight_image"] = transforms.foresight_to_uint8(out["foresight_image"])
        return result
