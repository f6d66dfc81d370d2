"""Configuration of a data mixture (referenced by the training configs)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from data_pipelines.sources import GRIPPER_CONVENTIONS, SOURCE_KINDS, for_dataset
from data_pipelines.sources.lerobot import LeRobotOptions
from data_pipelines.sources.lerobot import dataset_entry as lerobot_entry
from data_pipelines.sources.rlds import load_config as load_rlds_config
from f1_common.transforms import CAMERAS, NORM_MODES, ObservationSpec


def _plain(m: Any) -> Any:
    """Nested mappings / sequences (ConfigDict, FrozenConfigDict, tuples) as dicts and lists."""
    if hasattr(m, "to_dict"):
        m = m.to_dict()
    if isinstance(m, Mapping):
        return {k: _plain(v) for k, v in m.items()}
    if isinstance(m, (list, tuple)):
        return [_plain(v) for v in m]
    return m


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One dataset of the mixture.

    name: unique name (stats, `dataset_index` order, un-normalisation key).
    source: one of SOURCE_KINDS: a named RLDS configuration (libero, bridge, fractal, agibot),
      "rlds" with its configuration in `rlds`, or "lerobot".
    path: TFDS version directory, e.g. /data/bridge_orig/1.0.0 (TFRecord or ArrayRecord shards);
      for source "lerobot", the LeRobot dataset's root (the folder holding meta/info.json).
    weight: sampling weight (relative; times the number of transitions if balance_weights).
    cameras: standard camera -> dataset image key (None = absent); None uses the source default.
    norm_mode: overrides DataConfig.norm_mode for this dataset.
    drop_unlabeled: overrides DataConfig.drop_unlabeled for this dataset.
    rlds: source "rlds" only: the dataset's configuration (cameras, state and action parts,
      language, gripper, control frequency; `data_pipelines/sources/rlds.py`, docs/data.md), as
      a mapping, JSON text or the path of a JSON file.
    lerobot: for source "lerobot", which features are state and action and the gripper's dims and
      convention (`sources.lerobot.LeRobotOptions` fields; cameras map to feature names such as
      "observation.images.top"), as a mapping, JSON text or a JSON file's path; its optional
      `cameras` entry sets `cameras`.
    """

    name: str
    source: str
    path: str
    weight: float = 1.0
    split: str = "train"
    cameras: Mapping[str, str | None] | None = None
    norm_mode: str | None = None
    drop_unlabeled: bool | None = None
    lerobot: Mapping[str, Any] | str | None = None
    rlds: Mapping[str, Any] | str | None = None

    def __post_init__(self):
        if self.source not in SOURCE_KINDS:
            raise ValueError(
                f"dataset {self.name!r}: unknown source {self.source!r}; "
                f"expected one of {SOURCE_KINDS}"
            )
        # The lerobot entry as a plain dict ("" = none; JSON text or a file from a command line);
        # its `cameras` become this dataset's cameras.
        lerobot, cameras = lerobot_entry(self.lerobot, self.cameras, self.name)
        object.__setattr__(self, "lerobot", lerobot)
        object.__setattr__(self, "cameras", cameras)
        if self.lerobot is not None and self.source != "lerobot":
            raise ValueError(
                f"dataset {self.name!r}: `lerobot` options given for source {self.source!r} "
                '(a LeRobot dataset needs source "lerobot", e.g. --config.data.source=lerobot)'
            )
        # A plain dict (from a JSON file or text, or a ConfigDict; "" = none): the config is
        # pickled into worker processes and must not reread a file.
        object.__setattr__(self, "rlds", _plain(load_rlds_config(self.rlds, self.name)))
        for_dataset(self)  # checks an rlds configuration, naming this dataset
        if self.weight < 0:
            raise ValueError(f"dataset {self.name!r}: negative weight {self.weight}")
        if self.cameras is not None:
            bad = set(self.cameras) - set(CAMERAS)
            if bad:
                raise ValueError(
                    f"dataset {self.name!r}: unknown cameras {sorted(bad)}; "
                    f"expected names from {CAMERAS}"
                )
        if self.norm_mode is not None and self.norm_mode not in NORM_MODES:
            raise ValueError(f"dataset {self.name!r}: unknown norm_mode {self.norm_mode!r}")
        if self.lerobot is not None:
            try:
                LeRobotOptions.from_mapping(self.lerobot)
            except (TypeError, ValueError) as e:
                raise ValueError(f"dataset {self.name!r}: {e}") from e


