"""Applying a mapping table: foreign tensors -> our params (import) and back (export).

Import checks everything before converting anything (missing, unexpected and mis-shaped keys are
all listed in one error), then fills preallocated fp32 arrays tensor by tensor. Export plans every
key, shape and dtype first (so it also works on abstract shapes, for checks without weights), then
produces one tensor at a time for the streaming writer.
"""

import dataclasses
import functools
from typing import Callable, Iterator

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from tqdm import tqdm

from conversion.io import NP_DTYPES, ConversionError
from conversion.tables import Extra, Row
from f1_common.official_config import key_problems
from f1_jax.models.f1 import F1, F1Config, example_batch
from f1_jax.models.foresight import level_ids

Flat = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Our side.


def _batch(config: F1Config) -> dict:
    return example_batch(config, 1, num_cameras=1, num_tokens=4)


@functools.lru_cache(maxsize=8)
def abstract_params(config: F1Config) -> dict[str, jax.ShapeDtypeStruct]:
    """Every parameter of F1(config) by "/"-path under params/, shapes only (nothing allocated).

    Cached per config (tracing costs seconds); callers must not modify the returned dict.
    """
    tree = nn.unbox(
        jax.eval_shape(F1(config).init, jax.random.key(0), _batch(config), jax.random.key(1))
    )
    return {"/".join(k): v for k, v in flatten_dict(tree["params"]).items()}


def in_subtrees(path: str, subtrees: tuple[str, ...] | list[str]) -> bool:
    return any(path == s or path.startswith(s + "/") for s in subtrees)


def fresh_init(config: F1Config, subtrees: tuple[str, ...], seed: int = 0) -> Flat:
    """The model's own initialisation of `subtrees` only.

    Under `jit`, XLA drops every computation the returned leaves do not need (the forward pass and
    the other parameters), so this costs about the size of the selected subtrees.
    """

    def init(key):
        params = nn.unbox(F1(config).init(key, _batch(config), jax.random.key(seed + 1)))["params"]
        flat = {"/".join(k): v for k, v in flatten_dict(params).items()}
        return {k: v for k, v in flat.items() if in_subtrees(k, subtrees)}

    return {k: np.asarray(v) for k, v in jax.jit(init)(jax.random.key(seed)).items()}


def unflatten(flat: Flat) -> dict:
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def flatten(tree: dict) -> Flat:
    return {"/".join(k): v for k, v in flatten_dict(tree).items()}


# --------------------------------------------------------------------------------------------
# What kind of checkpoint is this?

_KINDS = (
    (
        "f1",
        lambda k: (
            any(".gemma_wm_expert." in x for x in k) and any(x.startswith("model.vae.") for x in k)
        ),
    ),
    (
        "pi0 (lerobot, transformers >= 4.52 names)",
        lambda k: (
            any("paligemma.model.language_model.layers." in x for x in k)
            and any("gemma_expert." in x for x in k)
        ),
    ),
    (
        "pi0 (lerobot, transformers 4.4x names)",
        lambda k: (
            any("paligemma.language_model.model.layers." in x for x in k)
            and any("gemma_expert." in x for x in k)
        ),
    ),
    (
        "paligemma (transformers >= 4.52 names)",
        lambda k: any(x.startswith("model.language_model.layers.") for x in k),
    ),
    (
        "paligemma (transformers 4.4x names)",
        lambda k: any(x.startswith("language_model.model.layers.") for x in k),
    ),
    ("var-vae", lambda k: "quantize.embedding.weight" in k),
    (
        "var-transformer (a VAR var_d*.pth, not the VQ-VAE)",
        lambda k: (
            any(x.startswith("blocks.") and ".attn.mat_qkv." in x for x in k)
            or "class_emb.weight" in k
        ),
    ),
    ("openpi", lambda k: any(x.startswith("PaliGemma/") for x in k)),
)


def classify(keys: list[str]) -> str:
    """Names the checkpoint layout from its keys, or "unknown"."""
    keyset = set(keys)
    for name, test in _KINDS:
        if test(keyset):
            return name
    return "unknown"


