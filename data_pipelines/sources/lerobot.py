"""LeRobot datasets: v2.0/v2.1 (one parquet + one mp4 per episode) and v3.0 (chunked files).

Layouts read (paths relative to the dataset root, which may be a local folder or a `gs://` URI
through `etils.epath`):
- `meta/info.json`: `codebase_version`, `fps`, `features` (dtype, shape; `video.fps` of video
  features), `splits` ("0:N" episode ranges), `data_path` and `video_path` templates.
- v2.x: `meta/episodes.jsonl` (episode_index, tasks, length), `meta/tasks.jsonl` (task_index,
  task), `data/chunk-XXX/episode_XXXXXX.parquet`, `videos/chunk-XXX/<key>/episode_XXXXXX.mp4`.
- v3.0: `meta/episodes/chunk-XXX/file-XXX.parquet` (one row per episode: its data file and, per
  video key, its file and `from_timestamp`/`to_timestamp` inside it), `meta/tasks.parquet` (task
  string as the index, `task_index`), `data/chunk-XXX/file-XXX.parquet` and
  `videos/<key>/chunk-XXX/file-XXX.mp4`, each holding several episodes.

One record is one episode (in `episode_index` order within the split). Parquet is read with
pyarrow (only the row groups holding the episode); the instruction is the task of the episode's
first row. Video frames are decoded with PyAV (AV1 through dav1d, H.264, anything FFmpeg reads) at
each row's timestamp (`from_timestamp + timestamp` in v3.0), never by counting frames, and only
when a sample needs them; image features (PNG bytes in the parquet) stay encoded until then.

Which features are cameras, state and action, and the gripper's convention, come from the dataset
entry of the data config (`DatasetConfig.cameras` and `DatasetConfig.lerobot`, `LeRobotOptions`).
Frame offsets and the action chunk are counted in rows, i.e. in frames at the dataset's own fps,
exactly as F1's LeRobot loader does (`delta_timestamps = offset / fps`); `frame_stride` keeps every
k-th row to bring a fast recording nearer the rate the offsets were chosen for.

Bad input is named by episode: a parquet that cannot be read is `corrupt`; a missing feature
column, a video without a frame for some rows (shorter than its parquet, or a wrong offset),
timestamps that do not advance at the dataset's fps, a video at another fps, a task index with no
task, or rows that disagree with the episode metadata make the episode `unusable`; an episode
with no rows is `zero_steps`; an empty task is counted as `empty_instruction`. A frame that cannot
be decoded at sample time is replaced like an undecodable JPEG (`sample.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import threading
from typing import Any, Iterator, Mapping, Sequence

import google_crc32c
import numpy as np
from etils import epath

from data_pipelines import schema
from data_pipelines.integrity import CorruptRecordError, SkippedRecord
from data_pipelines.sources import UnsupportedDatasetError
from f1_common.transforms import MAX_DIM

log = logging.getLogger(__name__)

KIND = "lerobot"
TRANSFORM_VERSION = "lerobot-v1"
DEFAULT_CAMERAS: Mapping[str, str | None] = {}  # derived from meta/info.json (`default_cameras`)
SUPPORTED = (
    "LeRobot datasets of codebase_version v2.0, v2.1 (one parquet and one mp4 per episode) and "
    "v3.0 (chunked data/chunk-XXX/file-XXX.parquet, several episodes per mp4)"
)
REQUIRED_FEATURES: Mapping[str, Any] = {}  # configured per dataset, checked by LeRobotReader
GRIPPER_OPEN_POSITIVE: Mapping[int, tuple[float, float]] = {}  # per dataset: LeRobotOptions
CODEBASE_VERSIONS = ("v2.0", "v2.1", "v3.0")
_NUMERIC = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
_VIDEO_HEAD_TAIL = 1 << 18  # bytes of each end of a video hashed into the content key


class FrameDecodeError(ValueError):
    """A video frame could not be decoded (counted and replaced like an undecodable image)."""


def _arrow():
    """(pyarrow, pyarrow.parquet), or an ImportError saying what to install."""
    try:
        import pyarrow  # deferred: optional dependency, needed for LeRobot datasets only
        import pyarrow.parquet  # deferred: optional dependency, needed for LeRobot datasets only
    except ImportError as e:
        raise ImportError(
            "the lerobot source reads parquet with pyarrow: pip install pyarrow "
            "(or the f1-jax[lerobot] extra)"
        ) from e
    return pyarrow, pyarrow.parquet


def _av():
    """The PyAV module, or an ImportError saying what to install."""
    try:
        import av  # deferred: optional dependency, needed for LeRobot videos only
    except ImportError as e:
        raise ImportError(
            "the lerobot source decodes videos with PyAV: pip install av (or the f1-jax[lerobot] "
            "extra)"
        ) from e
    return av


# ---------------------------------------------------------------------- configuration


def _names(value: Any, field: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"lerobot option {field!r} must name one or more features, got {value!r}")
    return names


@dataclasses.dataclass(frozen=True)
class LeRobotOptions:
    """How one LeRobot dataset maps onto F1's state, action and gripper (the dataset entry's
    `lerobot` mapping; cameras come from `DatasetConfig.cameras`).

    state / action: feature names, concatenated in this order (each a 1-D numeric feature).
    gripper_dims: action dims holding a gripper command; gripper_open / gripper_closed: the
      values meaning fully open and fully closed in this dataset (e.g. -1 and 1 for LIBERO).
      `gripper_convention="open_is_positive"` maps them to 1 open .. 0 closed.
    fps: the rate the config expects; a dataset whose info.json says otherwise is refused.
    frame_stride: keep every k-th row (frame offsets and chunks then count kept rows).
    tolerance_s: how far a row's timestamp may be from a video frame's (LeRobot's 1e-4 s).
    """

    state: tuple[str, ...] = ("observation.state",)
    action: tuple[str, ...] = ("action",)
    gripper_dims: tuple[int, ...] = ()
    gripper_open: float = 1.0
    gripper_closed: float = 0.0
    fps: float | None = None
    frame_stride: int = 1
    tolerance_s: float = 1e-4

    def __post_init__(self):
        if self.gripper_open == self.gripper_closed:
            raise ValueError("lerobot options: gripper_open and gripper_closed must differ")
        if self.frame_stride < 1:
            raise ValueError(f"lerobot options: frame_stride {self.frame_stride} < 1")
        if self.tolerance_s <= 0:
            raise ValueError(f"lerobot options: tolerance_s {self.tolerance_s} <= 0")
        if any(d < 0 for d in self.gripper_dims):
            raise ValueError(f"lerobot options: negative gripper dim in {self.gripper_dims}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> "LeRobotOptions":
        """From a plain dict / ConfigDict; unknown keys are an error."""
        if m is None:
            return cls()
        if isinstance(m, cls):
            return m
        m = dict(m.to_dict() if hasattr(m, "to_dict") else m)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(m) - known
        if unknown:
            raise ValueError(f"unknown lerobot options {sorted(unknown)}; expected {sorted(known)}")
        if "state" in m:
            m["state"] = _names(m["state"], "state")
        if "action" in m:
            m["action"] = _names(m["action"], "action")
        if "gripper_dims" in m:
            dims = m["gripper_dims"]
            m["gripper_dims"] = (int(dims),) if isinstance(dims, int) else tuple(map(int, dims))
        for k in ("gripper_open", "gripper_closed", "tolerance_s"):
            if k in m:
                m[k] = float(m[k])
        if m.get("fps") is not None:
            m["fps"] = float(m["fps"])
        if "frame_stride" in m:
            m["frame_stride"] = int(m["frame_stride"])
        return cls(**m)

    def gripper_open_positive(self) -> dict[int, tuple[float, float]]:
        """{action dim: (scale, offset)} with open_is_positive = scale * native + offset
        (gripper_open -> 1, gripper_closed -> 0)."""
        span = self.gripper_open - self.gripper_closed
        return {d: (1.0 / span, -self.gripper_closed / span) for d in self.gripper_dims}

    def key(self) -> str:
        """The options that change the standardised numbers (part of the summary cache key)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def load_mapping(value: Any, dataset: str = "") -> dict[str, Any] | None:
    """A dataset's `lerobot` entry given as a mapping, JSON text or the path of a JSON file (local
    or a URI); None or "" for none. The entry holds `LeRobotOptions` fields and optionally
    `cameras` ({camera: feature}), which `DatasetConfig` moves to its own `cameras`. A recipe's
    command line gives it as text: `--config.data.lerobot='{"gripper_dims": [6], ...}'` or
    `--config.data.lerobot=my_robot.json`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, LeRobotOptions):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        return dict(value.to_dict() if hasattr(value, "to_dict") else value)
    if not isinstance(value, str):
        raise TypeError(
            f"dataset {dataset!r}: lerobot options must be a mapping, JSON text or a JSON file's "
            f"path, got {type(value).__name__}"
        )
    text, where = value, "(JSON text)"
    if not text.lstrip().startswith("{"):
        where = repr(text.strip())
        try:
            text = epath.Path(text.strip()).read_text()
        except OSError as e:  # FileNotFoundError, IsADirectoryError, a bucket's errors
            raise ValueError(
                f"dataset {dataset!r}: cannot read the lerobot options file {where} ({e}); "
                "give a JSON file or JSON text such as "
                '\'{"state": "observation.state", "gripper_dims": [6]}\''
            ) from None
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"dataset {dataset!r}: lerobot options {where} are not JSON: {e}"
        ) from None
    if not isinstance(mapping, dict):  # the user's input: a ValueError as the rest
        raise ValueError(  # noqa: TRY004
            f"dataset {dataset!r}: lerobot options {where} are not a JSON object"
        )
    return mapping


def dataset_entry(
    value: Any, cameras: Mapping[str, str | None] | None, dataset: str = ""
) -> tuple[dict[str, Any] | None, Mapping[str, str | None] | None]:
    """(options, cameras) of a dataset entry (`DatasetConfig`): its `lerobot` value read by
    `load_mapping`, with the mapping's `cameras` moved out to the entry's own (given once)."""
    options = load_mapping(value, dataset)
    if options is None or "cameras" not in options:
        return options, cameras
    mapped = options.pop("cameras")
    if not isinstance(mapped, Mapping):  # the user's input: a ValueError as the rest
        raise ValueError(  # noqa: TRY004
            f"dataset {dataset!r}: lerobot.cameras must map camera names to features, "
            f'e.g. {{"primary": "observation.images.top"}}, got {mapped!r}'
        )
    if cameras is not None and dict(cameras) != dict(mapped):
        raise ValueError(
            f"dataset {dataset!r}: cameras given twice, {dict(cameras)} and lerobot.cameras "
            f"{dict(mapped)}"
        )
    return options, dict(mapped)


def gripper_open_positive(options: Mapping[str, Any] | None) -> dict[int, tuple[float, float]]:
    """The dataset's gripper map (sources.apply_gripper_convention) from its lerobot options."""
    return LeRobotOptions.from_mapping(options).gripper_open_positive()


# ---------------------------------------------------------------------- metadata


def _read_parquet(path: epath.Path, columns: Sequence[str] | None = None) -> Any:
    _, pq = _arrow()
    return pq.read_table(io.BytesIO(path.read_bytes()), columns=columns)


def _jsonl(path: epath.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _split_range(info: Mapping[str, Any], split: str, root: str) -> tuple[int, int]:
    splits = info.get("splits") or {"train": f"0:{info.get('total_episodes', 0)}"}
    if split not in splits:
        raise KeyError(f"split {split!r} not in {root}/meta/info.json; available: {list(splits)}")
    lo, hi = (int(x) for x in str(splits[split]).split(":"))
    return lo, hi


def default_cameras(features: Mapping[str, Any]) -> dict[str, str]:
    """Cameras when the config names none: image/video features in info.json order, the first
    whose name contains "wrist" as `wrist`, the others as `primary` then `secondary`."""
    keys = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
    out: dict[str, str] = {}
    wrist = next((k for k in keys if "wrist" in k.lower()), None)
    if wrist is not None:
        out["wrist"] = wrist
    for name, key in zip(("primary", "secondary"), [k for k in keys if k != wrist]):
        out[name] = key
    return out


@dataclasses.dataclass(frozen=True)
class _Episode:
    """Where one episode lives. video: key -> (relative path, from_timestamp)."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: str
    rows: tuple[int, int] | None  # v3.0: global [from, to) row indices; v2.x: the whole file
    video: Mapping[str, tuple[str, float]]


class LeRobotReader:
    """Random access to the episodes of one split of a LeRobot dataset (the interface of
    `reader.EpisodeReader` that the summary and the sampler use: one record per episode).

    Opening checks the layout against the configuration (`sources.UnsupportedDatasetError`,
    naming the dataset, what is missing and the supported releases). Picklable: no file is
    kept open.
    """

    def __init__(
        self,
        dataset_dir: str,
        split: str = "train",
        options: Mapping[str, Any] | LeRobotOptions | None = None,
        cameras: Mapping[str, str | None] | None = None,
        name: str = "lerobot",
    ):
        _arrow()
        self.dataset_dir = str(dataset_dir)
        self.root = epath.Path(dataset_dir)
        self.split = split
        self.options = LeRobotOptions.from_mapping(options)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise FileNotFoundError(
                f"{self.dataset_dir!r} has no meta/info.json: point the config at the LeRobot "
                "dataset's root folder (the one holding meta/, data/ and videos/)"
            )
        self.info = json.loads(info_path.read_text())
        self.version = str(self.info.get("codebase_version", "?"))
        self.tfds_name = "lerobot"
        self.file_format = "lerobot"
        self.features_info: dict[str, Any] = dict(self.info.get("features", {}))
        self.fps = float(self.info.get("fps", 0))

        def refuse(problems: list[str]) -> None:
            raise UnsupportedDatasetError(
                f"dataset {name!r} at {self.dataset_dir} (LeRobot {self.version}) cannot be read "
                f"as configured: {'; '.join(problems)}. The 'lerobot' source supports {SUPPORTED}."
            )

        if self.version not in CODEBASE_VERSIONS:
            refuse([f"codebase_version {self.version!r} is not one of {CODEBASE_VERSIONS}"])
        self.v3 = self.version.startswith("v3")
        problems = []
        if self.fps <= 0:
            problems.append(f"meta/info.json has no positive fps ({self.info.get('fps')!r})")
        if self.options.fps is not None and abs(self.options.fps - self.fps) > 1e-6:
            problems.append(
                f"meta/info.json says fps {self.fps:g}, the configuration expects "
                f"{self.options.fps:g} (frame offsets and action chunks count frames at the "
                "dataset's fps: check the recording, or fix `lerobot.fps`)"
            )
        self.cameras = dict(cameras) if cameras is not None else default_cameras(self.features_info)
        if cameras is None:
            log.info("dataset %r: cameras from meta/info.json: %s", name, self.cameras)
        widths = {}
        for group in ("state", "action"):
            width = 0
            for key in getattr(self.options, group):
                f = self.features_info.get(key)
                if f is None:
                    problems.append(f"{group} feature {key!r} is not in meta/info.json features")
                elif f.get("dtype") not in _NUMERIC or len(f.get("shape", ())) != 1:
                    problems.append(
                        f"{group} feature {key!r} is {f.get('dtype')} {f.get('shape')}, "
                        "expected a 1-D numeric feature"
                    )
                else:
                    width += int(f["shape"][0])
            widths[group] = width
            if width > MAX_DIM:
                problems.append(f"{group} is {width} wide, the model takes at most {MAX_DIM}")
        for cam, key in self.cameras.items():
            if key is None:
                continue
            f = self.features_info.get(key)
            if f is None:
                problems.append(f"camera {cam!r} feature {key!r} is not in meta/info.json features")
            elif f.get("dtype") not in ("video", "image"):
                problems.append(f"camera {cam!r} feature {key!r} is {f.get('dtype')}, not a video")
            elif f.get("dtype") == "video":
                vfps = (f.get("info") or {}).get("video.fps")
                if vfps is not None and abs(float(vfps) - self.fps) > 0.01 * self.fps:
                    problems.append(
                        f"camera {cam!r} video {key!r} is at {vfps} fps, the dataset at "
                        f"{self.fps:g} fps"
                    )
        bad_dims = [d for d in self.options.gripper_dims if d >= widths.get("action", 0)]
        if bad_dims and widths.get("action"):
            problems.append(f"gripper dims {bad_dims} outside the {widths['action']} action dims")
        if problems:
            refuse(problems)
        self.state_dim, self.action_dim = widths["state"], widths["action"]
        self.video_keys = [
            k for k in self.cameras.values() if k and self.features_info[k]["dtype"] == "video"
        ]
        self.image_keys = [
            k for k in self.cameras.values() if k and self.features_info[k]["dtype"] == "image"
        ]
        lo, hi = _split_range(self.info, split, self.dataset_dir)
        self.tasks = self._load_tasks()
        self._episodes = [e for e in self._load_episodes() if lo <= e.index < hi]
        self._episodes.sort(key=lambda e: e.index)
        names = sorted({e.data_file for e in self._episodes})
        position = {n: i for i, n in enumerate(names)}
        counts = collections.Counter(e.data_file for e in self._episodes)
        seen: collections.Counter = collections.Counter()
        self._shard = np.array([position[e.data_file] for e in self._episodes], np.int32)
        self._pos = np.zeros(len(self._episodes), np.int64)
        for i, e in enumerate(self._episodes):
            self._pos[i] = seen[e.data_file]
            seen[e.data_file] += 1
        self.shard_names = names
        self.shard_record_counts = [counts[n] for n in names]
        self.expected_shard_lengths = list(self.shard_record_counts)
        # Whole data files whose row groups hold several episodes (e.g. written by LeRobot's
        # v2.1 -> v3.0 converter), kept so the next episode of the file is not read again.
        self._tables: collections.OrderedDict[tuple[str, tuple[str, ...]], Any] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        # Whether decode() checks that every row has a video frame (the stats pass does; the
        # sampler turns it off for episodes the pass kept: `pipeline.load_summaries`).
        self.check_videos = True

    TABLE_CACHE_FILES = 2

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        state["_tables"] = collections.OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ metadata

    def _load_tasks(self) -> dict[int, str]:
        meta = self.root / "meta"
        if self.v3:
            table = _read_parquet(meta / "tasks.parquet")
            names = table.column_names
            text_col = next((c for c in ("task", "__index_level_0__") if c in names), None)
            if text_col is None or "task_index" not in names:
                raise ValueError(f"{self.dataset_dir}/meta/tasks.parquet: columns {names}")
            return {
                int(i): str(t)
                for i, t in zip(
                    table.column("task_index").to_pylist(), table.column(text_col).to_pylist()
                )
            }
        return {int(r["task_index"]): str(r["task"]) for r in _jsonl(meta / "tasks.jsonl")}

    def _load_episodes(self) -> list[_Episode]:
        meta = self.root / "meta"
        chunks = int(self.info.get("chunks_size", 1000))
        out = []
        if not self.v3:
            for r in _jsonl(meta / "episodes.jsonl"):
                e = int(r["episode_index"])
                chunk = e // chunks
                data = self.info["data_path"].format(episode_chunk=chunk, episode_index=e)
                video = {
                    k: (
                        self.info["video_path"].format(
                            episode_chunk=chunk, video_key=k, episode_index=e
                        ),
                        0.0,
                    )
                    for k in self.video_keys
                }
                out.append(
                    _Episode(e, int(r["length"]), tuple(r.get("tasks", ())), data, None, video)
                )
            return out
        files = sorted(str(p) for p in (meta / "episodes").glob("*/*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.dataset_dir}/meta/episodes holds no parquet files")
        for f in files:
            table = _read_parquet(epath.Path(f))
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            for r in table.select(keep).to_pylist():
                video = {}
                for k in self.video_keys:
                    col = f"videos/{k}/"
                    if col + "chunk_index" not in r:
                        raise ValueError(f"{f}: no video location for {k!r} (columns {sorted(r)})")
                    path = self.info["video_path"].format(
                        video_key=k,
                        chunk_index=int(r[col + "chunk_index"]),
                        file_index=int(r[col + "file_index"]),
                    )
                    video[k] = (path, float(r[col + "from_timestamp"]))
                data = self.info["data_path"].format(
                    chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"])
                )
                rows = (int(r["dataset_from_index"]), int(r["dataset_to_index"]))
                out.append(
                    _Episode(
                        int(r["episode_index"]),
                        int(r["length"]),
                        tuple(r.get("tasks") or ()),
                        data,
                        rows,
                        video,
                    )
                )
        return out

    # ------------------------------------------------------------------ EpisodeReader interface

    def __len__(self) -> int:
        return len(self._episodes)

    @property
    def num_expected_records(self) -> int:
        return len(self._episodes)

    def episode_index(self, i: int) -> int:
        """The LeRobot `episode_index` of record i."""
        return self._episodes[i].index

    def locate(self, i: int) -> tuple[str, int]:
        """(data file, position of the episode among this split's episodes in that file)."""
        return self.shard_names[int(self._shard[i])], int(self._pos[i])

    def where(self, i: int) -> str:
        e = self._episodes[i]
        return f"dataset {self.dataset_dir} episode {e.index} ({e.data_file}; dataset record {i})"

    def unreadable(self) -> list[SkippedRecord]:
        """Every listed episode has a record; unreadable files surface when it is decoded."""
        return []

    def content_fingerprint(self) -> str:
        """sha256 of what the episodes' numbers come from: the metadata files and every data
        parquet in full (CRC-32C), and, per video, its size and the CRC-32C of its first and last
        256 KiB (an mp4 keeps its sample table, the moov atom, at one end: LeRobot writes it
        first), so that the videos are not read in full at every start. A video re-encoded to
        the same size with an identical sample table at both ends would keep the key."""
        h = hashlib.sha256(f"lerobot|{self.version}|{self.split}".encode())
        meta = self.root / "meta"
        listed = ["info.json", "tasks.jsonl", "tasks.parquet", "episodes.jsonl"]
        files = [meta / n for n in listed if (meta / n).exists()]
        files += sorted(meta.glob("episodes/*/*.parquet"), key=str)
        for path in files:
            rel = str(path)[len(str(self.root)) :]
            h.update(f"|{rel}:{google_crc32c.value(path.read_bytes()):08x}".encode())
        for name in self.shard_names:
            path = self.root / name
            crc = google_crc32c.value(path.read_bytes()) if path.exists() else -1
            h.update(f"|{name}:{crc}".encode())
        videos = sorted({v[0] for e in self._episodes for v in e.video.values()})
        for name in videos:
            path = self.root / name
            if not path.exists():
                h.update(f"|{name}:missing".encode())
                continue
            with path.open("rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(0)
                head = f.read(_VIDEO_HEAD_TAIL)
                f.seek(max(size - _VIDEO_HEAD_TAIL, 0))
                tail = f.read(_VIDEO_HEAD_TAIL)
            h.update(
                f"|{name}:{size}:{google_crc32c.value(head):08x}:"
                f"{google_crc32c.value(tail):08x}".encode()
            )
        h.update(self.options.key().encode())
        h.update(json.dumps(self.cameras, sort_keys=True).encode())
        return h.hexdigest()

    def _error(self, i: int, message: str) -> CorruptRecordError:
        shard, k = self.locate(i)
        return CorruptRecordError(
            f"{self.where(i)}: {message}", self.dataset_dir, shard, k, i, message
        )

    def _rows(self, i: int, columns: list[str]) -> Any:
        """The episode's rows, a pyarrow Table. Only the row groups that can hold it are read
        (LeRobot writes one per episode); a file whose row groups hold several episodes is read
        whole once and kept for its next episodes (`TABLE_CACHE_FILES` files)."""
        pa, _ = _arrow()
        e = self._episodes[i]
        key = (e.data_file, tuple(columns))
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
        if table is None:
            table = self._read_rows(i, columns, key)
        if table is None:
            return pa.table({c: [] for c in columns})
        if self.v3:
            mask = np.asarray(table.column("episode_index").to_numpy()) == e.index
            table = table.filter(pa.array(mask))
        return table

    def _read_rows(self, i: int, columns: list[str], key: tuple) -> Any:
        _, pq = _arrow()
        e = self._episodes[i]
        try:
            with (self.root / e.data_file).open("rb") as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                missing = [c for c in columns if c not in names]
                if missing:
                    raise schema.SchemaError(
                        f"episode {e.index}: feature(s) {missing} missing from {e.data_file} "
                        f"(columns: {names})"
                    )
                groups = self._row_groups(pf, e)
                held = sum(pf.metadata.row_group(g).num_rows for g in groups)
                shared = self.v3 and held > e.length
                if shared:  # the groups hold other episodes too: read the file once
                    groups = list(range(pf.num_row_groups))
                table = pf.read_row_groups(groups, columns=columns) if groups else None
        except schema.SchemaError:
            raise
        except Exception as err:  # missing file, truncated or garbled parquet
            raise self._error(
                i, f"episode {e.index}: cannot read {e.data_file} ({type(err).__name__}: {err})"
            ) from err
        if shared and table is not None:
            with self._lock:
                self._tables[key] = table
                while len(self._tables) > self.TABLE_CACHE_FILES:
                    self._tables.popitem(last=False)
        return table

    def _row_groups(self, pf: Any, e: _Episode) -> list[int]:
        if not self.v3:
            return list(range(pf.num_row_groups))
        col = pf.schema_arrow.get_field_index("episode_index")
        groups = []
        for g in range(pf.num_row_groups):
            stats = pf.metadata.row_group(g).column(col).statistics
            if stats is None or not stats.has_min_max or stats.min <= e.index <= stats.max:
                groups.append(g)
        return groups

    def decode(self, i: int) -> dict[str, Any]:
        """Episode `i` as {"episode_index", "state" [T, Ds], "action" [T, Da], "timestamp" [T],
        "frame_index" [T], "language", "images" {feature: object [T] of PNG bytes}, "videos"
        {feature: (path, absolute frame times [T])}, "options", "fps", "where"}.

        Raises CorruptRecordError when the parquet cannot be read, schema.EmptyEpisodeError for an
        episode without rows and schema.SchemaError (naming the episode) for every mismatch that
        makes it unusable (missing feature, short video, wrong fps, unknown task).
        """
        if not 0 <= i < len(self._episodes):
            raise IndexError(
                f"record {i} out of range [0, {len(self._episodes)}) of {self.dataset_dir}"
            )
        e = self._episodes[i]
        opts = self.options
        columns = list(
            dict.fromkeys(
                [*opts.state, *opts.action, *self.image_keys]
                + ["timestamp", "frame_index", "episode_index", "task_index"]
            )
        )
        pa, _ = _arrow()
        table = self._rows(i, columns)
        n = table.num_rows
        where = f"episode {e.index} ({e.data_file})"
        if n == 0:
            raise schema.EmptyEpisodeError(f"{self.where(i)}: episode has no rows")
        if n != e.length:
            raise schema.SchemaError(
                f"{where}: the parquet holds {n} rows, the episode metadata says {e.length}"
            )
        frame_index = table.column("frame_index").to_numpy().astype(np.int64)
        order = np.argsort(frame_index, kind="stable")
        if not np.array_equal(frame_index[order], np.arange(n)):
            raise schema.SchemaError(f"{where}: frame_index is not 0..{n - 1}")
        table = table.take(pa.array(order))
        ts = table.column("timestamp").to_numpy().astype(np.float64)
        # Timestamps are float32: late in a long episode their own rounding can exceed 1e-4 s.
        tol = max(opts.tolerance_s, 4.0 * float(np.spacing(np.float32(np.abs(ts).max()))))
        if n > 1:
            step = np.diff(ts)
            worst = int(np.argmax(np.abs(step - 1.0 / self.fps)))
            if abs(step[worst] - 1.0 / self.fps) > tol:
                raise schema.SchemaError(
                    f"{where}: wrong fps: timestamps {ts[worst]:.4f} -> {ts[worst + 1]:.4f} s at "
                    f"frame {worst} (a step of {step[worst]:.4f} s), meta/info.json fps "
                    f"{self.fps:g} means {1.0 / self.fps:.4f} s"
                )
        state = self._numeric(table, opts.state, where)
        action = self._numeric(table, opts.action, where)
        task_index = int(table.column("task_index")[0].as_py())
        if task_index not in self.tasks:
            raise schema.SchemaError(
                f"{where}: task_index {task_index} is not in the dataset's tasks "
                f"({len(self.tasks)} tasks)"
            )
        images = {}
        for k in self.image_keys:
            cells = table.column(k).to_pylist()
            frames = np.empty(n, object)
            for t, cell in enumerate(cells):
                data = cell.get("bytes") if isinstance(cell, dict) else cell
                if not data:
                    raise schema.SchemaError(f"{where}: image {k!r} has no bytes at frame {t}")
                frames[t] = data
            images[k] = frames
        videos = {}
        for k in self.video_keys:
            rel, start = e.video[k]
            times = start + ts
            if self.check_videos:
                self._check_video(rel, times, k, where, tol)
            videos[k] = (str(self.root / rel), times)
        return {
            "episode_index": e.index,
            "state": state,
            "action": action,
            "timestamp": ts,
            "frame_index": np.arange(n),
            "language": self.tasks[task_index],
            "images": images,
            "videos": videos,
            "cameras": self.cameras,
            "options": opts,
            "fps": self.fps,
            "tolerance_s": tol,
            "where": self.where(i),
        }

    def _numeric(self, table: Any, keys: Sequence[str], where: str) -> np.ndarray:
        """float32 [T, sum of widths]: the features `keys` of the pyarrow `table`, side by side."""
        pa, _ = _arrow()
        parts = []
        for k in keys:
            col = table.column(k).combine_chunks()
            if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
                flat = col.flatten().to_numpy(zero_copy_only=False)
                width = int(self.features_info[k]["shape"][0])
                if len(flat) != width * len(col):
                    raise schema.SchemaError(
                        f"{where}: feature {k!r} rows are not all {width} wide"
                    )
                parts.append(flat.reshape(len(col), width))
            else:
                parts.append(col.to_numpy(zero_copy_only=False).reshape(len(col), 1))
        out = np.concatenate(parts, axis=1).astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise schema.SchemaError(f"{where}: {list(keys)} hold NaN or infinite values")
        return out

    def _check_video(
        self, rel: str, times: np.ndarray, key: str, where: str, tolerance: float
    ) -> None:
        """Every row's timestamp has a frame in the video (packet headers only, no decoding)."""
        path = str(self.root / rel)
        try:
            frame_times, rate = video_frame_times(path, times[0], times[-1], tolerance)
        except schema.SchemaError:
            raise
        except Exception as err:
            raise schema.SchemaError(
                f"{where}: video {key!r} ({rel}) cannot be read ({type(err).__name__}: {err})"
            ) from err
        # The rows' own timestamps are checked frame by frame below; the stream's nominal rate
        # only has to agree to 1 % (containers round it, e.g. 30000/1001).
        if rate is not None and abs(rate - self.fps) > 0.01 * self.fps:
            raise schema.SchemaError(
                f"{where}: wrong fps: video {key!r} ({rel}) runs at {rate:g} fps, meta/info.json "
                f"says {self.fps:g}"
            )
        missing = _unmatched(frame_times, times, tolerance)
        if len(missing):
            last = f"{frame_times[-1]:.4f} s" if len(frame_times) else "no frame"
            raise schema.SchemaError(
                f"{where}: video {key!r} ({rel}) has no frame for {len(missing)} of {len(times)} "
                f"rows (first at {times[missing[0]]:.4f} s; the episode's frames in the video end "
                f"at {last}): the video is shorter than the parquet or its timestamps are off"
            )


def _unmatched(frame_times: np.ndarray, times: np.ndarray, tolerance: float) -> np.ndarray:
    """Indices of `times` [T] with no frame time (sorted [N]) within `tolerance`."""
    n = len(frame_times)
    if n == 0:
        return np.arange(len(times))
    j = np.searchsorted(frame_times, times)
    before, after = frame_times[np.clip(j - 1, 0, n - 1)], frame_times[np.clip(j, 0, n - 1)]
    near = np.minimum(np.abs(before - times), np.abs(after - times))
    return np.flatnonzero(near > tolerance)


def _open_video(path: str):
    av = _av()
    if "://" in path:  # a bucket: PyAV reads any seekable file object
        return av.open(epath.Path(path).open("rb"))
    return av.open(path)


def video_frame_times(
    path: str, start: float, end: float, tolerance: float
) -> tuple[np.ndarray, float | None]:
    """(sorted presentation times in seconds of the video's frames within [start, end] (+-
    tolerance), the stream's average frame rate) from the packet headers, without decoding."""
    with _open_video(path) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        container.seek(max(int((start - 1.0) / tb), 0), stream=stream, backward=True)
        times = []
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            t = packet.pts * tb
            if t > end + 1.0:  # packets come in decode order: look a little past the end
                break
            if start - tolerance <= t <= end + tolerance:
                times.append(t)
        rate = float(stream.average_rate) if stream.average_rate else None
    return np.unique(np.asarray(times, np.float64)), rate


# ---------------------------------------------------------------------- lazy video frames


class EpisodeVideo:
    """One camera of one episode: frames decoded from the video at the rows' timestamps, on
    demand, with a small cache. Consecutive requests continue decoding where the last one
    stopped; a request behind it (or far ahead) seeks to the keyframe before it. Frames passed
    on the way are kept as decoded (YUV) and turned into RGB only when asked for."""

    CACHE_FRAMES = 32

    def __init__(self, path: str, times: np.ndarray, tolerance: float, where: str, fps: float):
        self.path, self.times, self.tolerance, self.where = path, times, tolerance, where
        self.fps = fps
        self._lock = threading.Lock()
        # row -> av.VideoFrame (decoded, not yet converted) or uint8 [H, W, 3]
        self._cache: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._container = None
        self._frames: Iterator[Any] | None = None
        self._last = -np.inf  # time of the last decoded frame

    def __len__(self) -> int:
        return len(self.times)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._last = None, None, -np.inf

    def frame(self, k: int) -> np.ndarray:
        """uint8 [H, W, 3]: the frame shown at row k's timestamp."""
        with self._lock:
            try:
                hit = self._cache.get(k)
                if hit is None:
                    hit = self._decode(k)
                if not isinstance(hit, np.ndarray):
                    hit = hit.to_ndarray(format="rgb24")
                self._cache[k] = hit
                self._cache.move_to_end(k)
                return hit
            except FrameDecodeError:
                self.close()
                raise
            except Exception as err:  # FFmpeg errors: corrupt packets, unreadable file
                self.close()
                raise FrameDecodeError(
                    f"{self.where}: cannot decode the frame at {self.times[k]:.4f} s of "
                    f"{self.path} ({type(err).__name__}: {err})"
                ) from err

    def _decode(self, k: int) -> Any:
        """The av.VideoFrame of row k (decoding forward, seeking first when needed)."""
        target = float(self.times[k])
        window = self.CACHE_FRAMES / self.fps
        if self._frames is None or not (self._last < target <= self._last + window):
            if self._container is None:
                self._container = _open_video(self.path)
            stream = self._container.streams.video[0]
            self._container.seek(
                max(int(target / float(stream.time_base)), 0),
                stream=stream,
                backward=True,
                any_frame=False,
            )
            self._frames = self._container.decode(stream)
        for frame in self._frames:
            if frame.pts is None:
                continue
            t = float(frame.time)
            self._last = t
            if t < target - window:
                continue
            j = int(np.clip(np.searchsorted(self.times, t), 1, len(self.times) - 1))
            j = j - 1 if abs(self.times[j - 1] - t) < abs(self.times[j] - t) else j
            if len(self.times) == 1:
                j = 0
            if abs(self.times[j] - t) <= self.tolerance and j not in self._cache:
                self._cache[j] = frame
                self._cache.move_to_end(j)
                while len(self._cache) > self.CACHE_FRAMES:
                    self._cache.popitem(last=False)
            if t >= target - self.tolerance:
                break
        hit = self._cache.get(k)
        if hit is None:
            raise FrameDecodeError(
                f"{self.where}: no frame at {target:.4f} s in {self.path} (decoding stopped at "
                f"{self._last:.4f} s)"
            )
        return hit


class VideoFrame:
    """One row's frame of an EpisodeVideo; `decode()` gives uint8 [H, W, 3]."""

    __slots__ = ("k", "video")

    def __init__(self, video: EpisodeVideo, k: int):
        self.video, self.k = video, k

    def decode(self) -> np.ndarray:
        return self.video.frame(self.k)


def _video_frames(video: EpisodeVideo, rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), object)
    out[:] = [VideoFrame(video, int(k)) for k in rows]
    return out


# ---------------------------------------------------------------------- standardisation


def standardize(
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None = None,
) -> schema.StdEpisode:
    """A decoded LeRobot episode (`LeRobotReader.decode`) -> StdEpisode: state and action in the
    dataset's units (features concatenated as configured), every `frame_stride`-th row, images as
    PNG bytes or lazily decoded video frames."""
    opts: LeRobotOptions = raw["options"]
    rows = np.arange(0, len(raw["state"]), opts.frame_stride)
    images: dict[str, np.ndarray] = {}
    for cam, key in (raw["cameras"] if cameras is None else cameras).items():
        if key is None:
            continue
        if key in raw["images"]:
            images[cam] = raw["images"][key][rows]
        elif key in raw["videos"]:
            path, times = raw["videos"][key]
            video = EpisodeVideo(path, times, raw["tolerance_s"], raw["where"], raw["fps"])
            images[cam] = _video_frames(video, rows)
        else:
            raise schema.SchemaError(
                f"episode {raw['episode_index']}: camera {cam!r} maps to {key!r}, which the reader "
                f"did not load (configured cameras: {raw['cameras']})"
            )
    return schema.StdEpisode(
        dataset_name=dataset_name,
        episode_id=episode_id,
        images=images,
        state=raw["state"][rows],
        action=raw["action"][rows],
        language=raw["language"],
        sample_range=(0, len(rows)),
    )
