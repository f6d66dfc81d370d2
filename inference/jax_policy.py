"""Closed-loop inference with a trained F1, from a run, an import output or an export.

    policy = Policy.load("WORKDIR")                      # or an export / import directory
    policy.reset()                                       # at every episode start
    out = policy.infer({"primary": rgb, "wrist": rgb, "state": s, "instruction": "..."}, seed=0)
    out["actions"]                                       # [chunk, action_dim], robot units

It implements `inference.interface.Policy` (the `jax` backend of `load_policy`).

Observations become model inputs through the observation contract (`f1_common.transforms`, the
functions the training pipeline uses, in eval mode) and are normalised with the statistics the
run recorded (a run's checkpoint record, or the `norm_stats.json` an export carries), so the
model sees exactly what it saw in training.

The frame-code cache: the model looks at the generation camera at t-9, t-6, t-3 and t; the frozen
VQ-VAE encodes each new frame once and its multi-scale codes are kept for the later steps that
look at it (`reset()` clears them). Actions and foresight are bit-identical with and without it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from conversion import loaders
from f1_common import transforms
from f1_common.episode import EpisodeState
from f1_common.export_layout import CONFIG_FILE, MODEL_FILE, NORM_STATS_FILE
from f1_common.frame_cache import FrameCodeCache
from f1_common.tokenizer import Tokenizer
from f1_jax.models.f1 import F1, F1Config, model_inputs, sample_actions, to_unit_range
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import state as st
from f1_jax.training.run_record import read_run_record


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """Where a policy's weights and statistics came from, and the dataset it acts for.

    kind: "run", "import" or "export". config: the run's recipe (None for imports and exports).
    step: the run's checkpoint step (None otherwise). directory: the run's checkpoints/ dir, or
    the import / export directory.
    """

    kind: str
    config: ml_collections.ConfigDict | None
    model_config: F1Config
    spec: transforms.ObservationSpec
    tokenizer_path: str
    dataset_name: str
    dataset_stats: Mapping[str, Any]  # {"state", "action", "norm_mode", ...} of dataset_name
    cameras: Mapping[str, str | None]  # standard camera -> dataset key
    step: int | None
    directory: str


def _info(
    kind: str,
    contract: transforms.DeploymentContract,
    model_config: F1Config,
    dataset: str | None,
    directory: str,
    config: ml_collections.ConfigDict | None = None,
    step: int | None = None,
) -> CheckpointInfo:
    entry = contract.dataset(dataset)
    return CheckpointInfo(
        kind=kind,
        config=config,
        model_config=model_config,
        spec=contract.spec,
        tokenizer_path=contract.tokenizer_path,
        dataset_name=dataset or contract.default_dataset,
        dataset_stats=entry,
        cameras=entry["cameras"],
        step=step,
        directory=directory,
    )


def read_checkpoint_info(
    path: str, step: int | None = None, dataset: str | None = None
) -> CheckpointInfo:
    """Reads the JSON record of a run (workdir or checkpoints/) at `step` (default: latest)."""
    record = read_run_record(path, step)
    name = record.check_dataset(dataset)
    return _info(
        "run",
        record.deployment_contract(name),
        record.model_config,
        name,
        record.directory,
        record.config,
        record.step,
    )


def checkpoint_kind(path: str) -> str:
    """ "export" (model.safetensors + config.json), "import" (an `import` output) or "run"."""
    base = ckpt.as_path(path)
    if (base / MODEL_FILE).exists() and (base / CONFIG_FILE).exists():
        return "export"
    if (base / "model_config.json").exists() and (base / "params").exists():
        return "import"
    return "run"


def _load_converted(path: str, kind: str):
    """(params, model config, contract) of an export or an import output."""
    if kind == "export":
        return loaders.load_export(path)
    params, config, _ = loaders.load_import(path)
    contract = loaders.import_contract(path)
    if contract is None:
        raise FileNotFoundError(
            f"{path} holds weights but no {NORM_STATS_FILE}, so actions cannot be "
            "given in robot units: import an export of a run (`python -m conversion export "
            "--run`), which carries it, or pass statistics=DIR_WITH_NORM_STATS."
        )
    return params, config, contract


def serving_config(config: F1Config, top_k: int | None) -> F1Config:
    """The model config the policy runs: a run's, with XLA's attention (a run trained with TPU
    splash attention is served anywhere; the two compute the same) and, if given, top-k."""
    config = dataclasses.replace(config, attention="xla")
    if top_k is None:
        return config
    return dataclasses.replace(
        config, foresight=dataclasses.replace(config.foresight, top_k=int(top_k))
    )


def seed_key(seed: int | Sequence[int]) -> jax.Array:
    """A step's key: key(seed), or for a seed path (run seed, episode, step, ...) the run
    seed's key with each further number folded in."""
    path = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    key = jax.random.key(int(path[0]))
    for n in path[1:]:
        key = jax.random.fold_in(key, int(n))
    return key