# One dataset given by fields of the data section itself (DataConfig.from_mapping).
SINGLE_DATASET_FIELDS = ("name", "source", "path", "rlds", "lerobot")
# The observation's fields, which a data section may give flat (DataConfig.from_mapping).
OBSERVATION_FIELDS = tuple(f.name for f in dataclasses.fields(ObservationSpec))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A data mixture and how to turn it into training batches.

    batch_size is global; each of process_count hosts yields batch_size // process_count.
    `observation` (`f1_common.transforms.ObservationSpec`) is what the pipeline produces: camera
    slots, image sizes, frame offsets of the generation expert's history and predicted frames
    (taken from `gen_camera`), chunk and padding widths, and whether those frames travel as
    stored VQ-VAE codes (`data_pipelines.frame_codes`: the centred crop only, no crop
    augmentation). A recipe's data section gives its fields flat (`from_mapping`).

    Data quirks (docs/data.md "Data integrity"): drop_unlabeled leaves episodes with an empty
    instruction out of sampling (OpenVLA does; the default keeps them with an empty prompt);
    gripper_convention is "native" (each dataset's own gripper action, as the original F1) or
    "open_is_positive"; max_bad_fraction is the share of a dataset's records that may be bad
    (checksum, framing or parse failures, undecodable images) before the run stops.
    """

    datasets: tuple[DatasetConfig, ...]
    tokenizer_path: str
    batch_size: int = 32
    observation: ObservationSpec = dataclasses.field(default_factory=ObservationSpec)
    norm_mode: str = "mean_std"
    color_augment: bool = True
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.5, 1.5)
    balance_weights: bool = False
    shuffle: bool = True
    num_epochs: int | None = None  # None = repeat forever (training)
    train: bool = True  # False: centred crop, no colour augmentation
    num_workers: int = 0
    read_threads: int = 2
    prefetch_buffer_size: int = 64
    stats_dir: str | None = None
    episode_cache_size: int = 8
    drop_unlabeled: bool = False
    gripper_convention: str = "native"
    max_bad_fraction: float = 0.01
    # With frame_codes: one stored-codes directory per dataset (data_pipelines.frame_codes), set
    # by the trainer once it has written them.
    frame_code_stores: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("DataConfig needs at least one dataset")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if self.norm_mode not in NORM_MODES:
            raise ValueError(f"unknown norm_mode {self.norm_mode!r}; expected {NORM_MODES}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.gripper_convention not in GRIPPER_CONVENTIONS:
            raise ValueError(
                f"unknown gripper_convention {self.gripper_convention!r}; expected one of "
                f"{GRIPPER_CONVENTIONS}"
            )
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction {self.max_bad_fraction} outside [0, 1]")
        if not isinstance(self.observation, ObservationSpec):
            raise TypeError(
                f"DataConfig.observation must be an ObservationSpec, got {self.observation!r}"
            )
        if self.frame_code_stores and len(self.frame_code_stores) != len(self.datasets):
            raise ValueError(
                f"{len(self.frame_code_stores)} frame-code stores for {len(self.datasets)} datasets"
            )

    def drop_unlabeled_for(self, d: int) -> bool:
        """Whether dataset d leaves its empty-instruction episodes out of sampling."""
        own = self.datasets[d].drop_unlabeled
        return self.drop_unlabeled if own is None else own

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "DataConfig":
        """A DataConfig from a plain dict or ml_collections.ConfigDict (datasets as dicts).

        A one-dataset recipe (configs/finetune.py) may give that dataset as the fields
        SINGLE_DATASET_FIELDS (name, source, path, rlds) beside `datasets`: with `datasets`
        empty they are the dataset; otherwise a dataset must have that path (the recipe's
        datasets refer to them), so an override is never silently unused. The observation is
        either `observation` (an ObservationSpec or a mapping of its fields) or its fields flat
        in the section (OBSERVATION_FIELDS: `cameras`, `history_offsets`, `max_token_len`, ...),
        as recipes and `--config.data.max_token_len=...` give them; unset ones keep the spec's
        defaults."""
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        single = {k: cfg.pop(k) for k in SINGLE_DATASET_FIELDS if k in cfg}
        if single and not single.get("path"):
            raise ValueError(
                f"data.path is empty: set it to dataset {single.get('name')!r}'s TFDS version "
                "directory (e.g. --config.data.path=/data/my_robot/1.0.0)"
            )
        if single:
            given = [dict(d.to_dict() if hasattr(d, "to_dict") else d) for d in cfg["datasets"]]
            if not given:
                cfg["datasets"] = [single]
            elif not any(d.get("path") == single["path"] for d in given):
                raise ValueError(
                    f"data.path {single['path']!r} is used by no dataset of data.datasets "
                    f"({[d.get('name') for d in given]})"
                )
        flat = {k: cfg.pop(k) for k in OBSERVATION_FIELDS if k in cfg}
        observation = cfg.pop("observation", None)
        if flat and observation is not None:
            raise ValueError(
                f"data.observation and its fields {sorted(flat)} given side by side: give one"
            )
        if not isinstance(observation, ObservationSpec):
            observation = ObservationSpec.from_mapping(observation or flat)
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DataConfig fields {sorted(unknown)}")
        datasets = []
        for d in cfg.pop("datasets"):
            d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
            datasets.append(d if isinstance(d, DatasetConfig) else DatasetConfig(**d))
        for k in ("frame_code_stores", "brightness", "contrast", "saturation"):
            if k in cfg:
                cfg[k] = tuple(cfg[k])
        return cls(datasets=tuple(datasets), observation=observation, **cfg)