def check_kind(keys: list[str], expected: str, what: str) -> str:
    """Raises a ConversionError naming the found layout unless it starts with `expected`."""
    found = classify(keys)
    if not found.startswith(expected):
        sample = ", ".join(sorted(keys)[:3])
        raise ConversionError(
            f"{what} is not a {expected} checkpoint: it looks like {found} "
            f"({len(keys)} tensors, e.g. {sample})."
        )
    return found


# --------------------------------------------------------------------------------------------
# Import.


@dataclasses.dataclass
class _Plan:
    row: Row
    foreign_key: str
    layer: int | None  # None: the whole tensor (or a foreign-stacked tensor)
    expected: tuple[int, ...]


def _our_slice_shape(row: Row, shape: tuple[int, ...], per_layer: bool) -> tuple[int, ...]:
    shape = tuple(shape[1:]) if per_layer else tuple(shape)
    return shape[1:] if row.slot is not None else shape


def _expected_foreign(row: Row, shape: tuple[int, ...]) -> tuple[int, ...]:
    if row.foreign_stacked:
        return (shape[0],) + row.rule.foreign_shape(_our_slice_shape(row, shape, True))
    return row.rule.foreign_shape(_our_slice_shape(row, shape, row.per_layer))


def check_coverage(rows: list[Row], abstract: dict[str, jax.ShapeDtypeStruct]) -> None:
    """Every selected parameter of ours is filled exactly once (all slots where slotted)."""
    by_path: dict[str, list[Row]] = {}
    for row in rows:
        if row.ours not in abstract:
            raise ConversionError(
                f"Table row {row.foreign} targets {row.ours}, which the model does not have."
            )
        by_path.setdefault(row.ours, []).append(row)
    for path, group in by_path.items():
        slots = sorted(r.slot for r in group if r.slot is not None)
        if len(group) > 1 and slots != list(
            range(abstract[path].shape[1 if group[0].per_layer or group[0].foreign_stacked else 0])
        ):
            raise ConversionError(
                f"Table fills {path} with slots {slots}; it needs every slot once."
            )


def import_tensors(
    source,
    rows: list[Row],
    abstract: dict[str, jax.ShapeDtypeStruct],
    known_extras: tuple[str, ...] = (),
    what: str = "input",
    progress: bool = True,
    allocate: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
    skip: tuple[str, ...] = (),
) -> tuple[Flat, dict[str, np.ndarray], list[str]]:
    """Converts the foreign tensors named by `rows` into our fp32 parameters.

    `known_extras` are read and returned as they are (buffers to keep); `skip` names tensors that
    are accepted but never read (the unused expert lm_heads: with a memory-mapped source their
    bytes are never touched). `allocate(path, shape)` makes each fp32 output array (default: in
    memory; the CLI passes file-backed memmaps so the only anonymous copy is the one Orbax
    snapshots while saving).

    Returns:
      params by path (only the paths the rows target), the foreign extras found (by key), notes.
    Raises:
      ConversionError listing every missing, unexpected and mis-shaped key at once.
    """
    check_coverage(rows, abstract)
    keys = set(source.keys())
    plans, missing, misshaped, notes, used = [], [], [], [], set()
    for row in rows:
        shape = abstract[row.ours].shape
        layers = range(shape[0]) if row.per_layer else [None]
        for layer in layers:
            names = [n.format(i=layer) for n in (row.foreign,) + row.aliases]
            found = [n for n in names if n in keys]
            expected = _expected_foreign(row, shape)
            if not found:
                missing.append(f"{names[0]} (expected {expected})")
                continue
            used.update(found)
            got = source.shape(found[0])
            if got != expected and not (
                row.truncate_rows and got[1:] == expected[1:] and got[0] >= expected[0]
            ):
                misshaped.append(f"{found[0]}: expected {expected}, found {got}")
                continue
            if got != expected:
                notes.append(
                    f"{found[0]}: vocabulary truncated from {got[0]} to {expected[0]} rows "
                    "(the rows past pi0's vocabulary are dropped, as pi0 does)."
                )
            plans.append(_Plan(row, found[0], layer, expected))
    used.update(k for k in skip if k in keys)
    unexpected = sorted(keys - used - set(known_extras))
    if missing or misshaped or unexpected:
        raise ConversionError(key_problems(what, "convert", missing, unexpected, misshaped))

    extras = {k: source.get(k) for k in known_extras if k in keys and k not in used}
    allocate = allocate or (lambda path, shape: np.empty(shape, np.float32))
    params = {}
    for row in rows:
        if row.ours not in params:
            params[row.ours] = allocate(row.ours, tuple(abstract[row.ours].shape))
    bar = _progress(len(plans), "import", progress)
    for plan in plans:
        row, target = plan.row, params[plan.row.ours]
        value = source.get(plan.foreign_key)
        if row.truncate_rows:
            value = value[: plan.expected[0]]
        value = np.asarray(value)
        if row.foreign_stacked:
            converted = np.stack([row.rule.to_ours(value[i]) for i in range(value.shape[0])])
            index = (slice(None), row.slot) if row.slot is not None else (slice(None),)
        else:
            converted = row.rule.to_ours(value)
            index = tuple(i for i in (plan.layer, row.slot) if i is not None)
        target[index] = converted.astype(np.float32)  # bf16 -> fp32 is exact
        bar.update(1)
    bar.close()
    return params, extras, notes


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------
# Export.


