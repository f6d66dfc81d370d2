"""A local Cloud Storage emulator for tests (gcp-storage-emulator, in memory, bound to 127.0.0.1;
stopped by the fixture that starts it) and the few bucket operations tests need, done through the
emulator's own HTTP API so that they do not depend on the code under test."""

import json
import os
import socket
import urllib.parse
import urllib.request

BUCKET = "f1-test-bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """A running emulator (or, from `connect`, one started by another process); `env` holds the
    variables that point gcsfs, TensorStore and epath at it."""

    def __init__(self, url: str | None = None):
        self.server = None
        if url is None:
            from gcp_storage_emulator.server import create_server  # deferred: test extra only

            port = _free_port()
            self.server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
            self.server.start()
            url = f"http://127.0.0.1:{port}"
        self.url = url
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs (epath's gs:// backend, the data reader)
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # Orbax's array writes
            "EPATH_USE_TF": "false",  # epath through gcsfs, not TensorFlow's GCS client
            "GOOGLE_CLOUD_PROJECT": "test",
            # gcsfs's default class asks a control-plane API for each bucket's layout: off.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    @classmethod
    def connect(cls, url: str) -> "Emulator":
        """The emulator another process runs at `url` (e.g. $STORAGE_EMULATOR_HOST)."""
        return cls(url)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def put(self, name: str, data: bytes) -> None:
        """Uploads one object `name` (a simple media upload)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{BUCKET}/o?{query}", data=data, method="POST"
        )
        request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request) as response:
            response.read()

    def upload_dir(self, local: str, prefix: str) -> str:
        """Uploads every file under `local` to gs://BUCKET/prefix/...; returns that URI."""
        for root, _, files in os.walk(local):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                with open(path, "rb") as f:
                    self.put(f"{prefix}/{rel}", f.read())
        return f"gs://{BUCKET}/{prefix}"

    def get(self, name: str) -> bytes:
        path = urllib.parse.quote(name, safe="")
        url = f"{self.url}/download/storage/v1/b/{BUCKET}/o/{path}?alt=media"
        with urllib.request.urlopen(url) as response:
            return response.read()

    def objects(self, prefix: str) -> list[str]:
        """Every object under gs://BUCKET/prefix/, relative to it."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": f"{prefix}/", "pageToken": token})
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?{query}") as r:
                listing = json.load(r)
            names += [i["name"].removeprefix(f"{prefix}/") for i in listing.get("items", [])]
            token = listing.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def delete(self, name: str) -> None:
        path = urllib.parse.quote(name, safe="")
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b/{BUCKET}/o/{path}", method="DELETE"
        )
        with urllib.request.urlopen(request) as response:
            response.read()

    def flip_byte(self, name: str, offset: int, mask: int = 0x40) -> None:
        """XORs one byte of an object (rewritten whole: objects are immutable)."""
        data = bytearray(self.get(name))
        data[offset] ^= mask
        self.put(name, bytes(data))
