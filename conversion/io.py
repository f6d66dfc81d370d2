"""Reading foreign tensors one at a time and writing results atomically.

Sources expose `keys()`, `shape(key)`, `dtype(key)` and `get(key)`; safetensors files are read
through `safetensors.safe_open` (memory-mapped, one tensor materialised at a time), torch pickles
through `torch.load(mmap=True)`. The safetensors writer streams: it writes the header from the
planned shapes, then each tensor's bytes as soon as it is produced.
"""

import contextlib
import fnmatch
import glob
import json
import os
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import ml_dtypes
import numpy as np
from etils import epath
from safetensors import safe_open
from tqdm import tqdm

from f1_jax.training.checkpoints import restore_on_host

ST_DTYPES = {
    "float32": "F32",
    "bfloat16": "BF16",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "float64": "F64",
    "bool": "BOOL",
    "uint8": "U8",
}
NP_DTYPES = {
    "float32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "float64": np.float64,
    "bool": np.bool_,
    "uint8": np.uint8,
}
_FROM_ST = {v: k for k, v in ST_DTYPES.items()}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message lists every problem found."""


def describe_file(path: Path) -> str:
    """A short guess of what a file is, for error messages."""
    if path.is_dir():
        return "a directory"
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        return "a zip archive (a PyTorch .pth/.pt pickle?)"
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return "a Python pickle (a legacy PyTorch .pth?)"
    if head[:6] == b"\x93NUMPY":
        return "a NumPy .npy file"
    return f"an unrecognised file (first bytes {head[:8]!r})"


class SafetensorsSource:
    """One or several safetensors files (a sharded checkpoint) read tensor by tensor."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        files = sorted(glob.glob(str(path / "*.safetensors"))) if path.is_dir() else [str(path)]
        if not files:
            raise ConversionError(f"No *.safetensors file in directory {path}.")
        self._stack = contextlib.ExitStack()
        self._where: dict[str, object] = {}
        for file in files:
            if not os.path.exists(file):
                raise ConversionError(f"File not found: {file}.")
            try:
                handle = self._stack.enter_context(safe_open(file, framework="numpy"))
            except Exception as e:  # safetensors raises its own error types for a bad header
                raise ConversionError(
                    f"{file} is not a safetensors file ({describe_file(Path(file))}; "
                    f"safetensors said: {e})."
                ) from None
            for key in handle.keys():
                self._where[key] = handle
        self.files = files

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        return _FROM_ST.get(self._where[key].get_slice(key).get_dtype(), "unknown")

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get_tensor(key)

    def close(self) -> None:
        self._stack.close()


class DictSource:
    """In-memory arrays by name (a torch state dict, a restored Orbax tree)."""

    def __init__(self, arrays: dict[str, object]):
        self._arrays = arrays

    def keys(self) -> list[str]:
        return list(self._arrays)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._arrays[key].shape)

    def dtype(self, key: str) -> str:
        return str(self._arrays[key].dtype).removeprefix("torch.")

    def get(self, key: str) -> np.ndarray:
        value = self._arrays[key]
        if hasattr(value, "detach"):  # a torch tensor: bf16 has no NumPy dtype, go through fp32
            import torch  # deferred: torch is optional: only .pth inputs need it

            if value.dtype == torch.bfloat16:
                return value.detach().float().numpy().astype(ml_dtypes.bfloat16)
            return value.detach().numpy()
        return np.asarray(value)

    def close(self) -> None:
        pass


def torch_source(path: str | os.PathLike) -> DictSource:
    """A `torch.save`d state dict (e.g. VAR's vae_ch160v4096z32.pth), memory-mapped."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"File not found: {path}.")
    try:
        import torch  # deferred: torch is optional: only .pth inputs need it
    except ImportError:
        raise ConversionError(
            f"Reading {path.name} (a PyTorch pickle) needs torch, which is not installed: "
            "`pip install torch` (CPU is enough), or convert the file to safetensors with "
            "`safetensors.torch.save_file(torch.load(path), out)` on a machine with torch."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ConversionError(
            f"{path} could not be read as a PyTorch state dict "
            f"({describe_file(path)}; torch said: {e})."
        ) from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ConversionError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors."
        )
    return DictSource(dict(state))


def open_source(path: str | os.PathLike) -> SafetensorsSource | DictSource:
    """Safetensors (file or directory of shards) or a torch pickle, chosen by content."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"Input not found: {path}.")
    if path.is_file() and zipfile.is_zipfile(path):
        return torch_source(path)
    return SafetensorsSource(path)


# --------------------------------------------------------------------------------------------
# Writing.


def safetensors_header(plan: list[tuple[str, tuple[int, ...], str]]) -> bytes:
    """The safetensors header (length prefix + JSON, padded to 8 bytes) for tensors in order."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape, dtype in plan:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(NP_DTYPES[dtype]).itemsize
        meta[key] = {
            "dtype": ST_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    body = json.dumps(meta, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def write_safetensors_streaming(
    path: Path,
    plan: list[tuple[str, tuple[int, ...], str]],
    tensors: Iterator[tuple[str, np.ndarray]],
) -> None:
    """Writes `plan`'s tensors, produced one at a time by `tensors` in the same order."""
    with open(path, "wb") as f:
        f.write(safetensors_header(plan))
        for (key, shape, dtype), (got_key, array) in zip(plan, tensors, strict=True):
            if (
                got_key != key
                or tuple(array.shape) != tuple(shape)
                or array.dtype != NP_DTYPES[dtype]
            ):
                raise ConversionError(
                    f"Writer got {got_key} {array.shape} {array.dtype}, planned "
                    f"{key} {shape} {dtype}."
                )
            f.write(np.ascontiguousarray(array).tobytes())


