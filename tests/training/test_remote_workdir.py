"""A run whose workdir is a `gs://` URI, against a local Cloud Storage emulator
(gcp-storage-emulator, loopback only): every file the run writes reaches the bucket with its
scheme intact, nothing lands on the local disk, and the run resumes from the bucket."""

import json
import os
import socket
import subprocess
import sys

import pytest

gcp_storage_emulator = pytest.importorskip(
    "gcp_storage_emulator.server", reason="the test extra installs gcp-storage-emulator"
)
gcsfs = pytest.importorskip("gcsfs", reason="epath reads gs:// through gcsfs here (the test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "f1-test-bucket"

RUN = """
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["F1_ROOT"], "tests", "training"))
from train_fixtures import tiny_config
from f1_jax.training import trainer

data = json.loads(os.environ["F1_TEST_DATA"])
config = tiny_config(data, steps=int(sys.argv[2]), mesh=(1, 1, 1))
config.train.checkpoint_every = 2
config.train.checkpoint_ocdbt = False  # the emulator garbles OCDBT's conditional writes
trainer.train(config, sys.argv[1])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs(monkeypatch):
    port = _free_port()
    server = gcp_storage_emulator.create_server(
        "127.0.0.1", port, in_memory=True, default_bucket=BUCKET
    )
    server.start()
    env = {
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",  # gcsfs (epath's gs:// backend)
        "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}",  # Orbax's array writes
        "EPATH_USE_TF": "false",  # epath through gcsfs, not TensorFlow's GCS client
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    server.stop()


def _train(workdir: str, steps: int, data: dict, cwd) -> None:
    env = dict(os.environ, F1_ROOT=ROOT, F1_TEST_DATA=json.dumps(data), PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", RUN, workdir, str(steps)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]


def _bucket(gcs):
    """The emulator's bucket seen through gcsfs directly (this process's epath already chose
    TensorFlow's GCS client, which cannot be pointed at an emulator)."""
    return gcsfs.GCSFileSystem(endpoint_url=gcs["STORAGE_EMULATOR_HOST"], token="anon")


def _objects(gcs, prefix: str) -> list[str]:
    """Every object under gs://BUCKET/prefix, relative to it."""
    root = f"{BUCKET}/{prefix}/"
    _bucket(gcs).invalidate_cache()
    return sorted(p.removeprefix(root) for p in _bucket(gcs).find(root))


def test_a_run_in_a_bucket_writes_everything_there_and_resumes(gcs, tiny_data, tmp_path):
    workdir = f"gs://{BUCKET}/runs/tiny"
    _train(workdir, 2, tiny_data, tmp_path)
    files = _objects(gcs, "runs/tiny")
    assert "metrics.jsonl" in files and "config.json" in files
    assert "configs/config_00000000.json" in files
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files)
    assert any(f.startswith("checkpoints/2/state/") for f in files)
    assert any(f.startswith("checkpoints/2/data") for f in files)
    assert not [p for p in tmp_path.rglob("*") if "gs:" in str(p) or "runs" in p.parts]

    _train(workdir, 4, tiny_data, tmp_path)  # resumes from step 2 in the bucket
    files = _objects(gcs, "runs/tiny")
    assert any(f.startswith("checkpoints/4/state/") for f in files)
    assert "configs/config_00000002.json" in files
    text = _bucket(gcs).cat(f"{BUCKET}/runs/tiny/metrics.jsonl").decode()
    rows = [json.loads(r) for r in text.splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
