"""Compiles a recipe's train step for a TPU pod on this machine, before the pod is rented:
`python -m f1_jax.aot --config=RECIPE --topology=TOPOLOGY [--num_slices=N] [--step_time=S]
[--config.FIELD=VALUE ...]`.

The step is the launcher's (`--config` and its overrides are parsed as `f1_jax.launch` parses
them; same mesh, sharding rules, batch and optimizer), lowered with abstract inputs and compiled
by libtpu for compile-only devices of TOPOLOGY (`pip install -e ".[tpu]"`; no TPU, no network).
It prints the per-chip HBM the compiler plans (arguments, temporaries, outputs) against the chip's
capacity, the per-chip batch, the model FLOPs per step (f1_jax/training/flops.py) and, with
`--step_time`, the MFU that step time would mean. TOPOLOGY: a Cloud TPU accelerator type
(`v5p-128`, `v5litepod-256`, `v6e-256`, `v4-128`) or `GENERATION:SHAPE` (`v5e:16x16`).

Exit status: 0 it fits, 1 it does not fit (the compiler's plan exceeds the chip's HBM, or the
compiler stops with its out-of-memory error: both say by how much and which levers to try), 2 it
cannot be compiled as configured (unknown topology, a batch or mesh the topology does not take);
each says what would.
"""

import json
import os
import re
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections
from absl import app, flags

from f1_jax import recipes
from f1_jax.models.f1 import observation_spec
from f1_jax.training import flops, setup, sharding, topology
from f1_jax.training import state as st

_CONFIG = recipes.define_config_flag()
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "Cloud TPU type (v5p-128, v5litepod-256, v6e-256) or v5e:16x16."
)
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices",
    None,
    "Slices of TOPOLOGY joined over the data-center network (default: the recipe's "
    "mesh.num_slices); data parallelism spans them.",
)
_STEP_TIME = flags.DEFINE_float(
    "step_time", None, "A step time in seconds: print the MFU it would mean."
)
_HBM_GIB = flags.DEFINE_float(
    "hbm_gib", None, "Per-chip memory budget in GiB (default: the chip's HBM capacity)."
)
_HLO_OUT = flags.DEFINE_string(
    "hlo_out",
    None,
    "Write the compiled program's text (the TPU compiler's optimised HLO, with its buffers) to "
    "this file: what sets the memory peak.",
)
flags.mark_flags_as_required(["config", "topology"])


class AotError(ValueError):
    """The step cannot be compiled for the topology as configured; the message says what can."""


def _gib(n: float) -> float:
    return round(n / 2**30, 3)


