"""HF PaliGemma (both key layouts) -> ours: exact tensors and forward parity with transformers."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from tolerances import assert_relative_error, paligemma_forward_terms

from conversion import importers, loaders, parity
from conversion.cli import main
from conversion.io import ConversionError

torch = pytest.importorskip("torch", reason="PaliGemma fixtures are built with transformers")
transformers = pytest.importorskip(
    "transformers", reason="conversion fixtures are built with transformers (the test extra)"
)

FOREIGN_VOCAB = 320  # longer than ours (256), like PaliGemma's 257216 vs pi0's 257152


def tiny_paligemma(config, seed=0, vocab=FOREIGN_VOCAB):
    """A random transformers PaliGemma with our tiny sizes (non-trivial norms and biases)."""
    torch.manual_seed(seed)
    foreign = dataclasses.replace(config, vocab_size=vocab)
    model = transformers.PaliGemmaForConditionalGeneration(
        parity.hf_paligemma_config(foreign)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


HUB_NAMES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
NEW_NAMES = (("model.vision_tower.", "model.vision_tower.vision_model."),)


def rename(state: dict, subs) -> dict:
    """transformers-5 state-dict keys -> another layout's keys (first matching prefix)."""
    out = {}
    for k, v in state.items():
        for a, b in subs:
            if k.startswith(a):
                k = b + k[len(a) :]
                break
        out[k] = v
    return out


def _numpy(state: dict) -> dict:
    return {k: v.detach().numpy().copy() for k, v in state.items()}


@pytest.fixture(scope="module")
def hf(tmp_path_factory, tiny_config):
    """The same weights in three layouts: the hub files (transformers 4.4x names), transformers
    4.52-4.57 names, and whatever transformers 5's save_pretrained writes."""
    root = tmp_path_factory.mktemp("paligemma")
    model = tiny_paligemma(tiny_config)
    model.save_pretrained(root / "saved")
    state = _numpy(model.state_dict())
    state.pop("lm_head.weight")  # tied to embed_tokens; the hub files store it once
    for name, subs in (("hub", HUB_NAMES), ("new", NEW_NAMES)):
        (root / name).mkdir()
        save_file(rename(state, subs), str(root / name / "model.safetensors"))
    return model, root


@pytest.mark.parametrize("layout", ["hub", "new", "saved"])
def test_import_and_forward_parity(hf, tiny_config, tmp_path, layout, capsys):
    model, root = hf
    out = tmp_path / "ours"
    assert (
        main(
            [
                "import",
                "paligemma",
                "--input",
                str(root / layout),
                "--output",
                str(out),
                "--size",
                "tiny",
                "--no-progress",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().err  # library code logs its notes; the CLI shows them on stderr
    assert f"vocabulary truncated from {FOREIGN_VOCAB} to 256 rows" in shown
    params, config, meta, _ = loaders.load_converted(out)
    assert meta["subtrees"] == sorted(
        ["siglip", "embedder", "stack/layers/und", "stack/final_norm_und"]
    )
    embed = model.model.language_model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(params["embedder/input_embedding"], embed[:256])
    errors = parity.forward_parity(config, _tree(params), model)
    assert_forward_parity(errors, config)


def assert_forward_parity(errors: dict, config) -> None:
    """forward_parity's max |ours - transformers| / max |transformers|, within the fp32 bound."""
    num_tokens = inspect.signature(parity.forward_parity).parameters["num_tokens"].default
    for name, terms in paligemma_forward_terms(config, num_tokens).items():
        assert_relative_error(errors[name], terms=terms, what=name)


def _tree(params):
    from conversion.engine import unflatten

    return unflatten(params)


def test_verify_roundtrip_and_forward(hf, tiny_config, capsys):
    _, root = hf
    assert (
        main(
            [
                "verify",
                "paligemma",
                "--input",
                str(root / "hub"),
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


def test_paligemma_into_a_wrong_size_lists_mis_shaped_keys(hf, tmp_path):
    _, root = hf
    with pytest.raises(ConversionError, match=r"mis-shaped") as err:
        importers.import_paligemma(root / "hub", tmp_path / "x", size="small", progress=False)
    assert "expected (512," in str(err.value) and "found (64," in str(err.value)
    assert not (tmp_path / "x").exists()
