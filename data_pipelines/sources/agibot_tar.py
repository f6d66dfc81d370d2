"""AgiBot-World's .tar downloads, read in place.

The release ships its episodes in uncompressed tar archives, e.g. `proprio_stats/proprio_stats.tar`
(members `<task>/<episode>/proprio_stats.h5`) and `observations/<task>/<range>.tar` (members
`<episode>/videos/<camera>_color.mp4`, depth images, ...). `ArchiveIndex.build` lists which archive
member holds each episode's proprio file and videos (reading only the tar headers);
`ArchiveIndex.extract` copies one episode's files into a scratch folder, so the converter reads an
archive like an unpacked folder while needing scratch space for one episode only.

Compressed (.tar.gz) or unreadable archives are refused with a message naming them: unpack those
with `tar -xf` first.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
from typing import Iterable

PROPRIO_FILE = "proprio_stats.h5"
ARCHIVE_FOLDERS = ("proprio_stats", "observations")


class ArchiveError(ValueError):
    """An AgiBot archive cannot be read in place."""


def find_archives(raw_root: str) -> list[str]:
    """Every `*.tar*` file under raw_root/proprio_stats and raw_root/observations, sorted."""
    out = []
    for folder in ARCHIVE_FOLDERS:
        for dirpath, _, files in os.walk(os.path.join(raw_root, folder)):
            out.extend(os.path.join(dirpath, f) for f in files if ".tar" in f)
    return sorted(out)


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _task_of_archive(path: str) -> int | None:
    """observations/<task>/<range>.tar or proprio_stats/<task>.tar: the task id of the archive's
    members when their names do not carry it."""
    parent = _number(os.path.basename(os.path.dirname(path)))
    stem = _number(os.path.basename(path).split(".tar")[0])
    return parent if parent is not None else stem


@dataclasses.dataclass
class _Member:
    archive: str
    info: tarfile.TarInfo
    relpath: str  # where the file goes under the episode's folder (e.g. videos/head_color.mp4)


@dataclasses.dataclass
class ArchiveIndex:
    """Which archive member holds each (task, episode)'s proprio file and video files."""

    archives: list[str]
    proprio: dict[tuple[int, int], _Member]
    videos: dict[tuple[int, int], list[_Member]]

    @classmethod
    def build(cls, raw_root: str) -> "ArchiveIndex":
        archives = find_archives(raw_root)
        proprio: dict[tuple[int, int], _Member] = {}
        videos: dict[tuple[int, int], list[_Member]] = {}
        for path in archives:
            for info in _members(path):
                parts = [p for p in info.name.split("/") if p not in ("", ".")]
                if ".." in parts or not info.isfile():
                    continue
                if parts[-1] == PROPRIO_FILE and len(parts) >= 2:
                    episode = _number(parts[-2])
                    task = _number(parts[-3]) if len(parts) >= 3 else _task_of_archive(path)
                    if episode is not None and task is not None:
                        proprio[(task, episode)] = _Member(path, info, PROPRIO_FILE)
                elif "videos" in parts[:-1]:
                    i = parts.index("videos")
                    episode = _number(parts[i - 1]) if i >= 1 else None
                    task = _number(parts[i - 2]) if i >= 2 else _task_of_archive(path)
                    if episode is not None and task is not None:
                        member = _Member(path, info, "/".join(parts[i:]))
                        videos.setdefault((task, episode), []).append(member)
        return cls(archives, proprio, videos)

    def has(self, task: int, episode: int) -> bool:
        return (task, episode) in self.proprio or (task, episode) in self.videos

    def extract(self, task: int, episode: int, dest: str) -> tuple[str | None, str | None]:
        """Copies the episode's archived files under `dest`; returns (h5 path, videos folder),
        None for a part the archives do not hold."""
        h5, video_dir = None, None
        member = self.proprio.get((task, episode))
        if member is not None:
            h5 = os.path.join(dest, "proprio", PROPRIO_FILE)
            _copy_out(member, h5)
        for member in self.videos.get((task, episode), []):
            _copy_out(member, os.path.join(dest, "episode", member.relpath))
            video_dir = os.path.join(dest, "episode", "videos")
        return h5, video_dir


def _members(path: str) -> Iterable[tarfile.TarInfo]:
    try:
        # "r:" = uncompressed only: members are then read in place by offset.
        with tarfile.open(path, "r:") as tf:
            return tf.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(
            f"cannot read AgiBot archive {path} in place ({type(e).__name__}: {e}); it must be an "
            f"uncompressed, complete .tar: re-download it, or unpack it with "
            f"`tar -xf {path} -C {os.path.dirname(path)}` and convert the unpacked folder"
        ) from e


def _copy_out(member: _Member, dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        with tarfile.open(member.archive, "r:") as tf:
            src = tf.extractfile(member.info)
            if src is None:
                raise ArchiveError(f"{member.archive}: {member.info.name} is not a file")
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(
            f"cannot read {member.info.name} from AgiBot archive {member.archive} "
            f"({type(e).__name__}: {e})"
        ) from e
