"""Dataset-family adapters: each maps one decoded episode into `schema.StdEpisode`.

Every module exposes KIND, TRANSFORM_VERSION, DEFAULT_CAMERAS, SUPPORTED (the releases it reads,
in words), REQUIRED_FEATURES (feature path -> expected kind, checked before a dataset is read),
GRIPPER_OPEN_POSITIVE ({action dim: (scale, offset)} turning the dataset's own gripper action into
"open is positive"), feature_spec(...) and standardize(raw, dataset_name, episode_id, cameras).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from data_pipelines import schema

SOURCE_KINDS = ("libero", "bridge", "fractal", "agibot")

# native: each dataset's own gripper action convention (what the original F1 trains on and what
# each robot or simulator consumes); open_is_positive: the gripper action dims mapped so that
# larger means more open (1 open .. 0 closed).
GRIPPER_CONVENTIONS = ("native", "open_is_positive")


class UnsupportedDatasetError(ValueError):
    """A dataset directory does not have the layout its configured source reads."""


def get_source(kind: str) -> ModuleType:
    """The source module for a dataset family name."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown dataset source {kind!r}; expected one of {SOURCE_KINDS}")
    return importlib.import_module(f"data_pipelines.sources.{kind}")


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
        return f"a {feature.np_dtype.__name__} tensor {tuple(feature.shape)}"
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
    """Why `feature` is not `expected` ("text", "image" or a tensor shape tuple), or None."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    if feature is None:
        return "is missing"
    if expected == "text":
        ok = isinstance(feature, tfds.features.Text)
    elif expected == "image":
        ok = isinstance(feature, tfds.features.Image)
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
    kind: str,
    features: Any,
    dataset: str,
    dataset_dir: str,
    tfds_name: str,
    version: str,
    cameras: Mapping[str, str | None] | None = None,
) -> None:
    """Raises UnsupportedDatasetError, naming the supported releases, when `features` (a TFDS
    FeaturesDict) lacks a feature the `kind` source reads or the configured camera keys."""
    source = get_source(kind)
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


def _gripper_map(kind: str, convention: str) -> dict[int, tuple[float, float]]:
    """{action dim: (scale, offset)} with x_convention = scale * x_native + offset; identity
    entries are dropped."""
    if convention not in GRIPPER_CONVENTIONS:
        raise ValueError(
            f"unknown gripper convention {convention!r}; expected one of {GRIPPER_CONVENTIONS}"
        )
    if convention == "native":
        return {}
    return {d: m for d, m in get_source(kind).GRIPPER_OPEN_POSITIVE.items() if m != (1.0, 0.0)}


def apply_gripper_convention(
    ep: schema.StdEpisode, kind: str, convention: str
) -> schema.StdEpisode:
    """`ep` with its gripper action dims in `convention` (unchanged for `native`)."""
    mapping = _gripper_map(kind, convention)
    if not mapping:
        return ep
    action = ep.action.copy()
    for d, (scale, offset) in mapping.items():
        action[:, d] = scale * action[:, d] + offset
    return dataclasses.replace(ep, action=action.astype(np.float32))


def action_to_native(kind: str, convention: str) -> dict[str, list] | None:
    """How to turn un-normalised model actions back into the robot's own gripper convention:
    {"dims": [...], "scale": [...], "offset": [...]} with native = scale * x + offset, or None
    when nothing changes (`f1_common.transforms.ObservationTransform.robot_actions` applies it)."""
    mapping = _gripper_map(kind, convention)
    if not mapping:
        return None
    dims = sorted(mapping)
    return {
        "dims": dims,
        "scale": [1.0 / mapping[d][0] for d in dims],
        "offset": [-mapping[d][1] / mapping[d][0] for d in dims],
    }


def standardize_record(
    kind: str,
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None,
    gripper_convention: str = "native",
) -> schema.StdEpisode:
    """The one path from a decoded record to a StdEpisode (stats pass and sampling share it)."""
    ep = get_source(kind).standardize(raw, dataset_name, episode_id, cameras)
    return apply_gripper_convention(ep, kind, gripper_convention)
