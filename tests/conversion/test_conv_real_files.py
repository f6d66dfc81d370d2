"""Real files, whatever wrote them: openpi checkpoints saved from many devices, VAR VQ-VAEs with
another number of scales, ignored tensors that are never read, and remote (URI) paths."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conversion import engine, importers, io, loaders, tables
from conversion.cli import main
from conversion.io import ConversionError
from tests.conversion import official_layout as layout
from tests.conversion.conftest import random_tensors

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> int:
    return main([*args, "--no-progress"])


def _run(code: str, devices: int, *args: str) -> subprocess.CompletedProcess:
    """Python in a fresh process that sees `devices` CPU devices."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --------------------------------------------------------------------------------------------
# openpi: saved sharded over 8 devices, imported on 1.

WRITE_SHARDED = """
    import sys
    import jax, numpy as np, orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec as P
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Explicit,))
    flat = dict(np.load(sys.argv[1]))
    tree, sharded = {}, 0
    for key, value in flat.items():
        axis = next((i for i, n in enumerate(value.shape) if n % 8 == 0), None)
        spec = P(*([None] * axis + ["fsdp"])) if axis is not None else P()
        array = jax.device_put(value, NamedSharding(mesh, spec))
        sharded += axis is not None
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = {"value": array}  # nnx.State leaves, as openpi's own training saves them
    assert sharded > len(flat) // 2, (sharded, len(flat))
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(sys.argv[2], {"params": tree})
    print("sharded", sharded, "of", len(flat))
"""


def test_openpi_saved_on_8_devices_imports_on_one(tiny_config, tmp_path):
    config = tiny_config
    abstract = engine.abstract_params(config)
    rng = np.random.default_rng(0)
    ours = {
        k: rng.normal(size=v.shape).astype(np.float32)
        for k, v in abstract.items()
        if engine.in_subtrees(k, tables.PI0_SUBTREES)
    }
    rows = tables.openpi_table(config)
    plan = engine.plan_export(rows, {k: v.shape for k, v in abstract.items()}, [])
    flat = dict(engine.export_tensors(plan, ours, config, {}, progress=False))
    np.savez(tmp_path / "openpi.npz", **flat)
    written = _run(WRITE_SHARDED, 8, str(tmp_path / "openpi.npz"), str(tmp_path / "params"))
    assert written.returncode == 0, written.stderr[-3000:]

    imported = _run(
        """
        import sys, jax
        assert jax.device_count() == 1
        from conversion.cli import main
        sys.exit(main(["import", "openpi", "--input", sys.argv[1], "--output", sys.argv[2],
                       "--size", "tiny", "--no-progress"]))
        """,
        1,
        str(tmp_path / "params"),
        str(tmp_path / "ours"),
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    params, _, meta, _ = loaders.load_converted(tmp_path / "ours")
    assert meta["source"] == "openpi" and set(params) == set(ours)
    for name, value in ours.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)


# --------------------------------------------------------------------------------------------
# VAR's codebook-usage buffer with another number of scales.


def _vae_pth(path: Path, config, hit_shape) -> dict:
    torch = pytest.importorskip("torch")
    keys = layout.vae_keys(layout.tiny_sizes(config), "")
    state = {k: torch.from_numpy(v) for k, v in random_tensors(keys, seed=5).items()}
    state["quantize.ema_vocab_hit_SV"] = torch.rand(*hit_shape)
    torch.save(state, path)
    return state


