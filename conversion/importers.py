"""Foreign checkpoints in: official F1, lerobot pi0, openpi, HF PaliGemma, VAR's VQ-VAE, and the
stage-1 composition.

Every import writes `OUTPUT/params/` (Orbax StandardCheckpointer, tree `{"params": ...}`, fp32),
`OUTPUT/model_config.json` (our F1Config, the source, which subtrees are present, notes) and,
where the source has them, `OUTPUT/buffers.npz` (foreign buffers without a parameter of ours,
kept so that export reproduces them). Everything is written to a temp dir and renamed (or, for a
URI, copied) at the end. Inputs and outputs may be URIs (`gs://...`); remote safetensors / torch
files are staged locally first.
"""

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from conversion import config_io, engine, tables
from conversion.io import (
    ConversionError,
    DictSource,
    SafetensorsSource,
    as_epath,
    atomic_output_dir,
    check_output_free,
    is_remote,
    load_orbax,
    local_input,
    open_source,
)
from f1_common.export_layout import (
    CONFIG_FILE,
    MODEL_FILE,
    NORM_STATS_FILE,
    TOKENIZER_FILE,
)
from f1_jax.models.f1 import F1Config
from f1_jax.models.sizes import get_model_config
from f1_jax.training.checkpoints import save_params

log = logging.getLogger(__name__)

ALL_SUBTREES = ("siglip", "embedder", "stack", "foresight", "action_io", "vqvae")
STAGE1_FRESH = ("stack/layers/gen", "stack/final_norm_gen", "foresight")
VOCAB_HIT = "model.vae.quantize.ema_vocab_hit_SV"


def vqvae_paths(abstract: dict) -> list[str]:
    return [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]


def select_subtrees(abstract: dict, subtrees) -> dict:
    return {k: v for k, v in abstract.items() if engine.in_subtrees(k, subtrees)}


def write_import(
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


def with_model_prefix(rows: list[tables.Row], keys: list[str]) -> list[tables.Row]:
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


def f1_file(input_path: Path) -> Path:
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


def fit_buffers(buffers: dict, config: F1Config, what: str, notes: list[str]) -> dict:
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
        rows = tables.f1_table(config, vqvae_paths(abstract))
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
    fit_buffers(buffers, config, what, notes)
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
            f1_file(local), config, str(input_path), progress, allocate
        )
        # An export of a run carries its deployment contract: keep it with the parameters.
        folder = local if local.is_dir() else local.parent
        contract = folder if (folder / NORM_STATS_FILE).exists() else None
        if contract is not None:
            notes.append(f"kept {NORM_STATS_FILE} and {TOKENIZER_FILE} of the export")
        return write_import(output, params, config, "f1", ALL_SUBTREES, notes, buffers, contract)


def pi0_layout(kind: str) -> str:
    return "new" if ">= 4.52" in kind else "old"


def import_pi0(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
):
    """lerobot pi0 safetensors (either layout) -> SigLIP, embedder, und + act experts, action_io."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        params, notes, stats = pi0_params(input_path, config, progress, allocate)
        return write_import(output, params, config, "pi0", tables.PI0_SUBTREES, notes, stats)


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
            rows = with_model_prefix(tables.pi0_table(config, pi0_layout(kind)), keys)
            keep = [k for k in keys if tables.is_normalization(k)]
            skip = [
                k
                for k in keys
                if k.endswith("gemma_expert.lm_head.weight") or tables.is_unused_expert_embedding(k)
            ]
            params, found, notes = engine.import_tensors(
                source,
                rows,
                select_subtrees(abstract, tables.PI0_SUBTREES),
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
    abstract = select_subtrees(engine.abstract_params(config), tables.PALIGEMMA_SUBTREES)
    with (
        _scratch(output) as allocate,
        local_input(input_path, ("*.safetensors",), progress) as local,
    ):
        source = SafetensorsSource(local)
        try:
            kind = engine.check_kind(source.keys(), "paligemma", str(input_path))
            rows = tables.paligemma_table(config, pi0_layout(kind))
            skip = [k for k in source.keys() if k.endswith("lm_head.weight")]  # tied
            params, _, notes = engine.import_tensors(
                source, rows, abstract, (), str(input_path), progress, allocate, skip=tuple(skip)
            )
        finally:
            source.close()
        notes.insert(0, f"layout: {kind}")
        for note in notes:
            log.info(note)
        return write_import(output, params, config, "paligemma", tables.PALIGEMMA_SUBTREES, notes, {})


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
    abstract = select_subtrees(engine.abstract_params(config), tables.PI0_SUBTREES)
    check_output_free(output)
    source = DictSource(openpi_flat(input_path))
    engine.check_kind(source.keys(), "openpi", str(input_path))
    with _scratch(output) as allocate:
        params, _, notes = engine.import_tensors(
            source, tables.openpi_table(config), abstract, (), str(input_path), progress, allocate
        )
        return write_import(output, params, config, "openpi", tables.PI0_SUBTREES, notes, {})


def var_vae_params(input_path, config: F1Config, progress: bool = True, allocate=None):
    abstract = select_subtrees(engine.abstract_params(config), ("vqvae",))
    with local_input(input_path, progress=progress) as local:
        source = open_source(local)
        try:
            engine.check_kind(source.keys(), "var-vae", str(input_path))
            params, found, notes = engine.import_tensors(
                source,
                tables.var_vae_table(vqvae_paths(abstract)),
                abstract,
                tables.VAR_VAE_EXTRAS,
                str(input_path),
                progress,
                allocate,
            )
        finally:
            source.close()
    buffers = {"model.vae." + k: np.array(v) for k, v in found.items()}
    fit_buffers(buffers, config, str(input_path), notes)
    return params, buffers, notes


def import_var_vae(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
):
    """VAR vae_ch160v4096z32.pth (torch pickle or safetensors) -> params/vqvae."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        params, buffers, notes = var_vae_params(input_path, config, progress, allocate)
        for note in notes:
            log.warning(note)
        return write_import(output, params, config, "var-vae", ("vqvae",), notes, buffers)


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
        return write_import(output, params, config, "stage1", ALL_SUBTREES, notes, buffers)


