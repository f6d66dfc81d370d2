"""Dataset sources: each maps one decoded episode into `schema.StdEpisode`.

A source exposes KIND, TRANSFORM_VERSION (keys the statistics cache), DEFAULT_CAMERAS, SUPPORTED
(the releases it reads, in words), REQUIRED_FEATURES (feature path -> expected kind, checked
before a dataset is read), GRIPPER_OPEN_POSITIVE ({action dim: (scale, offset)} turning the
dataset's own gripper action into "open is positive") and standardize(raw, dataset_name,
episode_id, cameras).

RLDS datasets are configurations of one source (`rlds.RldsSource`): `source="rlds"` with the
configuration in `DatasetConfig.rlds`, or one of the named configurations (NAMED_RLDS: each
module's `SPEC`; the modules also hold their release's TFDS feature spec, and AgiBot's the
converter from its raw HDF5 + mp4 release).
The `lerobot` source (a module, MODULE_SOURCES) reads LeRobot datasets instead of TFDS ones: it
brings its own reader (`lerobot.LeRobotReader`, opened by `open_reader`) and takes its gripper map
from the dataset's configuration (`gripper_open_positive(options)`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

import numpy as np

from data_pipelines import schema
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import agibot, bridge, fractal, libero, rlds

# Named configurations of the RLDS source (their TRANSFORM_VERSION is pinned in the SPEC).
NAMED_RLDS: Mapping[str, Mapping[str, Any]] = {
    "libero": libero.SPEC,
    "bridge": bridge.SPEC,
    "fractal": fractal.SPEC,
    "agibot": agibot.SPEC,
}
# Sources that are code: a module data_pipelines/sources/<kind>.py with the attributes above
# (for data a configuration cannot describe).
MODULE_SOURCES: tuple[str, ...] = ("lerobot",)
SOURCE_KINDS = (*NAMED_RLDS, rlds.KIND, *MODULE_SOURCES)

# native: each dataset's own gripper action convention (what the original F1 trains on and what
# each robot or simulator consumes); open_is_positive: the gripper action dims mapped so that
# larger means more open (1 open .. 0 closed).
GRIPPER_CONVENTIONS = ("native", "open_is_positive")


class UnsupportedDatasetError(ValueError):
    """A dataset directory does not have the layout its configured source reads."""


def get_source(kind: str, rlds_config: Any = None, dataset: str = ""):
    """The source of a dataset: a named RLDS configuration, or `kind` "rlds" with its
    configuration `rlds_config` (a mapping, JSON text or a JSON file; see sources/rlds.py)."""
    rlds_config = rlds.load_config(rlds_config, dataset)
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown dataset source {kind!r}; expected one of {SOURCE_KINDS}")
    if kind in MODULE_SOURCES:
        return importlib.import_module(f"data_pipelines.sources.{kind}")
    if kind == rlds.KIND:
        if rlds_config is None:
            raise ValueError(
                f"dataset {dataset!r}: source 'rlds' needs its configuration (DatasetConfig.rlds:"
                " cameras, state, action, language, gripper; see docs/data.md)"
            )
        return rlds.RldsSource(rlds.RldsSpec.from_mapping(rlds_config, dataset))
    if rlds_config is not None:
        raise ValueError(
            f"dataset {dataset!r}: an rlds configuration is for source 'rlds'; {kind!r} is a "
            f"named configuration (copy sources.NAMED_RLDS[{kind!r}] into one to change it)"
        )
    return rlds.RldsSource(rlds.RldsSpec.from_mapping(NAMED_RLDS[kind], kind), kind)


def for_dataset(ds: Any):
    """The source of a `DatasetConfig` (or a mapping with "source", "name" and maybe "rlds")."""
    get = ds.get if isinstance(ds, Mapping) else lambda k, d=None: getattr(ds, k, d)
    return get_source(get("source"), get("rlds"), get("name", ""))


def _resolve(source: Any):
    """A source from its name (a named configuration) or the source itself."""
    return get_source(source) if isinstance(source, str) else source


def open_reader(ds: Any) -> Any:
    """The random-access reader of dataset entry `ds` (a `DatasetConfig`): `EpisodeReader` for
    TFDS/RLDS directories, `lerobot.LeRobotReader` for LeRobot datasets (the same interface:
    len, decode, locate, where, unreadable, content_fingerprint, shard bookkeeping)."""
    if ds.source == "lerobot":
        return get_source("lerobot").LeRobotReader(
            ds.path, ds.split, getattr(ds, "lerobot", None), ds.cameras, ds.name
        )
    return EpisodeReader(ds.path, ds.split)


# ---------------------------------------------------------------------- layout check


def _describe(feature: Any) -> str:
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    if isinstance(feature, tfds.features.FeaturesDict):
        return f"a dict of {{{', '.join(sorted(feature.keys()))}}}"
    if isinstance(feature, tfds.features.Image):
        return f"an image {tuple(feature.shape)}"
    if isinstance(feature, tfds.features.Text):
        return "text"
    if isinstance(feature, tfds.features.Tensor):
        return f"a {np.dtype(feature.np_dtype).name} tensor {tuple(feature.shape)}"
    return type(feature).__name__


def _feature_at(features: Any, path: str) -> Any:
    """The TFDS feature at "steps/observation/state" (None if absent); steps are unwrapped."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    node = features
    for part in path.split("/"):
        if isinstance(node, tfds.features.Dataset):
            node = node.feature
        if not isinstance(node, tfds.features.FeaturesDict) or part not in node.keys():
            return None
        node = node[part]
    return node


