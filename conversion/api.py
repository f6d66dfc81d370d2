"""The conversion commands as functions (the CLI in `conversion/cli.py` is a thin wrapper).

Outputs of every import: `OUTPUT/params/` (Orbax StandardCheckpointer, tree `{"params": ...}`,
fp32), `OUTPUT/model_config.json` (our F1Config, the source, which subtrees are present, notes) and,
where the source has them, `OUTPUT/buffers.npz` (foreign buffers without a parameter of ours, kept
so that export reproduces them). Exports: `model.safetensors` + `config.json` in the official F1
layout; an export of a run adds `norm_stats.json`, `tokenizer.model` and `<dataset>_stats.json`.
Everything is written to a temp dir and renamed (or, for a URI, copied) at the end. Inputs and
outputs may be URIs (`gs://...`); remote safetensors / torch files are staged locally first.
"""

import atexit
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from conversion import config_io, deployment, engine, parity, tables
from conversion.io import (
    ConversionError,
    DictSource,
    SafetensorsSource,
    as_epath,
    atomic_output_dir,
    check_output_free,
    copy_file,
    is_remote,
    load_orbax,
    local_input,
    open_source,
    write_safetensors_streaming,
)
from f1_jax.models.f1 import F1Config
from f1_jax.models.sizes import get_model_config
from f1_jax.training import checkpoints as ckpt
from f1_jax.training.checkpoints import save_params
from f1_jax.training.run_record import read_run_record
from f1_common.export_layout import (
    CONFIG_FILE,
    MODEL_FILE,
    NORM_STATS_FILE,
    TOKENIZER_FILE,
    ExportIntegrityError,
    verify_manifest,
    write_manifest,
)
from f1_common.transforms import DeploymentContract, read_deployment_contract

ALL_SUBTREES = ("siglip", "embedder", "stack", "foresight", "action_io", "vqvae")
STAGE1_FRESH = ("stack/layers/gen", "stack/final_norm_gen", "foresight")
VOCAB_HIT = "model.vae.quantize.ema_vocab_hit_SV"
EXPORT_DTYPES = ("float32", "released")


def _vqvae_paths(abstract: dict) -> list[str]:
    return [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]


def _select(abstract: dict, subtrees) -> dict:
    return {k: v for k, v in abstract.items() if engine.in_subtrees(k, subtrees)}


def _write(
    output,
    params: engine.Flat,
    config: F1Config,
    source: str,
    subtrees,
    notes: list[str],
    buffers: dict[str, np.ndarray],
    contract_from: Path | None = None,
):
    """contract_from: a local directory whose norm_stats.json and tokenizer.model travel along
    (an export of a run, imported back)."""
    with atomic_output_dir(output) as tmp:
        # Plain ndarray views of the memmaps: Orbax's handlers are registered for np.ndarray.
        save_params(tmp / "params", engine.unflatten({k: np.asarray(v) for k, v in params.items()}))
        config_io.write_sidecar(tmp / config_io.SIDECAR, config, source, sorted(subtrees), notes)
        if buffers:
            np.savez(tmp / "buffers.npz", **buffers)
        if contract_from is not None:
            for name in (NORM_STATS_FILE, TOKENIZER_FILE):
                shutil.copyfile(contract_from / name, tmp / name)
    return output