# --------------------------------------------------------------------------------------------
# Local and remote paths (etils.epath: gs://, s3://, ...).

# Files that make a directory readable (an export's config.json, an import's sidecar): copied to a
# remote destination last, so a reader that opens them first never sees a partial directory.
MARKER_FILES = ("model_config.json", "config.json")
_CHUNK = 64 << 20


def is_remote(path) -> bool:
    """A URI (`gs://bucket/...`) rather than a local path."""
    return "://" in str(path)


def as_epath(path) -> epath.Path:
    """`path` as an epath.Path: URIs unchanged, local paths made absolute."""
    return epath.Path(path) if is_remote(path) else epath.Path(Path(path).expanduser().absolute())


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def copy_file(src: epath.Path, dst: epath.Path, progress: bool = False) -> int:
    """Copies one file between any two epath locations in 64 MiB chunks; returns its size."""
    total, done = src.stat().length, 0
    with (
        src.open("rb") as fin,
        dst.open("wb") as fout,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=src.name,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            done += len(chunk)
            bar.update(len(chunk))
    return done


def _files(root: epath.Path) -> list[epath.Path]:
    """Every file below `root` (recursively), sorted, marker files last."""
    found, stack = [], [root]
    while stack:
        for child in stack.pop().iterdir():
            (stack.append if child.is_dir() else found.append)(child)
    rel = lambda p: str(p)[len(str(root)) :].lstrip("/")
    return sorted(found, key=lambda p: (p.name in MARKER_FILES and p.parent == root, rel(p)))


@contextlib.contextmanager
def local_input(path, patterns: tuple[str, ...] = ("*",), progress: bool = True) -> Iterator[Path]:
    """Yields `path` itself when local; stages a remote file or directory into a local temp dir.

    safetensors' `safe_open` and torch's mmap need a local file. A remote directory is staged
    non-recursively, only the files whose names match `patterns`. The temp dir (under $TMPDIR) is
    removed when the block ends. Prints what it stages to stderr.
    """
    if not is_remote(path):
        yield Path(path)
        return
    src = epath.Path(path)
    if not src.exists():
        raise ConversionError(f"Input not found: {path}.")
    if src.is_dir():
        files = [
            f
            for f in sorted(src.iterdir(), key=str)
            if not f.is_dir() and any(fnmatch.fnmatch(f.name, p) for p in patterns)
        ]
        if not files:
            raise ConversionError(f"{path} holds no file matching {list(patterns)}.")
    else:
        files = [src]
    staging = Path(tempfile.mkdtemp(prefix="f1-conversion-stage-"))
    try:
        local = staging / (src.name or "input")
        if src.is_dir():
            local.mkdir()
        total = 0
        for f in files:
            target = local / f.name if src.is_dir() else local
            print(f"staging {f} -> {target}", file=sys.stderr, flush=True)
            total += copy_file(f, epath.Path(target), progress)
        print(f"staged {len(files)} file(s), {_mib(total)}", file=sys.stderr, flush=True)
        yield local
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_output_free(output) -> None:
    """Refuses an `output` (local or remote) that exists and is not an empty directory."""
    out = as_epath(output)
    if out.exists() and (not out.is_dir() or any(True for _ in out.iterdir())):
        raise ConversionError(f"Output {output} exists and is not empty; choose a new directory.")


def publish(local: Path, destination, progress: bool = False) -> None:
    """Copies the finished directory `local` to the remote `destination`, file by file, marker
    files (config.json, model_config.json) last. On failure, removes what it copied."""
    dest = epath.Path(destination)
    files = _files(epath.Path(local))
    print(f"uploading {len(files)} file(s) to {destination}", file=sys.stderr, flush=True)
    written: list[epath.Path] = []
    try:
        for f in files:
            target = dest / str(f)[len(str(local)) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            written.append(target)
            copy_file(f, target, progress)
    except BaseException as e:
        for target in reversed(written):
            with contextlib.suppress(Exception):
                target.unlink()
        if isinstance(e, Exception):
            raise ConversionError(
                f"Copying the result to {destination} failed ({type(e).__name__}: {e}); the "
                "files already copied were removed."
            ) from e
        raise


@contextlib.contextmanager
def atomic_output_dir(output, progress: bool = False) -> Iterator[Path]:
    """Yields a local temp dir that becomes `output` only if the block succeeds.

    Local `output`: the temp dir is beside it and renamed into place (atomic). Remote `output`
    (a URI): the temp dir is under $TMPDIR and its files are copied to `output` at the end,
    markers last (`publish`). An existing non-empty `output` is refused before any work.
    """
    check_output_free(output)
    if is_remote(output):
        tmp = Path(tempfile.mkdtemp(prefix="f1-conversion-out-"))
        try:
            yield tmp
            publish(tmp, output, progress)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield tmp
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_orbax(path) -> dict:
    """Restores a PyTree checkpoint (ours from `save_params`, openpi's params, local or remote)
    as NumPy arrays on the host, whatever device topology saved it (`restore_on_host`)."""
    path = as_epath(path)
    if not path.exists():
        raise ConversionError(f"Orbax checkpoint not found: {path}.")
    try:
        return restore_on_host(path)
    except Exception as e:
        raise ConversionError(f"{path} could not be restored as an Orbax checkpoint: {e}") from None