class Policy(EpisodeState):
    """A trained F1 behind the observation contract, with the episode's frame history and
    frame-code cache. `fork()` gives another episode state sharing the weights and programs."""

    backend = "jax"

    def __init__(
        self,
        model: F1,
        params: Any,
        info: CheckpointInfo,
        tokenizer_path: str | None = None,
        frame_cache: bool = True,
    ):
        self.model = model
        self.params = params
        self.info = info
        self.spec = info.spec
        self.frame_cache = FrameCodeCache(enabled=frame_cache)
        self.tokenizer = Tokenizer(tokenizer_path or info.tokenizer_path, info.spec.max_token_len)
        self.transform = transforms.ObservationTransform(
            info.spec, info.cameras, info.dataset_stats, self.tokenizer
        )
        self._calls = 0  # infer calls without a seed
        # One compiled program per value of return_foresight, reused for every call.
        self._infer_fn = jax.jit(self._infer_device, static_argnames="return_foresight")
        self._codes_fn = jax.jit(self._frame_codes_device)

    @classmethod
    def load(
        cls,
        path: str,
        step: int | None = None,
        dataset: str | None = None,
        use_ema: bool = False,
        tokenizer_path: str | None = None,
        device: jax.Device | None = None,
        frame_cache: bool = True,
        statistics: str | None = None,
        top_k: int | None = None,
    ) -> "Policy":
        """Loads weights onto one device and the statistics that un-normalise actions.

        path: a run (its workdir or checkpoints/; only the parameters are restored, never the
          optimizer state), an export (`python -m conversion export --run`) or an import output
          (`python -m conversion import ...`); local or a URI.
        step, use_ema: runs only (default: the latest step). dataset: whose statistics
          (un)normalise state and actions (default: the first of the run's mixture).
        tokenizer_path: overrides the recorded tokenizer (a run trained on another machine).
        statistics: a directory with a norm_stats.json (an export) for an import output that has
          none.
        top_k: overrides the foresight sampling's top-k (1: greedy).
        """
        kind = checkpoint_kind(path)
        sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        if kind == "run":
            info = read_checkpoint_info(path, step, dataset)
            model = F1(serving_config(info.model_config, top_k))
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                nn.unbox(st.abstract_params(model)),
            )
            params = ckpt.restore_params(info.directory, info.step, abstract, use_ema=use_ema)
            return cls(model, params, info, tokenizer_path, frame_cache)
        if step is not None or use_ema:
            raise ValueError(f"{path} is an {kind} directory: step and use_ema select run steps.")
        if statistics is not None and kind == "import":
            params, model_config, _ = loaders.load_import(path)
            contract = transforms.read_deployment_contract(statistics)
        else:
            params, model_config, contract = _load_converted(path, kind)
        info = _info(kind, contract, model_config, dataset, str(path))
        params = jax.device_put(params, sharding)
        return cls(
            F1(serving_config(model_config, top_k)), params, info, tokenizer_path, frame_cache
        )

    def fork(self) -> "Policy":
        """A policy with its own episode state (history, frame-code cache) sharing the weights
        and the compiled programs: one per robot or server connection."""
        other = copy.copy(self)
        other.transform = transforms.ObservationTransform(
            self.spec, self.info.cameras, self.info.dataset_stats, self.tokenizer
        )
        other.frame_cache = FrameCodeCache(enabled=self.frame_cache.enabled)
        return other

    @property
    def metadata(self) -> dict[str, Any]:
        """What a client sends and gets back (`inference.interface.Policy.metadata`)."""
        info = self.info
        return {
            "backend": self.backend,
            "source": {"kind": info.kind, "path": str(info.directory), "step": info.step},
            "dataset": info.dataset_name,
            **self.transform.metadata(),
        }

    @property
    def history(self) -> transforms.FrameHistory:
        return self.transform.history

    def preprocess(self, observation: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Observation -> one model example (`spec.example_spec(training=False)` keys).

        Pushes the current generation frame into the episode history: call it (or `infer`) once per
        environment step, and `observe` on the steps in between.
        """
        example = self.transform(observation)
        example.pop("frame_index")
        return example

    # --- model -----------------------------------------------------------------------------------

    def _frame_codes_device(self, params: Any, frame: jax.Array) -> jax.Array:
        """One uint8 frame [h, w, 3] -> its multi-scale codes int32 [L]."""
        frames = to_unit_range(frame)[None, None]
        codes = self.model.apply({"params": params}, frames, method=F1.frame_codes)
        return codes[0, 0]

    @property
    def encoded_frames(self) -> int:
        """VQ-VAE encodings run by this policy (the frame-code cache's saving)."""
        return self.frame_cache.encoded_frames

    def _encode(self, frames: np.ndarray) -> list[np.ndarray]:
        # One frame per program call: the compiled program takes one frame.
        return [np.asarray(self._codes_fn(self.params, jnp.asarray(frame))) for frame in frames]

    def history_codes(self, gen_frames: np.ndarray, frame_index: np.ndarray | None) -> np.ndarray:
        """int32 [H, L]: the codes of the history frames uint8 [H, h, w, 3], each encoded once per
        episode when its index is known and the cache is on (every frame otherwise)."""
        return np.stack(self.frame_cache.codes(gen_frames, frame_index, self._encode))

    def _infer_device(
        self,
        params: Any,
        example: dict,
        rng: jax.Array,
        noise: jax.Array | None,
        return_foresight: bool,
    ) -> dict:
        batch = jax.tree.map(lambda x: x[None], example)
        obs = model_inputs(batch, self.model.config.foresight.history_frames)
        noise = None if noise is None else noise[None]
        params = {"params": params}
        if not return_foresight:
            return {"actions": sample_actions(self.model, params, obs, rng, noise)[0]}
        actions, foresight = sample_actions(
            self.model, params, obs, rng, noise, return_foresight=True
        )
        return {
            "actions": actions[0],
            "foresight_tokens": foresight["tokens"][0],
            "foresight_image": foresight["image"][0],
        }

    def infer_normalized(
        self,
        example: Mapping[str, np.ndarray],
        rng: jax.Array,
        return_foresight: bool = False,
        frame_index: np.ndarray | None = None,
        noise: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The model on one preprocessed example: normalised actions [chunk, action_dim]
        (+ foresight). frame_index: the history frames' episode indices, for the cache;
        noise: the denoising's starting noise [chunk, action_dim] (default: drawn from rng)."""
        example = dict(example)
        example["history_codes"] = self.history_codes(example.pop("gen_frames"), frame_index)
        example = {k: jnp.asarray(v) for k, v in example.items()}
        noise = None if noise is None else jnp.asarray(noise, jnp.float32)
        out = self._infer_fn(self.params, example, rng, noise, return_foresight=return_foresight)
        return jax.tree.map(np.asarray, out)

    def infer(
        self,
        observation: Mapping[str, Any],
        *,
        seed: int | Sequence[int] | None = None,
        noise: np.ndarray | None = None,
        return_foresight: bool = False,
    ) -> dict[str, np.ndarray]:
        """One control step.

        seed: the step's randomness, an int or a seed path such as (run seed, episode, step)
          (`seed_key`); None: the n-th call of this episode state uses (0, n).

        observation: camera images uint8 [H, W, 3] by standard name ("primary", "wrist", ...) or by
          the dataset's keys ("image", "wrist_image"), "state" [Ds] in robot units, "instruction".
        Returns {"actions": float32 [chunk, action_dim] in robot units}; with return_foresight also
          "foresight_tokens" int32 [n] and "foresight_image" uint8 [h, w, 3] (the predicted frame
          `target_offsets[0]` steps ahead).
        """
        if seed is None:
            seed, self._calls = (0, self._calls), self._calls + 1
        example = self.transform(observation)
        frame_index = example.pop("frame_index")
        out = self.infer_normalized(example, seed_key(seed), return_foresight, frame_index, noise)
        result = {"actions": self.transform.robot_actions(out["actions"])}
        if return_foresight:
            result["foresight_tokens"] = out["foresight_tokens"]
            result["foresight_image"] = transforms.foresight_to_uint8(out["foresight_image"])
        return result

    def compiled_count(self) -> int:
        """How many programs the inference function has compiled (1 per return_foresight value)."""
        return self._infer_fn._cache_size()
