"""The conversion commands as functions (the CLI in `conversion/cli.py` is a thin wrapper).

Outputs of every import: `OUTPUT/params/` (Orbax StandardCheckpointer, tree `{"params": ...}`,
fp32), `OUTPUT/model_config.json` (our F1Config, the source, which subtrees are present, notes) and,
where the source has them, `OUTPUT/buffers.npz` (foreign buffers without a parameter of ours, kept
so that export reproduces them). Everything is written to a temp dir and renamed at the end.
"""

import contextlib
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from f1_jax.models.sizes import get_model_config
from conversion import config_io, engine, parity, tables
from conversion.io import (
    ConversionError,
    DictSource,
    SafetensorsSource,
    atomic_output_dir,
    load_orbax,
    open_source,
    write_safetensors_streaming,
)
from f1_jax.models.f1 import F1Config
from f1_jax.training.checkpoints import save_params

ALL_SUBTREES = ("siglip", "embedder", "stack", "foresight", "action_io", "vqvae")
STAGE1_FRESH = ("stack/layers/gen", "stack/final_norm_gen", "foresight")


def _vqvae_paths(abstract: dict) -> list[str]:
    return [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]


def _select(abstract: dict, subtrees) -> dict:
    return {k: v for k, v in abstract.items() if engine.in_subtrees(k, subtrees)}


def _write(
    output: Path,
    params: engine.Flat,
    config: F1Config,
    source: str,
    subtrees,
    notes: list[str],
    buffers: dict[str, np.ndarray],
) -> Path:
    with atomic_output_dir(output) as tmp:
        # Plain ndarray views of the memmaps: Orbax's handlers are registered for np.ndarray.
        save_params(tmp / "params", engine.unflatten({k: np.asarray(v) for k, v in params.items()}))
        config_io.write_sidecar(tmp / config_io.SIDECAR, config, source, sorted(subtrees), notes)
        if buffers:
            np.savez(tmp / "buffers.npz", **buffers)
    return Path(output)


@contextlib.contextmanager
def _scratch(output) -> Iterator:
    """Yields `allocate(path, shape)` making fp32 memmaps in a scratch dir beside `output`.

    Converted params live in files rather than anonymous memory, so the import's anonymous peak is
    the one copy Orbax snapshots while saving. Refuses a non-empty `output` before any work.
    """
    output = Path(output).absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConversionError(f"Output {output} exists and is not empty; choose a new directory.")
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


def read_official_config(input_path: Path, config_path: Path | None) -> F1Config:
    path = config_path or (input_path if input_path.is_dir() else input_path.parent) / "config.json"
    if not path.exists():
        raise ConversionError(f"No config.json at {path}; pass --config PATH (the F1 config.json).")
    with open(path) as f:
        return config_io.from_official(json.load(f))


def _f1_file(input_path: Path) -> Path:
    return input_path / "model.safetensors" if input_path.is_dir() else input_path


def import_f1(input_path, output, config_path=None, progress: bool = True) -> Path:
    """Official F1 model.safetensors + config.json -> our full tree."""
    input_path = Path(input_path)
    config = read_official_config(input_path, config_path and Path(config_path))
    abstract = engine.abstract_params(config)
    with _scratch(output) as allocate:
        source = SafetensorsSource(_f1_file(input_path))
        try:
            engine.check_kind(source.keys(), "f1", str(input_path))
            rows = tables.f1_table(config, _vqvae_paths(abstract))
            extras = [e.key for e in tables.f1_extras(config)]
            extras += [
                k
                for k in source.keys()
                if tables.is_normalization(k) or tables.is_unused_expert_embedding(k)
            ]
            params, found, notes = engine.import_tensors(
                source, rows, abstract, tuple(extras), str(input_path), progress, allocate
            )
        finally:
            source.close()
        buffers = {
            k: v
            for k, v in found.items()
            if k == "model.vae.quantize.ema_vocab_hit_SV" or tables.is_normalization(k)
        }
        stats = sorted(k for k in found if tables.is_normalization(k))
        if stats:
            notes.append(
                f"kept {len(stats)} normalisation statistics in buffers.npz: {stats[:4]}..."
            )
        ignored = [k for k in found if "lm_head" in k or tables.is_unused_expert_embedding(k)]
        if ignored:
            notes.append(
                f"ignored unused expert lm_heads / embeddings (export writes zero lm_heads "
                f"on request, no expert embeddings): {sorted(ignored)}"
            )
        levels = found.get("model.lvl_1L")
        if levels is not None and not np.array_equal(
            levels, engine.level_ids(config.foresight.patch_nums)[None]
        ):
            notes.append(
                "model.lvl_1L differs from the level table of the config's patch_nums; "
                "export writes the table."
            )
        return _write(Path(output), params, config, "f1", ALL_SUBTREES, notes, buffers)


def _pi0_layout(kind: str) -> str:
    return "new" if ">= 4.52" in kind else "old"


