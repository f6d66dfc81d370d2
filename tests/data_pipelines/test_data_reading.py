"""Random access over TFRecord shards and ArrayRecord copies; corrupt records; stats cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipelines import summary
from data_pipelines.config import DatasetConfig
from data_pipelines.integrity import masked_crc32c
from data_pipelines.reader import CorruptRecordError, EpisodeReader, scan_tfrecord
from data_pipelines.sources import libero
from dp_fixtures import LIBERO_LENGTHS


def test_tfrecord_index(libero_dir):
    shard = next(os.path.join(libero_dir, n) for n in os.listdir(libero_dir) if ".tfrecord-" in n)
    index = scan_tfrecord(shard)
    assert len(index.offsets) == 3 and index.problems == ()
    assert index.offsets[0] == 12
    assert index.offsets[-1] + index.lengths[-1] + 4 == os.path.getsize(shard)
    with open(shard, "rb") as f:
        data = f.read()
    for off, ln, crc in zip(index.offsets, index.lengths, index.crcs):
        assert masked_crc32c(data[off : off + ln]) == crc  # the footer TFDS/TF wrote


def test_array_record_copy_reads_the_same(libero_dir, libero_array_record_dir):
    tf_reader = EpisodeReader(libero_dir)
    ar_reader = EpisodeReader(libero_array_record_dir)
    assert ar_reader.file_format == "array_record" and len(ar_reader) == len(tf_reader)
    for i in range(len(tf_reader)):
        assert ar_reader.serialized(i) == tf_reader.serialized(i)
        a, b = tf_reader.decode(i), ar_reader.decode(i)
        np.testing.assert_array_equal(
            a["steps"]["observation"]["state"], b["steps"]["observation"]["state"]
        )


def test_convert_cli(libero_dir, tmp_path):
    from data_pipelines import convert

    dst = str(tmp_path / "x" / "1.0.0")
    assert convert.main(["array-record", "--src", libero_dir, "--dst", dst]) == 0
    with open(os.path.join(dst, "dataset_info.json")) as f:
        assert json.load(f)["fileFormat"] == "array_record"
    assert len(EpisodeReader(dst)) == 3


def test_corrupt_record_is_skipped_and_counted(corrupt_libero_dir, tmp_path):
    reader = EpisodeReader(corrupt_libero_dir)
    assert len(reader) == 3
    with pytest.raises(CorruptRecordError, match=r"record 1 \(dataset record 1\): data fails its"):
        reader.decode(1)
    ds = DatasetConfig("bad", "libero", corrupt_libero_dir)
    s = summary.load_or_compute(reader, ds, stats_dir=str(tmp_path), progress=False)
    assert s.corrupt == (-1, 1)  # the partial header at the end of the shard, then record 1
    tail, bad = s.skipped
    assert tail.shard_record == 3 and tail.count == 0  # garbage after the last listed record
    assert "file ends 3 bytes into a header" in tail.reason
    assert bad.record == 1 and "data fails its checksum" in bad.reason
    assert s.num_corrupt == 1 and s.counts()["corrupt"] == 1
    assert s.lengths[1] == 0 and tuple(s.sample_ranges[1]) == (0, 0)
    good = [reader.decode(i)["steps"]["action"].shape[0] for i in (0, 2)]
    assert s.num_transitions == sum(good) < sum(LIBERO_LENGTHS)


def test_stats_by_hand_and_cache(libero_dir, tmp_path, monkeypatch):
    reader = EpisodeReader(libero_dir)
    ds = DatasetConfig("libero", "libero", libero_dir)
    s = summary.load_or_compute(reader, ds, stats_dir=str(tmp_path), progress=True)
    # state[:, 0] = 100 * ep + t over episodes of lengths 6, 9, 3.
    col = np.concatenate([100 * e + np.arange(n) for e, n in enumerate(LIBERO_LENGTHS)])
    np.testing.assert_allclose(s.state_stats["mean"][0], col.mean(), rtol=1e-6)
    np.testing.assert_allclose(s.state_stats["std"][0], col.std(), rtol=1e-6)
    np.testing.assert_allclose(s.state_stats["q01"][0], np.quantile(col, 0.01), rtol=1e-6)
    np.testing.assert_allclose(s.state_stats["q99"][0], np.quantile(col, 0.99), rtol=1e-6)
    assert s.state_stats["min"][0] == 0 and s.state_stats["max"][0] == 202
    assert s.action_stats["count"] == sum(LIBERO_LENGTHS) and s.num_transitions == 18
    files = [n for n in os.listdir(tmp_path) if n.startswith("f1_dataset_summary_")]
    assert len(files) == 1 and s.key in files[0]

    def fail(*a, **k):
        raise AssertionError("stats recomputed although cached")

    monkeypatch.setattr(summary, "scan", fail)
    again = summary.load_or_compute(reader, ds, stats_dir=str(tmp_path), progress=False)
    assert again.state_stats == s.state_stats
    # Another transform version or gripper convention must not reuse the cache.
    assert summary.summary_key(reader, ds, "open_is_positive") != s.key
    monkeypatch.setitem(libero.SPEC, "version", "libero-v2")
    assert summary.summary_key(reader, ds, "native") != s.key


def test_stats_cli(bridge_dir, tmp_path, capsys):
    from data_pipelines import convert

    assert (
        convert.main(
            ["stats", "--source", "bridge", "--path", bridge_dir, "--stats_dir", str(tmp_path)]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    # 3 episodes: 6 and 4 steps relabel to 4 and 2 transitions; the 2-step one is unusable.
    assert out["episodes_kept"] == 2 and out["transitions"] == 6 and out["unusable"] == 1
    assert out["records"] == 3 and out["corrupt"] == 0 and out["empty_instruction"] == 0
    (skip,) = out["skipped"]
    assert skip["kind"] == "unusable" and "needs >= 3" in skip["reason"]
    assert f"shard {skip['shard']} record {skip['shard_record']}" in captured.err


def test_record_written_unparseable_is_named(libero_dir, tmp_path):
    """A record whose checksum vouches for bytes that are not a valid tf.train.Example."""
    from dp_fixtures import copy_dataset, record_payload, rewrite_payload, shard_path

    data = copy_dataset(libero_dir, str(tmp_path / "lib"))
    shard = shard_path(data)
    _, payload = record_payload(shard, 2)
    rewrite_payload(shard, 2, b"\x0f" + payload[1:])  # field 1 with wire type 7: not protobuf
    reader = EpisodeReader(data)
    name = os.path.basename(shard)
    with pytest.raises(CorruptRecordError, match=f"shard {name} record 2 .*cannot decode"):
        reader.decode(2)
    s = summary.load_or_compute(
        reader, DatasetConfig("l", "libero", data), str(tmp_path / "s"), progress=False
    )
    assert s.corrupt == (2,) and s.skipped[0].reason.startswith("cannot decode")
