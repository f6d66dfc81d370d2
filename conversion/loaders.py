"""Conversion results read back in memory: an import's output, an export (ours or the official
layout) and the deployment contract either carries. What inference loads through.
"""

import atexit
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from conversion import config_io, engine
from conversion.importers import f1_file, f1_params, read_official_config
from conversion.io import (
    ConversionError,
    as_epath,
    is_remote,
    load_orbax,
    local_input,
)
from f1_common.export_layout import (
    MODEL_FILE,
    NORM_STATS_FILE,
    TOKENIZER_FILE,
    verify_manifest,
)
from f1_common.transforms import DeploymentContract, read_deployment_contract
from f1_jax.models.f1 import F1Config

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Reading results back (in memory).


def load_converted(input_dir) -> tuple[engine.Flat, F1Config, dict, dict[str, np.ndarray]]:
    """An import's output (local or a URI): params by path, config, sidecar, buffers."""
    directory = as_epath(input_dir)
    sidecar = directory / config_io.SIDECAR
    if not sidecar.exists():
        raise ConversionError(
            f"{input_dir} has no {config_io.SIDECAR}; expected a directory written "
            "by `python -m conversion import` (params/ + model_config.json)."
        )
    try:
        config, meta = config_io.read_sidecar(sidecar)
    except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{sidecar}: {e}") from None
    tree = load_orbax(directory / "params")
    params = engine.flatten(tree["params"] if "params" in tree else tree)
    buffers = {}
    if (directory / "buffers.npz").exists():
        with (directory / "buffers.npz").open("rb") as f, np.load(f) as data:
            buffers = {k: data[k] for k in data.files}
    return params, config, meta, buffers


def check_params(params: engine.Flat, config: F1Config, what: str) -> None:
    """Every parameter of F1(config) is present with its shape (extra ones are refused too)."""
    abstract = engine.abstract_params(config)
    missing = sorted(set(abstract) - set(params))
    extra = sorted(set(params) - set(abstract))
    wrong = [
        f"{k}: expected {tuple(abstract[k].shape)}, found {tuple(params[k].shape)}"
        for k in abstract
        if k in params and tuple(params[k].shape) != tuple(abstract[k].shape)
    ]
    problems = []
    if missing:
        problems.append(
            f"missing {len(missing)}: {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    if extra:
        problems.append(f"not in the model {len(extra)}: {extra[:10]}")
    if wrong:
        problems.append("mis-shaped:\n  " + "\n  ".join(wrong[:20]))
    if problems:
        raise ConversionError(
            f"{what} does not hold the parameters of its config's model; " + "; ".join(problems)
        )


def load_import(directory, require_complete: bool = True) -> tuple[dict, F1Config, dict]:
    """An `import` / `compose-stage1` output -> (params: nested dict of NumPy fp32 arrays in our
    layout, F1Config, the sidecar). With require_complete, every parameter of the model must be
    there (a pi0 or VAE import holds only part of it)."""
    params, config, meta, _ = load_converted(directory)
    if require_complete:
        check_params(
            params,
            config,
            f"{directory} (an import of {meta.get('source')}, {meta.get('subtrees')})",
        )
    return engine.unflatten(params), config, meta


def import_contract(directory) -> DeploymentContract | None:
    """The deployment contract an import output carries (`import f1` of an export of a run
    keeps its norm_stats.json and tokenizer), or None."""
    base = as_epath(directory)
    if not (base / NORM_STATS_FILE).exists():
        return None
    with local_input(directory, (NORM_STATS_FILE, TOKENIZER_FILE), progress=False) as local:
        contract = read_deployment_contract(str(local))
        if is_remote(directory):
            tokenizer = keep_tokenizer(Path(contract.tokenizer_path))
            contract = dataclasses.replace(contract, tokenizer_path=tokenizer)
    return contract


def keep_tokenizer(path: Path) -> str:
    """Copies a staged tokenizer.model into a temp dir removed when this process exits."""
    directory = tempfile.mkdtemp(prefix="f1-export-tokenizer-")
    atexit.register(shutil.rmtree, directory, True)
    target = Path(directory) / TOKENIZER_FILE
    shutil.copyfile(path, target)
    return str(target)


def load_export(
    directory, require_contract: bool = True, progress: bool = False
) -> tuple[dict, F1Config, DeploymentContract | None]:
    """An export directory (ours or an official F1 one; local or a URI) read back in memory:
    (params: nested dict of NumPy fp32 arrays in our layout, F1Config, DeploymentContract).

    The import direction of the F1 table without writing anything; bf16 tensors widen to fp32
    exactly. The contract comes from `norm_stats.json` (its tokenizer_path is the directory's
    `tokenizer.model`, copied locally for a URI); without that file, require_contract=False gives
    None instead of an error (e.g. the released F1 checkpoint, which has no statistics).
    """
    if not is_remote(directory):  # a local export is checked against its manifest first
        verify_manifest(directory)
    config = read_official_config(directory)
    base = as_epath(directory)
    has_contract = (base / NORM_STATS_FILE).exists()
    if require_contract and not has_contract:
        raise ConversionError(
            f"{directory} has no {NORM_STATS_FILE} (an export of a run has one: "
            "`python -m conversion export --run WORKDIR`); pass require_contract=False to read "
            "only the weights."
        )
    if has_contract and not (base / TOKENIZER_FILE).exists():
        raise ConversionError(f"{directory} has {NORM_STATS_FILE} but no {TOKENIZER_FILE}.")
    wanted = (MODEL_FILE, NORM_STATS_FILE, TOKENIZER_FILE)
    with local_input(directory, wanted, progress) as local:
        params, _, _ = f1_params(f1_file(local), config, str(directory), progress)
        contract = None
        if has_contract:
            try:
                contract = read_deployment_contract(str(local))
            except (ValueError, KeyError, TypeError) as e:
                raise ConversionError(f"{directory}/{NORM_STATS_FILE}: {e}") from None
            tokenizer = Path(contract.tokenizer_path)
            if is_remote(directory):
                contract = dataclasses.replace(contract, tokenizer_path=keep_tokenizer(tokenizer))
    return engine.unflatten(params), config, contract


