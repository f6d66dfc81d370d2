"""The tables and rules themselves: exact inverses, full coverage, configs that round-trip."""

import numpy as np
import pytest

from conversion import config_io, engine, rules, tables


@pytest.mark.parametrize(
    "rule, ours_shape",
    [
        (rules.LINEAR, (3, 5)),
        (rules.CONV2D, (3, 3, 4, 6)),
        (rules.CONV1D, (4, 2, 3)),
        (rules.q_proj(4, 8), (4, 6, 8)),
        (rules.kv_proj(1, 8), (1, 6, 8)),
        (rules.o_proj(4, 8), (4, 8, 6)),
        (rules.reshape((6, 2, 3), (6, 6)), (6, 6)),
        (rules.SQUEEZE0, (4, 6)),
    ],
)
def test_rules_are_exact_inverses(rule, ours_shape):
    ours = np.random.RandomState(0).normal(size=ours_shape).astype(np.float32)
    foreign = rule.to_foreign(ours)
    assert foreign.shape == rule.foreign_shape(ours_shape)
    np.testing.assert_array_equal(rule.to_ours(foreign), ours)


def test_f1_table_covers_every_parameter_once(tiny_config):
    abstract = engine.abstract_params(tiny_config)
    rows = tables.f1_table(
        tiny_config, [k.removeprefix("vqvae/") for k in abstract if k.startswith("vqvae/")]
    )
    engine.check_coverage(rows, abstract)
    assert {r.ours for r in rows} == set(abstract)
    foreign = [r.foreign for r in rows]
    assert len(foreign) == len(set(foreign))


def test_pi0_and_paligemma_tables_name_only_their_subtrees(tiny_config):
    for layout in ("old", "new"):
        pi0 = {r.ours for r in tables.pi0_table(tiny_config, layout)}
        assert all(engine.in_subtrees(p, tables.PI0_SUBTREES) for p in pi0)
        pali = {r.ours for r in tables.paligemma_table(tiny_config, layout)}
        assert all(engine.in_subtrees(p, tables.PALIGEMMA_SUBTREES) for p in pali)
    new = {r.foreign for r in tables.pi0_table(tiny_config, "new")}
    assert (
        "model.paligemma_with_expert.paligemma.model.language_model.layers.{i}.mlp.up_proj.weight"
        in new
    )


def test_vae_names_follow_var(tiny_config):
    assert (
        tables.vae_foreign_name("encoder/down_0/block_1/norm1/scale")[0]
        == "encoder.down.0.block.1.norm1.weight"
    )
    assert tables.vae_foreign_name("decoder/mid/attn_1/qkv/kernel") == (
        "decoder.mid.attn_1.qkv.weight",
        rules.CONV2D,
    )
    assert (
        tables.vae_foreign_name("quantize/quant_resi/qresi_ls_2/bias")[0]
        == "quantize.quant_resi.qresi_ls.2.bias"
    )


def test_sidecar_config_round_trips(tiny_config, tmp_path):
    config_io.write_sidecar(tmp_path / "c.json", tiny_config, "f1", ["stack"], [])
    back, meta = config_io.read_sidecar(tmp_path / "c.json")
    assert back == tiny_config and meta["source"] == "f1"


def test_unknown_config_json_is_rejected():
    with pytest.raises(ValueError, match="Not an F1 config.json: missing 'und_expert_config'"):
        config_io.from_official({"model_type": "pi0"})