def test_vae_with_other_scales_imports_and_exports(tiny_config, tmp_path, capsys):
    """VAR's VQVAE.load_state_dict swaps a buffer with another leading size for its own (zeros)."""
    scales, vocab = len(tiny_config.vqvae.patch_nums), tiny_config.vqvae.vocab_size
    state = _vae_pth(tmp_path / "vae.pth", tiny_config, (scales + 2, vocab))
    out = tmp_path / "vae"
    assert (
        _cli(
            "import",
            "var-vae",
            "--input",
            str(tmp_path / "vae.pth"),
            "--output",
            str(out),
            "--size",
            "tiny",
        )
        == 0
    )
    assert "replaced by zeros" in capsys.readouterr().err
    params, _, meta, buffers = loaders.load_converted(out)
    assert any(f"has {scales + 2} scales" in n for n in meta["notes"])
    hit = buffers[importers.VOCAB_HIT]
    assert hit.shape == (scales, vocab) and not hit.any()
    np.testing.assert_array_equal(
        params["vqvae/quantize/embedding"], state["quantize.embedding.weight"].numpy()
    )
    # compose-stage1 (pi0 + this VAE) and export: the export holds the zeros of the right shape.
    from tests.conversion.test_conv_pi0_openpi import pi0_tensors

    save_file(pi0_tensors(tiny_config, "old", True), str(tmp_path / "pi0.safetensors"))
    importers.compose_stage1(
        tmp_path / "pi0.safetensors",
        tmp_path / "vae.pth",
        tmp_path / "s1",
        size="tiny",
        progress=False,
    )
    assert _cli("export", "--input", str(tmp_path / "s1"), "--output", str(tmp_path / "f1")) == 0
    exported = load_file(str(tmp_path / "f1" / "model.safetensors"))
    assert exported[importers.VOCAB_HIT].shape == (scales, vocab) and not exported[importers.VOCAB_HIT].any()


def test_vae_with_another_codebook_is_refused_at_import(tiny_config, tmp_path):
    scales, vocab = len(tiny_config.vqvae.patch_nums), tiny_config.vqvae.vocab_size
    _vae_pth(tmp_path / "vae.pth", tiny_config, (scales, vocab + 3))
    with pytest.raises(ConversionError) as err:
        importers.import_var_vae(tmp_path / "vae.pth", tmp_path / "out", size="tiny", progress=False)
    message = str(err.value)
    assert importers.VOCAB_HIT in message
    assert f"({scales}, {vocab + 3})" in message and f"({scales}, {vocab})" in message
    assert not (tmp_path / "out").exists()


