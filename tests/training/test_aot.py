"""`python -m f1_jax.aot`: TPU topologies by name, the errors that name what would work, the
sharding fallback for dimensions a mesh does not divide (same losses), and a real compile of the
debug recipe for a TPU v5e slice by libtpu on this CPU machine.

The TPU tests need libtpu (`pip install -e ".[tpu]"`, which CI installs); without it they skip,
unless F1_REQUIRE_TPU_COMPILER is set (CI sets it, so they cannot silently skip there).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from configs.base import base_config
from f1_jax import aot
from f1_jax.models.f1 import observation_spec
from f1_jax.models.sizes import model_config_from
from f1_jax.training import flops, setup, sharding, topology

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU and not os.environ.get("F1_REQUIRE_TPU_COMPILER"),
    reason='libtpu is not installed (pip install -e ".[tpu]")',
)


def _aot(*args: str) -> subprocess.CompletedProcess:
    """`python -m f1_jax.aot ARGS` as a user runs it (absl flags are global: a fresh process)."""
    env = {**os.environ, "TPU_SKIP_MDS_QUERY": "1"}
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=1"  # as the suite's, without 8 devices
    return subprocess.run(
        [sys.executable, "-m", "f1_jax.aot", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,  # a loaded 2-core machine took over 15 min for what takes ~1 min alone
    )


def test_cloud_tpu_names_and_explicit_shapes():
    cases = {
        "v5p-128": ("v5p:4x4x4", 64),  # v5p and v4 names count TensorCores, two per chip
        "v4-128": ("v4:4x4x4", 64),
        "v5litepod-256": ("v5e:16x16", 256),  # v5e and v6e names count chips
        "v5e-256": ("v5e:16x16", 256),
        "v6e-256": ("v6e:16x16", 256),
        "v5e:16x16": ("v5e:16x16", 256),
        "V5P:2x2x1": ("v5p:2x2x1", 4),
    }
    for name, (canonical, chips) in cases.items():
        topo = topology.parse(name)
        assert (topo.name, topo.num_chips) == (canonical, chips), name
    assert topology.parse("v5p-128").accelerator_type == "v5p-128"
    assert topology.parse("v5e:16x16").chip.hbm_gib == 16.0
    with pytest.raises(ValueError, match="Known accelerator types: .*v5p-128.*v6e-256"):
        topology.parse("v9-8")
    with pytest.raises(ValueError, match="Known accelerator types"):
        topology.parse("v5p-100")  # no such slice
    with pytest.raises(ValueError, match="2-D tori"):
        topology.parse("v5e:4x4x4")


def test_a_batch_the_data_parallel_size_does_not_divide_names_the_sizes_that_do():
    aot.check_batch(2880, 64, 1)
    with pytest.raises(aot.AotError, match=r"batch_size=2816 \(11 per chip\).*batch_size=3072"):
        aot.check_batch(2880, 256, 1)
    with pytest.raises(aot.AotError, match="x 4 micro-batches.*multiples of 256"):
        aot.check_batch(2880, 64, 4)


# What `check_fits` reads of a report, for a v5e chip.
V5E_REPORT = {
    "hbm_capacity_gib": 16.0,
    "chip": "TPU v5 lite",
    "mesh": {"data": 16, "fsdp": 16, "tensor": 1},
    "num_slices": 1,
}


def test_a_step_that_does_not_fit_says_by_how_much_and_which_levers():
    config = base_config()
    config.model.remat_policy = "dots"
    report = {**V5E_REPORT, "hbm_total_gib": 20.5, "adam_mu_gib": 1.25, "per_chip_batch": 8}
    message = aot.check_fits(report, config)
    assert "4.50 GiB more than the 16.0 GiB" in message
    for lever in ("remat_policy=full", "grad_accum_steps", "mesh.shape=(1,-1,1)", "mu_dtype=bf"):
        assert lever in message, lever
    assert aot.check_fits({**report, "hbm_total_gib": 15.9}, config) is None


# The form of libtpu's error when a step exceeds the HBM the compiler can use (0.0.42, stage 2
# on v5e-256 with FSDP over all 256 chips at 11 per chip), shortened to the parts `aot` reads.
COMPILER_OOM = """RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. \
Ran out of memory in memory space hbm. Used 15.76G of 15.75G hbm. Exceeded hbm capacity by 14.02M.