@contextlib.contextmanager
def _scratch(output) -> Iterator:
    """Yields `allocate(path, shape)` making fp32 memmaps in a scratch dir beside `output`.

    Converted params live in files rather than anonymous memory, so the import's anonymous peak is
    the one copy Orbax snapshots while saving. Refuses a non-empty `output` before any work.
    """
    check_output_free(output)
    if is_remote(output):  # the result is copied to the URI at the end: scratch under $TMPDIR
        scratch = Path(tempfile.mkdtemp(prefix="f1-conversion-scratch-"))
    else:
        output = Path(output).absolute()
        output.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.scratch-", dir=output.parent))
    count = iter(range(1 << 30))

    def allocate(path: str, shape: tuple[int, ...]) -> np.ndarray:
        if not shape:  # np.memmap cannot map zero bytes
            return np.empty(shape, np.float32)
        return np.memmap(scratch / f"{next(count)}.f32", np.float32, "w+", shape=shape)

    try:
        yield allocate
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _with_model_prefix(rows: list[tables.Row], keys: list[str]) -> list[tables.Row]:
    """lerobot saves pi0 under `model.`; openpi's PyTorch port saves without it. Follow the file."""
    if any(k.startswith("model.paligemma_with_expert.") for k in keys):
        return rows
    strip = lambda n: n.removeprefix("model.")
    return [
        dataclasses.replace(r, foreign=strip(r.foreign), aliases=tuple(map(strip, r.aliases)))
        for r in rows
    ]


# --------------------------------------------------------------------------------------------
# Imports.


def read_official_config(input_path, config_path=None) -> F1Config:
    """The F1Config of an official config.json: `config_path`, else beside `input_path` (the
    checkpoint directory or its model.safetensors). Local paths or URIs."""
    if config_path:
        path = as_epath(config_path)
    else:
        base = as_epath(input_path)
        path = (base if base.is_dir() else base.parent) / CONFIG_FILE
    if not path.exists():
        raise ConversionError(f"No config.json at {path}; pass --config PATH (the F1 config.json).")
    try:
        return config_io.from_official(json.loads(path.read_text()))
    except ValueError as e:  # json.JSONDecodeError is a ValueError too
        raise ConversionError(f"{path}: {e}") from None


def _f1_file(input_path: Path) -> Path:
    return input_path / MODEL_FILE if input_path.is_dir() else input_path


def fit_vocab_hit(value: np.ndarray, config: F1Config, what: str) -> tuple[np.ndarray, str | None]:
    """The VQ-VAE's codebook-usage buffer `ema_vocab_hit_SV` [scales, codebook] made to fit the
    config, the way VAR's `VQVAE.load_state_dict` does.

    The buffer holds usage statistics of VAE training, unused by F1. A file with another number of
    scales (first axis) is replaced by the model's own initial buffer (zeros of the config's
    shape), as VAR does; any other shape (another codebook size) is refused, as torch's
    `load_state_dict` would refuse it. Returns (value, a note when replaced).
    """
    expected = (len(config.vqvae.patch_nums), config.vqvae.vocab_size)
    value = np.asarray(value)
    if tuple(value.shape) == expected:
        return value, None
    if value.ndim == 2 and value.shape[1] == expected[1]:
        return np.zeros(expected, np.float32), (
            f"{what}: {VOCAB_HIT} has {value.shape[0]} scales {tuple(value.shape)}, the config "
            f"{expected[0]} {expected}: replaced by zeros of {expected}, as VAR's "
            "VQVAE.load_state_dict does (codebook-usage statistics of VAE training, unused by F1)."
        )
    raise ConversionError(
        f"{what}: buffer {VOCAB_HIT} has shape {tuple(value.shape)}; expected {expected} "
        f"({expected[0]} scales x a codebook of {expected[1]}). Only another number of scales "
        "(the first axis) is tolerated, as in VAR; this file belongs to another VQ-VAE."
    )


def _fit_buffers(buffers: dict, config: F1Config, what: str, notes: list[str]) -> dict:
    if VOCAB_HIT in buffers:
        buffers[VOCAB_HIT], note = fit_vocab_hit(buffers[VOCAB_HIT], config, what)
        if note:
            notes.append(note)
    return buffers


