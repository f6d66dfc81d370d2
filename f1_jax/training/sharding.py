"""Device mesh and logical-axis sharding rules (docs/architecture.md, "Sharding").

Parameters carry logical axis names (`embed`, `mlp`, `q_heads`, `vocab`, `layers`, ...); a rule
table in the config maps each name to mesh axes (`data`, `fsdp`, `tensor`). Within a slice the
model is sharded FSDP-style; across slices (multi-slice TPU) the `data` axis spans the slices.
The mesh uses Auto axis types: shardings are propagated by the compiler from the parameter and
batch shardings plus a few activation constraints.

A rule that would split a parameter dimension the mesh does not divide (SigLIP's width 1152 over
256 FSDP devices) falls back: the mesh axis moves to another dimension of that parameter which it
divides, else the parameter is replicated over it (`sharding_fallbacks` names each case).
Placement only: the computation, and so the loss, is the same.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every non-tensor axis

# Default rules: FSDP over the model width, tensor parallelism over heads / MLP / vocabulary.
DEFAULT_RULES = (
    ("layers", None),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", None),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills the one -1 entry of (data, fsdp, tensor) so the product is the device count."""
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"The mesh shape needs one size per axis {MESH_AXES}, got {shape}.")
    if shape.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1, got {shape}.")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot fill mesh {shape}.")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"Mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
            f"but {num_devices} are available."
        )
    return tuple(shape)


