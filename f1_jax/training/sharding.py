"""Device mesh and logical-axis sharding rules (docs/architecture.md, "Sharding").

Parameters carry logical axis names (`embed`, `mlp`, `q_heads`, `vocab`, `layers`, ...); a rule
table in the config maps each name to mesh axes (`data`, `fsdp`, `tensor`). Within a slice the
model is sharded FSDP-style; across slices (multi-slice TPU) the `data` axis spans the slices.
The mesh uses Auto axis types: shardings are propagated by the compiler from the parameter and
batch shardings plus a few activation constraints.
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


def make_mesh(
    shape: Sequence[int], num_slices: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh. With several slices, `data` is split across them (DCN)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(shape, len(devices))
    if num_slices > 1:
        if shape[0] % num_slices:
            raise ValueError(f"data axis {shape[0]} must be a multiple of num_slices {num_slices}.")
        ici = (shape[0] // num_slices, shape[1], shape[2])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices=devices)
    else:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
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


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings of a tree of `nn.LogicallyPartitioned` abstract values (unboxed structure).

    Parameters without logical names (e.g. the VQ-VAE's) are replicated.
    """
    logical = nn.get_partition_spec(boxed_abstract)
    return nn.logical_to_mesh_sharding(logical, mesh, rules)


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
    return make_mesh(mesh_config.shape, mesh_config.num_slices, devices)
