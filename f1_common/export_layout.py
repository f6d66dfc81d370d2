"""The files of an export (the official F1 layout plus ours) and its checksum manifest.

An export directory holds `model.safetensors` and `config.json` (the official F1 layout),
`norm_stats.json` (the deployment contract), `tokenizer.model`, `<dataset>_stats.json` (the
official statistics format) and `manifest.json`: the SHA-256 of every other file, written last.
Every loader calls `verify_manifest` first, so a flipped bit anywhere is named by file instead
of loading silently. A directory without a manifest (the released F1, an older export) is read
unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping

import numpy as np

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORM_STATS_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.model"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "f1-export-manifest/1"
STATS_SUFFIX = "_stats.json"  # <dataset>_stats.json, the official F1 statistics format


class ExportIntegrityError(ValueError):
    """A file of an export differs from its manifest (or is missing)."""


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """Writes manifest.json listing the SHA-256 of every file in `directory` (a local export
    being written; call it last). Returns {file name: sha256}."""
    names = sorted(
        n
        for n in os.listdir(directory)
        if n != MANIFEST_FILE and os.path.isfile(os.path.join(directory, n))
    )
    sums = {n: sha256_file(os.path.join(directory, n)) for n in names}
    with open(os.path.join(directory, MANIFEST_FILE), "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "sha256": sums}, f, indent=2)
    return sums


def verify_manifest(directory: str | os.PathLike, files: tuple[str, ...] | None = None) -> bool:
    """Checks the files of a local export against its manifest: all of them, or `files` (those
    present in the manifest). Returns False when there is no manifest; raises
    ExportIntegrityError naming the first file that differs or is missing."""
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            manifest = json.load(f)
        sums = dict(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportIntegrityError(f"{path} is not a readable manifest: {e}") from None
    for name in sorted(sums if files is None else set(files) & set(sums)):
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            raise ExportIntegrityError(f"{directory}: {name} is listed in {MANIFEST_FILE} but missing")
        if sha256_file(file) != sums[name]:
            raise ExportIntegrityError(
                f"{file} differs from its SHA-256 in {MANIFEST_FILE}: the export is damaged "
                "(copy it again)"
            )
    return True


# ---------------------------------------------------------------------------------------------
# Statistics in the official F1 format: lerobot's `meta/stats.json` layout, which the official
# training reads through a dataset's `norm_stats_path` and dumps as `{output_dir}/<dataset>_stats.json`.
# Keys are lerobot's feature names; each statistic a per-dimension float32 list, `count` [N].
# Written by the export and by `python -m data_pipelines.convert stats --official_stats`, read
# back (the inverse) by `python -m conversion import f1` / `export --stats`.

OFFICIAL_FEATURES = {"state": "observation.state", "action": "action"}
OFFICIAL_STATS = ("mean", "std", "min", "max", "q01", "q99")


def official_stats_file(dataset: str) -> str:
    """`<dataset>_stats.json`, with characters unsafe in a file name replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", dataset) + STATS_SUFFIX


def official_stats(stats: Mapping[str, Any]) -> dict[str, dict[str, list]]:
    """One dataset's recorded statistics -> the official (lerobot stats.json) layout.

    stats: {"state": {...}, "action": {...}, ...} with per-dimension lists "mean", "std", "min",
    "max", "q01", "q99" (those present are written) and an integer "count".
    """
    out = {}
    for ours, feature in OFFICIAL_FEATURES.items():
        entry = stats[ours]
        converted = {
            k: np.asarray(entry[k], np.float32).tolist() for k in OFFICIAL_STATS if k in entry
        }
        if "count" in entry:
            converted["count"] = [int(np.asarray(entry["count"]).reshape(-1)[0])]
        out[feature] = converted
    return out


def read_official_stats(text: str, where: str) -> dict[str, dict[str, Any]]:
    """An official `<dataset>_stats.json` (lerobot's stats.json layout) -> {"state": ...,
    "action": ...} with per-dimension float lists and an integer "count": the inverse of
    `official_stats`. Other features (image statistics of a lerobot meta/stats.json) are
    ignored; a missing feature or statistic, or lists of differing lengths, name `where`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not JSON: {e}") from None
    out: dict[str, dict[str, Any]] = {}
    for ours, feature in OFFICIAL_FEATURES.items():
        if feature not in data:
            raise ValueError(
                f"{where} has no {feature!r} statistics (features: {sorted(data)}); the official "
                f"format keys them {sorted(OFFICIAL_FEATURES.values())}"
            )
        entry = data[feature]
        missing = [k for k in ("mean", "std") if k not in entry]
        if missing:
            raise ValueError(f"{where}: {feature!r} lacks {missing}")
        stats = {}
        for k in OFFICIAL_STATS:
            if k in entry:
                v = np.asarray(entry[k], np.float64).reshape(-1)
                if not np.all(np.isfinite(v)):
                    raise ValueError(f"{where}: {feature}.{k} has non-finite values")
                stats[k] = v.astype(np.float32).tolist()
        dims = {k: len(v) for k, v in stats.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"{where}: {feature!r} statistics differ in length: {dims}")
        if "count" in entry:
            stats["count"] = int(np.asarray(entry["count"]).reshape(-1)[0])
        out[ours] = stats
    return out


def dataset_of_stats_file(name: str) -> str:
    """`libero_spatial_stats.json` -> `libero_spatial`."""
    return name[: -len(STATS_SUFFIX)] if name.endswith(STATS_SUFFIX) else name
