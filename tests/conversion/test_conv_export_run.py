"""`export --run`: a training run -> official F1 layout + deployment contract, and reading it back."""

import json
import os

import numpy as np
import pytest
from safetensors import safe_open

from conversion import deployment, engine, io, loaders
from conversion.cli import main
from f1_common import transforms
from f1_common.tokenizer import Tokenizer
from f1_jax.training import checkpoints as ckpt
from f1_jax.training import state as st
from f1_jax.training.run_record import read_run_record
from tests.conversion import official_layout as layout

EXPERT_LM_HEADS = {
    layout.P + "gemma_wm_expert.lm_head.weight",
    layout.P + "gemma_expert.lm_head.weight",
}


def _export(*args: str) -> int:
    return main(["export", *args, "--no-progress"])


def _dtypes(path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(str(path), framework="numpy") as f:
        return {
            k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()
        }


@pytest.fixture(scope="module")
def run_params(sim_run):
    record = read_run_record(sim_run["workdir"])
    tree = ckpt.restore_params_on_host(record.directory, record.step)
    return record, engine.flatten(tree)


@pytest.fixture(scope="module")
def exported(sim_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run") / "f1"
    assert _export("--run", sim_run["workdir"], "--output", str(out), "--dataset", "sim_b") == 0
    return out


def test_export_writes_every_official_key_in_fp32(exported, run_params):
    record, _ = run_params
    assert sorted(p.name for p in exported.iterdir()) == sorted(
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
    got = _dtypes(exported / "model.safetensors")
    expected = layout.saved_file_keys(layout.tiny_sizes(record.model_config))
    assert set(got) == set(expected) - EXPERT_LM_HEADS
    for key, (shape, dtype) in got.items():
        assert shape == expected[key][0], key
        assert dtype == ("I64" if key == "model.lvl_1L" else "F32"), key


def test_released_dtypes_on_request(sim_run, run_params, tmp_path):
    record, _ = run_params
    out = tmp_path / "released"
    assert (
        _export(
            "--run",
            sim_run["workdir"],
            "--output",
            str(out),
            "--dtype",
            "released",
            "--with-expert-lm-heads",
        )
        == 0
    )
    names = {"bfloat16": "BF16", "float32": "F32", "int64": "I64"}
    expected = layout.saved_file_keys(layout.tiny_sizes(record.model_config))
    got = _dtypes(out / "model.safetensors")
    assert got == {k: (shape, names[dtype]) for k, (shape, dtype) in expected.items()}


def test_import_of_the_export_gives_back_the_run_exactly(exported, run_params, tmp_path):
    record, params = run_params
    assert main(["import", "f1", "--input", str(exported), "--output", str(tmp_path / "o")]) == 0
    back, config, meta, _ = loaders.load_converted(tmp_path / "o")
    assert config == record.model_config  # the whole config travels in config.json
    assert set(back) == set(params)
    for name, value in params.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_load_export_reads_weights_config_and_contract(exported, run_params):
    record, params = run_params
    tree, config, contract = loaders.load_export(exported)
    assert config == record.model_config
    flat = engine.flatten(tree)
    assert set(flat) == set(params)
    for name, value in params.items():
        np.testing.assert_array_equal(flat[name], value, err_msg=name)
    assert contract.default_dataset == "sim_b"
    assert contract.tokenizer_path == f"{exported}/tokenizer.model"


def test_norm_stats_json_round_trips(exported, run_params, sim_run):
    record, _ = run_params
    contract = transforms.read_deployment_contract(str(exported))
    assert contract.spec == record.spec
    assert contract.default_dataset == "sim_b"
    assert list(contract.datasets) == ["sim_a", "sim_b"]
    for name in ("sim_a", "sim_b"):
        entry = dict(contract.datasets[name])
        assert entry.pop("cameras") == {"primary": "image", "wrist": "wrist_image"}
        assert entry == json.loads(json.dumps(record.statistics[name]))
    assert contract.datasets["sim_b"]["norm_mode"] == "quantile"
    assert contract.source["step"] == record.step and contract.source["params"] == "params"
    with (
        open(contract.tokenizer_path, "rb") as a,
        open(sim_run["config"].data.tokenizer_path, "rb") as b,
    ):
        assert a.read() == b.read()
    tokens, mask = Tokenizer(contract.tokenizer_path, 16).encode("pick up the cube")
    assert mask.sum() > 2 and tokens[0] == 2  # bos
    # The contract drives the observation transform exactly as the run's entry does.
    transform = contract.transform(Tokenizer(contract.tokenizer_path, contract.spec.max_token_len))
    assert transform.cameras == record.cameras["sim_b"]
    stats = record.statistics["sim_b"]
    raw = np.random.default_rng(0).normal(size=len(stats["state"]["mean"])).astype(np.float32)
    np.testing.assert_array_equal(
        transform(_observation(raw))["state"],
        transforms.state_input(raw, stats["state"], "quantile", record.spec.state_dim),
    )


def _observation(state):
    image = np.zeros((32, 32, 3), np.uint8)
    return {"primary": image, "wrist": image, "state": state, "instruction": "pick up the cube"}


def test_official_statistics_files(exported, run_params):
    record, _ = run_params
    for name in ("sim_a", "sim_b"):
        with open(exported / deployment.official_stats_file(name)) as f:
            official = json.load(f)
        assert set(official) == {"observation.state", "action"}
        for ours, feature in (("state", "observation.state"), ("action", "action")):
            recorded = record.statistics[name][ours]
            for stat in ("mean", "std", "min", "max", "q01", "q99"):
                np.testing.assert_array_equal(
                    np.asarray(official[feature][stat], np.float32),
                    np.asarray(recorded[stat], np.float32),
                    err_msg=f"{name} {feature} {stat}",
                )
            assert official[feature]["count"] == [recorded["count"]]
    with open(exported / "norm_stats.json") as f:
        assert json.load(f)["source"]["official_stats"] == {
            "sim_a": "sim_a_stats.json",
            "sim_b": "sim_b_stats.json",
        }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ema"], "without EMA parameters"),
        (["--step", "99"], "step 99"),
        (["--dataset", "nope"], "Unknown dataset 'nope'; this checkpoint has statistics for"),
        (["--tokenizer", "/nonexistent/tok.model"], "does not exist here"),
    ],
)
def test_clear_errors_and_nothing_written(sim_run, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert _export("--run", sim_run["workdir"], "--output", str(out), *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Nothing was written." in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_run_and_misused_flags(tmp_path, capsys):
    assert _export("--run", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")) == 2
    assert "No checkpoint directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        _export("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--step", "3")
    assert exit_.value.code == 2
    assert "only apply to --run" in capsys.readouterr().err


def test_ema_parameters_are_exported(sim_run, run_params, tmp_path):
    """A run saved with EMA parameters: --ema exports them, not the raw parameters."""
    record, params = run_params
    ema = {k: (0.5 * v + 1.0).astype(np.float32) for k, v in params.items()}
    state = st.TrainState(
        step=np.int32(record.step),
        params=engine.unflatten(params),
        opt_state=None,
        ema_params=engine.unflatten(ema),
    )
    source = ckpt.read_only_checkpoints(sim_run["workdir"])
    run = ckpt.RunCheckpoints(tmp_path / "run" / "checkpoints", 1, async_save=False)
    run.save(record.step, state, None, source.restore_record(record.step), force=True)
    run.close()
    out = tmp_path / "f1"
    assert _export("--run", str(tmp_path / "run"), "--output", str(out), "--ema") == 0
    tree, _, contract = loaders.load_export(out)
    flat = engine.flatten(tree)
    for name, value in ema.items():
        np.testing.assert_array_equal(flat[name], value, err_msg=name)
    assert contract.source["params"] == "ema_params" and contract.default_dataset == "sim_a"


def test_load_export_without_statistics(exported, tmp_path):
    """An export without norm_stats.json (e.g. the released checkpoint): weights only on request."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "config.json"):
        os.link(exported / name, bare / name)
    with pytest.raises(io.ConversionError, match="has no norm_stats.json"):
        loaders.load_export(bare)
    _, _, contract = loaders.load_export(bare, require_contract=False)
    assert contract is None
