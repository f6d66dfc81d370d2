"""A run whose workdir is a `gs://` URI, against a local Cloud Storage emulator
(gcp-storage-emulator, loopback only): every file the run writes reaches the bucket with its
scheme intact, nothing lands on the local disk, and the run resumes from the bucket."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

import pytest

gcp_storage_emulator = pytest.importorskip(
    "gcp_storage_emulator.server", reason="the test extra installs gcp-storage-emulator"
)
pytest.importorskip("gcsfs", reason="epath reads gs:// through gcsfs here (the test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "f1-test-bucket"

RUN = """
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["F1_ROOT"], "tests", "training"))
from train_fixtures import tiny_config
from f1_jax.training import trainer

data = json.loads(os.environ["F1_TEST_DATA"])
for steps in (2, 4):  # a run, then the same command with more steps: it resumes from the bucket
    config = tiny_config(data, steps=steps, mesh=(1, 1, 1))
    config.train.checkpoint_every = 2
    config.train.checkpoint_ocdbt = False  # the emulator garbles OCDBT's conditional writes
    config.init.params_path = os.environ["F1_TEST_INIT"]  # a local path into a bucket's run
    trainer.train(config, sys.argv[1])
    print("TRAINED", steps, flush=True)
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


def _train(workdir: str, data: dict, init: str, cwd) -> None:
    env = dict(os.environ, F1_ROOT=ROOT, F1_TEST_DATA=json.dumps(data), PYTHONPATH=ROOT)
    env["F1_TEST_INIT"] = init
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=1"  # one device, as tests/conftest.py
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "f1_jax_test_compile_cache"
    )
    out = subprocess.run(
        [sys.executable, "-c", RUN, workdir],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]


def _objects(gcs, prefix: str) -> list[str]:
    """Every object under gs://BUCKET/prefix, relative to it, from the emulator's JSON API."""
    names, token = [], ""
    while True:
        query = urllib.parse.urlencode({"prefix": f"{prefix}/", "pageToken": token})
        url = f"{gcs['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o?{query}"
        with urllib.request.urlopen(url) as response:
            listing = json.load(response)
        names += [item["name"].removeprefix(f"{prefix}/") for item in listing.get("items", [])]
        token = listing.get("nextPageToken", "")
        if not token:
            return sorted(names)


def _read(gcs, name: str) -> str:
    path = urllib.parse.quote(name, safe="")
    url = f"{gcs['STORAGE_EMULATOR_HOST']}/download/storage/v1/b/{BUCKET}/o/{path}?alt=media"
    with urllib.request.urlopen(url) as response:
        return response.read().decode()


def test_a_run_in_a_bucket_writes_everything_there_and_resumes(gcs, tiny_data, tiny_init, tmp_path):
    workdir = f"gs://{BUCKET}/runs/tiny"
    _train(workdir, tiny_data, tiny_init, tmp_path)
    files = _objects(gcs, "runs/tiny")
    assert "metrics.jsonl" in files and "config.json" in files
    assert "configs/config_00000000.json" in files and "configs/config_00000002.json" in files
    assert any(f.startswith("tensorboard/events.out.tfevents.") for f in files)
    for step in (2, 4):
        assert any(f.startswith(f"checkpoints/{step}/state/") for f in files)
        assert any(f.startswith(f"checkpoints/{step}/data") for f in files)
    assert not [p for p in tmp_path.rglob("*") if "gs:" in str(p) or "runs" in p.parts]
    rows = [json.loads(r) for r in _read(gcs, "runs/tiny/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
