"""Dataset-family adapters: each maps one decoded episode into `schema.StdEpisode`.

Every module exposes KIND, TRANSFORM_VERSION, DEFAULT_CAMERAS, feature_spec(...) and
standardize(raw, dataset_name, episode_id, cameras) -> StdEpisode.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SOURCE_KINDS = ("libero", "bridge", "fractal", "agibot")


def get_source(kind: str) -> ModuleType:
    """The source module for a dataset family name."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown dataset source {kind!r}; expected one of {SOURCE_KINDS}")
    return importlib.import_module(f"data_pipelines.sources.{kind}")
