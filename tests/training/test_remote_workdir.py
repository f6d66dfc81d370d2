"""A run whose data AND workdir are `gs://` URIs, against a local Cloud Storage emulator
(gcp-storage-emulator, loopback only): the dataset is read from the bucket (no local copy), its
statistics and frame-code store are written beside it in the bucket, every file the run writes
reaches the bucket with its scheme intact, nothing lands on the local disk, a byte flipped in a
bucket shard between two starts is caught and named, and the run resumes from the bucket.

Checkpoints use the zarr layout (`train.checkpoint_ocdbt=false`): the emulator cannot serve
Orbax's default OCDBT format, for the two reasons `test_the_emulator_cannot_serve_ocdbt` shows."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import pytest
import tensorstore as ts

pytest.importorskip(
    "gcp_storage_emulator.server", reason="the test extra installs gcp-storage-emulator"
)
pytest.importorskip("gcsfs", reason="epath and the data reader read gs:// through gcsfs here")

from gcs_emulator import BUCKET, Emulator  # noqa: E402  (after the importorskips)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = "data/tiny_train/1.0.0"
FLIPPED_RECORD = 1

RUN = """
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["F1_ROOT"], "tests"))
sys.path.insert(0, os.path.join(os.environ["F1_ROOT"], "tests", "training"))
from gcs_emulator import Emulator
from train_fixtures import tiny_config
from data_pipelines.reader import scan_tfrecord
from f1_jax.training import trainer

data = json.loads(os.environ["F1_TEST_DATA"])
for steps in (2, 4):  # a run, then the same command with more steps: it resumes from the bucket
    config = tiny_config(data, steps=steps, mesh=(1, 1, 1))
    config.data.datasets = [{"name": "tiny", "source": "libero", "path": sys.argv[2]}]
    config.data.stats_dir = ""  # caches beside the data: in the bucket
    config.data.frame_codes = True  # the frame-code store too
    config.data.max_bad_fraction = 0.5  # one bad record of four may stay
    config.train.checkpoint_every = 2
    config.train.checkpoint_ocdbt = False  # see test_the_emulator_cannot_serve_ocdbt
    config.init.params_path = os.environ["F1_TEST_INIT"]  # a local path into a bucket's run
    trainer.train(config, sys.argv[1])
    print("TRAINED", steps, flush=True)
    if steps == 2:  # bit rot in the bucket between the two starts: one byte of one record
        shard = [n for n in os.listdir(data["train"]) if ".tfrecord-" in n][0]
        index = scan_tfrecord(os.path.join(data["train"], shard))
        k = int(os.environ["F1_TEST_FLIP"])
        offset = int(index.offsets[k] + index.lengths[k] // 2)
        Emulator.connect(os.environ["STORAGE_EMULATOR_HOST"]).flip_byte(
            os.environ["F1_TEST_SHARD_OBJECT"].format(shard=shard), offset
        )
        print("FLIPPED", shard, k, flush=True)
"""


@pytest.fixture
def gcs(monkeypatch):
    emulator = Emulator()
    for key, value in emulator.env.items():
        monkeypatch.setenv(key, value)
    yield emulator
    emulator.stop()


def _train(workdir: str, data_uri: str, data: dict, init: str, cwd, home) -> str:
    env = dict(os.environ, F1_ROOT=ROOT, F1_TEST_DATA=json.dumps(data), PYTHONPATH=ROOT)
    env["F1_TEST_INIT"] = init
    env["F1_TEST_FLIP"] = str(FLIPPED_RECORD)
    env["F1_TEST_SHARD_OBJECT"] = f"{DATA}/{{shard}}"
    env["HOME"] = str(home)  # where a fallback cache would land: checked empty of data below
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=1"  # one device, as tests/conftest.py
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "f1_jax_test_compile_cache"
    )
    out = subprocess.run(
        [sys.executable, "-c", RUN, workdir, data_uri],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout + out.stderr


def test_a_run_with_data_and_workdir_in_a_bucket_names_bad_data_and_resumes(
    gcs, tiny_data, tiny_init, tmp_path
):
    data_uri = gcs.upload_dir(tiny_data["train"], DATA)  # the only copy the run is given
    workdir = f"gs://{BUCKET}/runs/tiny"
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    output = _train(workdir, data_uri, tiny_data, tiny_init, tmp_path / "cwd", tmp_path / "home")

    # The run's files, in the bucket.
    files = gcs.objects("runs/tiny")
    assert "metrics.jsonl" in files and "config.json" in files
    assert "configs/config_00000000.json" in files and "configs/config_00000002.json" in files
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files)
    for step in (2, 4):
        assert any(f.startswith(f"checkpoints/{step}/state/") for f in files)
        assert any(f.startswith(f"checkpoints/{step}/data") for f in files)
    rows = [json.loads(r) for r in gcs.get("runs/tiny/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]

    # The data's caches, beside it in the bucket; nothing of it on the local disk.
    beside = gcs.objects(DATA)
    assert [f for f in beside if f.startswith("f1_dataset_summary_")]
    stores = {f.split("/")[0] for f in beside if f.startswith("f1_frame_codes_")}
    assert len(stores) == 1
    (store,) = stores
    assert {f"{store}/index.json", f"{store}/part-00000-of-00001.npy"} <= set(beside)
    assert not list((tmp_path / "cwd").rglob("*"))
    local = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert all(p.parent.parent.name == "bucket_metadata" for p in local), local  # metadata only
    assert not [p for p in local if p.suffix not in (".json",)], local

    # The flipped byte: caught by the read-time checksum when the record was next sampled, and
    # named by bucket path, shard and record.
    shard = output.split("FLIPPED ", 1)[1].split()[0]
    named = f"dataset {data_uri} shard {shard} record {FLIPPED_RECORD}"
    assert f"bad sample replaced: {named}" in output, output[-3000:]
    assert "data fails its checksum" in output


def test_the_emulator_cannot_serve_ocdbt(gcs):
    """Why the run above checkpoints without OCDBT. OCDBT updates its manifest by
    read-modify-write: it reads the manifest with its generation and writes the next one only if
    the generation is unchanged (`ifGenerationMatch`). The emulator breaks both halves: its
    downloads carry no `x-goog-generation` header (TensorStore reads an unknown generation and
    Orbax fails with "Malformed StorageGeneration" writing manifest.ocdbt), and it ignores
    preconditions. Real Cloud Storage does both; if a new emulator does too, this test fails and
    the run above should switch to the default OCDBT format."""
    kv = ts.KvStore.open({"driver": "gcs", "bucket": BUCKET, "path": "ocdbt_probe/"}).result()
    kv.write("manifest", b"one").result()
    with urllib.request.urlopen(
        f"{gcs.url}/download/storage/v1/b/{BUCKET}/o/ocdbt_probe%2Fmanifest?alt=media"
    ) as response:
        headers = {k.lower() for k in response.headers}
    assert "x-goog-generation" not in headers  # the generation is lost on every read
    kv.write("manifest", b"two", if_equal=b"").result()  # "only if absent": must fail, does not
    assert gcs.get("ocdbt_probe/manifest") == b"two"
