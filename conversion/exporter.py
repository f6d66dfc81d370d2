"""Out to the official F1 layout: an import's output (`export_f1`) or a training run
(`export_run`, with the deployment files). `model.safetensors` + `config.json`; an export of a
run adds `norm_stats.json`, `tokenizer.model`, `<dataset>_stats.json` and, last,
`manifest.json` (f1_common.export_layout).
"""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from conversion import config_io, deployment, engine, tables
from conversion.importers import fit_buffers, vqvae_paths
from conversion.io import (
    ConversionError,
    as_epath,
    atomic_output_dir,
    check_output_free,
    copy_file,
    write_safetensors_streaming,
)
from conversion.loaders import check_params, load_converted
from f1_common.export_layout import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    write_manifest,
)
from f1_jax.models.f1 import F1Config
from f1_jax.training import checkpoints as ckpt
from f1_jax.training.run_record import read_run_record

log = logging.getLogger(__name__)

EXPORT_DTYPES = ("float32", "released")

# --------------------------------------------------------------------------------------------
# Export.


def _export_rows(config: F1Config, dtype: str) -> list[tables.Row]:
    if dtype not in EXPORT_DTYPES:
        raise ConversionError(f"--dtype must be one of {EXPORT_DTYPES}, got {dtype!r}.")
    rows = tables.f1_table(config, vqvae_paths(engine.abstract_params(config)))
    if dtype == "float32":  # exactly the run's fp32 values; the released file has bf16 layers
        rows = [dataclasses.replace(r, dtype=tables.F32) for r in rows]
    return rows


def _writef1_files(
    directory: Path,
    params: engine.Flat,
    config: F1Config,
    buffers: dict[str, np.ndarray],
    extras: list[tables.Extra],
    dtype: str,
    with_expert_lm_heads: bool,
    progress: bool,
) -> None:
    """model.safetensors (streamed, one tensor at a time) and config.json into `directory`."""
    abstract = engine.abstract_params(config)
    plan = engine.plan_export(
        _export_rows(config, dtype),
        {k: v.shape for k, v in abstract.items()},
        tables.f1_extras(config) + extras,
        with_expert_lm_heads,
    )
    write_safetensors_streaming(
        directory / MODEL_FILE,
        [(i.key, i.shape, i.dtype) for i in plan],
        engine.export_tensors(plan, params, config, buffers, progress),
    )
    with open(directory / CONFIG_FILE, "w") as f:
        json.dump(config_io.to_official(config), f, indent=2)


def export_f1(
    input_dir,
    output,
    with_expert_lm_heads: bool = False,
    progress: bool = True,
    dtype: str = "float32",
):
    """An import's output (our params) -> official F1 model.safetensors + config.json.

    dtype "float32": every floating tensor fp32 (exactly our values); "released": the dtypes of
    the released file (bf16 PaliGemma and expert layers).
    """
    if dtype not in EXPORT_DTYPES:
        raise ConversionError(f"--dtype must be one of {EXPORT_DTYPES}, got {dtype!r}.")
    check_output_free(output)
    params, config, meta, buffers = load_converted(input_dir)
    abstract = engine.abstract_params(config)
    missing = sorted(set(abstract) - set(params))
    if missing:
        raise ConversionError(
            f"{input_dir} holds only {meta.get('subtrees')} (source "
            f"{meta.get('source')}); the F1 export needs every parameter. Missing: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    check_params(params, config, str(input_dir))
    notes: list[str] = []
    fit_buffers(buffers, config, str(input_dir), notes)  # imports written before the check
    for note in notes:
        log.warning(note)
    extras = []
    if meta.get("source") == "f1":  # statistics read from an F1 file go back into it
        extras = [
            tables.Extra(k, tuple(v.shape), str(v.dtype), "buffer")
            for k, v in buffers.items()
            if tables.is_normalization(k)
        ]
    with atomic_output_dir(output, progress) as tmp:
        _writef1_files(tmp, params, config, buffers, extras, dtype, with_expert_lm_heads, progress)
        write_manifest(tmp)
    return output


def export_run(
    run,
    output,
    step: int | None = None,
    use_ema: bool = False,
    dataset: str | None = None,
    dtype: str = "float32",
    with_expert_lm_heads: bool = False,
    tokenizer: str | None = None,
    progress: bool = True,
):
    """A training run's checkpoint -> official F1 layout + the deployment files.

    Writes model.safetensors and config.json (as `export_f1`), norm_stats.json (the deployment
    contract: observation spec, every dataset's statistics, norm mode and cameras; `dataset`, or
    the mixture's first, is the default), tokenizer.model (the run's SentencePiece model, or
    `tokenizer`) and `<dataset>_stats.json` per dataset (the official F1 statistics format).
    Every check runs before anything is written.
    """
    if dtype not in EXPORT_DTYPES:
        raise ConversionError(f"--dtype must be one of {EXPORT_DTYPES}, got {dtype!r}.")
    check_output_free(output)
    try:
        record = read_run_record(run, step)
        default = record.check_dataset(dataset)
    except FileNotFoundError as e:
        raise ConversionError(str(e)) from None
    except KeyError as e:
        raise ConversionError(str(e.args[0])) from None
    except ValueError as e:
        raise ConversionError(f"{run}: {e}") from None
    tokenizer_src = as_epath(tokenizer or record.tokenizer_path)
    if not tokenizer_src.is_file():
        raise ConversionError(
            f"The run's tokenizer {tokenizer_src} does not exist here (trained on another "
            "machine?); pass --tokenizer PATH (the run's SentencePiece tokenizer.model)."
        )
    key = "ema_params" if use_ema else "params"
    try:
        tree = ckpt.restore_params_on_host(record.directory, record.step, use_ema)
    except KeyError as e:
        if not use_ema:
            raise ConversionError(str(e.args[0])) from None
        raise ConversionError(
            f"Step {record.step} of {run} was saved without EMA parameters (train.ema_decay "
            "was 0); export without --ema."
        ) from None
    params = engine.flatten(tree)
    check_params(
        params,
        record.model_config,
        f"{key} of step {record.step} in {record.directory} (did f1_jax/models change since "
        "the run was trained?)",
    )
    contract = record.deployment_contract(
        default,
        source={"run": str(as_epath(run)), "step": record.step, "params": key, "dtype": dtype},
    )
    with atomic_output_dir(output, progress) as tmp:
        _writef1_files(
            tmp, params, record.model_config, {}, [], dtype, with_expert_lm_heads, progress
        )
        deployment.write_deployment_files(tmp, contract)
        copy_file(tokenizer_src, as_epath(tmp / TOKENIZER_FILE))
        write_manifest(tmp)
    return output