Total hbm usage >= 16.01G:
    reserved        258.12M
    program          10.57G
    arguments         5.20G

Output size 5.18G; shares 5.18G with arguments.

Program hbm requirement 10.57G:
    global           28.30M
    HLO temp         10.53G (61.4% utilization: Unpadded (6.45G) Padded (10.50G))

  Largest program allocations in hbm:

  1. Size: 3.50G
     Operator: op_name="jit(step)/jvp(F1)/F1.encode_frames/encoder/conv_in/conv_general_dilated"
     Shape: f32[55,256,256,160]{3,0,2,1:T(8,128)}
     Allocation type: HLO temp
     ==========================

  2. Size: 17.88M
     Shape: s32[2816,1556]{1,0:T(8,128)}
     XLA label: constant literal
"""


def test_the_compilers_out_of_memory_error_is_a_step_that_does_not_fit(monkeypatch):
    """When the TPU compiler itself stops (CompileTimeHbmOom) instead of returning a plan, `aot`
    reports the step as not fitting, by how much and what is largest, with the levers."""
    memory = aot.compiler_oom(COMPILER_OOM)
    assert memory["argument"] == pytest.approx(5.20 * 2**30)
    assert memory["temp"] == pytest.approx(10.57 * 2**30)
    assert memory["output"] == memory["alias"] == pytest.approx(5.18 * 2**30)
    oom = memory["compiler_oom"]
    assert (oom["used_gib"], oom["usable_gib"]) == (15.76, 15.75)
    assert oom["over_gib"] == pytest.approx(14.02 / 1024, abs=1e-3)
    assert oom["largest_allocations"] == [
        "3.50G f32[55,256,256,160]{3,0,2,1:T(8,128)} at "
        "jit(step)/jvp(F1)/F1.encode_frames/encoder/conv_in/conv_general_dilated"
    ]
    assert aot.compiler_oom("RESOURCE_EXHAUSTED: something else") is None
    config = base_config()
    report = {
        **V5E_REPORT,
        "hbm_total_gib": 15.59,  # arguments + program: under 16 GiB, yet the compiler stopped
        "fits": False,
        "compiler_oom": oom,
        "adam_mu_gib": 0.4,
        "per_chip_batch": 11,
        "mesh": {"data": 1, "fsdp": 256, "tensor": 1},
    }
    message = aot.check_fits(report, config)
    assert "The TPU compiler stopped: the step needs 15.76 GiB per chip, 14 MiB more" in message
    assert "Largest: 3.50G f32[55,256,256,160]" in message
    for lever in ("frame_codes=true", "attention=splash", "grad_accum_steps", "mu_dtype"):
        assert lever in message, lever

    oom_error = jax.errors.JaxRuntimeError(COMPILER_OOM)
    monkeypatch.setattr(setup, "lower_train_step", lambda *args: _Raises(oom_error))
    monkeypatch.setattr(setup, "train_setup", lambda config, mesh: _FakeSetup(config))
    monkeypatch.setattr(sharding, "sharding_fallbacks", lambda *args: [])
    monkeypatch.setattr(topology.Topology, "devices", lambda self, n: jax.devices()[:1])
    config.model.size, config.data.batch_size, config.mesh.shape = "debug", 11, (1, -1, 1)
    report = aot.compile_for_topology(config, topology.parse("v5e:2x2"), 1)
    assert not report["fits"] and report["compiler_oom"] == oom
    assert report["hbm_total_gib"] == pytest.approx(5.20 + 10.57, abs=0.01)
    assert "DOES NOT FIT" in aot.describe(report)
    assert "the TPU compiler stopped: 15.76 GiB needed" in aot.describe(report)
    monkeypatch.setattr(setup, "lower_train_step", lambda *args: _Raises(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        aot.compile_for_topology(config, topology.parse("v5e:2x2"), 1)


class _Raises:
    def __init__(self, error):
        self.error = error

    def compile(self):
        raise self.error


class _FakeSetup:
    """What `compile_for_topology` reads of `setup.train_setup` (no model is built)."""

    def __init__(self, config):
        self.model_config = model_config_from(config.model)
        self.boxed_params = self.labels = self.rules = None
        self.abstract_state = type("State", (), {"params": None})()


def test_an_indivisible_parameter_axis_moves_or_is_replicated_and_is_named():
    # The known case: SigLIP's MLP kernel (layers, embed 1152, mlp 4304) under FSDP over 256 chips.
    spec = PartitionSpec(None, "fsdp", "tensor")
    wide = AbstractMesh((1, 256, 1), sharding.MESH_AXES)
    fixed, notes = sharding.divisible_spec((27, 1152, 4304), spec, wide)
    assert fixed == PartitionSpec(None, None, "tensor")
    assert notes == [
        "axis 1 (size 1152) is not divisible by fsdp=256, nor is any other: replicated over fsdp"
    ]
    half = AbstractMesh((2, 128, 1), sharding.MESH_AXES)  # 1152 = 9 x 128: no fallback
    assert sharding.divisible_spec((27, 1152, 4304), spec, half) == (spec, [])
    three = AbstractMesh((1, 3, 1), sharding.MESH_AXES)
    moved, notes = sharding.divisible_spec(
        (14, 14, 3, 32), PartitionSpec(None, None, None, "fsdp"), three
    )
    assert moved == PartitionSpec(None, None, "fsdp", None)
    assert "split over axis 2 (size 3) instead" in notes[0]


def _tiny_config(batch: int):
    c = base_config()
    c.model.size = "tiny"
    c.model.precision = "parity"
    c.model.remat_policy = "none"
    c.model.chunk_size = 4
    c.model.foresight_training = "teacher_forcing"
    c.data.max_token_len = 8
    c.data.batch_size = batch
    c.optimizer.lr = {"vision": 1e-3, "und": 1e-3, "gen": 1e-3, "act": 1e-3}
    return c


def test_the_sharding_fallback_trains_exactly_as_one_device():
    """FSDP over 3 devices divides none of the tiny model's widths (32, 64): parameters move to a
    dimension that 3 divides or are replicated, and two steps give the one-device losses."""
    config = _tiny_config(batch=6)
    rng = np.random.default_rng(0)
    losses, params_after = {}, {}
    for shape in [(1, 1, 1), (2, 3, 1)]:
        mesh = sharding.make_mesh(shape, devices=jax.devices()[: int(np.prod(shape))])
        ts = setup.train_setup(config, mesh)
        notes = sharding.sharding_fallbacks(ts.boxed_params, mesh, ts.rules)
        if shape == (2, 3, 1):
            assert any("patch_embedding/kernel" in n and "split over axis 2" in n for n in notes)
            assert any("fc1/kernel" in n and "replicated over fsdp" in n for n in notes)
            sh = ts.state_shardings.params["siglip"]["patch_embedding"]["kernel"]
            assert sh.spec == PartitionSpec(None, None, "fsdp", None)
        else:
            assert notes == []
        spec = observation_spec(ts.model_config, config.data)
        if not losses:
            params = jax.device_get(ts.init_fn(jax.random.key(0)).params)
            batch = {}
            for k, a in setup.abstract_batch(spec, config.data.batch_size).items():
                if a.dtype == np.uint8:
                    batch[k] = rng.integers(0, 255, a.shape).astype(np.uint8)
                elif a.dtype == bool:
                    batch[k] = np.ones(a.shape, bool)
                elif np.issubdtype(a.dtype, np.floating):
                    batch[k] = rng.normal(size=a.shape).astype(a.dtype)
                else:
                    batch[k] = np.zeros(a.shape, a.dtype)
        state = ts.init_fn(jax.random.key(0), params)
        with nn.logical_axis_rules(ts.rules), jax.set_mesh(mesh):
            step = setup.jit_train_step(config, ts)
            losses[shape] = []
            for _ in range(2):
                state, metrics = step(state, sharding.host_batch_to_global(batch, mesh))
                losses[shape].append(float(metrics["loss"]))
        params_after[shape] = jax.device_get(state.params)
    np.testing.assert_allclose(losses[(2, 3, 1)], losses[(1, 1, 1)], rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        params_after[(2, 3, 1)],
        params_after[(1, 1, 1)],
    )


@needs_libtpu
def test_a_mesh_the_torus_cannot_hold_names_the_splits_it_can():
    devices = topology.parse("v5e:16x16").devices()
    assert len(devices) == 256 and devices[0].device_kind == "TPU v5 lite"
    with pytest.raises(ValueError, match=r"cannot be laid out.*\(16, 16, 1\).*allow_split"):
        sharding.make_mesh((2, 128, 1), devices=devices)
    mesh = sharding.make_mesh((2, 128, 1), devices=devices, allow_split_physical_axes=True)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 128, "tensor": 1}
    two = topology.parse("v5e-256").devices(num_slices=2)
    assert {d.slice_index for d in two} == {0, 1}
    assert dict(sharding.make_mesh((2, -1, 1), 2, two).shape)["fsdp"] == 256


@needs_libtpu
def test_the_cli_errors_before_compiling():
    unknown = _aot("--config=debug", "--topology=v9-8")
    assert unknown.returncode == 2 and "Known accelerator types" in unknown.stderr
    batch = _aot("--config=debug", "--topology=v5e:2x2", "--config.data.batch_size=6")
    assert batch.returncode == 2
    assert "batch_size=4 (1 per chip) or --config.data.batch_size=8 (2 per chip)" in batch.stderr


@needs_libtpu
def test_the_debug_recipe_compiles_for_a_v5e_slice(tmp_path):
    """The launcher's step for 4 chips of v5e, compiled by libtpu on this CPU machine, at 3
    examples per chip (a global batch of 12: no dimension of the debug model is 12, so a
    constant of the global batch's size is recognisable in the program)."""
    hlo = tmp_path / "step.hlo"
    out = _aot(
        "--config=debug",
        "--topology=v5litepod-4",
        "--step_time=0.01",
        "--config.data.batch_size=12",
        f"--hlo_out={hlo}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["topology"] == "v5e:2x2" and report["chips"] == 4
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}  # the recipe's (-1, 1, 1)
    assert report["per_chip_batch"] == 3 and report["fits"]
    assert 0 < report["hbm_argument_gib"] <= report["hbm_total_gib"] < report["hbm_capacity_gib"]
    config = base_config()
    config.model.size, config.model.chunk_size = "debug", 4
    config.data.max_token_len, config.data.cameras = 16, ("primary", "wrist")
    model_config = model_config_from(config.model)
    expected = flops.step_flops(model_config, observation_spec(model_config, config.data), 12)
    assert report["model_flops_per_step"] == pytest.approx(expected, rel=1e-12)
    assert report["recomputed_flops_per_step"] == 0  # the debug recipe: remat "none"
    assert report["mfu"] == pytest.approx(expected / (0.01 * 4 * 197e12), rel=1e-9)
    assert "fits" in out.stdout and "HBM per chip" in out.stdout
    # The compiled program holds no constant the size of the global batch: the TPU compiler
    # folds a [B, ...] copy of something the same for every example (the sequence's block
    # layout was one: 18 MiB on every chip at stage 2's batch) into a literal on every chip.
    program = hlo.read_text()
    assert "ENTRY" in program
    constants = re.findall(r"= (\w+\[[0-9,]*\])\S* constant\(", program)
    assert constants and not [c for c in constants if re.match(r"\w+\[12,", c)], constants


def test_the_report_suggests_keeping_more_when_full_remat_leaves_room():
    report = {
        "mesh": {"data": 1, "fsdp": 64, "tensor": 1},
        "num_slices": 1,
        "accelerator_type": "v5p-128",
        "topology": "v5p:4x4x4",
        "chips": 64,
        "chip": "TPU v5",
        "remat_policy": "full",
        "global_batch": 2880,
        "per_chip_batch": 45,
        "hbm_argument_gib": 1.14,
        "hbm_temp_gib": 30.88,
        "hbm_output_gib": 1.07,
        "hbm_alias_gib": 1.07,
        "hbm_total_gib": 32.02,
        "hbm_capacity_gib": 95.0,
        "fits": True,
        "model_flops_per_step": 6.35e14,
        "recomputed_flops_per_step": 2.1e14,
        "sharding_fallbacks": [],
        "compile_s": 1380.0,
    }
    assert "63.0 GiB per chip to spare: --config.model.remat_policy=save_qkv" in aot.describe(
        report
    )
    report.update(remat_policy="save_attention")
    assert "to spare" not in aot.describe(report)
