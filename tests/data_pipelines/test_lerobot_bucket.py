"""A LeRobot dataset read from a `gs://` bucket (a local Cloud Storage emulator, loopback only)
gives what the same dataset gives from the local disk: the content key, every state and action,
every video frame, and the statistics."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

gcp_storage_emulator = pytest.importorskip(
    "gcp_storage_emulator.server", reason="the test extra installs gcp-storage-emulator"
)
pytest.importorskip("gcsfs", reason="epath reads gs:// through gcsfs here (the test extra)")
pytest.importorskip("av", reason="the lerobot source decodes videos with PyAV (the test extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "f1-lerobot-bucket"

# In a fresh process: gcsfs reads its settings when it is imported.
RUN = """
import sys
import gcsfs
import numpy as np
from data_pipelines import schema
from data_pipelines.config import DatasetConfig
from data_pipelines.sources import open_reader, standardize_record
from data_pipelines.summary import load_or_compute

local, bucket, stats = sys.argv[1:4]
gcsfs.GCSFileSystem(token="anon").put(local, bucket[len("gs://"):], recursive=True)
cams = {"primary": "observation.images.top", "secondary": "observation.images.side"}
a_ds, b_ds = (DatasetConfig("d", "lerobot", p, cameras=cams) for p in (local, bucket))
a, b = open_reader(a_ds), open_reader(b_ds)
assert a.content_fingerprint() == b.content_fingerprint()
for i in range(len(a)):
    ea = standardize_record("lerobot", a.decode(i), "d", i, cams)
    eb = standardize_record("lerobot", b.decode(i), "d", i, cams)
    np.testing.assert_array_equal(ea.state, eb.state)
    np.testing.assert_array_equal(ea.action, eb.action)
    assert ea.language == eb.language
    for cam in cams:
        for t in range(ea.length):
            np.testing.assert_array_equal(
                schema.decode_frame(ea.images[cam][t]), schema.decode_frame(eb.images[cam][t])
            )
sa = load_or_compute(a, a_ds, stats + "/a", progress=False)
sb = load_or_compute(b, b_ds, stats + "/b", progress=False)
assert sa.key == sb.key and sa.state_stats == sb.state_stats and sb.counts()["episodes_kept"] == 3
print("BUCKET OK")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bucket_reads_like_the_local_disk(lerobot_v3_dir, tmp_path):
    port = _free_port()
    server = gcp_storage_emulator.create_server(
        "127.0.0.1", port, in_memory=True, default_bucket=BUCKET
    )
    server.start()
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",  # gcsfs (epath's gs:// backend)
        EPATH_USE_TF="false",  # epath through gcsfs, not TensorFlow's GCS client
        GOOGLE_CLOUD_PROJECT="test",
        # gcsfs's experimental bucket-type probe speaks gRPC, which the emulator does not.
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", RUN, lerobot_v3_dir, f"gs://{BUCKET}/v3", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.stop()
    assert "BUCKET OK" in out.stdout, out.stderr[-4000:]
