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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conversion.io import ConversionError, as_epath, copy_file
from f1_common.export_layout import (
    NORM_STATS_FILE,
    TOKENIZER_FILE,
    dataset_of_stats_file,
    official_stats,
    official_stats_file,
    read_official_stats,
)
from f1_common.transforms import NORM_MODES, DeploymentContract, ObservationSpec
from f1_jax.models.f1 import F1Config, observation_spec


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


# ---------------------------------------------------------------------------------------------
# The other direction: official statistics files -> a deployment contract.

# The official F1 LIBERO recipe's cameras (f1_vla/config/debug_test.yaml camera_keys, in order:
# image0 = the third-person view, also the generation camera; image1 = the wrist view).
RELEASE_CAMERAS = {"primary": "observation.images.image", "wrist": "observation.images.wrist_image"}


def contract_from_official_stats(
    spec: ObservationSpec,
    stats_texts: Mapping[str, tuple[str, str]],
    tokenizer_path: str,
    cameras: Mapping[str, str | None] | None = None,
    norm_mode: str = "mean_std",
    default_dataset: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> DeploymentContract:
    """A deployment contract from official statistics files.

    stats_texts: dataset -> (file text, where it came from); cameras: the model's camera slots in
    order -> the robot's image keys (default RELEASE_CAMERAS); `spec.cameras` must list the same
    slots. Every dataset shares the cameras and norm_mode (the official format has no field for
    either)."""
    cameras = dict(RELEASE_CAMERAS if cameras is None else cameras)
    if tuple(c for c in cameras) != tuple(spec.cameras):
        raise ValueError(f"cameras {list(cameras)} differ from the spec's {list(spec.cameras)}")
    if norm_mode not in NORM_MODES:
        raise ValueError(f"unknown norm mode {norm_mode!r}; expected one of {NORM_MODES}")
    if not stats_texts:
        raise ValueError("no statistics files")
    datasets = {}
    for name, (text, where) in stats_texts.items():
        entry = read_official_stats(text, where)
        for part, width in (("state", spec.state_dim), ("action", spec.action_dim)):
            if len(entry[part]["mean"]) > width:
                raise ValueError(
                    f"{where}: {part} has {len(entry[part]['mean'])} dims, more than the "
                    f"model's {width}"
                )
        datasets[name] = {**entry, "norm_mode": norm_mode, "cameras": cameras}
    default = default_dataset or sorted(datasets)[0]
    if default not in datasets:
        raise ValueError(f"default dataset {default!r} has no statistics ({sorted(datasets)})")
    return DeploymentContract(spec, datasets, default, tokenizer_path, dict(source or {}))


def stats_contract(
    config: F1Config,
    stats_files,
    tokenizer,
    cameras=None,
    norm_mode: str = "mean_std",
    dataset: str | None = None,
    source: dict | None = None,
) -> tuple[DeploymentContract, object]:
    """(contract, tokenizer file) from official `<dataset>_stats.json` files (local or URIs) and
    a tokenizer.model, for a model of `config`; every check runs here, before anything is
    written (ConversionError names the file)."""
    texts = {}
    for f in stats_files:
        path = as_epath(f)
        if not path.is_file():
            raise ConversionError(f"statistics file {f} does not exist.")
        texts[dataset_of_stats_file(path.name)] = (path.read_text(), str(f))
    tokenizer_src = as_epath(tokenizer)
    if not tokenizer_src.is_file():
        raise ConversionError(f"tokenizer {tokenizer} does not exist.")
    cameras = None if cameras is None else dict(cameras)
    slots = tuple(cameras or RELEASE_CAMERAS)
    try:
        spec = observation_spec(config, {"cameras": slots, "gen_camera": slots[0]})
        contract = contract_from_official_stats(
            spec, texts, TOKENIZER_FILE, cameras, norm_mode, dataset, source
        )
    except (ValueError, KeyError) as e:
        raise ConversionError(str(e)) from None
    return contract, tokenizer_src


def write_contract(directory: Path, contract: DeploymentContract, tokenizer_src) -> None:
    """norm_stats.json, `<dataset>_stats.json` and tokenizer.model into the local `directory`."""
    write_deployment_files(directory, contract)
    copy_file(as_epath(tokenizer_src), as_epath(Path(directory) / TOKENIZER_FILE))
