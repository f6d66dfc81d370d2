"""Quiet choices made explicit: counted in the summary under their own names, with options where
users differ (drop_unlabeled, gripper_convention), and layouts a source cannot read refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipelines import pipeline, summary
from data_pipelines.config import DatasetConfig
from data_pipelines.reader import EpisodeReader
from data_pipelines.schema import EmptyEpisodeError
from data_pipelines.sources import (
    UnsupportedDatasetError,
    action_to_native,
    apply_gripper_convention,
    bridge,
    fractal,
    get_source,
)
from dp_fixtures import (
    LONG_TEXT,
    QUIRK_EPISODES,
    bridge_oxe_episode,
    bridge_oxe_feature_spec,
    small_config,
    write_rlds,
)
from f1_common.tokenizer import Tokenizer
from f1_common.transforms import actions_to_native

BUDGET = 16  # tokens: LONG_TEXT needs more, the other instructions fit


def _quirks(path, tokenizer_path, tmp_path, **kw):
    return small_config(
        [DatasetConfig("quirks", "libero", path)],
        tokenizer_path,
        stats_dir=str(tmp_path),
        max_token_len=BUDGET,
        **kw,
    )


def test_quirks_are_counted_under_their_own_names(libero_quirks_dir, tokenizer_path, tmp_path):
    cfg = _quirks(libero_quirks_dir, tokenizer_path, tmp_path)
    _, (s,) = pipeline.load_summaries(cfg, progress=False)
    assert s.counts() == {
        "records": 5,
        "episodes_kept": 4,
        "transitions": 4 + 5 + 3 + 2,
        "corrupt": 0,  # a zero-step episode is not corrupt...
        "zero_steps": 1,  # ... it has its own name
        "unusable": 0,
        "empty_instruction": 1,
        "truncated_instruction": 1,
    }
    reader = EpisodeReader(libero_quirks_dir)
    texts = {}
    for i in range(len(reader)):
        try:
            texts[i] = reader.decode(i)["steps"]["language_instruction"][0].decode()
        except EmptyEpisodeError as e:
            assert "episode has no steps" in str(e) and f"record {i}" in str(e)
            assert s.zero_steps == (i,)
    assert [texts[i] for i in s.empty_instruction] == [""]
    assert [texts[i] for i in s.truncated_instruction] == [LONG_TEXT]
    report = s.describe()
    assert "zero_steps 1" in report and "empty_instruction 1" in report
    assert "truncated_instruction 1" in report and "skipped dataset 'quirks' shard" in report
    stats = pipeline.dataset_statistics(cfg)["quirks"]
    assert stats["counts"]["truncated_instruction"] == 1 and stats["counts"]["zero_steps"] == 1


def test_truncated_instruction_keeps_its_closing_newline(tokenizer_path):
    tok = Tokenizer(tokenizer_path, BUDGET)
    newline = tok.sp.encode("\n")
    assert tok.token_count(LONG_TEXT) > BUDGET
    tokens, mask = tok.encode(LONG_TEXT)
    assert mask.all()
    assert tokens[BUDGET - len(newline) :].tolist() == newline  # still ends the prompt
    assert tokens[0] == tok.sp.bos_id()
    # A prompt that fits is exactly bos + instruction + newline, as before.
    short = "open the top drawer"
    tokens, mask = tok.encode(short)
    expected = tok.sp.encode(short, add_bos=True) + newline
    assert tokens[mask].tolist() == expected and tok.token_count(short) == len(expected)


def test_drop_unlabeled_leaves_empty_instructions_out(libero_quirks_dir, tokenizer_path, tmp_path):
    def frames(cfg):
        seen = set()
        for b in pipeline.make_train_iterator(pipeline.eval_config(cfg), seed=0):
            seen |= set(zip(b["episode_index"].tolist(), b["step_index"].tolist()))
        return seen

    keep = _quirks(libero_quirks_dir, tokenizer_path, tmp_path)
    _, (s,) = pipeline.load_summaries(keep, progress=False)
    (unlabeled,) = s.empty_instruction
    kept = frames(keep)
    assert len(kept) == 14 and {e for e, _ in kept} >= {unlabeled}  # default: trained, counted
    dropped = frames(dataclasses.replace(keep, drop_unlabeled=True))
    assert dropped == {f for f in kept if f[0] != unlabeled}
    # Per dataset, the DatasetConfig field wins.
    own = dataclasses.replace(
        keep,
        drop_unlabeled=True,
        datasets=(dataclasses.replace(keep.datasets[0], drop_unlabeled=False),),
    )
    assert frames(own) == kept
    assert pipeline.dataset_statistics(dataclasses.replace(keep, drop_unlabeled=True))["quirks"][
        "num_transitions"
    ] == len(dropped)


@pytest.mark.parametrize(
    "source, fixture, dims, native_to_open",
    [
        ("libero", "libero_dir", [6], lambda a: (1 - a) / 2),  # -1 open/+1 close -> 1 open/0
        ("bridge", "bridge_dir", [], None),  # already 1 open / 0 closed
        ("fractal", "fractal_dir", [], None),
        ("agibot", "agibot_dir", [7, 15], lambda a: 1 - a),  # closedness -> openness
    ],
    ids=["libero", "bridge", "fractal", "agibot"],
)
def test_gripper_conventions(source, fixture, dims, native_to_open, request):
    path = request.getfixturevalue(fixture)
    path = path["path"] if isinstance(path, dict) else path
    reader = EpisodeReader(path)
    ep = get_source(source).standardize(reader.decode(0), source, 0)
    assert apply_gripper_convention(ep, source, "native") is ep  # the default changes nothing
    open_ep = apply_gripper_convention(ep, source, "open_is_positive")
    others = [d for d in range(ep.action.shape[1]) if d not in dims]
    np.testing.assert_array_equal(open_ep.action[:, others], ep.action[:, others])
    for d in dims:
        np.testing.assert_allclose(open_ep.action[:, d], native_to_open(ep.action[:, d]), atol=1e-6)
    to_native = action_to_native(source, "open_is_positive")
    if not dims:
        assert to_native is None
    else:
        assert to_native["dims"] == dims
        back = actions_to_native(open_ep.action, {"action_to_native": to_native})
        np.testing.assert_allclose(back, ep.action, atol=1e-6)
    if source == "libero":  # the release's -1/+1 become OpenVLA's 1 - clip(a, 0, 1)
        np.testing.assert_array_equal(open_ep.action[:, 6], 1 - np.clip(ep.action[:, 6], 0, 1))


def test_open_is_positive_reaches_stats_and_the_policy_contract(
    libero_dir, tokenizer_path, tmp_path
):
    from f1_common.transforms import ObservationTransform

    native = small_config(
        [DatasetConfig("lib", "libero", libero_dir)], tokenizer_path, stats_dir=str(tmp_path)
    )
    flipped = dataclasses.replace(native, gripper_convention="open_is_positive")
    a, b = pipeline.dataset_statistics(native)["lib"], pipeline.dataset_statistics(flipped)["lib"]
    assert "action_to_native" not in a and b["action_to_native"]["dims"] == [6]
    assert b["action"]["mean"][6] == pytest.approx((1 - a["action"]["mean"][6]) / 2, abs=1e-6)
    assert b["action"]["mean"][:6] == a["action"]["mean"][:6]
    # The policy's robot_actions gives the robot its own convention back.
    transform = ObservationTransform(
        flipped.observation, {"primary": "image"}, b, Tokenizer(tokenizer_path)
    )
    batch = next(pipeline.make_train_iterator(pipeline.eval_config(flipped), seed=0))
    raw = transform.robot_actions(batch["actions"][0])
    reader = EpisodeReader(libero_dir)
    ep = get_source("libero").standardize(reader.decode(int(batch["episode_index"][0])), "l", 0)
    t = int(batch["step_index"][0])
    np.testing.assert_allclose(raw[0], ep.action[t], atol=1e-4)


def test_bridge_oxe_copy_is_refused_naming_the_supported_release(
    data_root, tokenizer_path, tmp_path
):
    path = write_rlds(
        data_root,
        "bridge",
        bridge_oxe_feature_spec((48, 64)),
        [bridge_oxe_episode()],
        "tfrecord",
        "0.1.0",
    )
    cfg = small_config(
        [DatasetConfig("b", "bridge", path)], tokenizer_path, stats_dir=str(tmp_path)
    )
    with pytest.raises(UnsupportedDatasetError) as e:
        pipeline.load_summaries(cfg, progress=False)
    msg = str(e.value)
    assert "(bridge 0.1.0)" in msg
    assert (
        "steps/action is a dict of {open_gripper, rotation_delta, terminate_episode, world_vector}"
        in msg
    )
    assert "bridge_dataset 1.0.0" in msg and "Open X-Embodiment copy" in msg
    assert bridge.SUPPORTED in msg


def test_layout_check_names_a_missing_camera(libero_dir, tokenizer_path, tmp_path):
    cfg = small_config(
        [DatasetConfig("l", "libero", libero_dir, cameras={"primary": "agentview_rgb"})],
        tokenizer_path,
        stats_dir=str(tmp_path),
    )
    with pytest.raises(UnsupportedDatasetError, match="steps/observation/agentview_rgb is missing"):
        pipeline.load_summaries(cfg, progress=False)


def test_fixtures_carry_the_published_dtypes_and_versions(fractal_dir, bridge_dir):
    fr = EpisodeReader(fractal_dir)
    assert (fr.tfds_name, fr.version) == ("fractal20220817_data", "0.1.0")
    attributes = fr.features["attributes"]
    for k in ("collection_mode", "data_type", "env", "location", "objects_family", "task_family"):
        assert attributes[k].np_dtype == np.int64, k
    assert fr.decode(0)["attributes"]["env"] == 0  # int64 on disk, read back
    br = EpisodeReader(bridge_dir)
    assert (br.tfds_name, br.version) == ("bridge_dataset", "1.0.0")
    assert fractal.SUPPORTED.startswith("fractal20220817_data 0.1.0")
    assert len(QUIRK_EPISODES) == 5
    assert summary.SUMMARY_FORMAT.endswith("/2")
