"""Cloud TPU topologies by name, and their devices for compiling ahead of time without a TPU.

Names: the Cloud TPU accelerator types (`v5p-128`, `v5litepod-256`, `v6e-256`, `v4-128`; v4 and
v5p names count TensorCores, two per chip, v5e and v6e names count chips) and the explicit
`GENERATION:SHAPE` form (`v5e:16x16`, `v5p:4x4x4`). With libtpu installed (`pip install -e
".[tpu]"`) `devices()` gives compile-only devices of that topology on any machine: the compiler
lays the program out and reports its memory exactly as it would on the pod.

Chip figures (per chip, from the Cloud TPU system-architecture pages, cloud.google.com/tpu/docs/
v4, v5e, v5p, v6e): HBM capacity and peak dense bf16 FLOP/s.
"""

import dataclasses
import os
import re

import jax
from jax.experimental import topologies


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str  # libtpu's topology prefix
    device_kind: str  # jax.Device.device_kind
    hbm_gib: float
    peak_bf16_flops: float
    cores_per_chip_in_name: int  # v4/v5p accelerator types count TensorCores
    dims: int  # torus dimensions
    names: tuple[str, ...]  # accelerator-type prefixes (v5litepod-256)


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32.0, 275e12, 2, 3, ("v4",)),
    "v5p": Chip("v5p", "TPU v5", 95.0, 459e12, 2, 3, ("v5p",)),
    "v5e": Chip("v5e", "TPU v5 lite", 16.0, 197e12, 1, 2, ("v5litepod", "v5e")),
    "v6e": Chip("v6e", "TPU v6 lite", 32.0, 918e12, 1, 2, ("v6e",)),
}
PEAK_SOURCE = "Cloud TPU datasheet, dense bf16 per chip (cloud.google.com/tpu/docs/<generation>)"

# The slice shapes Cloud TPU provisions for each chip count (chips -> torus shape).
SHAPES_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
SHAPES_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: Chip
    shape: str  # "16x16", "4x4x4"

    @property
    def name(self) -> str:
        return f"{self.chip.generation}:{self.shape}"

    @property
    def num_chips(self) -> int:
        n = 1
        for d in self.shape.split("x"):
            n *= int(d)
        return n

    @property
    def accelerator_type(self) -> str:
        return f"{self.chip.names[0]}-{self.num_chips * self.chip.cores_per_chip_in_name}"

    def devices(self, num_slices: int = 1) -> list[jax.Device]:
        """Compile-only devices of `num_slices` such slices (one device per chip)."""
        # Compile-only: no metadata server to ask (the topology is given), no chip to lock.
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        # v4 chips appear as one device each only in megacore mode (v5p's default).
        extra = {"chip_config_name": "megacore"} if self.chip.generation == "v4" else {}
        try:
            desc = topologies.get_topology_desc(
                self.name, platform="tpu", num_slices=num_slices, **extra
            )
        except (RuntimeError, ValueError) as e:  # no libtpu, or it refuses the shape
            raise RuntimeError(
                f"Cannot describe TPU topology {self.name} ({e}). Compiling for TPUs needs "
                'libtpu: pip install -e ".[tpu]" (or jax[tpu] at the installed jax version).'
            ) from e
        devices = list(desc.devices)
        if len(devices) != self.num_chips * num_slices:
            raise RuntimeError(
                f"libtpu gave {len(devices)} devices for {num_slices} x {self.name}, "
                f"expected one per chip ({self.num_chips * num_slices})."
            )
        return devices


def known_names() -> list[str]:
    out = []
    for chip in CHIPS.values():
        table = SHAPES_3D if chip.dims == 3 else SHAPES_2D
        out += [f"{chip.names[0]}-{n * chip.cores_per_chip_in_name}" for n in table]
    return out


def parse(name: str) -> Topology:
    """The topology of a Cloud TPU accelerator type (`v5p-128`) or `GENERATION:SHAPE`."""
    name = name.strip().lower()
    explicit = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e):(\d+(?:x\d+)*)", name)
    if explicit:
        gen = "v5e" if explicit.group(1) == "v5litepod" else explicit.group(1)
        chip, shape = CHIPS[gen], explicit.group(2)
        if len(shape.split("x")) != chip.dims:
            form = "AxBxC" if chip.dims == 3 else "AxB"
            raise ValueError(f"TPU {gen} slices are {chip.dims}-D tori ({form}); got {name!r}.")
        return Topology(chip, shape)
    typed = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
    if typed:
        prefix, count = typed.group(1), int(typed.group(2))
        for chip in CHIPS.values():
            if prefix in chip.names and count % chip.cores_per_chip_in_name == 0:
                table = SHAPES_3D if chip.dims == 3 else SHAPES_2D
                chips = count // chip.cores_per_chip_in_name
                if chips in table:
                    return Topology(chip, table[chips])
    raise ValueError(
        f"Unknown TPU topology {name!r}. Known accelerator types: {', '.join(known_names())}; "
        "or GENERATION:SHAPE with GENERATION one of v4, v5p (AxBxC), v5e, v6e (AxB), "
        "e.g. v5e:16x16 or v5p:4x4x4."
    )
