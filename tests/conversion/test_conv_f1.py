"""Official F1 layout: import -> export is bit-exact; the full-size export plan is section 7's."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conversion import config_io, engine, exporter, importers, io, loaders, tables
from conversion.cli import main
from f1_jax.models.sizes import get_model_config
from tests.conversion import official_layout as layout

EXPERT_LM_HEADS = {
    layout.P + "gemma_wm_expert.lm_head.weight",
    layout.P + "gemma_expert.lm_head.weight",
}


def _bits(x: np.ndarray) -> bytes:
    return x.dtype.str.encode() + str(x.shape).encode() + x.tobytes()


@pytest.fixture(scope="module")
def exported(official_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("f1_roundtrip")
    assert (
        main(
            [
                "import",
                "f1",
                "--input",
                str(official_tiny),
                "--output",
                str(root / "ours"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                "--input",
                str(root / "ours"),
                "--output",
                str(root / "f1"),
                "--with-expert-lm-heads",
                "--dtype",
                "released",
                "--no-progress",
            ]
        )
        == 0
    )
    return root


def test_roundtrip_is_bit_exact(official_tiny, exported):
    original = load_file(str(official_tiny / "model.safetensors"))
    again = load_file(str(exported / "f1" / "model.safetensors"))
    assert set(original) == set(again)
    differ = sorted(k for k in original if _bits(original[k]) != _bits(again[k]))
    # The unused expert lm_heads are not kept by import: export writes them as zeros (documented).
    assert set(differ) == EXPERT_LM_HEADS
    assert all(not again[k].any() for k in EXPERT_LM_HEADS)


def test_import_layouts_match_the_documented_rules(official_tiny, exported, tiny_config):
    params, config, meta, buffers = loaders.load_converted(exported / "ours")
    assert meta["source"] == "f1" and set(buffers) == {"model.vae.quantize.ema_vocab_hit_SV"}
    f = load_file(str(official_tiny / "model.safetensors"))
    f32 = lambda k: f[k].astype(np.float32)
    lay = layout.P + "paligemma.language_model.model.layers.1."
    u = tiny_config.und
    np.testing.assert_array_equal(
        params["stack/layers/und/q_einsum"][1],
        f32(lay + "self_attn.q_proj.weight")
        .reshape(u.num_heads, u.head_dim, u.width)
        .transpose(0, 2, 1),
    )
    np.testing.assert_array_equal(
        params["stack/layers/und/kv_einsum"][1, 1],
        f32(lay + "self_attn.v_proj.weight").reshape(1, u.head_dim, u.width).transpose(0, 2, 1),
    )
    np.testing.assert_array_equal(
        params["stack/layers/und/attn_vec_einsum"][1],
        f32(lay + "self_attn.o_proj.weight").T.reshape(u.num_heads, u.head_dim, u.width),
    )
    np.testing.assert_array_equal(
        params["stack/layers/und/gating_einsum"][1, 0], f32(lay + "mlp.gate_proj.weight").T
    )
    np.testing.assert_array_equal(
        params["foresight/temporal_conv/kernel"],
        f["model.temporal_conv.conv.weight"].transpose(2, 1, 0),
    )
    np.testing.assert_array_equal(
        params["vqvae/encoder/down_1/block_0/nin_shortcut/kernel"],
        f["model.vae.encoder.down.1.block.0.nin_shortcut.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["embedder/input_embedding"],
        f32(layout.P + "paligemma.language_model.lm_head.weight"),
    )


def test_exported_config_json_reads_back(exported, tiny_config):
    with open(exported / "f1" / "config.json") as f:
        official = json.load(f)
    assert official["und_expert_config"]["model_type"] == "paligemma"
    assert official["gen_expert_config"]["pn"] == "1_2_3_4_5_6_8_10_13_16"
    back = config_io.from_official(official)
    assert engine.abstract_params(back) == engine.abstract_params(tiny_config)


def test_verify_reports_zero_difference(official_tiny, capsys):
    assert main(["verify", "f1", "--input", str(official_tiny), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] == 0.0
    assert (
        report["tensors"]
        == len(layout.saved_file_keys(layout.tiny_sizes(get_model_config("tiny")))) - 4
    )  # lvl_1L, ema buffer, two expert lm_heads: not params


# The released config.json's sizes (f1_vla/config/f1_config.json in the official repository).
RELEASED_CONFIG = {
    "und_expert_config": {
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 16384,
            "num_attention_heads": 8,
            "num_hidden_layers": 18,
            "num_key_value_heads": 1,
            "vocab_size": 257152,
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "patch_size": 14,
        },
    },
    "gen_expert_config": {
        "head_dim": 256,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 8,
        "num_hidden_layers": 18,
        "num_key_value_heads": 1,
        "pn": "1_2_3_4_5_6_8_10_13_16",
        "temporal_conv_kernel_size": 4,
        "temporal_conv_stride": 4,
        "num_resolutions": 4,
        "vae": {"vocab_size": 4096, "z_channels": 32, "ch": 160, "share_quant_resi": 4},
    },
    "act_expert_config": {
        "head_dim": 256,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 8,
        "num_hidden_layers": 18,
        "num_key_value_heads": 1,
    },
    "chunk_size": 50,
    "max_action_dim": 32,
    "max_state_dim": 32,
    "proj_width": 1024,
}


def test_full_size_export_plan_is_the_official_key_list():
    """What export writes for the full model, from shapes alone (jax.eval_shape, no weights).

    Asserted counts: 1281 tensors in the official state dict under `model.` (both tied embedding
    names, both expert lm_heads, 3 buffers, model.vae.* once); 1280 in the saved file (the tied
    embed_tokens dropped) = export with --with-expert-lm-heads; 1278 without them; 324 VAE tensors.
    """
    config = config_io.from_official(RELEASED_CONFIG)
    abstract = engine.abstract_params(config)
    shapes = {k: v.shape for k, v in abstract.items()}
    rows = tables.f1_table(
        config, [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]
    )
    plan = engine.plan_export(rows, shapes, tables.f1_extras(config), with_optional=True)
    got = {i.key: (tuple(i.shape), i.dtype) for i in plan}
    expected = layout.saved_file_keys(layout.Sizes())
    assert set(got) == set(expected), (
        sorted(set(got) - set(expected))[:5],
        sorted(set(expected) - set(got))[:5],
    )
    wrong = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
    assert not wrong, list(wrong.items())[:5]
    assert len(layout.state_dict_keys(layout.Sizes())) == 1281
    assert len(got) == 1280
    assert len(engine.plan_export(rows, shapes, tables.f1_extras(config))) == 1278
    assert len(layout.vae_keys(layout.Sizes(), "")) == 324
    assert sum(1 for k in got if k.startswith("model.vae.")) == 324
    # And the full model of f1_jax/models/sizes.py has exactly these parameter shapes.
    assert shapes == {
        k: v.shape for k, v in engine.abstract_params(get_model_config("full")).items()
    }


def test_normalisation_statistics_survive_the_round_trip(official_tiny, tmp_path):
    from safetensors.numpy import save_file

    tensors = load_file(str(official_tiny / "model.safetensors"))
    key = "normalize_inputs.buffer_observation_state.mean"
    tensors[key] = np.arange(8, dtype=np.float32)
    (tmp_path / "in").mkdir()
    save_file(tensors, str(tmp_path / "in" / "model.safetensors"))
    (tmp_path / "in" / "config.json").write_text((official_tiny / "config.json").read_text())
    importers.import_f1(tmp_path / "in", tmp_path / "ours", progress=False)
    exporter.export_f1(tmp_path / "ours", tmp_path / "out", progress=False)
    again = load_file(str(tmp_path / "out" / "model.safetensors"))
    np.testing.assert_array_equal(again[key], tensors[key])


def test_load_import_gives_the_nested_tree(exported, tiny_config, tmp_path):
    tree, config, meta = loaders.load_import(exported / "ours")
    params, *_ = loaders.load_converted(exported / "ours")
    assert config == tiny_config and meta["source"] == "f1"
    flat = engine.flatten(tree)
    assert set(flat) == set(params)
    np.testing.assert_array_equal(
        flat["stack/layers/und/q_einsum"], params["stack/layers/und/q_einsum"]
    )
    del params["foresight/mask_embedding"]
    importers.write_import(tmp_path / "partial", params, config, "test", ["partial"], [], {})
    with pytest.raises(io.ConversionError, match=r"missing 1: \['foresight/mask_embedding'\]"):
        loaders.load_import(tmp_path / "partial")
    tree, _, _ = loaders.load_import(tmp_path / "partial", require_complete=False)
    assert "mask_embedding" not in tree["foresight"]
