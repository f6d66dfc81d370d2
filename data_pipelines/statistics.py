"""Per-dataset normalisation statistics of state and action, and their cache.

Stats are computed once over every step of a dataset after standardisation and cached as JSON,
keyed by a fingerprint of the dataset's content and the transform version, so a changed transform
or dataset never reuses stale statistics. (Normalising with them is part of the observation
contract: `f1_common.transforms.normalize`.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


def array_stats(x: np.ndarray) -> dict[str, Any]:
    """mean, std, q01, q99, min, max per dim (lists) and count of the rows of x [N, D]."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"stats need a non-empty [N, D] array, got shape {x.shape}")
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "count": int(len(x)),
    }


def fingerprint(dataset_dir: str, content: str, parts: Sequence[str]) -> str:
    """sha256 (16 hex) of the dataset metadata (dataset_info.json, features.json), the shards'
    content fingerprint (`EpisodeReader.content_fingerprint`) and `parts` (summary format,
    source, transform version, split, options): any change to one of them is a new key."""
    h = hashlib.sha256("|".join(parts).encode())
    for name in ("dataset_info.json", "features.json"):
        path = os.path.join(dataset_dir, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    h.update(content.encode())
    return h.hexdigest()[:16]


def cache_dir(dataset_dir: str, stats_dir: str | None = None) -> str:
    """Where a dataset's caches live: stats_dir if given, else next to the data when writable,
    else ~/.cache/f1_jax."""
    if stats_dir:
        return stats_dir
    if os.access(dataset_dir, os.W_OK):
        return dataset_dir
    return os.path.expanduser("~/.cache/f1_jax")


def cache_path(dataset_dir: str, key: str, stats_dir: str | None = None) -> str:
    """Where the summary JSON of `key` lives (`cache_dir`)."""
    return os.path.join(cache_dir(dataset_dir, stats_dir), f"f1_dataset_summary_{key}.json")


def load_json(path: str) -> dict[str, Any] | None:
    """The JSON object at `path`, or None if it is missing or unreadable (then recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None


def save_json(path: str, obj: Mapping[str, Any]) -> None:
    """Atomic write (tmp + rename) so concurrent hosts never read a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def combine_rows(chunks: Iterable[np.ndarray]) -> np.ndarray:
    chunks = list(chunks)
    if not chunks:
        raise ValueError("no valid episodes to compute statistics from")
    return np.concatenate(chunks, axis=0)
