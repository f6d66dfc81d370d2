"""What an exported run carries besides the weights: the deployment contract and the statistics in
the official F1 format.

`norm_stats.json` (`f1_common.transforms.DeploymentContract`): the observation spec, every dataset's
state/action statistics, norm mode and camera keys, the default dataset and the tokenizer file;
read by the JAX policy, the policy server and the PyTorch runtime.

`<dataset>_stats.json`: the same statistics where the official F1 code reads them. The official
policy (`F1_VLA`) holds no normalisation buffers in its state dict (unlike lerobot's pi0, whose
`normalize_inputs.*` / `unnormalize_outputs.*` buffers `tables.is_normalization` recognises):
normalisation is a data transform whose statistics come from a JSON file in lerobot's
`meta/stats.json` format, named by the dataset entry's `norm_stats_path` in the training yaml
(training dumps the same file as `{output_dir}/{dataset}_stats.json`). Its keys are lerobot's
feature names, `observation.state` and `action` (what `F1_VLA` reads from its batch), each with
per-dimension float32 lists and a one-element `count`.
"""

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from f1_common.export_layout import NORM_STATS_FILE
from f1_common.transforms import DeploymentContract

OFFICIAL_FEATURES = {"state": "observation.state", "action": "action"}
OFFICIAL_STATS = ("mean", "std", "min", "max", "q01", "q99")


def official_stats_file(dataset: str) -> str:
    """`<dataset>_stats.json`, with characters unsafe in a file name replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", dataset) + "_stats.json"


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


def write_deployment_files(directory, contract: DeploymentContract) -> dict[str, str]:
    """Writes `norm_stats.json` and one `<dataset>_stats.json` per dataset into the local
    `directory` (the tokenizer is copied by the caller). Returns dataset -> official file name."""
    files = {name: official_stats_file(name) for name in contract.datasets}
    clashes = sorted(f for f in files.values() if list(files.values()).count(f) > 1)
    if clashes:
        raise ValueError(f"Dataset names map to the same statistics file: {sorted(set(clashes))}.")
    contract_json = contract.to_json()
    contract_json["source"] = {**contract_json["source"], "official_stats": files}
    with open(f"{directory}/{NORM_STATS_FILE}", "w") as f:
        json.dump(contract_json, f, indent=1)
    for name, file in files.items():
        with open(f"{directory}/{file}", "w") as f:
            json.dump(official_stats(contract.datasets[name]), f, indent=4)
    return files