@dataclasses.dataclass(frozen=True)
class ExportItem:
    key: str
    shape: tuple[int, ...]
    dtype: str
    row: Row | None = None
    layer: int | None = None
    extra: Extra | None = None


def plan_export(
    rows: list[Row],
    shapes: dict[str, tuple[int, ...]],
    extras: list[Extra],
    with_optional: bool = False,
) -> list[ExportItem]:
    """Every foreign key export writes, with shape and dtype, sorted by key. Needs shapes only."""
    items = []
    for row in rows:
        shape = tuple(shapes[row.ours])
        expected = _expected_foreign(row, shape)
        layers = range(shape[0]) if row.per_layer else [None]
        for layer in layers:
            items.append(ExportItem(row.foreign.format(i=layer), expected, row.dtype, row, layer))
    for extra in extras:
        if with_optional or not extra.optional:
            items.append(ExportItem(extra.key, extra.shape, extra.dtype, extra=extra))
    items.sort(key=lambda item: item.key)
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ConversionError(f"The export plan writes these keys twice: {duplicates}.")
    return items


def _extra_value(extra: Extra, config: F1Config, buffers: dict[str, np.ndarray]) -> np.ndarray:
    if extra.fill == "levels":
        return level_ids(config.foresight.patch_nums)[None].astype(np.int64)
    if extra.fill == "buffer" and extra.key in buffers:
        value = np.asarray(buffers[extra.key])
        if tuple(value.shape) != tuple(extra.shape):
            raise ConversionError(
                f"Buffer {extra.key} has shape {tuple(value.shape)}; the config needs "
                f"{tuple(extra.shape)}."
            )
        return value.astype(NP_DTYPES[extra.dtype])
    return np.zeros(extra.shape, NP_DTYPES[extra.dtype])


def export_tensors(
    plan: list[ExportItem],
    params: Flat,
    config: F1Config,
    buffers: dict[str, np.ndarray],
    progress: bool = True,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (key, array in the foreign layout and dtype) in plan order, one at a time."""
    bar = _progress(len(plan), "export", progress)
    for item in plan:
        if item.extra is not None:
            value = _extra_value(item.extra, config, buffers)
        else:
            row, ours = item.row, params[item.row.ours]
            if row.foreign_stacked:
                part = ours[:, row.slot] if row.slot is not None else ours
                value = np.stack([row.rule.to_foreign(part[i]) for i in range(part.shape[0])])
            else:
                index = tuple(i for i in (item.layer, row.slot) if i is not None)
                value = row.rule.to_foreign(ours[index] if index else ours)
            value = np.ascontiguousarray(value).astype(NP_DTYPES[item.dtype])
        if value.shape != item.shape:
            raise ConversionError(f"{item.key}: produced {value.shape}, planned {item.shape}.")
        bar.update(1)
        yield item.key, value
    bar.close()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| in fp64 (inf where shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
