"""Session-scoped fixtures: tiny RLDS datasets written at test time with TFDS in each source's
exact feature spec, a raw AgiBot-style episode, and a tiny SentencePiece model."""

from __future__ import annotations

import io
import os

import lerobot_fixtures as lf
import pytest

from dp_fixtures import (
    BRIDGE_STATES,
    IMG,
    LIBERO_LENGTHS,
    LIBERO_TEXTS,
    bridge_episode,
    fractal_episode,
    libero_episode,
    libero_quirk_episodes,
    write_rlds,
)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rlds")


@pytest.fixture(scope="session")
def libero_dir(data_root):
    from data_pipelines.sources import libero

    eps = [libero_episode(n, i, LIBERO_TEXTS[i]) for i, n in enumerate(LIBERO_LENGTHS)]
    return libero.write_dataset(os.fspath(data_root), "libero_test_no_noops", eps, (IMG, IMG))


@pytest.fixture(scope="session")
def libero_array_record_dir(data_root, libero_dir):
    from data_pipelines import convert

    out = os.path.join(os.fspath(data_root), "libero_ar", "1.0.0")
    convert.tfrecord_to_array_record(libero_dir, out)
    return out


@pytest.fixture(scope="session")
def bridge_dir(data_root):
    from data_pipelines.sources import bridge

    eps = [bridge_episode(i) for i in range(len(BRIDGE_STATES))]
    return write_rlds(data_root, "bridge_dataset", bridge.feature_spec((IMG, IMG)), eps)


@pytest.fixture(scope="session")
def fractal_dir(data_root):
    from data_pipelines.sources import fractal

    eps = [fractal_episode(i) for i in range(2)]
    spec = fractal.feature_spec((IMG, IMG + 4))
    return write_rlds(data_root, "fractal20220817_data", spec, eps, version="0.1.0")


@pytest.fixture(scope="session")
def libero_quirks_dir(data_root):
    """LIBERO-schema episodes with an empty instruction, zero steps and a long instruction."""
    from data_pipelines.sources import libero

    eps = libero_quirk_episodes()
    return libero.write_dataset(os.fspath(data_root), "libero_quirks_no_noops", eps, (IMG, IMG))


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    import sentencepiece as spm

    path = os.path.join(os.fspath(tmp_path_factory.mktemp("spm")), "tiny.model")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(
            list(LIBERO_TEXTS) * 4 + ["put the spoon in the pot", "pick coke can"] * 4
        ),
        model_writer=buf,
        vocab_size=48,
        hard_vocab_limit=False,
        model_type="bpe",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def agibot_dir(tmp_path_factory):
    from data_pipelines.sources import agibot
    from dp_fixtures import write_agibot_raw

    raw = write_agibot_raw(os.fspath(tmp_path_factory.mktemp("agibot_raw")))
    out = os.fspath(tmp_path_factory.mktemp("agibot_rlds"))
    report = agibot.convert(
        raw, out, segment_len=10, context_before=3, context_after=4, image_size=8
    )
    return report


@pytest.fixture(scope="session")
def corrupt_libero_dir(data_root, libero_dir):
    """A copy of the LIBERO fixture whose record 1 has an invalid protobuf tag (its checksum no
    longer matches), and whose shard ends in a partial record header."""
    import shutil

    from data_pipelines.reader import scan_tfrecord

    dst = os.path.join(os.fspath(data_root), "libero_corrupt", "1.0.0")
    shutil.copytree(libero_dir, dst)
    for name in os.listdir(dst):
        if name.startswith("f1_dataset_summary_"):
            os.remove(os.path.join(dst, name))
    shard = next(os.path.join(dst, n) for n in os.listdir(dst) if ".tfrecord-" in n)
    offsets = scan_tfrecord(shard).offsets
    with open(shard, "r+b") as f:
        f.seek(int(offsets[1]))
        f.write(b"\x0f")  # field 1 with wire type 7: not valid protobuf
        f.seek(0, 2)
        f.write(b"\x40\x00\x00")  # a partial record header
    return dst


# ------------------------------------------------------------------ LeRobot (real lerobot package)


@pytest.fixture(scope="session")
def lerobot_roots(tmp_path_factory):
    """{"v3.0": dir or skip reason, "v2.1": ...}: both fixtures written at once, each by its own
    lerobot version in a subprocess (lerobot_fixtures.py)."""
    base = os.fspath(tmp_path_factory.mktemp("lerobot"))
    procs, out = {}, {}
    for layout, version in lf.VERSIONS.items():
        root = os.path.join(base, f"fixture_{layout}")
        try:
            procs[layout] = (
                lf.start_writer(version, root, lf.CODECS[layout], lf.LENGTHS[layout]),
                root,
            )
        except pytest.skip.Exception as e:
            out[layout] = str(e)
    for layout, (proc, root) in procs.items():
        out[layout] = lf.finish_writer(proc, root)
    return out


def _lerobot_root(roots, layout):
    root = roots[layout]
    if not os.path.isdir(root):
        pytest.skip(root)
    return root


@pytest.fixture(scope="session")
def lerobot_v3_dir(lerobot_roots):
    return _lerobot_root(lerobot_roots, "v3.0")


@pytest.fixture(scope="session")
def lerobot_v2_dir(lerobot_roots):
    return _lerobot_root(lerobot_roots, "v2.1")
