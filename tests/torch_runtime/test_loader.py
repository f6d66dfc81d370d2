"""Loading an export: config.json -> sizes, strict key checking with one clear error, the
released file's dtypes, the bf16 weight placement, and no JAX at import time."""

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.numpy import load_file, save_file

from conversion import config_io
from conversion import synthetic as exports
from f1_jax.models.sizes import get_model_config
from f1_torch import LoadError, load_model
from f1_common.model_config import from_official
from f1_torch.loader import P


@pytest.mark.parametrize("size", ["full", "small", "tiny", "debug"])
def test_config_json_gives_the_jax_sizes(size):
    ours = get_model_config(size)
    got = from_official(json.loads(json.dumps(config_io.to_official(ours))))
    s = ours.siglip
    assert (
        got.siglip.image_size,
        got.siglip.patch_size,
        got.siglip.width,
        got.siglip.depth,
        got.siglip.mlp_dim,
        got.siglip.num_heads,
        got.siglip.out_width,
    ) == (s.image_size, s.patch_size, s.width, s.depth, s.mlp_dim, s.num_heads, s.out_width)
    for theirs, mine in zip(ours.experts, got.experts):
        fields = ("width", "mlp_dim", "depth", "num_heads", "num_kv_heads", "head_dim")
        assert [getattr(mine, f) for f in fields] == [getattr(theirs, f) for f in fields]
    v = ours.vqvae
    assert (got.vqvae.vocab_size, got.vqvae.z_channels, got.vqvae.ch, got.vqvae.ch_mult) == (
        v.vocab_size,
        v.z_channels,
        v.ch,
        v.ch_mult,
    )
    assert (got.vqvae.patch_nums, got.vqvae.num_res_blocks, got.vqvae.norm_groups) == (
        v.patch_nums,
        v.num_res_blocks,
        v.norm_groups,
    )
    assert (got.vqvae.image_size, got.vqvae.num_phis) == (v.image_size, v.num_phis)
    assert got.foresight.num_scales == ours.foresight.num_scales
    a = ours.action
    assert dataclasses.astuple(got.action)[:5] == (
        a.width,
        a.action_dim,
        a.state_dim,
        a.chunk_size,
        a.num_steps,
    )
    assert got.vocab_size == ours.vocab_size


def _broken_copy(export, tmp_path, change) -> str:
    directory = tmp_path / "broken"
    directory.mkdir()
    tensors = load_file(f"{export.directory}/model.safetensors")
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    shutil.copy(f"{export.directory}/config.json", directory)
    return str(directory)


def test_missing_unexpected_and_misshaped_keys_are_all_named(tiny_export, tmp_path):
    def change(tensors):
        del tensors["model.wm_out_proj.bias"]
        tensors["model.not_a_weight"] = tensors["model.state_proj.bias"]
        tensors["model.action_time_mlp_in.weight"] = tensors[
            "model.action_time_mlp_in.weight"
        ].T.copy()
        tensors[P + "gemma_expert.model.layers.0.mlp.up_proj.weight"] = tensors[
            P + "gemma_expert.model.layers.0.mlp.up_proj.weight"
        ][:-1].copy()

    directory = _broken_copy(tiny_export, tmp_path, change)
    with pytest.raises(LoadError) as error:
        load_model(directory)
    message = str(error.value)
    assert "(1 missing, 1 unexpected, 2 mis-shaped keys)" in message
    for name in (
        "model.wm_out_proj.bias (expected (64,))",
        "model.not_a_weight",
        "model.action_time_mlp_in.weight: expected (32, 64), found (64, 32)",
        P + "gemma_expert.model.layers.0.mlp.up_proj.weight: expected (64, 32), found (63, 32)",
    ):
        assert name in message, (name, message)


def test_aliases_and_unused_official_tensors_load(tiny_export, tmp_path):
    """The tied embedding under its other name, the experts' unused lm_heads, lerobot's
    normalisation buffers: accepted; the embedding still lands in place."""
    lm_head = P + "paligemma.language_model.lm_head.weight"

    def change(tensors):
        tensors[P + "paligemma.language_model.model.embed_tokens.weight"] = tensors.pop(lm_head)
        tensors[P + "gemma_expert.lm_head.weight"] = tensors["model.state_proj.weight"]
        tensors["normalize_inputs.buffer_observation_state.mean"] = tensors["model.lvl_1L"] * 0.0

    model = load_model(_broken_copy(tiny_export, tmp_path, change))
    expected = torch.from_numpy(tiny_export.params["embedder/input_embedding"])
    assert torch.equal(model.embed_tokens.weight, expected)


def test_dtypes_follow_the_precision_policy(tiny_export, tmp_path):
    """bf16 where the JAX model casts to the compute dtype, fp32 elsewhere; a released-style
    file (bf16 PaliGemma and expert layers) keeps its bf16 word embedding in bf16 mode."""
    config = exports.model_config("tiny")
    tokenizer = exports.make_tokenizer(str(tmp_path))
    released = exports.write_export(
        str(tmp_path / "released"), config, tiny_export.params, tokenizer, official_dtypes=True
    )
    bf16 = load_model(released, dtype="bf16")
    bf16_names = (
        "siglip.encoder.layers.0.self_attn.q_proj.weight",
        "siglip.encoder.layers.1.mlp.fc2.bias",
        "projector.weight",
        "stack.und.layers.0.self_attn.k_proj.weight",
        "stack.act.layers.1.mlp.down_proj.weight",
        "embed_tokens.weight",
    )
    fp32_names = (
        "siglip.embeddings.patch_embedding.weight",
        "siglip.embeddings.position_embedding.weight",
        "siglip.encoder.layers.0.layer_norm1.weight",
        "stack.und.layers.0.input_layernorm.weight",
        "stack.gen.norm.weight",
        "foresight.wm_out_proj.weight",
        "action_io.action_time_mlp_in.weight",
        "vae.encoder.conv_in.weight",
        "vae.quantize.embedding.weight",
    )
    params = dict(bf16.named_parameters())
    assert all(params[n].dtype == torch.bfloat16 for n in bf16_names)
    assert all(params[n].dtype == torch.float32 for n in fp32_names)
    fp32 = load_model(released, dtype="fp32")
    assert all(p.dtype == torch.float32 for p in fp32.parameters())


def test_the_runtime_imports_no_jax_tensorflow_or_conversion():
    code = (
        "import sys, f1_torch, f1_torch.policy\n"
        "bad = [m for m in sys.modules\n"
        "       if m.split('.')[0] in ('jax', 'flax', 'tensorflow', 'conversion', 'data_pipelines')\n"
        "       or m.startswith('f1_jax.models')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