def f1_params(
    file: Path, config: F1Config, what: str, progress: bool = True, allocate=None
) -> tuple[engine.Flat, dict[str, np.ndarray], list[str]]:
    """An official F1 model.safetensors (local) -> our params (fp32), kept buffers, notes.

    Kept: `model.lvl_1L` (compared with the config's level table), the VQ-VAE usage buffer and
    any lerobot normalisation statistics. Skipped without being read: the expert lm_heads and any
    saved expert `embed_tokens`.
    """
    abstract = engine.abstract_params(config)
    source = SafetensorsSource(file)
    try:
        keys = source.keys()
        engine.check_kind(keys, "f1", what)
        rows = tables.f1_table(config, _vqvae_paths(abstract))
        optional = [e.key for e in tables.f1_extras(config) if e.optional]
        keep = [e.key for e in tables.f1_extras(config) if not e.optional]
        keep += [k for k in keys if tables.is_normalization(k)]
        skip = optional + [k for k in keys if tables.is_unused_expert_embedding(k)]
        params, found, notes = engine.import_tensors(
            source, rows, abstract, tuple(keep), what, progress, allocate, skip=tuple(skip)
        )
    finally:
        source.close()
    buffers = {k: v for k, v in found.items() if k == VOCAB_HIT or tables.is_normalization(k)}
    _fit_buffers(buffers, config, what, notes)
    stats = sorted(k for k in buffers if tables.is_normalization(k))
    if stats:
        notes.append(f"kept {len(stats)} normalisation statistics in buffers.npz: {stats[:4]}...")
    ignored = sorted(k for k in skip if k in set(keys))
    if ignored:
        notes.append(
            "ignored unused expert lm_heads / embeddings, not read (export writes zero lm_heads "
            f"on request, no expert embeddings): {ignored}"
        )
    levels = found.get("model.lvl_1L")
    if levels is not None and not np.array_equal(
        levels, engine.level_ids(config.foresight.patch_nums)[None]
    ):
        notes.append(
            "model.lvl_1L differs from the level table of the config's patch_nums; "
            "export writes the table."
        )
    return params, buffers, notes


def import_f1(input_path, output, config_path=None, progress: bool = True):
    """Official F1 model.safetensors + config.json -> our full tree."""
    config = read_official_config(input_path, config_path)
    wanted = (MODEL_FILE, NORM_STATS_FILE, TOKENIZER_FILE)
    with (
        _scratch(output) as allocate,
        local_input(input_path, wanted, progress) as local,
    ):
        params, buffers, notes = f1_params(
            _f1_file(local), config, str(input_path), progress, allocate
        )
        # An export of a run carries its deployment contract: keep it with the parameters.
        folder = local if local.is_dir() else local.parent
        contract = folder if (folder / NORM_STATS_FILE).exists() else None
        if contract is not None:
            notes.append(f"kept {NORM_STATS_FILE} and {TOKENIZER_FILE} of the export")
        return _write(output, params, config, "f1", ALL_SUBTREES, notes, buffers, contract)


def _pi0_layout(kind: str) -> str:
    return "new" if ">= 4.52" in kind else "old"


def import_pi0(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
):
    """lerobot pi0 safetensors (either layout) -> SigLIP, embedder, und + act experts, action_io."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        params, notes, stats = pi0_params(input_path, config, progress, allocate)
        return _write(output, params, config, "pi0", tables.PI0_SUBTREES, notes, stats)


def pi0_params(
    input_path, config: F1Config, progress: bool = True, allocate=None
) -> tuple[engine.Flat, list, dict[str, np.ndarray]]:
    """The pi0 part of our tree, notes, and lerobot's normalisation statistics (if saved)."""
    abstract = engine.abstract_params(config)
    with local_input(input_path, (MODEL_FILE,), progress) as local:
        source = SafetensorsSource(local / MODEL_FILE if local.is_dir() else local)
        try:
            keys = source.keys()
            kind = engine.check_kind(keys, "pi0", str(input_path))
            rows = _with_model_prefix(tables.pi0_table(config, _pi0_layout(kind)), keys)
            keep = [k for k in keys if tables.is_normalization(k)]
            skip = [
                k
                for k in keys
                if k.endswith("gemma_expert.lm_head.weight") or tables.is_unused_expert_embedding(k)
            ]
            params, found, notes = engine.import_tensors(
                source,
                rows,
                _select(abstract, tables.PI0_SUBTREES),
                tuple(keep),
                str(input_path),
                progress,
                allocate,
                skip=tuple(skip),
            )
        finally:
            source.close()
    notes.insert(0, f"layout: {kind}")
    stats = {k: v for k, v in found.items() if tables.is_normalization(k)}
    if stats:
        notes.append(f"kept {len(stats)} normalisation statistics in buffers.npz (pi0's datasets)")
    return params, notes, stats


