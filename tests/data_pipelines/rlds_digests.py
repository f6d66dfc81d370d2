"""Digests of what the RLDS sources produce on the test fixtures: every standardised episode (in
both gripper conventions), the statistics, and the first batches of a mixture.

`rlds_samples_golden.json` holds these digests as the four named sources produced them when each
was its own Python module (recorded with that code, before they became configurations), so
`test_rlds_config.py` shows the configurations give identical samples. Rewrite it only on purpose
(a deliberate transform change, with its TRANSFORM_VERSION bumped):
`F1_RECORD_RLDS_GOLDEN=1 pytest tests/data_pipelines/test_rlds_config.py -k golden`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from dp_fixtures import small_config

from data_pipelines import pipeline
from data_pipelines.config import DatasetConfig
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import GRIPPER_CONVENTIONS, standardize_record

GOLDEN = os.path.join(os.path.dirname(__file__), "rlds_samples_golden.json")


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, (bytes, str)):
            h.update(a.encode() if isinstance(a, str) else a)
            continue
        a = np.asarray(a)
        if a.dtype == object:
            for x in a.reshape(-1):
                h.update(bytes(x))
        else:
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:20]


def episode_digests(kind: str, path: str) -> dict[str, str]:
    """record:convention -> digest of the StdEpisode (or the error's class and message)."""
    reader = EpisodeReader(path)
    out = {}
    for i in range(len(reader)):
        raw = reader.decode(i)
        for conv in GRIPPER_CONVENTIONS:
            try:
                ep = standardize_record(kind, raw, kind, i, None, conv)
            except ValueError as e:  # SchemaError: the same episodes must be refused
                out[f"{i}:{conv}"] = f"{type(e).__name__}"
                continue
            cams = sorted(ep.images)
            out[f"{i}:{conv}"] = _digest(
                ep.state,
                ep.action,
                ep.language,
                str(ep.sample_range),
                str(cams),
                *[ep.images[c] for c in cams],
            )
    return out


def mixture_digests(dirs: dict[str, str], tokenizer_path: str, stats_dir: str) -> dict[str, Any]:
    """Statistics and the first three batches of a four-dataset mixture."""
    config = small_config(
        [DatasetConfig(k, k, p, weight=1.0) for k, p in dirs.items()],
        tokenizer_path,
        stats_dir=stats_dir,
        gripper_convention="open_is_positive",
    )
    stats = pipeline.dataset_statistics(config)
    out: dict[str, Any] = {
        "stats": {
            name: _digest(
                json.dumps(
                    # Keys added to the statistics since the recording are not digested.
                    {k: v for k, v in s.items() if k not in ("counts", "cameras")},
                    sort_keys=True,
                    default=str,
                )
            )
            for name, s in stats.items()
        }
    }
    it = pipeline.make_train_iterator(config, seed=3)
    for b in range(3):
        batch = next(it)
        out[f"batch{b}"] = {k: _digest(v) for k, v in sorted(batch.items())}
    return out


def all_digests(dirs: dict[str, str], tokenizer_path: str, stats_dir: str) -> dict[str, Any]:
    return {
        "episodes": {k: episode_digests(k, p) for k, p in dirs.items()},
        "mixture": mixture_digests(dirs, tokenizer_path, stats_dir),
    }