def import_pi0(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
) -> Path:
    """lerobot pi0 safetensors (either layout) -> SigLIP, embedder, und + act experts, action_io."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        params, notes, stats = pi0_params(input_path, config, progress, allocate)
        return _write(Path(output), params, config, "pi0", tables.PI0_SUBTREES, notes, stats)


def pi0_params(
    input_path, config: F1Config, progress: bool = True, allocate=None
) -> tuple[engine.Flat, list, dict[str, np.ndarray]]:
    """The pi0 part of our tree, notes, and lerobot's normalisation statistics (if saved)."""
    input_path = Path(input_path)
    abstract = engine.abstract_params(config)
    source = SafetensorsSource(
        input_path / "model.safetensors" if input_path.is_dir() else input_path
    )
    try:
        kind = engine.check_kind(source.keys(), "pi0", str(input_path))
        rows = _with_model_prefix(tables.pi0_table(config, _pi0_layout(kind)), source.keys())
        ignored = [
            k
            for k in source.keys()
            if k.endswith("gemma_expert.lm_head.weight")
            or tables.is_normalization(k)
            or tables.is_unused_expert_embedding(k)
        ]
        params, found, notes = engine.import_tensors(
            source,
            rows,
            _select(abstract, tables.PI0_SUBTREES),
            tuple(ignored),
            str(input_path),
            progress,
            allocate,
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
) -> Path:
    """HF PaliGemma safetensors (file or sharded directory) -> SigLIP, embedder, und expert."""
    input_path = Path(input_path)
    config = config or get_model_config(size)
    abstract = _select(engine.abstract_params(config), tables.PALIGEMMA_SUBTREES)
    with _scratch(output) as allocate:
        source = SafetensorsSource(input_path)
        try:
            kind = engine.check_kind(source.keys(), "paligemma", str(input_path))
            rows = tables.paligemma_table(config, _pi0_layout(kind))
            ignored = [k for k in source.keys() if k.endswith("lm_head.weight")]
            params, _, notes = engine.import_tensors(
                source, rows, abstract, tuple(ignored), str(input_path), progress, allocate
            )
        finally:
            source.close()
        notes.insert(0, f"layout: {kind}")
        for note in notes:
            print(note)
        return _write(
            Path(output), params, config, "paligemma", tables.PALIGEMMA_SUBTREES, notes, {}
        )


def openpi_flat(input_path) -> dict[str, np.ndarray]:
    """An openpi params checkpoint (Orbax) flattened with "/", `params` and nnx `value` removed."""
    tree = load_orbax(Path(input_path))
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    flat = engine.flatten(tree)
    return {k.removesuffix("/value"): v for k, v in flat.items()}


def import_openpi(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
) -> Path:
    """openpi JAX pi0 params (Orbax) -> SigLIP, embedder, und + act experts, action_io."""
    config = config or get_model_config(size)
    abstract = _select(engine.abstract_params(config), tables.PI0_SUBTREES)
    source = DictSource(openpi_flat(input_path))
    engine.check_kind(source.keys(), "openpi", str(input_path))
    with _scratch(output) as allocate:
        params, _, notes = engine.import_tensors(
            source, tables.openpi_table(config), abstract, (), str(input_path), progress, allocate
        )
        return _write(Path(output), params, config, "openpi", tables.PI0_SUBTREES, notes, {})


def var_vae_params(input_path, config: F1Config, progress: bool = True, allocate=None):
    input_path = Path(input_path)
    abstract = _select(engine.abstract_params(config), ("vqvae",))
    source = open_source(input_path)
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
    buffers = {"model.vae." + k: v for k, v in found.items()}
    return params, buffers, notes


def import_var_vae(
    input_path, output, size: str = "full", progress: bool = True, config: F1Config | None = None
) -> Path:
    """VAR vae_ch160v4096z32.pth (torch pickle or safetensors) -> params/vqvae."""
    config = config or get_model_config(size)
    with _scratch(output) as allocate:
        params, buffers, notes = var_vae_params(input_path, config, progress, allocate)
        return _write(Path(output), params, config, "var-vae", ("vqvae",), notes, buffers)


def compose_stage1(
    pi0_path,
    vae_path,
    output,
    size: str = "full",
    seed: int = 0,
    progress: bool = True,
    config: F1Config | None = None,
) -> Path:
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
        return _write(Path(output), params, config, "stage1", ALL_SUBTREES, notes, buffers)


# --------------------------------------------------------------------------------------------
# Export and verify.


def load_converted(input_dir) -> tuple[engine.Flat, F1Config, dict, dict[str, np.ndarray]]:
    """An import's output: params by path, config, sidecar, buffers."""
    input_dir = Path(input_dir)
    sidecar = input_dir / config_io.SIDECAR
    if not sidecar.exists():
        raise ConversionError(
            f"{input_dir} has no {config_io.SIDECAR}; expected a directory written "
            "by `python -m conversion import` (params/ + model_config.json)."
        )
    config, meta = config_io.read_sidecar(sidecar)
    tree = load_orbax(input_dir / "params")
    params = engine.flatten(tree["params"] if "params" in tree else tree)
    buffers = {}
    if (input_dir / "buffers.npz").exists():
        with np.load(input_dir / "buffers.npz") as data:
            buffers = {k: data[k] for k in data.files}
    return params, config, meta, buffers