def import_paligemma(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
):
    """HF PaliGemma safetensors (file or sharded directory) -> SigLIP, embedder, und expert."""
    config = config or get_model_config(size)
    abstract = _select(engine.abstract_params(config), tables.PALIGEMMA_SUBTREES)
    with (
        _scratch(output) as allocate,
        local_input(input_path, ("*.safetensors",), progress) as local,
    ):
        source = SafetensorsSource(local)
        try:
            kind = engine.check_kind(source.keys(), "paligemma", str(input_path))
            rows = tables.paligemma_table(config, _pi0_layout(kind))
            skip = [k for k in source.keys() if k.endswith("lm_head.weight")]  # tied
            params, _, notes = engine.import_tensors(
                source, rows, abstract, (), str(input_path), progress, allocate, skip=tuple(skip)
            )
        finally:
            source.close()
        notes.insert(0, f"layout: {kind}")
        for note in notes:
            print(note)
        return _write(output, params, config, "paligemma", tables.PALIGEMMA_SUBTREES, notes, {})


def openpi_flat(input_path) -> dict[str, np.ndarray]:
    """An openpi params checkpoint (Orbax, local or a URI, saved from any number of devices)
    flattened with "/", `params` and nnx `value` removed; NumPy arrays on the host."""
    tree = load_orbax(input_path)
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    flat = engine.flatten(tree)
    return {k.removesuffix("/value"): v for k, v in flat.items()}


def import_openpi(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
):
    """openpi JAX pi0 params (Orbax) -> SigLIP, embedder, und + act experts, action_io."""
    config = config or get_model_config(size)
    abstract = _select(engine.abstract_params(config), tables.PI0_SUBTREES)
    check_output_free(output)
    source = DictSource(openpi_flat(input_path))
    engine.check_kind(source.keys(), "openpi", str(input_path))
    with _scratch(output) as allocate:
        params, _, notes = engine.import_tensors(
            source, tables.openpi_table(config), abstract, (), str(input_path), progress, allocate
        )
        return _write(output, params, config, "openpi", tables.PI0_SUBTREES, notes, {})


def var_vae_params(input_path, config: F1Config, progress: bool = True, allocate=None):
    abstract = _select(engine.abstract_params(config), ("vqvae",))
    with local_input(input_path, progress=progress) as local:
        source = open_source(local)
        try:
            engine.check_kind(source.keys(), "var-vae", str(input_path))
            params, found, notes = engine.import_tensors(
                source,
                tables.var_vae_table(_vqvae_paths(abstract)),
                abstract,
                tables.VAR_VAE_EXTRAS,
                str(input_path),
                progress,
                allocate,
            )
        finally:
            source.close()
    buffers = {"model.vae." + k: np.array(v) for k, v in found.items()}
    _fit_buffers(buffers, config, str(input_path), notes)
    return params, buffers, notes


def import_var_vae(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
):
    """VAR vae_ch160v4096z32.pth (torch pickle or safetensors) -> params/vqvae."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        params, buffers, notes = var_vae_params(input_path, config, progress, allocate)
        for note in notes:
            print(note, file=sys.stderr)
        return _write(output, params, config, "var-vae", ("vqvae",), notes, buffers)


def compose_stage1(
    pi0_path,
    vae_path,
    output,
    size: str = "full",
    seed: int = 0,
    progress: bool = True,
    config: F1Config | None = None,
):
    """Stage-1 start: pi0 (SigLIP, und, act, action_io) + VAR VQ-VAE + fresh gen expert/foresight."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        # pi0's normalisation statistics belong to pi0's datasets, not to a stage-1 run: dropped.
        params, notes, _ = pi0_params(pi0_path, config, progress, allocate)
        vae, buffers, vae_notes = var_vae_params(vae_path, config, progress, allocate)
        params.update(vae)
        params.update(engine.fresh_init(config, STAGE1_FRESH, seed))
        missing = sorted(set(engine.abstract_params(config)) - set(params))
        if missing:
            raise ConversionError(f"compose-stage1 left parameters unset: {missing}")
        notes += vae_notes + [f"freshly initialised (seed {seed}): {list(STAGE1_FRESH)}"]
        return _write(output, params, config, "stage1", ALL_SUBTREES, notes, buffers)


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


