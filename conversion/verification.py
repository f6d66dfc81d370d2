"""Proof that a conversion is exact: round trips through the tables (`verify_roundtrip`) and
forward passes against the reference implementation (`verify_forward`).
"""

import dataclasses
import logging

import numpy as np

from conversion import engine, parity, tables
from conversion.importers import (
    f1_file,
    openpi_flat,
    pi0_layout,
    read_official_config,
    select_subtrees,
    vqvae_paths,
    with_model_prefix,
)
from conversion.io import (
    ConversionError,
    DictSource,
    local_input,
    open_source,
)
from f1_common.export_layout import (
    MODEL_FILE,
)
from f1_jax.models.f1 import F1Config
from f1_jax.models.sizes import get_model_config

log = logging.getLogger(__name__)

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
        path = f1_file(local) if source in ("f1", "pi0") else local
        return _verify_roundtrip(source, open_source(path), config, progress, str(input_path))


def _verify_roundtrip(
    source: str, src, config: F1Config, progress: bool, what: str = "input"
) -> dict[str, float]:
    abstract = engine.abstract_params(config)
    try:
        kind = engine.classify(src.keys())
        rows = {
            "f1": lambda: tables.f1_table(config, vqvae_paths(abstract)),
            "pi0": lambda: with_model_prefix(
                tables.pi0_table(config, pi0_layout(kind)), src.keys()
            ),
            "paligemma": lambda: tables.paligemma_table(config, pi0_layout(kind)),
            "var-vae": lambda: tables.var_vae_table(vqvae_paths(abstract)),
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
            src, rows, select_subtrees(abstract, subtrees), (), what, progress, skip=skip
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
    abstract = select_subtrees(engine.abstract_params(config), tables.PALIGEMMA_SUBTREES)
    patterns = (MODEL_FILE,) if source in ("f1", "pi0") else ("*.safetensors",)
    with local_input(input_path, patterns, progress) as local:
        src = open_source(f1_file(local) if source in ("f1", "pi0") else local)
        try:
            kind = engine.classify(src.keys())
            rows = (
                tables.f1_table(config, [])
                if source == "f1"
                else (
                    with_model_prefix(tables.pi0_table(config, pi0_layout(kind)), src.keys())
                    if source == "pi0"
                    else tables.paligemma_table(config, pi0_layout(kind))
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
