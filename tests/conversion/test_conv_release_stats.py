"""The released F1 runs as it is: its official `<dataset>_stats.json` becomes norm_stats.json at
import, an export of the import carries it back in the same format, and the JAX policy and the
PyTorch runtime give actions in robot units from it."""

import json
import os

import numpy as np
import pytest

from conversion import deployment, synthetic
from conversion.cli import main as conversion_main
from f1_common import export_layout, transforms
from inference.interface import load_policy
from f1_torch.policy import TorchPolicy

DATASET = "libero_spatial_no_noops"
STATE_DIM, ACTION_DIM = 8, 7  # LIBERO's


def _stats(dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mean, std = rng.uniform(-1, 1, dim), rng.uniform(0.5, 2.0, dim)
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "min": (mean - 3 * std).tolist(),
        "max": (mean + 3 * std).tolist(),
        "q01": (mean - 2 * std).tolist(),
        "q99": (mean + 2 * std).tolist(),
        "count": 1234,
    }


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """An official-layout directory as released: weights, config.json and the statistics file;
    no norm_stats.json, tokenizer.model or manifest.json."""
    root = tmp_path_factory.mktemp("release")
    config = synthetic.model_config("tiny")
    tokenizer = synthetic.make_tokenizer(str(root))
    directory = synthetic.write_export(
        str(root / "F1-VLA"), config, synthetic.random_params(config, seed=0), tokenizer
    )
    for name in (export_layout.NORM_STATS_FILE, export_layout.TOKENIZER_FILE):
        os.remove(os.path.join(directory, name))
    manifest = os.path.join(directory, export_layout.MANIFEST_FILE)
    if os.path.exists(manifest):  # the release has none
        os.remove(manifest)
    stats = {"state": _stats(STATE_DIM, 1), "action": _stats(ACTION_DIM, 2)}
    stats_file = os.path.join(directory, f"{DATASET}_stats.json")
    with open(stats_file, "w") as f:
        json.dump(deployment.official_stats(stats), f)
    return {"dir": directory, "config": config, "tokenizer": tokenizer, "stats_file": stats_file}


def _observation(seed: int) -> dict:
    """A robot observation under the official recipe's image keys, state in robot units."""
    rng = np.random.default_rng(seed)
    return {
        "observation.images.image": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        "observation.images.wrist_image": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        "state": rng.normal(0, 1, STATE_DIM).astype(np.float32),
        "instruction": synthetic.INSTRUCTIONS[0],
    }


def test_import_without_a_tokenizer_names_the_fix(release, tmp_path, capsys):
    out = tmp_path / "imported"
    assert conversion_main(["import", "f1", "--input", release["dir"], "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{DATASET}_stats.json" in err and "--tokenizer" in err and "Nothing was written" in err
    assert not out.exists()


def test_release_imports_exports_and_serves_in_robot_units(release, tmp_path):
    imported, exported = tmp_path / "imported", tmp_path / "exported"
    args = ["--no-progress", "--tokenizer", release["tokenizer"]]
    assert (
        conversion_main(
            ["import", "f1", "--input", release["dir"], "--output", str(imported), *args]
        )
        == 0
    )
    contract = transforms.read_deployment_contract(str(imported))
    with open(release["stats_file"]) as f:
        official = json.load(f)
    assert contract.default_dataset == DATASET and list(contract.datasets) == [DATASET]
    entry = contract.dataset()
    assert entry["cameras"] == deployment.RELEASE_CAMERAS
    assert contract.spec.cameras == ("primary", "wrist") and contract.spec.gen_camera == "primary"
    assert contract.spec.chunk_size == release["config"].action.chunk_size
    # The same statistics read back (the inverse of the official writer), float32 as written.
    assert deployment.official_stats(entry) == official
    assert entry["norm_mode"] == "mean_std" and entry["state"]["count"] == 1234

    # An export of the import carries the contract and the official file, unchanged.
    assert (
        conversion_main(
            ["export", "--input", str(imported), "--output", str(exported), "--no-progress"]
        )
        == 0
    )
    with open(exported / f"{DATASET}_stats.json") as f:
        assert json.load(f) == official
    assert (exported / export_layout.TOKENIZER_FILE).read_bytes() == open(
        release["tokenizer"], "rb"
    ).read()

    # Through the policy interface the server uses: the JAX backend from the import, the
    # PyTorch runtime from the export.
    jax_policy = load_policy(str(imported), "jax", top_k=1)
    torch_policy = load_policy(str(exported), "torch", top_k=1)
    assert isinstance(torch_policy, TorchPolicy)
    chunk = contract.spec.chunk_size
    for seed in range(2):
        obs = _observation(seed)
        noise = (
            np.random.default_rng(10 + seed)
            .normal(0, 1, (chunk, contract.spec.action_dim))
            .astype(np.float32)
        )
        got = torch_policy.infer(obs, noise=noise)["actions"]
        assert got.shape == (chunk, ACTION_DIM)  # the dataset's own dims, robot units
        example = torch_policy.transform(obs)
        normalized = torch_policy.infer_normalized(example, noise=noise)["actions"]
        mean = np.asarray(official["action"]["mean"], np.float32)
        std = np.asarray(official["action"]["std"], np.float32)
        np.testing.assert_allclose(got, normalized[:, :ACTION_DIM] * (std + 1e-8) + mean, rtol=1e-6)
        jax_actions = jax_policy.infer(obs, seed=0, noise=noise)["actions"]
        assert jax_actions.shape == (chunk, ACTION_DIM)
        np.testing.assert_allclose(jax_actions, got, atol=2e-3 * float(np.abs(got).max()))
        torch_policy.reset()
        jax_policy.reset()


def test_export_takes_statistics_from_official_files(release, tmp_path):
    """An import without statistics exports with those of a stats run (official files)."""
    imported, exported = tmp_path / "weights_only", tmp_path / "exported"
    assert (
        conversion_main(
            ["import", "f1", "--input", release["dir"], "--output", str(imported), "--stats"]
            + [release["stats_file"], "--tokenizer", release["tokenizer"], "--no-progress"]
        )
        == 0
    )
    cmd = ["export", "--input", str(imported), "--output", str(exported), "--no-progress"]
    assert conversion_main(cmd + ["--stats", release["stats_file"]]) == 2  # needs a tokenizer
    assert not exported.exists()
    assert (
        conversion_main(
            cmd
            + ["--stats", release["stats_file"], "--tokenizer", release["tokenizer"]]
            + ["--camera", "primary=image", "--camera", "wrist=wrist_image", "--norm_mode"]
            + ["quantile"]
        )
        == 0
    )
    contract = transforms.read_deployment_contract(str(exported))
    entry = contract.dataset(DATASET)
    assert entry["cameras"] == {"primary": "image", "wrist": "wrist_image"}
    assert entry["norm_mode"] == "quantile" and contract.spec.cameras == ("primary", "wrist")
