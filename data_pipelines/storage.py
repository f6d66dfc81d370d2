"""Local paths and `gs://` URIs alike: the few file operations the data pipeline needs.

A local path uses the OS directly (`os.pread` on a cached descriptor), as before buckets were
supported, so local disks keep their speed. A `gs://` URI goes through gcsfs: every read of a
record is one ranged GET (`Range: bytes=a-b`) of exactly the bytes it needs, never a copy of the
shard; listings give names and sizes in one request per directory; a JSON or `.npy` file is one
object, written in one upload (Cloud Storage makes an object visible only once it is complete, so
a reader never sees half of one). gcsfs reads `STORAGE_EMULATOR_HOST` (a local emulator, as the
tests use) and the machine's Google credentials otherwise.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import shutil
import threading
import uuid

log = logging.getLogger(__name__)

_SCHEMES = ("gs://",)
_fs_lock = threading.Lock()
_fs_by_process: dict[tuple[int, str | None], object] = {}


def is_remote(path: str) -> bool:
    """True for a bucket URI (`gs://bucket/...`)."""
    return str(path).startswith(_SCHEMES)


def _check_scheme(path: str) -> None:
    if "://" in str(path) and not is_remote(path):
        raise ValueError(f"{path!r}: only local paths and gs:// URIs are supported")


def filesystem():
    """This process's gcsfs filesystem (one per process: grain worker processes make their own,
    since an event loop does not survive a fork)."""
    key = (os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"))
    with _fs_lock:
        fs = _fs_by_process.get(key)
        if fs is None:
            try:
                from gcsfs.core import GCSFileSystem  # deferred: only gs:// needs it (gcs extra)
            except ImportError as e:
                raise ImportError(
                    "reading gs:// paths needs gcsfs: pip install -e '.[gcs]' (or pip install gcsfs)"
                ) from e
            # The core class: gcsfs's default subclass asks a control-plane API for the bucket
            # type on every call it cannot cache (all of them against an emulator). No listings
            # cache: other hosts add files (statistics, frame-code parts) while this one runs.
            fs = _fs_by_process[key] = GCSFileSystem(
                skip_instance_cache=True, use_listings_cache=False
            )
        return fs


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def _key(path: str) -> str:
    """gcsfs's name of a URI: `bucket/object`."""
    return path[len("gs://") :].rstrip("/")


def exists(path: str) -> bool:
    _check_scheme(path)
    return filesystem().exists(_key(path)) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    _check_scheme(path)
    return filesystem().isdir(_key(path)) if is_remote(path) else os.path.isdir(path)


def list_sizes(directory: str) -> dict[str, int]:
    """{file name: size in bytes} of the files directly in `directory` (one listing request for
    a bucket; sub-directories are left out)."""
    _check_scheme(directory)
    if not is_remote(directory):
        out = {}
        for entry in os.scandir(directory):
            if entry.is_file():
                out[entry.name] = entry.stat().st_size
        return out
    entries = filesystem().ls(_key(directory), detail=True)
    return {
        posixpath.basename(e["name"].rstrip("/")): int(e["size"])
        for e in entries
        if e.get("type") == "file"
    }


def getsize(path: str) -> int:
    return filesystem().size(_key(path)) if is_remote(path) else os.path.getsize(path)


def read_bytes(path: str) -> bytes:
    _check_scheme(path)
    if is_remote(path):
        return filesystem().cat_file(_key(path))
    with open(path, "rb") as f:
        return f.read()


def read_range(path: str, offset: int, length: int) -> bytes:
    """`length` bytes of `path` from `offset` (fewer at the end of the file): one ranged GET."""
    if length <= 0:
        return b""
    return filesystem().cat_file(_key(path), start=offset, end=offset + length)


def write_bytes(path: str, data: bytes) -> None:
    """Writes `path` whole and atomically: a local file through a temporary file and a rename,
    an object in one upload."""
    _check_scheme(path)
    if is_remote(path):
        filesystem().pipe_file(_key(path), data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def upload(local: str, path: str) -> None:
    """Copies local file `local` to `path` (streamed into one object for a bucket)."""
    if is_remote(path):
        filesystem().put_file(local, _key(path))
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        shutil.copyfile(local, path)


def remove(path: str) -> None:
    if is_remote(path):
        filesystem().rm_file(_key(path))
    else:
        os.remove(path)


def makedirs(path: str) -> None:
    """A local directory; nothing for a bucket (its "directories" are name prefixes)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


_writable: dict[str, bool] = {}


def writable(directory: str) -> bool:
    """Whether files can be written in `directory`. A bucket is asked once per process by writing
    and deleting a small probe object (public datasets, e.g. Open X-Embodiment's buckets, are
    read-only)."""
    if not is_remote(directory):
        return os.access(directory, os.W_OK)
    if directory not in _writable:
        probe = join(directory, f".f1_write_probe_{uuid.uuid4().hex}")
        try:
            write_bytes(probe, b"")
            remove(probe)
            _writable[directory] = True
        except Exception as e:  # gcsfs: HttpError (403), OSError, PermissionError
            log.info("%s is not writable (%s); caches go elsewhere", directory, e)
            _writable[directory] = False
    return _writable[directory]


def local_metadata_copy(directory: str, names: list[str]) -> str:
    """A local folder holding copies of the small files `names` of bucket folder `directory`
    (a TFDS dataset's dataset_info.json, features.json, ...), for readers that only take local
    paths. Kept in ~/.cache/f1_jax/bucket_metadata/, named by the files' content, so a changed
    dataset gets a new copy; written through a temporary folder and a rename."""
    contents = {name: read_bytes(join(directory, name)) for name in sorted(names)}
    h = hashlib.sha256(directory.encode())
    for name, data in contents.items():
        h.update(f"|{name}|{len(data)}|".encode())
        h.update(data)
    root = os.path.join(os.path.expanduser("~/.cache/f1_jax"), "bucket_metadata")
    local = os.path.join(root, h.hexdigest()[:24])
    if not os.path.isdir(local):
        tmp = f"{local}.tmp{os.getpid()}.{threading.get_ident()}"
        os.makedirs(tmp, exist_ok=True)
        for name, data in contents.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        try:
            os.rename(tmp, local)
        except OSError:  # another process made the same copy first
            for name in contents:
                os.remove(os.path.join(tmp, name))
            os.rmdir(tmp)
    return local


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over an object, for sequential scans that hop (indexing a
    TFRecord shard: a header, then a jump past the record). Each read past the buffered window
    is one ranged GET of at least `window` bytes, so records smaller than the window cost no
    extra request and a large record costs one request, never its bytes."""

    def __init__(self, path: str, size: int | None = None, window: int = 1 << 16):
        super().__init__()
        self.path = path
        self.size = getsize(path) if size is None else size
        self.window = window
        self._pos = 0
        self._buf, self._buf_start = b"", 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        start, end = self._pos, self._pos + n
        lo, hi = self._buf_start, self._buf_start + len(self._buf)
        if not (lo <= start and end <= hi):
            self._buf = read_range(self.path, start, max(n, self.window))
            self._buf_start = lo = start
        self._pos = end
        return self._buf[start - lo : end - lo]


def open_ranged(path: str, size: int | None = None):
    """A seekable binary file: the local file itself, or a RangedFile over the object."""
    _check_scheme(path)
    return RangedFile(path, size) if is_remote(path) else open(path, "rb")