def _mismatch(feature: Any, expected: Any) -> str | None:
    """Why `feature` is not `expected` ("text", "image", a tensor shape tuple, or an int n: a
    tensor whose last axis has at least n entries, a scalar counting as 1), or None."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    if feature is None:
        return "is missing"
    if expected == "text":
        ok = isinstance(feature, tfds.features.Text)
    elif expected == "image":
        ok = isinstance(feature, tfds.features.Image)
    elif isinstance(expected, int):
        ok = (
            isinstance(feature, tfds.features.Tensor)
            and not isinstance(feature, tfds.features.Text)
            and len(feature.shape) <= 1
            and (feature.shape[-1] if feature.shape else 1) >= expected
        )
        if not ok:
            return f"is {_describe(feature)}, expected a vector of at least {expected} values"
    else:
        ok = (
            isinstance(feature, tfds.features.Tensor)
            and not isinstance(feature, tfds.features.Text)
            and tuple(feature.shape) == tuple(expected)
        )
    if ok:
        return None
    want = expected if isinstance(expected, str) else f"a tensor {tuple(expected)}"
    return f"is {_describe(feature)}, expected {want}"


def check_layout(
    kind: Any,
    features: Any,
    dataset: str,
    dataset_dir: str,
    tfds_name: str,
    version: str,
    cameras: Mapping[str, str | None] | None = None,
) -> None:
    """Raises UnsupportedDatasetError, naming the supported releases, when `features` (a TFDS
    FeaturesDict) lacks a feature the `kind` source (a name or a source) reads or the configured
    camera keys."""
    source = _resolve(kind)
    kind = source.KIND
    required = dict(source.REQUIRED_FEATURES)
    for key in (cameras or source.DEFAULT_CAMERAS).values():
        if key is not None:
            required[f"steps/observation/{key}"] = "image"
    problems = []
    for path, expected in required.items():
        why = _mismatch(_feature_at(features, path), expected)
        if why:
            problems.append(f"{path} {why}")
    if not problems:
        return
    hint = getattr(source, "UNSUPPORTED_HINTS", {}).get(tfds_name, "")
    raise UnsupportedDatasetError(
        f"dataset {dataset!r} at {dataset_dir} ({tfds_name} {version}) is not in a layout the "
        f"{kind!r} source reads: {'; '.join(problems)}. The {kind!r} source supports "
        f"{source.SUPPORTED}.{' ' + hint if hint else ''}"
    )


# ---------------------------------------------------------------------- gripper convention


def _gripper_map(
    kind: Any, convention: str, options: Mapping[str, Any] | None = None
) -> dict[int, tuple[float, float]]:
    """{action dim: (scale, offset)} with x_convention = scale * x_native + offset; identity
    entries are dropped. `options`: the dataset's own settings (`DatasetConfig.lerobot`) for a
    source whose gripper is configured per dataset."""
    if convention not in GRIPPER_CONVENTIONS:
        raise ValueError(
            f"unknown gripper convention {convention!r}; expected one of {GRIPPER_CONVENTIONS}"
        )
    if convention == "native":
        return {}
    source = _resolve(kind)
    if hasattr(source, "gripper_open_positive"):  # configured per dataset (lerobot)
        table = source.gripper_open_positive(options)
    else:
        table = source.GRIPPER_OPEN_POSITIVE
    return {d: m for d, m in table.items() if m != (1.0, 0.0)}


def apply_gripper_convention(
    ep: schema.StdEpisode, kind: Any, convention: str, options: Mapping[str, Any] | None = None
) -> schema.StdEpisode:
    """`ep` with its gripper action dims in `convention` (unchanged for `native`)."""
    mapping = _gripper_map(kind, convention, options)
    if not mapping:
        return ep
    action = ep.action.copy()
    for d, (scale, offset) in mapping.items():
        action[:, d] = scale * action[:, d] + offset
    return dataclasses.replace(ep, action=action.astype(np.float32))


def action_to_native(
    kind: Any, convention: str, options: Mapping[str, Any] | None = None
) -> dict[str, list] | None:
    """How to turn un-normalised model actions back into the robot's own gripper convention:
    {"dims": [...], "scale": [...], "offset": [...]} with native = scale * x + offset, or None
    when nothing changes (`f1_common.transforms.ObservationTransform.robot_actions` applies it)."""
    mapping = _gripper_map(kind, convention, options)
    if not mapping:
        return None
    dims = sorted(mapping)
    return {
        "dims": dims,
        "scale": [1.0 / mapping[d][0] for d in dims],
        "offset": [-mapping[d][1] / mapping[d][0] for d in dims],
    }


def standardize_record(
    kind: Any,
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None,
    gripper_convention: str = "native",
    options: Mapping[str, Any] | None = None,
) -> schema.StdEpisode:
    """The one path from a decoded record to a StdEpisode (stats pass and sampling share it).
    kind: a source name or a source (`for_dataset(ds)`); `options`: the dataset's source
    settings (`DatasetConfig.lerobot`)."""
    source = _resolve(kind)
    ep = source.standardize(raw, dataset_name, episode_id, cameras)
    return apply_gripper_convention(ep, source, gripper_convention, options)
