"""Datasets in a bucket (a local Cloud Storage emulator): the same records, checks, names, order
and resume as on a local disk; the statistics cache and frame-code stores written beside the
data in the bucket; `convert stats` on a gs:// path; a partial frame-code store is resumed, never
read."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import convert, frame_codes, pipeline, storage, summary
from data_pipelines.config import DatasetConfig
from data_pipelines.integrity import CorruptRecordError
from data_pipelines.reader import EpisodeReader
from dp_fixtures import LIBERO_LENGTHS, record_payload, shard_path, small_config

pytest.importorskip("gcp_storage_emulator.server", reason="the test extra installs it")
pytest.importorskip("gcsfs", reason="gs:// paths are read through gcsfs (the gcs/test extras)")

from gcs_emulator import BUCKET, Emulator  # noqa: E402  (after the importorskips)


@pytest.fixture(scope="module")
def gcs():
    emulator = Emulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    yield emulator
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    emulator.stop()


@pytest.fixture(scope="module")
def bucket_libero(gcs, libero_dir):
    """The LIBERO fixture uploaded to the bucket (without local summaries)."""
    local = os.path.join(os.path.dirname(libero_dir), "_bucket_copy")
    shutil.copytree(libero_dir, local, ignore=shutil.ignore_patterns("f1_*"), dirs_exist_ok=True)
    return gcs.upload_dir(local, "data/libero_test_no_noops/1.0.0")


def _object(uri: str) -> str:
    return uri.removeprefix(f"gs://{BUCKET}/")


def test_a_bucket_dataset_reads_as_the_local_one(bucket_libero, libero_dir):
    local, remote = EpisodeReader(libero_dir), EpisodeReader(bucket_libero)
    assert len(remote) == len(local) == len(LIBERO_LENGTHS)
    assert remote.content_fingerprint() == local.content_fingerprint()
    for i in range(len(local)):
        assert remote.serialized(i) == local.serialized(i)
    np.testing.assert_array_equal(
        remote.decode(1)["steps"]["action"], local.decode(1)["steps"]["action"]
    )
    assert remote.where(2).startswith(f"dataset {bucket_libero} shard ")


def test_convert_stats_on_a_bucket_caches_beside_the_data(bucket_libero, gcs, capsys):
    assert convert.main(["stats", "--source", "libero", "--path", bucket_libero]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["records"] == len(LIBERO_LENGTHS) and report["corrupt"] == 0
    cached = [n for n in gcs.objects(_object(bucket_libero)) if n.startswith("f1_dataset_summary_")]
    assert cached == [f"f1_dataset_summary_{report['key']}.json"]


def test_array_record_copy_of_a_bucket_dataset(bucket_libero, libero_dir, tmp_path):
    out = str(tmp_path / "ar" / "1.0.0")
    result = convert.tfrecord_to_array_record(bucket_libero, out)
    assert result["dropped"] == []
    local, copy = EpisodeReader(libero_dir), EpisodeReader(out)
    assert copy.file_format == "array_record"
    assert [copy.serialized(i) for i in range(len(copy))] == [
        local.serialized(i) for i in range(len(local))
    ]


def test_a_flipped_byte_in_a_bucket_shard_is_named(gcs, libero_dir, tmp_path):
    uri = gcs.upload_dir(libero_dir, "flipped/libero/1.0.0")
    shard = shard_path(libero_dir)
    name = os.path.basename(shard)
    off, payload = record_payload(shard, 1)
    gcs.flip_byte(f"flipped/libero/1.0.0/{name}", off + len(payload) // 2)
    reader = EpisodeReader(uri)
    with pytest.raises(CorruptRecordError, match=f"{uri} shard {name} record 1 .*checksum"):
        reader.serialized(1)
    s = summary.load_or_compute(
        reader, DatasetConfig("lib", "libero", uri), str(tmp_path), progress=False
    )
    (skip,) = s.skipped
    assert (skip.kind, skip.shard, skip.shard_record, skip.record) == ("corrupt", name, 1, 1)
    # A broken length field: indexing hops past the record through ranged reads, as on disk.
    gcs.flip_byte(f"flipped/libero/1.0.0/{name}", off - 12 + 1)
    broken = EpisodeReader(uri)
    assert len(broken) == len(LIBERO_LENGTHS) - 1 and broken.locate(1) == (name, 2)
    (lost,) = broken.unreadable()
    assert lost.reason.startswith("length field fails its checksum")


def test_batches_and_resume_from_a_bucket_equal_the_local_ones(
    bucket_libero, libero_dir, tokenizer_path, tmp_path
):
    def config(path: str, stats: str):
        return small_config(
            [DatasetConfig("libero", "libero", path)], tokenizer_path, stats_dir=stats
        )

    local = config(libero_dir, str(tmp_path / "local"))
    remote = config(bucket_libero, f"gs://{BUCKET}/stats/bucket_batches")  # stats in a bucket
    it_local, it_remote = (pipeline.make_train_iterator(c, seed=3) for c in (local, remote))
    for _ in range(2):
        a, b = next(it_local), next(it_remote)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    state = it_remote.get_state()
    want = next(it_remote)
    resumed = pipeline.make_train_iterator(remote, seed=3)
    resumed.set_state(state)
    got = next(resumed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    key = summary.summary_key(EpisodeReader(bucket_libero), remote.datasets[0], "native")
    assert storage.exists(storage.join(remote.stats_dir, f"f1_dataset_summary_{key}.json"))


def _codes(record: int, length: int, width: int) -> np.ndarray:
    return (np.arange(length * width).reshape(length, width) + 1000 * record).astype(np.int32)


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_partial_frame_code_store_is_resumed_never_read(where, gcs, tmp_path):
    lengths, width = np.array([5, 0, 7, 3, 6]), 4
    directory = str(tmp_path / "store") if where == "local" else f"gs://{BUCKET}/stores/partial"
    ranges = frame_codes.part_ranges(lengths, 2)
    assert ranges == [(0, 3), (3, 5)]  # contiguous, 12 and 9 frames

    def write(part: int) -> None:
        first, stop = ranges[part]
        records = ((r, _codes(r, lengths[r], width)) for r in range(first, stop) if lengths[r])
        frame_codes.write_part(directory, part, 2, first, stop, records, width)

    write(1)  # a job stopped after one of its two processes wrote its part
    assert frame_codes.present_parts(directory, 2) == [1]
    with pytest.raises(FileNotFoundError, match="parts \\[0\\] of 2 missing"):
        frame_codes.complete_store(directory, 2, len(lengths), np.zeros(width), {})
    with pytest.raises(FileNotFoundError, match="no complete frame-code store"):
        frame_codes.FrameCodeStore(directory)
    write(0)  # the restarted job writes only the missing part
    frame_codes.complete_store(directory, 2, len(lengths), np.full(width, 7), {"k": 1})
    store = frame_codes.FrameCodeStore(directory)
    for r in np.flatnonzero(lengths):
        idx = np.array([lengths[r] - 1, 0, 1 % lengths[r]])
        np.testing.assert_array_equal(store.frames(int(r), idx), _codes(r, lengths[r], width)[idx])
    with pytest.raises(KeyError):
        store.frames(1, np.array([0]))
    np.testing.assert_array_equal(store.blank, np.full(width, 7))