def check_batch(global_batch: int, data_parallel: int, grad_accum: int) -> None:
    """The global batch must split evenly over the data-parallel devices (and micro-batches)."""
    unit = data_parallel * grad_accum
    if global_batch % unit == 0:
        return
    below, above = (global_batch // unit) * unit, (global_batch // unit + 1) * unit
    sizes = [s for s in (below, above) if s > 0]
    raise AotError(
        f"The global batch {global_batch} does not split over {data_parallel} data-parallel "
        f"devices (data x fsdp)"
        + (f" x {grad_accum} micro-batches" if grad_accum > 1 else "")
        + f". Batch sizes that do: multiples of {unit}, e.g. "
        + " or ".join(
            f"--config.data.batch_size={s} ({s // data_parallel} per chip)" for s in sizes
        )
        + "; or a mesh whose data x fsdp divides it."
    )


_UNITS = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(size: str) -> float:
    """'15.76G' (the TPU compiler's sizes, in binary units) -> bytes."""
    return float(size[:-1]) * _UNITS[size[-1]] if size[-1] in _UNITS else float(size)


def compiler_oom(message: str) -> dict[str, Any] | None:
    """The TPU compiler's out-of-memory error (CompileTimeHbmOom) read into the report's memory
    fields, or None if `message` is another error. The compiler stops there instead of returning
    a memory analysis, when the step exceeds the HBM it can use (a little less than the chip's)."""
    used = re.search(r"Used (\S+) of (\S+) hbm\. Exceeded hbm capacity by (\S+)\.", message)
    if "CompileTimeHbmOom" not in message or used is None:
        return None

    def field(pattern: str) -> float:
        found = re.search(pattern, message)
        return _bytes(found.group(1)) if found else 0.0

    output = re.search(r"Output size (\S+); shares (\S+) with arguments", message)
    out_bytes, alias_bytes = map(_bytes, output.groups()) if output else (0.0, 0.0)
    largest = [
        f"{size} {shape} at {op}"
        for size, op, shape in re.findall(
            r"Size: (\S+)\n\s+Operator: op_name=\"([^\"]+)\"\n\s+Shape: (\S+)", message
        )
    ]
    return {
        "argument": field(r"\n\s+arguments\s+(\S+)"),
        "temp": field(r"\n\s+program\s+(\S+)"),
        "output": out_bytes,
        "alias": alias_bytes,
        "compiler_oom": {
            "used_gib": _gib(_bytes(used.group(1))),
            "usable_gib": _gib(_bytes(used.group(2))),
            "over_gib": _gib(_bytes(used.group(3))),
            "largest_allocations": largest[:3],
        },
    }


def fit_levers(config: ml_collections.ConfigDict, report: dict[str, Any]) -> list[str]:
    """What to try when the step does not fit, most effective first."""
    per_chip_batch, mesh = report["per_chip_batch"], report["mesh"]
    levers = []
    if not config.data.get("frame_codes", False):
        levers.append(
            "--config.data.frame_codes=true: the frozen VQ-VAE encodes the generation frames "
            "once into a code store instead of in every step (its activations leave the step)"
        )
    if config.model.get("attention", "xla") == "xla":
        levers.append(
            "--config.model.attention=splash: TPU splash attention does not materialise the "
            "attention's logits and probabilities"
        )
    if config.model.remat_policy != "full":
        levers.append(
            f"--config.model.remat_policy=full (now {config.model.remat_policy!r}): "
            "recompute each layer's activations in the backward pass"
        )
    if per_chip_batch > 1:
        levers.append(
            f"a smaller per-chip batch (now {per_chip_batch}): a smaller data.batch_size, or "
            "the same batch in micro-batches with --config.optimizer.grad_accum_steps=K"
        )
    if mesh["data"] > report["num_slices"] or mesh["tensor"] > 1:
        levers.append(
            f"more FSDP: --config.mesh.shape=({report['num_slices']},-1,1) shards parameters and "
            "optimizer state over every chip of a slice"
        )
    if config.optimizer.mu_dtype != "bfloat16":
        levers.append(
            f"--config.optimizer.mu_dtype=bfloat16: Adam's first moment in bf16 (about "
            f"{report['adam_mu_gib']:.2f} GiB per chip less)"
        )
    return levers


def check_fits(report: dict[str, Any], config: ml_collections.ConfigDict) -> str | None:
    """None if the step fits the per-chip budget, else what it lacks and which levers to try."""
    need, have = report["hbm_total_gib"], report["hbm_capacity_gib"]
    oom = report.get("compiler_oom")
    if report.get("fits", need <= have):
        return None
    if oom:
        shortfall = (
            f"The TPU compiler stopped: the step needs {oom['used_gib']:.2f} GiB per chip, "
            f"{oom['over_gib'] * 1024:.0f} MiB more than the {oom['usable_gib']:.2f} GiB it can "
            f"use of a {report['chip']} chip ({have:.1f} GiB)"
        )
        if oom["largest_allocations"]:
            shortfall += ". Largest: " + "; ".join(oom["largest_allocations"])
    else:
        shortfall = (
            f"The step needs {need:.2f} GiB per chip, {need - have:.2f} GiB more than the "
            f"{have:.1f} GiB of a {report['chip']} chip"
        )
    levers = fit_levers(config, report)
    return (
        shortfall
        + ". Levers: "
        + "; ".join(levers or ["more chips (a larger topology) or a smaller model"])
        + "."
    )


def _memory(compiled: Any) -> dict[str, float]:
    """The compiled step's planned HBM per chip, in bytes."""
    analysis = compiled.memory_analysis()
    return {
        "argument": analysis.argument_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "alias": analysis.alias_size_in_bytes,
    }


def compile_for_topology(
    config: ml_collections.ConfigDict,
    topo: topology.Topology,
    num_slices: int,
    step_time: float | None = None,
    hbm_gib: float | None = None,
    hlo_out: str | None = None,
) -> dict[str, Any]:
    """Compiles `config`'s train step for `num_slices` x `topo`; the report as a dict (and the
    compiled program's text in the file `hlo_out`, if given)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.num_slices = num_slices
    devices = topo.devices(num_slices)[: config.mesh.num_devices or None]
    try:
        mesh = sharding.make_mesh(
            config.mesh.shape,
            num_slices,
            devices,
            config.mesh.get("allow_split_physical_axes", False),
        )
    except ValueError as e:
        raise AotError(str(e)) from e
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    global_batch = config.data.batch_size
    check_batch(global_batch, data_parallel, config.optimizer.grad_accum_steps)
    ts = setup.train_setup(config, mesh)
    fallbacks = sharding.sharding_fallbacks(ts.boxed_params, mesh, ts.rules)
    start = time.perf_counter()
    try:
        compiled = setup.lower_train_step(config, mesh, global_batch).compile()
        memory = _memory(compiled)
        if hlo_out:
            with open(hlo_out, "w") as f:
                f.write(compiled.as_text())
    except jax.errors.JaxRuntimeError as e:
        memory = compiler_oom(str(e))
        if memory is None:
            raise
    compile_s = time.perf_counter() - start
    total = memory["argument"] + memory["temp"] + memory["output"] - memory["alias"]
    spec = observation_spec(ts.model_config, config.data)
    step_flops = flops.step_flops(ts.model_config, spec, global_batch)
    recomputed = flops.step_recomputed_flops(ts.model_config, spec, global_batch)
    params, labels = jax.tree.leaves(ts.abstract_state.params), jax.tree.leaves(ts.labels)
    trainable = st.count_params([p for p, label in zip(params, labels) if label != "frozen"])
    # Adam's first moment, fp32, split over the devices a parameter is split over (at most all).
    mu_gib = trainable * 2 / 2**30 / (mesh.shape["fsdp"] * mesh.shape["tensor"])
    report = {
        "recipe_overrides": [a for a in sys.argv[1:] if a.startswith("--config.")],
        "topology": topo.name,
        "accelerator_type": topo.accelerator_type,
        "num_slices": num_slices,
        "chip": topo.chip.device_kind,
        "chips": len(devices),
        "mesh": dict(mesh.shape),
        "remat_policy": config.model.remat_policy,
        "global_batch": global_batch,
        "per_chip_batch": global_batch // data_parallel,
        "hbm_argument_gib": _gib(memory["argument"]),
        "hbm_temp_gib": _gib(memory["temp"]),
        "hbm_output_gib": _gib(memory["output"]),
        "hbm_alias_gib": _gib(memory["alias"]),
        "hbm_total_gib": _gib(total),
        "hbm_capacity_gib": hbm_gib if hbm_gib is not None else topo.chip.hbm_gib,
        "model_flops_per_step": step_flops,
        "recomputed_flops_per_step": recomputed,
        "peak_bf16_tflops_per_chip": topo.chip.peak_bf16_flops / 1e12,
        "peak_source": topology.PEAK_SOURCE,
        "adam_mu_gib": round(mu_gib, 3),
        "sharding_fallbacks": fallbacks,
        "compile_s": round(compile_s, 1),
    }
    oom = memory.get("compiler_oom")
    report["fits"] = oom is None and report["hbm_total_gib"] <= report["hbm_capacity_gib"]
    if oom:
        report["compiler_oom"] = oom
    if step_time:
        report["step_time_s"] = step_time
        report["mfu"] = step_flops / (step_time * len(devices) * topo.chip.peak_bf16_flops)
    return report


def describe(report: dict[str, Any]) -> str:
    """The report for a person (the JSON line follows it)."""
    mesh = " x ".join(f"{k} {v}" for k, v in report["mesh"].items())
    slices = f"{report['num_slices']} x " if report["num_slices"] > 1 else ""
    lines = [
        f"{slices}{report['accelerator_type']} ({report['topology']}, {report['chips']} chips "
        f"of {report['chip']}): mesh {mesh}, remat {report['remat_policy']!r}",
        f"  batch: {report['global_batch']} global, {report['per_chip_batch']} per chip",
        f"  HBM per chip: arguments {report['hbm_argument_gib']:.2f} + temporaries "
        f"{report['hbm_temp_gib']:.2f} + outputs {report['hbm_output_gib']:.2f} - aliased "
        f"{report['hbm_alias_gib']:.2f} = {report['hbm_total_gib']:.2f} GiB of "
        f"{report['hbm_capacity_gib']:.1f}: " + ("fits" if report["fits"] else "DOES NOT FIT"),
        f"  model FLOPs per step: {report['model_flops_per_step'] / 1e12:.4g} TFLOP "
        "(f1_jax/training/flops.py; the compiler counts a scanned layer once), and "
        f"{report['recomputed_flops_per_step'] / 1e12:.4g} TFLOP recomputed under remat "
        f"{report['remat_policy']!r}",
    ]
    if "compiler_oom" in report:
        oom = report["compiler_oom"]
        lines.append(
            f"  the TPU compiler stopped: {oom['used_gib']:.2f} GiB needed of the "
            f"{oom['usable_gib']:.2f} GiB it can use"
        )
    if "mfu" in report:
        lines.append(
            f"  a step of {report['step_time_s']} s would be {100 * report['mfu']:.3g} % MFU "
            f"(peak {report['peak_bf16_tflops_per_chip']:.0f} TFLOP/s bf16 per chip: "
            f"{report['peak_source']})"
        )
    headroom = report["hbm_capacity_gib"] - report["hbm_total_gib"]
    if report["fits"] and report["remat_policy"] == "full" and headroom > 1:
        lines.append(
            f"  {headroom:.1f} GiB per chip to spare: --config.model.remat_policy=save_qkv or "
            "save_attention keeps more of each layer and recomputes less (compile again to see "
            "whether it fits)"
        )
    notes = report["sharding_fallbacks"]
    for note in notes[:6]:
        lines.append(f"  sharding fallback: {note}")
    if len(notes) > 6:
        lines.append(f"  ... {len(notes) - 6} more sharding fallbacks (all in the JSON line)")
    lines.append(f"  compiled in {report['compile_s']:.0f} s")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
    # Compile-only: never open an attached accelerator (a TPU VM's chips may be training).
    jax.config.update("jax_platforms", "cpu")
    config = _CONFIG.value
    try:
        topo = topology.parse(_TOPOLOGY.value)
        num_slices = _NUM_SLICES.value or config.mesh.num_slices
        report = compile_for_topology(
            config, topo, num_slices, _STEP_TIME.value, _HBM_GIB.value, _HLO_OUT.value
        )
    except (AotError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(describe(report))
    print(json.dumps({"benchmark": "aot", **report}))
    problem = check_fits(report, config)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no cloud metadata server to ask
    app.run(main, flags_parser=recipes.parse_flags)
