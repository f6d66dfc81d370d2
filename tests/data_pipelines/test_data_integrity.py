"""Record checksums on every read, bad records skipped / counted / named, the bad-data budget,
and a statistics cache keyed on content."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct

import numpy as np
import pytest

from data_pipelines import pipeline, statistics, summary
from data_pipelines.config import DatasetConfig
from data_pipelines.convert import tfrecord_to_array_record
from data_pipelines.integrity import (
    CorruptRecordError,
    DataIntegrityError,
    masked_crc32c,
)
from data_pipelines.reader import EpisodeReader, scan_tfrecord
from dp_fixtures import (
    LIBERO_LENGTHS,
    copy_dataset,
    flip_byte,
    record_payload,
    rewrite_payload,
    shard_path,
    small_config,
)


def test_masked_crc32c_matches_what_tensorflow_writes(tmp_path):
    import tensorflow as tf

    assert masked_crc32c(b"") == 0xA282EAD8  # crc 0, masked
    path = str(tmp_path / "x.tfrecord")
    payloads = [b"", b"a", os.urandom(100_000), b"\x00" * 4096]
    with tf.io.TFRecordWriter(path) as w:
        for p in payloads:
            w.write(p)
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    for p in payloads:
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        assert n == len(p)
        assert (
            masked_crc32c(data[pos : pos + 8]) == struct.unpack("<I", data[pos + 8 : pos + 12])[0]
        )
        body = data[pos + 12 : pos + 12 + n]
        assert body == p and masked_crc32c(p) == struct.unpack("<I", data[pos + 12 + n :][:4])[0]
        pos += 16 + n
    index = scan_tfrecord(path)
    assert index.lengths.tolist() == [len(p) for p in payloads] and index.problems == ()


def _tf_reads_cleanly(shard: str) -> bool:
    """Whether TensorFlow's own TFRecord reader reads the whole shard without a DataLossError."""
    import tensorflow as tf

    try:
        for _ in tf.data.TFRecordDataset(shard):
            pass
    except tf.errors.DataLossError:
        return False
    return True


def _damage(kind: str, shard: str, k: int, state0: np.ndarray) -> None:
    """One flipped byte in record k: in a float tensor, in a JPEG, or in the length field."""
    off, payload = record_payload(shard, k)
    if kind == "tensor":
        at = payload.index(state0.astype("<f4").tobytes())  # steps/observation/state, step 0
        flip_byte(shard, off + at + 2)
    elif kind == "jpeg":
        at = payload.index(b"\xff\xd8\xff")  # start of the first JPEG
        flip_byte(shard, off + at + 200)
    else:
        flip_byte(shard, off - 12 + 1)  # the second byte of the uint64 length


@pytest.mark.parametrize("kind", ["tensor", "jpeg", "length"])
def test_flipped_byte_is_detected_skipped_counted_and_named(kind, libero_dir, tmp_path):
    data = copy_dataset(libero_dir, str(tmp_path / kind))
    shard = shard_path(data)
    clean = EpisodeReader(data)
    state0 = clean.decode(1)["steps"]["observation"]["state"][0]
    length1 = len(clean.decode(1)["steps"]["action"])
    assert _tf_reads_cleanly(shard)
    _damage(kind, shard, 1, state0)
    assert not _tf_reads_cleanly(shard)  # TensorFlow's reader catches it too

    reader = EpisodeReader(data)
    name = os.path.basename(shard)
    ds = DatasetConfig("lib", "libero", data)
    s = summary.load_or_compute(reader, ds, str(tmp_path / "stats"), progress=False)
    assert s.num_corrupt == 1 and s.counts()["corrupt"] == 1
    (skip,) = s.skipped
    assert (skip.kind, skip.shard, skip.shard_record) == ("corrupt", name, 1)
    assert f"shard {name} record 1" in skip.describe("lib")
    if kind == "length":
        # The record cannot be located: it is not indexed, its neighbours are.
        assert len(reader) == 2 and skip.record == -1
        assert skip.reason.startswith("length field fails its checksum")
        assert reader.locate(1) == (name, 2)
    else:
        assert len(reader) == 3 and skip.record == 1
        assert "data fails its checksum" in skip.reason
        with pytest.raises(CorruptRecordError, match=f"shard {name} record 1 .*checksum"):
            reader.decode(1)
        # Without verification the damage would pass silently or crash without a name.
        reader.verify_checksums = False
        try:
            damaged = reader.decode(1)["steps"]["observation"]["state"][0]
            if kind == "tensor":
                assert not np.array_equal(damaged, state0)
        except CorruptRecordError:
            assert kind == "jpeg"
    # Only the damaged episode is left out of sampling.
    assert s.num_transitions == sum(LIBERO_LENGTHS) - length1


