"""lerobot pi0 (both key layouts, with and without `model.`) and openpi JAX checkpoints -> ours.

The pi0 files are assembled from transformers models (PaliGemma + a Gemma action expert); the
openpi tree is derived from the same tensors with lerobot's pi0 conversion formulas, so
the two imports must agree bit for bit.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from conversion import exporter, importers, loaders, verification
from conversion.cli import main
from conversion.io import ConversionError
from f1_jax.training.checkpoints import save_params
from tests.conversion.test_conv_paligemma import (
    HUB_NAMES,
    NEW_NAMES,
    assert_forward_parity,
    rename,
    tiny_paligemma,
)

torch = pytest.importorskip(
    "torch", reason="conversion fixtures are built with torch (the test extra)"
)
transformers = pytest.importorskip(
    "transformers", reason="conversion fixtures are built with transformers (the test extra)"
)
PROJ = (
    "state_proj",
    "action_in_proj",
    "action_out_proj",
    "action_time_mlp_in",
    "action_time_mlp_out",
)


def _numpy(state):
    return {k: v.detach().numpy().copy() for k, v in state.items()}


def pi0_tensors(config, layout: str, model_prefix: bool) -> dict[str, np.ndarray]:
    """A tiny pi0 state dict as lerobot writes it (`layout` "old" = transformers 4.4x names)."""
    torch.manual_seed(1)
    pali = _numpy(tiny_paligemma(config, seed=1, vocab=config.vocab_size).state_dict())
    a = config.act
    expert = transformers.GemmaForCausalLM(
        transformers.GemmaConfig(
            hidden_size=a.width,
            intermediate_size=a.mlp_dim,
            num_hidden_layers=a.depth,
            num_attention_heads=a.num_heads,
            num_key_value_heads=a.num_kv_heads,
            head_dim=a.head_dim,
            vocab_size=config.vocab_size,
        )
    )
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(0.1 * torch.randn_like(p))
    expert = {k: v for k, v in _numpy(expert.state_dict()).items() if "embed_tokens" not in k}
    pre = "model." if model_prefix else ""
    if layout == "old":
        pali.pop("model.language_model.embed_tokens.weight")  # tied; the file keeps lm_head
        pali = rename(pali, HUB_NAMES)
    else:
        pali = rename(pali, NEW_NAMES)
    out = {f"{pre}paligemma_with_expert.paligemma.{k}": v for k, v in pali.items()}
    out.update({f"{pre}paligemma_with_expert.gemma_expert.{k}": v for k, v in expert.items()})
    rng = np.random.RandomState(2)
    w, act_dim, state_dim = a.width, config.action.action_dim, config.action.state_dim
    shapes = {
        "state_proj": (w, state_dim),
        "action_in_proj": (w, act_dim),
        "action_out_proj": (act_dim, w),
        "action_time_mlp_in": (w, 2 * w),
        "action_time_mlp_out": (w, w),
    }
    if layout == "old":  # lerobot/pi0 also saves its dataset statistics
        out["normalize_inputs.buffer_observation_state.mean"] = np.zeros(state_dim, np.float32)
        out["unnormalize_outputs.buffer_action.std"] = np.ones(act_dim, np.float32)
    for name, shape in shapes.items():
        out[f"{pre}{name}.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)
        out[f"{pre}{name}.bias"] = rng.normal(0, 0.2, shape[:1]).astype(np.float32)
    return out


def openpi_tree(config, pi0_old: dict) -> dict:
    """openpi's params tree from an old-layout pi0 state dict (lerobot's conversion formulas, inverted)."""
    s, P = config.siglip, "model.paligemma_with_expert."
    heads, hd, w = s.num_heads, s.width // s.num_heads, s.width
    v = P + "paligemma.vision_tower.vision_model."
    g = lambda k: pi0_old[k]
    vl = lambda k, f=lambda x: x: np.stack(
        [f(g(f"{v}encoder.layers.{i}.{k}")) for i in range(s.depth)]
    )
    mha = {
        n: {
            "kernel": vl(f"self_attn.{p}.weight", lambda x: x.T.reshape(w, heads, hd)),
            "bias": vl(f"self_attn.{p}.bias", lambda x: x.reshape(heads, hd)),
        }
        for n, p in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
    }
    mha["out"] = {
        "kernel": vl("self_attn.out_proj.weight", lambda x: x.T.reshape(heads, hd, w)),
        "bias": vl("self_attn.out_proj.bias"),
    }
    block = {
        "LayerNorm_0": {"scale": vl("layer_norm1.weight"), "bias": vl("layer_norm1.bias")},
        "LayerNorm_1": {"scale": vl("layer_norm2.weight"), "bias": vl("layer_norm2.bias")},
        "MlpBlock_0": {
            f"Dense_{j}": {
                "kernel": vl(f"mlp.fc{j + 1}.weight", np.transpose),
                "bias": vl(f"mlp.fc{j + 1}.bias"),
            }
            for j in (0, 1)
        },
        "MultiHeadDotProductAttention_0": mha,
    }
    img = {
        "embedding": {
            "kernel": g(v + "embeddings.patch_embedding.weight").transpose(2, 3, 1, 0),
            "bias": g(v + "embeddings.patch_embedding.bias"),
        },
        "pos_embedding": g(v + "embeddings.position_embedding.weight")[None],
        "Transformer": {
            "encoderblock": block,
            "encoder_norm": {
                "scale": g(v + "post_layernorm.weight"),
                "bias": g(v + "post_layernorm.bias"),
            },
        },
        "head": {
            "kernel": g(P + "paligemma.multi_modal_projector.linear.weight").T,
            "bias": g(P + "paligemma.multi_modal_projector.linear.bias"),
        },
    }
    llm = {
        "embedder": {"input_embedding": g(P + "paligemma.language_model.lm_head.weight")},
        "layers": {"attn": {}},
    }
    for name, e, sfx in (
        ("paligemma.language_model.", config.und, ""),
        ("gemma_expert.", config.act, "_1"),
    ):
        lay = lambda k, f: np.stack(
            [f(g(f"{P}{name}model.layers.{i}.{k}")) for i in range(e.depth)]
        )
        n, h, d = e.num_heads, e.head_dim, e.width
        attn = llm["layers"]["attn"]
        attn[f"q_einsum{sfx}"] = {
            "w": lay("self_attn.q_proj.weight", lambda x: x.reshape(n, h, d).transpose(0, 2, 1))
        }
        attn[f"kv_einsum{sfx}"] = {
            "w": np.stack(
                [
                    lay("self_attn.k_proj.weight", lambda x: x.T[None]),
                    lay("self_attn.v_proj.weight", lambda x: x.T[None]),
                ],
                axis=1,
            )
        }
        attn[f"attn_vec_einsum{sfx}"] = {
            "w": lay("self_attn.o_proj.weight", lambda x: x.T.reshape(n, h, d))
        }
        llm["layers"][f"mlp{sfx}"] = {
            "gating_einsum": np.stack(
                [
                    lay("mlp.gate_proj.weight", np.transpose),
                    lay("mlp.up_proj.weight", np.transpose),
                ],
                axis=1,
            ),
            "linear": lay("mlp.down_proj.weight", np.transpose),
        }
        llm["layers"][f"pre_attention_norm{sfx}"] = {
            "scale": lay("input_layernorm.weight", np.asarray)
        }
        llm["layers"][f"pre_ffw_norm{sfx}"] = {
            "scale": lay("post_attention_layernorm.weight", np.asarray)
        }
        llm[f"final_norm{sfx}"] = {"scale": g(f"{P}{name}model.norm.weight")}
    tree = {"PaliGemma": {"img": img, "llm": llm}}
    for name in PROJ:
        tree[name] = {"kernel": g(f"model.{name}.weight").T, "bias": g(f"model.{name}.bias")}
    return tree


def _wrap_values(tree):
    """nnx.State-style leaves {"value": array}, as some openpi checkpoints store them."""
    if isinstance(tree, dict):
        return {k: _wrap_values(v) for k, v in tree.items()}
    return {"value": tree}


VARIANTS = [("old", True), ("new", True), ("new", False)]


@pytest.fixture(scope="module")
def pi0_files(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("pi0")
    files = {}
    for layout, prefix in VARIANTS:
        path = root / f"{layout}_{prefix}" / "model.safetensors"
        path.parent.mkdir()
        save_file(pi0_tensors(tiny_config, layout, prefix), str(path))
        files[(layout, prefix)] = path
    return files


@pytest.fixture(scope="module")
def imported(pi0_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("pi0_imported")
    out = {}
    for key, path in pi0_files.items():
        target = root / f"{key[0]}_{key[1]}"
        assert (
            main(
                [
                    "import",
                    "pi0",
                    "--input",
                    str(path),
                    "--output",
                    str(target),
                    "--size",
                    "tiny",
                    "--no-progress",
                ]
            )
            == 0
        )
        out[key] = loaders.load_converted(target)
    return out


def test_all_pi0_layouts_give_the_same_params(imported, tiny_config):
    reference, config, meta, _ = imported[("old", True)]
    assert meta["subtrees"] == sorted(
        [
            "siglip",
            "embedder",
            "stack/layers/und",
            "stack/final_norm_und",
            "stack/layers/act",
            "stack/final_norm_act",
            "action_io",
        ]
    )
    assert not any(k.startswith(("foresight", "vqvae", "stack/layers/gen")) for k in reference)
    stats = imported[("old", True)][3]
    np.testing.assert_array_equal(
        stats["unnormalize_outputs.buffer_action.std"],
        np.ones(tiny_config.action.action_dim, np.float32),
    )
    for key, (params, *_rest) in imported.items():
        assert set(params) == set(reference)
        for name in reference:
            np.testing.assert_array_equal(params[name], reference[name], err_msg=f"{key} {name}")


def test_openpi_import_equals_pi0_import(pi0_files, imported, tiny_config, tmp_path):
    from safetensors.numpy import load_file

    tree = openpi_tree(tiny_config, load_file(str(pi0_files[("old", True)])))
    save_params(tmp_path / "openpi_params", _wrap_values(tree))
    assert (
        main(
            [
                "import",
                "openpi",
                "--input",
                str(tmp_path / "openpi_params"),
                "--output",
                str(tmp_path / "ours"),
                "--size",
                "tiny",
                "--no-progress",
            ]
        )
        == 0
    )
    params, *_ = loaders.load_converted(tmp_path / "ours")
    reference = imported[("old", True)][0]
    assert set(params) == set(reference)
    for name in reference:
        np.testing.assert_array_equal(params[name], reference[name], err_msg=name)
    diffs = verification.verify_roundtrip("openpi", tmp_path / "openpi_params", size="tiny")
    assert max(diffs.values()) == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_pi0_verify_forward(pi0_files, variant, tiny_config, capsys):
    assert (
        main(
            [
                "verify",
                "pi0",
                "--input",
                str(pi0_files[variant]),
                "--size",
                "tiny",
                "--forward",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] == 0.0
    assert_forward_parity(report["forward"], tiny_config)


def test_pi0_passed_as_f1_is_named(pi0_files, tmp_path, tiny_config):
    from conversion import config_io

    directory = pi0_files[("old", True)].parent
    with open(directory / "config.json", "w") as f:
        json.dump(config_io.to_official(tiny_config), f)
    with pytest.raises(ConversionError, match=r"is not a f1 checkpoint: it looks like pi0"):
        importers.import_f1(directory, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_partial_checkpoint_cannot_be_exported(imported, pi0_files, tmp_path):
    importers.import_pi0(pi0_files[("old", True)], tmp_path / "ours", size="tiny", progress=False)
    with pytest.raises(ConversionError, match=r"needs every parameter.*Missing: \['foresight"):
        exporter.export_f1(tmp_path / "ours", tmp_path / "f1", progress=False)
    assert not (tmp_path / "f1").exists()