def test_export_of_an_older_import_with_a_misfit_buffer(official_tiny, tmp_path, capsys):
    """An import written before the check (buffers.npz with 12 scales, or another codebook):
    export fits or refuses the buffer by name; it never fails on an internal assertion."""
    importers.import_f1(official_tiny, tmp_path / "ours", progress=False)
    npz = tmp_path / "ours" / "buffers.npz"
    scales, vocab = np.load(npz)[importers.VOCAB_HIT].shape
    np.savez(npz, **{importers.VOCAB_HIT: np.ones((scales + 2, vocab), np.float32)})
    assert _cli("export", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "a")) == 0
    assert "replaced by zeros" in capsys.readouterr().err
    assert not load_file(str(tmp_path / "a" / "model.safetensors"))[importers.VOCAB_HIT].any()
    np.savez(npz, **{importers.VOCAB_HIT: np.ones((scales, vocab + 1), np.float32)})
    assert _cli("export", "--input", str(tmp_path / "ours"), "--output", str(tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert f"has shape ({scales}, {vocab + 1}); expected ({scales}, {vocab})" in err
    assert "Nothing was written." in err and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# Ignored tensors are never read.


class _Recording(io.SafetensorsSource):
    read: list[str] = []

    def get(self, key):
        _Recording.read.append(key)
        return super().get(key)


def test_ignored_tensors_are_never_read(official_tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "SafetensorsSource", _Recording)
    _Recording.read = []
    importers.import_f1(official_tiny, tmp_path / "ours", progress=False)
    keys = set(load_file(str(official_tiny / "model.safetensors")))
    lm_heads = {
        layout.P + "gemma_wm_expert.lm_head.weight",
        layout.P + "gemma_expert.lm_head.weight",
    }
    assert lm_heads <= keys
    assert set(_Recording.read) == keys - lm_heads  # everything else, each once
    assert len(_Recording.read) == len(set(_Recording.read))
    notes = json.loads((tmp_path / "ours" / "model_config.json").read_text())["notes"]
    assert any("not read" in n and sorted(lm_heads)[0] in n for n in notes)
    # Reading an export back in memory skips them too.
    _Recording.read = []
    loaders.load_export(official_tiny, require_contract=False)
    assert not lm_heads & set(_Recording.read)


# --------------------------------------------------------------------------------------------
# Remote paths.


def test_uris_are_recognised():
    assert io.is_remote("gs://bucket/run") and not io.is_remote("/tmp/run")
    assert str(io.as_epath("gs://bucket/a/b")) == "gs://bucket/a/b"  # no network touched
    assert str(io.as_epath("relative")) == str(Path("relative").absolute())


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """Paths under `bucket/` count as remote: every URI code path runs, on the local disk."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    remote = lambda path: str(path).startswith(str(bucket))
    monkeypatch.setattr(io, "is_remote", remote)
    monkeypatch.setattr(importers, "is_remote", remote)
    monkeypatch.setattr(loaders, "is_remote", remote)
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(staging))
    return bucket, staging


def test_remote_input_is_staged_and_remote_output_published(
    official_tiny, fake_bucket, tmp_path, capsys
):
    bucket, staging = fake_bucket
    (bucket / "F1").mkdir()
    for name in ("model.safetensors", "config.json"):
        (bucket / "F1" / name).write_bytes((official_tiny / name).read_bytes())
    (bucket / "F1" / "unrelated.bin").write_bytes(b"x" * 1000)  # never staged

    assert (
        _cli("import", "f1", "--input", str(bucket / "F1"), "--output", str(bucket / "ours")) == 0
    )
    err = capsys.readouterr().err
    assert f"staging {bucket / 'F1' / 'model.safetensors'}" in err
    assert "unrelated.bin" not in err and "uploading" in err
    assert list(staging.iterdir()) == []  # staged copies and local results are gone
    assert sorted(p.name for p in bucket.iterdir()) == ["F1", "ours"]  # no temp dirs left

    assert (
        _cli(
            "export",
            "--input",
            str(bucket / "ours"),
            "--output",
            str(bucket / "f1"),
            "--dtype",
            "released",
            "--with-expert-lm-heads",
        )
        == 0
    )
    again = load_file(str(bucket / "f1" / "model.safetensors"))
    original = load_file(str(official_tiny / "model.safetensors"))
    for key in set(original) - {
        layout.P + "gemma_wm_expert.lm_head.weight",
        layout.P + "gemma_expert.lm_head.weight",
    }:
        np.testing.assert_array_equal(again[key], original[key], err_msg=key)
    assert list(staging.iterdir()) == []

    # A non-empty remote output is refused before any work.
    assert (
        _cli("import", "f1", "--input", str(bucket / "F1"), "--output", str(bucket / "ours")) == 2
    )
    assert "exists and is not empty" in capsys.readouterr().err


def test_remote_run_export_and_load_export(sim_run, fake_bucket, tmp_path):
    bucket, staging = fake_bucket
    out = bucket / "exports" / "f1"
    assert _cli("export", "--run", sim_run["workdir"], "--output", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "model.safetensors",
            "manifest.json",
            "config.json",
            "norm_stats.json",
            "tokenizer.model",
            "sim_a_stats.json",
            "sim_b_stats.json",
        ]
    )
    _, _, contract = loaders.load_export(out)
    assert not contract.tokenizer_path.startswith(str(bucket))  # a local copy, kept
    assert Path(contract.tokenizer_path).read_bytes() == (out / "tokenizer.model").read_bytes()


def test_publish_copies_markers_last_and_removes_a_partial_copy(tmp_path, monkeypatch):
    local = tmp_path / "local"
    (local / "params").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "norm_stats.json", "params/a", "params/b"):
        (local / name).write_text(name)
    order = []
    real_copy = io.copy_file
    monkeypatch.setattr(
        io, "copy_file", lambda s, d, p=False: order.append(d.name) or real_copy(s, d)
    )
    io.publish(local, tmp_path / "dest")
    assert order[-1] == "config.json" and len(order) == 5
    assert (tmp_path / "dest" / "params" / "b").read_text() == "params/b"

    def failing(src, dst, progress=False):
        if dst.name == "norm_stats.json":
            raise OSError("connection reset")
        return real_copy(src, dst)

    monkeypatch.setattr(io, "copy_file", failing)
    with pytest.raises(
        ConversionError, match="connection reset.*files already copied were removed"
    ):
        io.publish(local, tmp_path / "dest2")
    assert not [p for p in (tmp_path / "dest2").rglob("*") if p.is_file()]
