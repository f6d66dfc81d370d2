"""AgiBot-World (Alpha/Beta raw release: h5 proprioception + mp4 videos at 30 Hz).

The raw release is not RLDS. `convert` writes it once as an RLDS-like TFDS dataset of *segment
records*: each ~1300-frame episode is cut into segments of `segment_len` sampleable steps, each
record also carrying `context_before` / `context_after` neighbouring frames so history windows and
action chunks only clamp at true episode bounds. Random access then re-parses one short record
per sample instead of a whole episode.

Raw layout read by the converter (the AgiBot-World dataset card), unpacked or as the release's
.tar archives (`sources.agibot_tar`):
  task_info/task_<task>.json               [{episode_id, task_name, ...}, ...]
  observations/<task>/<episode>/videos/{head,hand_left,hand_right}_color.mp4
  proprio_stats/<task>/<episode>/proprio_stats.h5
      state/joint/position [N,14] rad, state/effector/position [N,2] gripper opening in mm,
      action/joint/position [N,14] rad, action/effector/position [N,2] gripper closedness
      0 (open) .. 1 (closed), action/*/index [M] the frames at which the controller actually
      sent a command (M <= N). Position arrays have one row per frame whatever M is; only when a
      position array itself is shorter than N (some early files) are its rows taken to belong to
      the `index` frames, and frames between commands hold the last command.

Record steps: observation/{head,hand_left,hand_right} JPEG (short side resized to image_size),
observation/state f32[16], action f32[16], language_instruction. 16 dims =
[left arm 7 joints, left gripper, right arm 7 joints, right gripper], in the release's units (state
gripper mm opening, action gripper closedness 0..1). The instruction is the
`task_name` text before "|". Actions are shifted by +1 frame (action[t] = command of frame t+1,
the last frame repeats), as F1-VLA does for this robot's action timestamps.

Video decoding uses PyAV (`av`) if installed, else an `ffmpeg` executable on PATH, else a folder
`<cam>_color/` of per-frame images next to the mp4 path (PIL); none of av/ffmpeg/cv2 is required.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np
from PIL import Image

from data_pipelines import schema
from data_pipelines.sources import agibot_tar
from data_pipelines.sources.agibot_tar import PROPRIO_FILE

log = logging.getLogger(__name__)

KIND = "agibot"
TRANSFORM_VERSION = "agibot-v1"
CAMERA_KEYS = ("head", "hand_left", "hand_right")
DEFAULT_CAMERAS: Mapping[str, str | None] = {
    "primary": "head",
    "secondary": "hand_left",
    "wrist": "hand_right",
}
STATE_DIM = 16
# any4lerobot agibot2lerobot README: action longer than state, and corrupted mp4 files.
BROKEN_TASK_IDS = frozenset(
    {352, 354, 359, 361, 368, 376, 377, 410, 414, 421, 380, 384, 428, 460, 505, 510, 711}
)
DATASET_NAME = "agibot_world"
SUPPORTED = (
    "AgiBot-World Alpha/Beta gripper episodes converted with "
    "`python -m data_pipelines.convert agibot` (agibot_world 1.0.0 segment records)"
)
REQUIRED_FEATURES = {
    "steps/observation/state": (STATE_DIM,),
    "steps/action": (STATE_DIM,),
    "steps/language_instruction": "text",
    "episode_metadata/sample_start": (),
    "episode_metadata/sample_end": (),
}
# Action grippers (dims 7, 15) are closedness 0 open .. 1 closed -> 1 - a (1 open .. 0 closed).
GRIPPER_OPEN_POSITIVE = {7: (-1.0, 1.0), 15: (-1.0, 1.0)}


def feature_spec():
    """TFDS features of the converted segment records."""
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    img = tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="jpeg")
    i32 = lambda: tfds.features.Scalar(dtype=np.int32)  # noqa: E731
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": tfds.features.FeaturesDict(
                        {
                            "head": img,
                            "hand_left": img,
                            "hand_right": img,
                            "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
                        }
                    ),
                    "action": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
                    "language_instruction": tfds.features.Text(),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                }
            ),
            "episode_metadata": tfds.features.FeaturesDict(
                {
                    "task_id": i32(),
                    "episode_id": i32(),
                    "segment_index": i32(),
                    "frame_start": i32(),
                    "sample_start": i32(),
                    "sample_end": i32(),
                    "file_path": tfds.features.Text(),
                }
            ),
        }
    )


def standardize(
    raw: Mapping[str, Any],
    dataset_name: str,
    episode_id: int,
    cameras: Mapping[str, str | None] | None = None,
) -> schema.StdEpisode:
    """Converted AgiBot segment record -> StdEpisode (state 16, action 16, sample range)."""
    steps, meta = raw["steps"], raw["episode_metadata"]
    state = np.asarray(steps["observation"]["state"], np.float32)
    action = np.asarray(steps["action"], np.float32)
    if state.shape[1:] != (STATE_DIM,) or action.shape[1:] != (STATE_DIM,):
        raise schema.SchemaError(
            f"AgiBot records need state/action [T,16], got {state.shape}, {action.shape}"
        )
    return schema.StdEpisode(
        dataset_name=dataset_name,
        episode_id=episode_id,
        images=schema.select_cameras(steps["observation"], cameras or DEFAULT_CAMERAS),
        state=state,
        action=action,
        language=schema.as_text(steps["language_instruction"][0]),
        sample_range=(int(meta["sample_start"]), int(meta["sample_end"])),
    )


# ----------------------------------------------------------------------------- raw reading


def instruction_from_task_name(task_name: str) -> str:
    """AgiBot task names look like "Pickup items in the supermarket|..."; keep the part before |."""
    return task_name.split("|")[0].strip()


def per_frame_actions(
    rows: np.ndarray, index: np.ndarray | None, num_frames: int, what: str
) -> np.ndarray:
    """Action rows [num_frames, D] from an `action/<group>/position` array and its `index`.

    The release stores one position row per frame; `index` (often shorter: e.g. 1221 of 1278)
    lists the frames where a command was actually sent, so it is ignored when the rows already
    cover every frame. A shorter position array has one row per `index` frame; every frame then
    holds the latest command (frames before the first command take the first one).
    """
    rows = np.asarray(rows, np.float32)
    if len(rows) == num_frames:
        return rows
    if len(rows) == 0:
        raise schema.SchemaError(f"{what}: no action rows for {num_frames} frames")
    if len(rows) > num_frames:
        raise schema.SchemaError(f"{what}: {len(rows)} action rows for {num_frames} frames")
    if index is None or len(index) != len(rows):
        have = "no index" if index is None else f"an index of {len(index)} entries"
        raise schema.SchemaError(
            f"{what}: {len(rows)} action rows for {num_frames} frames and {have}: cannot place them"
        )
    index = np.asarray(index, np.int64)
    if np.any(np.diff(index) <= 0) or index[0] < 0 or index[-1] >= num_frames:
        raise schema.SchemaError(f"{what}: index is not increasing within [0, {num_frames})")
    latest = np.searchsorted(index, np.arange(num_frames), side="right") - 1
    return rows[np.maximum(latest, 0)]


def read_proprio(h5_path: str) -> tuple[np.ndarray, np.ndarray]:
    """proprio_stats.h5 -> (state [T,16], action [T,16]) before the +1 shift, in the release's
    units (joints rad; state gripper mm opening; action gripper closedness 0..1)."""

    if not os.path.exists(h5_path):
        raise FileNotFoundError(f"missing AgiBot proprio file {h5_path}")
    with h5py.File(h5_path, "r") as f:
        missing = [
            k
            for k in (
                "state/joint/position",
                "state/effector/position",
                "action/joint/position",
                "action/effector/position",
            )
            if k not in f
        ]
        if missing:
            raise schema.SchemaError(f"{h5_path}: no {', '.join(missing)}")
        joint = np.asarray(f["state/joint/position"], np.float32)
        eff = np.asarray(f["state/effector/position"], np.float32)
        a_joint = np.asarray(f["action/joint/position"], np.float32)
        a_eff = np.asarray(f["action/effector/position"], np.float32)
        j_idx = np.asarray(f["action/joint/index"]) if "action/joint/index" in f else None
        e_idx = np.asarray(f["action/effector/index"]) if "action/effector/index" in f else None
    if joint.shape[1:] != (14,) or eff.shape[1:] != (2,) or len(eff) != len(joint):
        raise schema.SchemaError(
            f"{h5_path}: state joint {joint.shape} / effector {eff.shape}, "
            "expected [N,14] / [N,2] (dexterous-hand episodes unsupported)"
        )
    n = len(joint)
    a_joint = per_frame_actions(a_joint, j_idx, n, f"{h5_path} action/joint")
    a_eff = per_frame_actions(a_eff, e_idx, n, f"{h5_path} action/effector")
    if a_joint.shape[1:] != (14,) or a_eff.shape[1:] != (2,):
        raise schema.SchemaError(
            f"{h5_path}: action joint {a_joint.shape} / effector {a_eff.shape}, "
            "expected [N,14] / [N,2]"
        )

    def to16(j, e):
        return np.concatenate([j[:, :7], e[:, :1], j[:, 7:14], e[:, 1:2]], axis=1)

    return to16(joint, eff), to16(a_joint, a_eff)


def shift_actions(action: np.ndarray, shift: int = 1) -> np.ndarray:
    """action[t] <- action[min(t + shift, T - 1)]."""
    idx = np.minimum(np.arange(len(action)) + shift, len(action) - 1)
    return action[idx]


def iter_video_frames(mp4_path: str) -> Iterator[np.ndarray]:
    """uint8 [H,W,3] frames of a camera video (PyAV, ffmpeg, or a folder of frame images)."""
    frame_dir = mp4_path[:-4] if mp4_path.endswith(".mp4") else mp4_path
    if os.path.exists(mp4_path):
        try:
            import av  # deferred: PyAV is optional: only AgiBot releases with mp4 videos
        except ImportError:
            av = None
        if av is not None:
            yield from _av_frames(av, mp4_path)
            return
        if shutil.which("ffmpeg") and shutil.which("ffprobe"):
            yield from _ffmpeg_frames(mp4_path)
            return
        if not os.path.isdir(frame_dir):
            raise RuntimeError(
                f"cannot decode {mp4_path}: install PyAV (`pip install av`) "
                f"or ffmpeg, or extract frames into {frame_dir}/"
            )
    if not os.path.isdir(frame_dir):
        raise FileNotFoundError(f"no video {mp4_path} nor frame folder {frame_dir}/")

    for name in sorted(os.listdir(frame_dir)):
        with Image.open(os.path.join(frame_dir, name)) as im:
            yield np.asarray(im.convert("RGB"))


def _av_frames(av, path: str) -> Iterator[np.ndarray]:
    """PyAV decoding; a corrupt/truncated file raises RuntimeError naming it (PyAV's own errors
    are not all OSError/ValueError, and a file whose moov atom is cut off opens with no video
    stream at all, which `decode(video=0)` reports as a bare IndexError)."""
    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        raise RuntimeError(f"cannot decode {path} (corrupt or truncated mp4?): {e}") from e
    with container:
        if not container.streams.video:
            raise RuntimeError(f"cannot decode {path}: no video stream (corrupt or truncated mp4?)")
        try:
            for fr in container.decode(container.streams.video[0]):
                yield fr.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise RuntimeError(f"cannot decode {path} (corrupt or truncated mp4?): {e}") from e


def _ffmpeg_frames(path: str) -> Iterator[np.ndarray]:
    try:
        probe = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height",
                "-of",
                "csv=p=0",
                path,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        w, h = (int(v) for v in probe.split(",")[:2])
    except (subprocess.CalledProcessError, ValueError) as e:
        raise RuntimeError(
            f"cannot decode {path} (corrupt or truncated mp4?): {getattr(e, 'stderr', None) or e}"
        ) from e
    proc = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        stdout=subprocess.PIPE,
    )
    n = w * h * 3
    try:
        while True:
            buf = proc.stdout.read(n)
            if len(buf) < n:
                break
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        proc.stdout.close()
        proc.wait()


def _encode_jpeg(img: np.ndarray, short_side: int) -> bytes:

    pil = Image.fromarray(img)
    w, h = pil.size
    scale = short_side / min(w, h)
    if scale != 1:
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def segment_bounds(
    length: int, segment_len: int, context_before: int, context_after: int
) -> list[tuple[int, int, int, int]]:
    """[(record_start, record_end, sample_start, sample_end)] in episode frames, covering every
    frame exactly once as a sample while each record keeps its neighbouring context frames."""
    out = []
    for s in range(0, length, segment_len):
        e = min(s + segment_len, length)
        out.append((max(0, s - context_before), min(length, e + context_after), s, e))
    return out


def episode_segments(
    task_id: int,
    episode_id: int,
    task_name: str,
    h5_path: str,
    video_dir: str,
    segment_len: int,
    context_before: int,
    context_after: int,
    image_size: int,
    frame_stride: int = 1,
) -> tuple[list[dict[str, Any]], int]:
    """One raw episode -> (segment records (TFDS example dicts, images JPEG bytes), number of
    trailing proprio rows dropped because the videos end earlier)."""
    state, action = read_proprio(h5_path)
    action = shift_actions(action, 1)
    frames = {}
    for cam in CAMERA_KEYS:
        enc = [
            _encode_jpeg(f, image_size)
            for k, f in enumerate(iter_video_frames(os.path.join(video_dir, f"{cam}_color.mp4")))
            if k % frame_stride == 0
        ]
        frames[cam] = enc
    state, action = state[::frame_stride], action[::frame_stride]
    n = min(len(state), *(len(v) for v in frames.values()))
    dropped = len(state) - n
    if dropped:
        # Videos are sometimes a frame short of the proprio stream; keep the common prefix
        # (reported by `convert`).
        state, action = state[:n], action[:n]
    if n == 0:
        raise schema.SchemaError(f"task {task_id} episode {episode_id}: no frames")
    text = instruction_from_task_name(task_name)
    records = []
    for k, (rs, re_, ss, se) in enumerate(
        segment_bounds(n, segment_len, context_before, context_after)
    ):
        steps = [
            {
                "observation": {**{cam: frames[cam][t] for cam in CAMERA_KEYS}, "state": state[t]},
                "action": action[t],
                "language_instruction": text,
                "is_first": t == 0,
                "is_last": t == n - 1,
                "is_terminal": t == n - 1,
            }
            for t in range(rs, re_)
        ]
        records.append(
            {
                "steps": steps,
                "episode_metadata": {
                    "task_id": task_id,
                    "episode_id": episode_id,
                    "segment_index": k,
                    "frame_start": rs,
                    "sample_start": ss - rs,
                    "sample_end": se - rs,
                    "file_path": f"{task_id}/{episode_id}",
                },
            }
        )
    return records, dropped


def list_episodes(
    raw_root: str, task_ids: Sequence[int] | None = None
) -> Iterator[tuple[int, int, str]]:
    """(task_id, episode_id, task_name) of all episodes in task_info/, skipping broken tasks."""
    info_dir = os.path.join(raw_root, "task_info")
    if not os.path.isdir(info_dir):
        tars = sorted(
            os.path.relpath(os.path.join(d, f), raw_root)
            for d, _, files in os.walk(raw_root)
            for f in files
            if ".tar" in f
        )
        found = f"; it holds {len(tars)} archive(s), e.g. {tars[:3]}" if tars else ""
        raise FileNotFoundError(
            f"{raw_root!r} has no task_info/ folder{found}. Point --raw_root at the AgiBot-World "
            "release root, the folder holding task_info/, observations/ and proprio_stats/ "
            "(their .tar archives are read in place)"
        )
    for name in sorted(os.listdir(info_dir)):
        if not (name.startswith("task_") and name.endswith(".json")):
            continue
        task_id = int(name[len("task_") : -len(".json")])
        if task_ids is not None and task_id not in task_ids:
            continue
        if task_id in BROKEN_TASK_IDS:
            continue
        with open(os.path.join(info_dir, name)) as f:
            for ep in json.load(f):
                yield task_id, int(ep["episode_id"]), str(ep["task_name"])


REPORT_FILE = "agibot_conversion_report.json"


def convert(
    raw_root: str,
    out_dir: str,
    task_ids: Sequence[int] | None = None,
    segment_len: int = 128,
    context_before: int = 9,
    context_after: int = 52,
    image_size: int = 256,
    frame_stride: int = 1,
) -> dict[str, Any]:
    """Converts raw AgiBot episodes to `out_dir/agibot_world/1.0.0` (TFRecord segment records).

    Reads the release unpacked or as its .tar archives (`agibot_tar`). Episodes with missing or
    undecodable files are skipped, each listed with its reason (and logged as it happens); known
    broken tasks are skipped. Returns {"episodes", "segments", "skipped": [[task, episode,
    reason], ...], "trimmed": [[task, episode, proprio rows dropped], ...],
    "skipped_broken_tasks", "archives", "path"}, also written to <path>/REPORT_FILE. Raises
    ValueError listing every reason when no episode converts.
    """
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    skipped, trimmed, counts = [], [], {"episodes": 0, "segments": 0}
    skipped_tasks = sorted(t for t in BROKEN_TASK_IDS if task_ids is None or t in task_ids)
    archives = agibot_tar.ArchiveIndex.build(raw_root)
    if archives.archives:
        log.info("reading %d AgiBot archive(s) in place", len(archives.archives))

    def paths(task_id: int, episode_id: int, scratch: str) -> tuple[str, str]:
        h5 = os.path.join(raw_root, "proprio_stats", str(task_id), str(episode_id), PROPRIO_FILE)
        videos = os.path.join(raw_root, "observations", str(task_id), str(episode_id), "videos")
        if (not os.path.exists(h5) or not os.path.isdir(videos)) and archives.has(
            task_id, episode_id
        ):
            a_h5, a_videos = archives.extract(task_id, episode_id, scratch)
            h5 = h5 if os.path.exists(h5) else (a_h5 or h5)
            videos = videos if os.path.isdir(videos) else (a_videos or videos)
        return h5, videos

    def examples():
        for task_id, episode_id, task_name in list_episodes(raw_root, task_ids):
            with tempfile.TemporaryDirectory(prefix="agibot_episode_") as scratch:
                try:
                    h5, videos = paths(task_id, episode_id, scratch)
                    records, dropped = episode_segments(
                        task_id,
                        episode_id,
                        task_name,
                        h5,
                        videos,
                        segment_len,
                        context_before,
                        context_after,
                        image_size,
                        frame_stride,
                    )
                except (OSError, KeyError, ValueError, RuntimeError) as e:
                    reason = f"{type(e).__name__}: {e}"
                    log.warning(
                        "skipping AgiBot task %d episode %d: %s", task_id, episode_id, reason
                    )
                    skipped.append([task_id, episode_id, reason])
                    continue
            if dropped:
                trimmed.append([task_id, episode_id, dropped])
            counts["episodes"] += 1
            for rec in records:
                counts["segments"] += 1
                yield f"{task_id}_{episode_id}_{rec['episode_metadata']['segment_index']}", rec

    path = os.path.join(out_dir, DATASET_NAME, "1.0.0")
    report = {
        "skipped": skipped,
        "trimmed": trimmed,
        "skipped_broken_tasks": skipped_tasks,
        "archives": len(archives.archives),
        "path": path,
    }
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=DATASET_NAME,
            version="1.0.0",
            features=feature_spec(),
            data_dir=out_dir,
            split_datasets={"train": examples()},
            file_format="tfrecord",
        )
    except AssertionError as e:  # TFDS: "No examples were yielded."
        if counts["segments"]:
            raise
        reasons = "\n  ".join(f"task {t} episode {ep}: {why}" for t, ep, why in skipped)
        raise ValueError(
            f"no AgiBot episode under {raw_root} could be converted "
            f"({len(skipped)} skipped{', broken tasks ' + str(skipped_tasks) if skipped_tasks else ''})"
            + (f":\n  {reasons}" if skipped else "")
        ) from e
    report = {**counts, **report}
    with open(os.path.join(path, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=1)
    return report