def _device_grid(
    shape: tuple[int, ...], num_slices: int, devices: list, allow_split: bool = False
) -> np.ndarray:
    if num_slices > 1:
        if shape[0] % num_slices:
            raise ValueError(
                f"The data axis ({shape[0]}) must be a multiple of num_slices ({num_slices}): "
                f"data parallelism spans the slices, e.g. mesh ({num_slices}, -1, 1)."
            )
        ici = (shape[0] // num_slices, shape[1], shape[2])
        return mesh_utils.create_hybrid_device_mesh(
            ici, (num_slices, 1, 1), devices=devices, allow_split_physical_axes=allow_split
        )
    return mesh_utils.create_device_mesh(
        shape, devices=devices, allow_split_physical_axes=allow_split
    )


def placeable_mesh_shapes(num_slices: int, devices: Sequence[jax.Device]) -> list[tuple]:
    """Every (data, fsdp, tensor) split of `devices` that can be laid out on their physical
    topology (a TPU torus constrains it; CPU and GPU devices take any split)."""
    devices = list(devices)
    n = len(devices)
    out = []
    for data in (d for d in range(1, n + 1) if n % d == 0):
        for fsdp in (f for f in range(1, n // data + 1) if (n // data) % f == 0):
            shape = (data, fsdp, n // data // fsdp)
            try:
                _device_grid(shape, num_slices, devices)
            except (ValueError, NotImplementedError, AssertionError):
                continue
            out.append(shape)
    return out


def make_mesh(
    shape: Sequence[int],
    num_slices: int = 1,
    devices: Sequence[jax.Device] | None = None,
    allow_split_physical_axes: bool = False,
) -> Mesh:
    """A (data, fsdp, tensor) mesh. With several slices, `data` is split across them (DCN).

    On a TPU torus each mesh axis must be a product of whole physical axes unless
    `allow_split_physical_axes` (slower collectives on the split axis); a split that cannot be
    laid out stops with the splits that can."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(shape, len(devices))
    try:
        grid = _device_grid(shape, num_slices, devices, allow_split_physical_axes)
    except (NotImplementedError, AssertionError) as e:
        fits = placeable_mesh_shapes(num_slices, devices)
        raise ValueError(
            f"Mesh {dict(zip(MESH_AXES, shape))} cannot be laid out on the physical topology of "
            f"these {len(devices)} {devices[0].device_kind} devices ({str(e).split('. ')[0]}). "
            f"Splits (data, fsdp, tensor) that can: {fits}; or set "
            "--config.mesh.allow_split_physical_axes=true."
        ) from e
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Normalises rules given as lists (ConfigDict turns tuples into lists)."""
    out = []
    for rule in rules:
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        bad = [
            a for a in (axes if isinstance(axes, tuple) else (axes,)) if a not in (None, *MESH_AXES)
        ]
        if bad:
            raise ValueError(
                f"Sharding rule {name!r} names unknown mesh axes {bad}; valid: {MESH_AXES}."
            )
        out.append((name, axes))
    return tuple(out)


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def divisible_spec(
    shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh
) -> tuple[PartitionSpec, list[str]]:
    """`spec` with every mesh axis that does not divide its dimension moved to another dimension
    it divides (the largest first), else dropped (replicated); and a note per change."""
    sizes = dict(mesh.shape)
    dims = [list(_axes(e)) for e in (*spec, *([None] * (len(shape) - len(spec))))]
    homeless = []
    for i, axes in enumerate(dims):
        while axes and shape[i] % int(np.prod([sizes[a] for a in axes])):
            homeless.append((axes.pop(), i))
    notes = []
    for axis, origin in homeless:
        used = lambda j: int(np.prod([sizes[a] for a in dims[j]]))  # noqa: E731
        for j in sorted(range(len(shape)), key=lambda j: -shape[j]):
            if j != origin and shape[j] % (used(j) * sizes[axis]) == 0:
                dims[j].append(axis)
                notes.append(
                    f"axis {origin} (size {shape[origin]}) is not divisible by {axis}="
                    f"{sizes[axis]}: split over axis {j} (size {shape[j]}) instead"
                )
                break
        else:
            notes.append(
                f"axis {origin} (size {shape[origin]}) is not divisible by {axis}={sizes[axis]}, "
                f"nor is any other: replicated over {axis}"
            )
    entries = [None if not a else a[0] if len(a) == 1 else tuple(a) for a in dims]
    while len(entries) > len(spec) and entries[-1] is None:  # the rules' spec length, as given
        entries.pop()
    return PartitionSpec(*entries), notes


def _mesh_shardings_and_notes(boxed_abstract: Any, mesh: Mesh, rules) -> tuple[Any, list[str]]:
    specs = nn.get_partition_spec(boxed_abstract)
    logical = nn.unbox(nn.logical_to_mesh_sharding(specs, mesh, rules))
    shapes = nn.unbox(boxed_abstract)
    notes = []

    def fix(path, sh: NamedSharding, leaf) -> NamedSharding:
        spec, changed = divisible_spec(tuple(leaf.shape), sh.spec, mesh)
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        notes.extend(f"{name} {tuple(leaf.shape)}: {note}" for note in changed)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(fix, logical, shapes), notes


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings of a tree of `nn.LogicallyPartitioned` abstract values (unboxed structure),
    each dimension split only by mesh axes that divide it (see `divisible_spec`).

    Parameters without logical names (e.g. the VQ-VAE's) are replicated.
    """
    return _mesh_shardings_and_notes(boxed_abstract, mesh, rules)[0]


def sharding_fallbacks(boxed_abstract: Any, mesh: Mesh, rules) -> list[str]:
    """One line per parameter dimension whose rule the mesh does not divide, and what was done."""
    return _mesh_shardings_and_notes(boxed_abstract, mesh, rules)[1]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along their leading axis over the data and fsdp axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into one global array sharded over the mesh."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Abstract arrays that carry their target shardings: restored values land in their shards."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def mesh_from_config(mesh_config) -> Mesh:
    """The mesh of a recipe's `mesh` section over this job's devices (`num_devices` 0: all)."""
    devices = jax.devices()[: mesh_config.num_devices or None]
    return make_mesh(
        mesh_config.shape,
        mesh_config.num_slices,
        devices,
        mesh_config.get("allow_split_physical_axes", False),
    )