def _take(cfg, n: int) -> list[dict]:
    it = pipeline.make_train_iterator(cfg, seed=0)
    return [next(it) for _ in range(n)]


def test_corruption_after_the_stats_pass_is_replaced_counted_and_named(
    libero_dir, tokenizer_path, tmp_path, monkeypatch, caplog
):
    data = copy_dataset(libero_dir, str(tmp_path / "lib"))
    shard = shard_path(data)
    cfg = small_config(
        [DatasetConfig("lib", "libero", data)],
        tokenizer_path,
        stats_dir=str(tmp_path / "stats"),
        batch_size=6,
        max_bad_fraction=0.5,
    )
    clean = _take(cfg, 3)
    state0 = EpisodeReader(data).decode(1)["steps"]["observation"]["state"][0]
    _damage("tensor", shard, 1, state0)

    # The shards' stored checksums did not change, so the clean summary is reused...
    def fail(*a, **k):
        raise AssertionError("stats recomputed")

    monkeypatch.setattr(summary, "scan", fail)
    caplog.set_level(logging.WARNING)
    got = _take(cfg, 3)
    # ... and the read catches the damage: every sample of record 1 is replaced, deterministically.
    n_replaced = 0
    for a, b in zip(clean, got):
        bad = a["episode_index"] == 1
        n_replaced += int(bad.sum())
        np.testing.assert_array_equal(b["replaced"][bad, 0], 1)
        np.testing.assert_array_equal(b["replaced"][bad, 1], a["step_index"][bad])
        np.testing.assert_array_equal(b["replaced"][bad, 2], 1)  # unreadable record
        assert (b["episode_index"][bad] != 1).all()
        assert (b["replaced"][~bad] == [-1, -1, 0]).all()
        for k in a:
            if k != "replaced":
                np.testing.assert_array_equal(a[k][~bad], b[k][~bad], err_msg=k)
    assert n_replaced > 0
    name = os.path.basename(shard)
    logged = [r.getMessage() for r in caplog.records if "bad sample replaced" in r.getMessage()]
    assert len(logged) == 1  # each bad record is named once
    assert f"shard {name} record 1 (dataset record 1)" in logged[0]
    assert "unreadable record" in logged[0]
    again = _take(cfg, 3)
    for a, b in zip(got, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # The same in a worker process: the replacement does not depend on where it is built.
    workers = dataclasses.replace(cfg, num_workers=1)
    it = pipeline.make_train_iterator(workers, seed=0)
    try:
        for a in got:
            b = next(it)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    finally:
        it.close()

    # Over the budget (1 of 3 records), the run stops naming the shard.
    strict = dataclasses.replace(cfg, max_bad_fraction=0.2)
    with pytest.raises(DataIntegrityError, match=f"worst shards: {name}: 1 of 3 bad"):
        _take(strict, 3)


def test_undecodable_image_is_replaced_counted_and_named(
    libero_dir, tokenizer_path, tmp_path, caplog
):
    data = copy_dataset(libero_dir, str(tmp_path / "lib"))
    shard = shard_path(data)
    _, payload = record_payload(shard, 2)
    # A record written broken: its JPEGs lose their start marker, its checksum vouches for that.
    rewrite_payload(shard, 2, payload.replace(b"\xff\xd8\xff", b"\x00\x00\x00"))
    assert EpisodeReader(data).serialized(2)  # the record itself is sound
    cfg = small_config(
        [DatasetConfig("lib", "libero", data)],
        tokenizer_path,
        stats_dir=str(tmp_path / "stats"),
        batch_size=6,
        max_bad_fraction=0.5,
    )
    caplog.set_level(logging.WARNING)
    it = pipeline.make_train_iterator(cfg, seed=0)
    batches = [next(it) for _ in range(3)]
    codes = np.concatenate([b["replaced"] for b in batches])
    hit = codes[:, 2] == 2  # undecodable image
    assert hit.any() and (codes[hit, 0] == 2).all()
    assert not (np.concatenate([b["episode_index"] for b in batches]) == 2).any()
    name = os.path.basename(shard)
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert f"shard {name} record 2 (dataset record 2)" in msgs and "undecodable image" in msgs
    assert "camera primary: cannot decode image" in msgs


def test_bad_fraction_stops_the_run_naming_the_worst_shards(libero_dir, tokenizer_path, tmp_path):
    data = copy_dataset(libero_dir, str(tmp_path / "lib"))
    shard = shard_path(data)
    off, payload = record_payload(shard, 0)
    flip_byte(shard, off + len(payload) // 2)
    cfg = small_config(
        [DatasetConfig("lib", "libero", data)],
        tokenizer_path,
        stats_dir=str(tmp_path / "stats"),
        max_bad_fraction=0.3,
    )
    name = os.path.basename(shard)
    with pytest.raises(DataIntegrityError, match=rf"1 of 3 records are bad .*{name}: 1 of 3 bad"):
        pipeline.load_summaries(cfg, progress=False)
    _, summaries = pipeline.load_summaries(
        dataclasses.replace(cfg, max_bad_fraction=0.4), progress=False
    )
    assert summaries[0].corrupt == (0,)


def test_changed_shard_invalidates_the_statistics_cache(libero_dir, tmp_path, monkeypatch):
    from data_pipelines.sources import libero
    from dp_fixtures import IMG, LIBERO_TEXTS, libero_episode

    data = copy_dataset(libero_dir, str(tmp_path / "lib"))
    shard = shard_path(data)
    ds = DatasetConfig("lib", "libero", data)
    stats = str(tmp_path / "stats")
    calls = []
    real_scan = summary.scan

    def counting_scan(*a, **k):
        calls.append(1)
        return real_scan(*a, **k)

    monkeypatch.setattr(summary, "scan", counting_scan)
    first = summary.load_or_compute(EpisodeReader(data), ds, stats, progress=False)
    summary.load_or_compute(EpisodeReader(data), ds, stats, progress=False)
    assert len(calls) == 1  # cached

    # Same files, sizes and metadata, other content: the state values are shifted.
    other = [libero_episode(n, i, LIBERO_TEXTS[i]) for i, n in enumerate(LIBERO_LENGTHS)]
    for ep in other:
        for step in ep["steps"]:
            step["observation"]["state"] = step["observation"]["state"] + 0.5
    alt = libero.write_dataset(str(tmp_path / "alt"), "libero_test_no_noops", other, (IMG, IMG))
    assert os.path.getsize(shard_path(alt)) == os.path.getsize(shard)
    os.replace(shard_path(alt), shard)
    second = summary.load_or_compute(EpisodeReader(data), ds, stats, progress=False)
    assert len(calls) == 2 and second.key != first.key
    np.testing.assert_allclose(
        np.array(second.state_stats["mean"]) - first.state_stats["mean"], 0.5, atol=1e-5
    )

    # A shard cut at a record boundary (a short copy): new key, the missing record counted.
    off, payload = record_payload(shard, 2)
    with open(shard, "r+b") as f:
        f.truncate(off - 12)
    third = summary.load_or_compute(EpisodeReader(data), ds, stats, progress=False)
    assert len(calls) == 3 and third.key not in (first.key, second.key)
    (skip,) = third.skipped
    assert skip.count == 1 and "shard holds 2 records, dataset_info.json lists 3" in skip.reason


def test_old_summary_format_is_not_reused(libero_dir, tmp_path):
    reader = EpisodeReader(libero_dir)
    ds = DatasetConfig("lib", "libero", libero_dir)
    key = summary.summary_key(reader, ds, "native")
    path = statistics.cache_path(libero_dir, key, str(tmp_path))
    os.makedirs(tmp_path, exist_ok=True)
    with open(path, "w") as f:  # a format-1 summary (no skip reasons) under the same key
        json.dump({"name": "lib", "key": key, "lengths": [], "corrupt": [], "unusable": []}, f)
    s = summary.load_or_compute(reader, ds, str(tmp_path), progress=False)
    assert s.counts()["records"] == 3 and len(s.lengths) == 3
    with open(path) as f:
        assert json.load(f)["format"] == summary.SUMMARY_FORMAT


def test_array_record_damage_is_named_and_corrupt_records_are_not_copied(libero_dir, tmp_path):
    data = copy_dataset(libero_dir, str(tmp_path / "lib"))
    shard = shard_path(data)
    off, payload = record_payload(shard, 1)
    flip_byte(shard, off + len(payload) // 2)
    result = tfrecord_to_array_record(data, str(tmp_path / "ar"))
    assert result["dropped"] == [[os.path.basename(shard), 1, "data fails its checksum"]]
    copy = EpisodeReader(str(tmp_path / "ar"))
    assert len(copy) == 2  # the corrupt record is not laundered into fresh ArrayRecord hashes

    ar = str(tmp_path / "ar_ok")
    tfrecord_to_array_record(libero_dir, ar)
    ar_shard = shard_path(ar)
    flip_byte(ar_shard, 200)  # inside the first Riegeli chunk (record 0)
    reader = EpisodeReader(ar)
    name = os.path.basename(ar_shard)
    with pytest.raises(CorruptRecordError, match=f"shard {name} record 0 .*hash mismatch"):
        reader.decode(0)
    s = summary.load_or_compute(
        reader, DatasetConfig("ar", "libero", ar), str(tmp_path / "s"), progress=False
    )
    assert s.corrupt == (0,) and s.skipped[0].shard == name
