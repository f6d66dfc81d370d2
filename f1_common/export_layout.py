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
