"""VAR VQ-VAE (.pth) import, the stage-1 composition, and the error cases."""

import json
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conversion import importers, loaders, verification
from conversion.cli import main
from conversion.io import ConversionError
from tests.conversion import official_layout as layout
from tests.conversion.conftest import random_tensors

torch = pytest.importorskip(
    "torch", reason="conversion fixtures are built with torch (the test extra)"
)


@pytest.fixture(scope="module")
def vae_pth(tmp_path_factory, tiny_config):
    """A tiny `vae_ch160v4096z32.pth`-style file: torch.save of a plain state dict."""
    path = tmp_path_factory.mktemp("var") / "vae_tiny.pth"
    keys = layout.vae_keys(layout.tiny_sizes(tiny_config), "")
    torch.save({k: torch.from_numpy(v) for k, v in random_tensors(keys, seed=3).items()}, path)
    return path


def test_var_vae_import(vae_pth, tmp_path, tiny_config):
    assert (
        main(
            [
                "import",
                "var-vae",
                "--input",
                str(vae_pth),
                "--output",
                str(tmp_path / "o"),
                "--size",
                "tiny",
                "--no-progress",
            ]
        )
        == 0
    )
    params, _, meta, buffers = loaders.load_converted(tmp_path / "o")
    assert meta["subtrees"] == ["vqvae"] and all(k.startswith("vqvae/") for k in params)
    state = torch.load(vae_pth)
    np.testing.assert_array_equal(
        params["vqvae/decoder/up_1/attn_1/qkv/kernel"],
        state["decoder.up.1.attn.1.qkv.weight"].numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["vqvae/encoder/mid/block_2/norm1/scale"],
        state["encoder.mid.block_2.norm1.weight"].numpy(),
    )
    np.testing.assert_array_equal(
        params["vqvae/quantize/quant_resi/qresi_ls_3/bias"],
        state["quantize.quant_resi.qresi_ls.3.bias"].numpy(),
    )
    np.testing.assert_array_equal(
        buffers["model.vae.quantize.ema_vocab_hit_SV"], state["quantize.ema_vocab_hit_SV"].numpy()
    )
    assert max(verification.verify_roundtrip("var-vae", vae_pth, size="tiny").values()) == 0.0


def test_var_transformer_passed_as_vae_is_named(tmp_path):
    path = tmp_path / "var_d16.pth"
    torch.save(
        {
            "pos_start": torch.zeros(1, 1, 8),
            "class_emb.weight": torch.zeros(11, 8),
            "blocks.0.attn.mat_qkv.weight": torch.zeros(24, 8),
        },
        path,
    )
    with pytest.raises(ConversionError, match=r"looks like var-transformer \(a VAR var_d\*\.pth"):
        importers.import_var_vae(path, tmp_path / "out", size="tiny", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_torch_is_a_clear_error(vae_pth, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConversionError, match=r"needs torch, which is not installed"):
        importers.import_var_vae(vae_pth, tmp_path / "out", size="tiny", progress=False)


def test_compose_stage1_then_export(vae_pth, tmp_path, tiny_config):
    from tests.conversion.test_conv_pi0_openpi import pi0_tensors

    pi0 = tmp_path / "pi0.safetensors"
    save_file(pi0_tensors(tiny_config, "old", True), str(pi0))
    assert (
        main(
            [
                "compose-stage1",
                "--pi0",
                str(pi0),
                "--vae",
                str(vae_pth),
                "--output",
                str(tmp_path / "s1"),
                "--size",
                "tiny",
                "--no-progress",
            ]
        )
        == 0
    )
    params, _, meta, _ = loaders.load_converted(tmp_path / "s1")
    assert meta["source"] == "stage1"
    assert any("freshly initialised" in n for n in meta["notes"])
    importers.import_pi0(pi0, tmp_path / "p", size="tiny", progress=False)
    ref, *_ = loaders.load_converted(tmp_path / "p")
    for name in ref:
        np.testing.assert_array_equal(params[name], ref[name], err_msg=name)
    gen = params["stack/layers/gen/q_einsum"]
    assert 0.01 < gen.std() < 0.03  # the model's own N(0, 0.02) init
    assert not params["stack/layers/gen/pre_attention_norm/scale"].any()  # (1 + w) norms start at 0
    assert (
        main(
            [
                "export",
                "--input",
                str(tmp_path / "s1"),
                "--output",
                str(tmp_path / "f1"),
                "--no-progress",
            ]
        )
        == 0
    )
    exported = load_file(str(tmp_path / "f1" / "model.safetensors"))
    state = torch.load(vae_pth)
    np.testing.assert_array_equal(
        exported["model.vae.encoder.conv_in.weight"], state["encoder.conv_in.weight"].numpy()
    )
    np.testing.assert_array_equal(
        exported["model.vae.quantize.ema_vocab_hit_SV"], state["quantize.ema_vocab_hit_SV"].numpy()
    )


def test_missing_unexpected_and_misshaped_keys_are_listed(official_tiny, tmp_path):
    tensors = load_file(str(official_tiny / "model.safetensors"))
    gone = "model.wm_out_proj.bias"
    del tensors[gone]
    tensors["model.some_new_head.weight"] = np.zeros((2, 2), np.float32)
    bent = "model.paligemma_with_expert.gemma_expert.model.layers.1.mlp.down_proj.weight"
    tensors[bent] = np.zeros((3, 5), tensors[bent].dtype)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(tensors, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((official_tiny / "config.json").read_text())
    with pytest.raises(ConversionError) as err:
        importers.import_f1(bad, tmp_path / "out", progress=False)
    message = str(err.value)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in message
    assert f"{gone} (expected (64,))" in message
    assert "model.some_new_head.weight" in message
    assert f"{bent}: expected (32, 64), found (3, 5)" in message
    assert not (tmp_path / "out").exists()


def test_not_a_safetensors_file(official_tiny, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"x": torch.zeros(2)}, bad / "model.safetensors")  # a .pth under the wrong name
    (bad / "config.json").write_text((official_tiny / "config.json").read_text())
    with pytest.raises(
        ConversionError, match=r"not a safetensors file \(a zip archive \(a PyTorch"
    ):
        importers.import_f1(bad, tmp_path / "out", progress=False)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 8)
    assert (
        main(
            [
                "import",
                "f1",
                "--input",
                str(bad),
                "--output",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "is not a safetensors file" in err and "Nothing was written." in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused(official_tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        importers.import_f1(official_tiny, tmp_path / "out", progress=False)
    assert json.dumps(sorted(p.name for p in (tmp_path / "out").iterdir())) == '["keep.txt"]'