def export_f1(input_dir, output, with_expert_lm_heads: bool = False, progress: bool = True) -> Path:
    """Our params -> official F1 model.safetensors + config.json."""
    params, config, meta, buffers = load_converted(input_dir)
    abstract = engine.abstract_params(config)
    missing = sorted(set(abstract) - set(params))
    if missing:
        raise ConversionError(
            f"{input_dir} holds only {meta.get('subtrees')} (source "
            f"{meta.get('source')}); the F1 export needs every parameter. Missing: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    wrong = [
        f"{k}: expected {abstract[k].shape}, found {params[k].shape}"
        for k in abstract
        if tuple(params[k].shape) != tuple(abstract[k].shape)
    ]
    if wrong:
        raise ConversionError("Parameter shapes do not match the config:\n  " + "\n  ".join(wrong))
    rows = tables.f1_table(config, _vqvae_paths(abstract))
    extras = tables.f1_extras(config)
    if meta.get("source") == "f1":  # statistics read from an F1 file go back into it
        extras += [
            tables.Extra(k, tuple(v.shape), str(v.dtype), "buffer")
            for k, v in buffers.items()
            if tables.is_normalization(k)
        ]
    plan = engine.plan_export(
        rows, {k: v.shape for k, v in abstract.items()}, extras, with_expert_lm_heads
    )
    with atomic_output_dir(output) as tmp:
        write_safetensors_streaming(
            tmp / "model.safetensors",
            [(i.key, i.shape, i.dtype) for i in plan],
            engine.export_tensors(plan, params, config, buffers, progress),
        )
        with open(tmp / "config.json", "w") as f:
            json.dump(config_io.to_official(config), f, indent=2)
    return Path(output)


def verify_roundtrip(
    source: str,
    input_path,
    config: F1Config | None = None,
    size: str = "full",
    progress: bool = False,
) -> dict[str, float]:
    """Imports `input_path` in memory, maps every parameter back through the table's inverse and
    returns the largest |difference| per foreign tensor (0.0 everywhere means bit-exact)."""
    input_path = Path(input_path)
    if source == "f1":
        config = read_official_config(input_path, None)
        input_path = _f1_file(input_path)
    config = config or get_model_config(size)
    abstract = engine.abstract_params(config)
    if source == "openpi":
        src = DictSource(openpi_flat(input_path))
        rows = tables.openpi_table(config)
    else:
        src = open_source(input_path)
        kind = engine.classify(src.keys())
        rows = {
            "f1": lambda: tables.f1_table(config, _vqvae_paths(abstract)),
            "pi0": lambda: _with_model_prefix(
                tables.pi0_table(config, _pi0_layout(kind)), src.keys()
            ),
            "paligemma": lambda: tables.paligemma_table(config, _pi0_layout(kind)),
            "var-vae": lambda: tables.var_vae_table(_vqvae_paths(abstract)),
        }[source]()
    engine.check_kind(src.keys(), source, str(input_path))
    # Compare in fp32: the inverse of every rule is exact; the export dtype is not the point here.
    rows = [dataclasses.replace(r, dtype="float32") for r in rows]
    subtrees = sorted({r.ours for r in rows})
    known = tuple(
        k
        for k in src.keys()
        if "lm_head" in k
        or tables.is_normalization(k)
        or tables.is_unused_expert_embedding(k)
        or k.endswith(("lvl_1L", "ema_vocab_hit_SV"))
    )
    params, _, _ = engine.import_tensors(
        src, rows, _select(abstract, subtrees), known, str(input_path), progress
    )
    shapes = {k: v.shape for k, v in abstract.items()}
    plan = engine.plan_export(rows, shapes, [])
    keys = set(src.keys())
    diffs = {}
    try:
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
    input_path = Path(input_path)
    if source not in ("f1", "pi0", "paligemma"):
        raise ConversionError(
            f"No independent torch model for source {source!r}; forward parity "
            "covers f1, pi0 and paligemma (their PaliGemma part)."
        )
    if source == "f1":
        config = read_official_config(input_path, None)
        input_path = _f1_file(input_path)
    else:
        config = get_model_config(size)
    abstract = _select(engine.abstract_params(config), tables.PALIGEMMA_SUBTREES)
    src = open_source(input_path)
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
        rest = tuple(k for k in src.keys() if k not in used)
        params, _, _ = engine.import_tensors(src, rows, abstract, rest, str(input_path), progress)
        model = parity.hf_paligemma(config, src)
    finally:
        src.close()
    return parity.forward_parity(config, engine.unflatten(params), model)