def _check_params(params: engine.Flat, config: F1Config, what: str) -> None:
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
        _check_params(
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
            tokenizer = _keep_tokenizer(Path(contract.tokenizer_path))
            contract = dataclasses.replace(contract, tokenizer_path=tokenizer)
    return contract


def _keep_tokenizer(path: Path) -> str:
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
        params, _, _ = f1_params(_f1_file(local), config, str(directory), progress)
        contract = None
        if has_contract:
            try:
                contract = read_deployment_contract(str(local))
            except (ValueError, KeyError, TypeError) as e:
                raise ConversionError(f"{directory}/{NORM_STATS_FILE}: {e}") from None
            tokenizer = Path(contract.tokenizer_path)
            if is_remote(directory):
                contract = dataclasses.replace(contract, tokenizer_path=_keep_tokenizer(tokenizer))
    return engine.unflatten(params), config, contract


# --------------------------------------------------------------------------------------------
# Export and verify.


def _export_rows(config: F1Config, dtype: str) -> list[tables.Row]:
    if dtype not in EXPORT_DTYPES:
        raise ConversionError(f"--dtype must be one of {EXPORT_DTYPES}, got {dtype!r}.")
    rows = tables.f1_table(config, _vqvae_paths(engine.abstract_params(config)))
    if dtype == "float32":  # exactly the run's fp32 values; the released file has bf16 layers
        rows = [dataclasses.replace(r, dtype=tables.F32) for r in rows]
    return rows


def _write_f1_files(
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
    _check_params(params, config, str(input_dir))
    notes: list[str] = []
    _fit_buffers(buffers, config, str(input_dir), notes)  # imports written before the check
    for note in notes:
        print(note, file=sys.stderr)
    extras = []
    if meta.get("source") == "f1":  # statistics read from an F1 file go back into it
        extras = [
            tables.Extra(k, tuple(v.shape), str(v.dtype), "buffer")
            for k, v in buffers.items()
            if tables.is_normalization(k)
        ]
    with atomic_output_dir(output, progress) as tmp:
        _write_f1_files(tmp, params, config, buffers, extras, dtype, with_expert_lm_heads, progress)
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
    _check_params(
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
        _write_f1_files(
            tmp, params, record.model_config, {}, [], dtype, with_expert_lm_heads, progress
        )
        deployment.write_deployment_files(tmp, contract)
        copy_file(tokenizer_src, as_epath(tmp / TOKENIZER_FILE))
        write_manifest(tmp)
    return output


def verify_roundtrip(
    source: str,
    input_path,
    config: F1Config | None = None,
    size: str = "full",
    progress: bool = False,
) -> dict[str, float]:
    """Imports `input_path` in memory, maps every parameter back through the table's inverse and
    returns the largest |difference| per foreign tensor (0.0 everywhere means bit-exact)."""
    if source == "f1":
        config = read_official_config(input_path)
    config = config or get_model_config(size)
    if source == "openpi":
        return _verify_roundtrip(source, DictSource(openpi_flat(input_path)), config, progress)
    patterns = (MODEL_FILE,) if source in ("f1", "pi0") else ("*.safetensors",)
    with local_input(input_path, patterns, progress) as local:
        path = _f1_file(local) if source in ("f1", "pi0") else local
        return _verify_roundtrip(source, open_source(path), config, progress, str(input_path))


def _verify_roundtrip(
    source: str, src, config: F1Config, progress: bool, what: str = "input"
) -> dict[str, float]:
    abstract = engine.abstract_params(config)
    try:
        kind = engine.classify(src.keys())
        rows = {
            "f1": lambda: tables.f1_table(config, _vqvae_paths(abstract)),
            "pi0": lambda: _with_model_prefix(
                tables.pi0_table(config, _pi0_layout(kind)), src.keys()
            ),
            "paligemma": lambda: tables.paligemma_table(config, _pi0_layout(kind)),
            "var-vae": lambda: tables.var_vae_table(_vqvae_paths(abstract)),
            "openpi": lambda: tables.openpi_table(config),
        }[source]()
        engine.check_kind(src.keys(), source, what)
        # Compare in fp32: the inverse of every rule is exact; the export dtype is not the point.
        rows = [dataclasses.replace(r, dtype="float32") for r in rows]
        subtrees = sorted({r.ours for r in rows})
        skip = tuple(
            k
            for k in src.keys()
            if "lm_head" in k
            or tables.is_normalization(k)
            or tables.is_unused_expert_embedding(k)
            or k.endswith(("lvl_1L", "ema_vocab_hit_SV"))
        )
        params, _, _ = engine.import_tensors(
            src, rows, _select(abstract, subtrees), (), what, progress, skip=skip
        )
        shapes = {k: v.shape for k, v in abstract.items()}
        plan = engine.plan_export(rows, shapes, [])
        keys = set(src.keys())
        diffs = {}
        for item, (key, value) in zip(
            plan, engine.export_tensors(plan, params, config, {}, progress)
        ):
            names = [n.format(i=item.layer) for n in (item.row.foreign,) + item.row.aliases]
            original = np.asarray(src.get(next(n for n in names if n in keys)))
            if item.row.truncate_rows:
                original = original[: value.shape[0]]  # the cut vocabulary rows are not compared
            diffs[key] = engine.max_abs_diff(original.astype(np.float32), value.astype(np.float32))
    finally:
        src.close()
    return diffs


def verify_forward(
    source: str, input_path, size: str = "full", progress: bool = False
) -> dict[str, float]:
    """Imports in memory, then compares PaliGemma image features and text hidden states of
    transformers (holding the foreign tensors) with ours (holding the converted ones)."""
    if source not in ("f1", "pi0", "paligemma"):
        raise ConversionError(
            f"No independent torch model for source {source!r}; forward parity "
            "covers f1, pi0 and paligemma (their PaliGemma part)."
        )
    if source == "f1":
        config = read_official_config(input_path)
    else:
        config = get_model_config(size)
    abstract = _select(engine.abstract_params(config), tables.PALIGEMMA_SUBTREES)
    patterns = (MODEL_FILE,) if source in ("f1", "pi0") else ("*.safetensors",)
    with local_input(input_path, patterns, progress) as local:
        src = open_source(_f1_file(local) if source in ("f1", "pi0") else local)
        try:
            kind = engine.classify(src.keys())
            rows = (
                tables.f1_table(config, [])
                if source == "f1"
                else (
                    _with_model_prefix(tables.pi0_table(config, _pi0_layout(kind)), src.keys())
                    if source == "pi0"
                    else tables.paligemma_table(config, _pi0_layout(kind))
                )
            )
            rows = [r for r in rows if engine.in_subtrees(r.ours, tables.PALIGEMMA_SUBTREES)]
            used = {
                n.format(i=i)
                for r in rows
                for n in (r.foreign,) + r.aliases
                for i in range(config.und.depth + config.siglip.depth)
            }
            rest = tuple(k for k in src.keys() if k not in used)  # accepted, never read
            params, _, _ = engine.import_tensors(
                src, rows, abstract, (), str(input_path), progress, skip=rest
            )
            model = parity.hf_paligemma(config, src)
        finally:
            src.close()
    return parity.forward_parity(config, engine.unflatten(params), model)
