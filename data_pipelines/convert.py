"""Dataset conversion CLI.

python -m data_pipelines.convert array-record --src DIR/name/1.0.0 --dst OUT/name/1.0.0
    Byte-for-byte copy of every TFRecord episode into ArrayRecord shards (group_size 1, random
    access), plus TFDS metadata with fileFormat=array_record. No TF or Beam needed.
python -m data_pipelines.convert agibot --raw_root AGIBOT --out OUT [--task_ids 327 ...]
    AgiBot-World raw h5 + mp4 -> RLDS-like TFRecord segment records (see sources/agibot.py).
python -m data_pipelines.convert stats --source bridge --path DIR/bridge_orig/1.0.0
    Precomputes (once, before a multi-host run) the cached episode index + normalisation stats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Sequence

from data_pipelines.config import DatasetConfig
from data_pipelines.reader import EpisodeReader, scan_tfrecord
from data_pipelines.sources import agibot
from data_pipelines.summary import load_or_compute


def tfrecord_to_array_record(src: str, dst: str) -> list[str]:
    """Copies the TFRecord shards of TFDS directory `src` into ArrayRecord shards under `dst`.

    Returns the written shard paths. Truncated tails of TFRecord shards are reported and dropped.
    """
    from array_record.python import array_record_module

    info_path = os.path.join(src, "dataset_info.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{src!r} is not a TFDS dataset directory (no dataset_info.json)")
    with open(info_path) as f:
        info = json.load(f)
    if info.get("fileFormat", "tfrecord") != "tfrecord":
        raise ValueError(f"{src}: fileFormat is {info.get('fileFormat')!r}, expected tfrecord")
    os.makedirs(dst, exist_ok=True)
    written = []
    for name in sorted(os.listdir(src)):
        if ".tfrecord-" not in name:
            continue
        offsets, lengths, broken = scan_tfrecord(os.path.join(src, name))
        if broken:
            print(f"warning: {name} ends in a truncated record; it is dropped", file=sys.stderr)
        out = os.path.join(dst, name.replace(".tfrecord-", ".array_record-"))
        writer = array_record_module.ArrayRecordWriter(out, "group_size:1")
        with open(os.path.join(src, name), "rb") as f:
            for off, ln in zip(offsets, lengths):
                f.seek(int(off))
                writer.write(f.read(int(ln)))
        writer.close()
        written.append(out)
        if broken:  # keep shardLengths truthful
            for split in info["splits"]:
                _fix_shard_length(split, name, len(offsets))
    info["fileFormat"] = "array_record"
    with open(os.path.join(dst, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    for extra in os.listdir(src):
        if (
            extra.endswith(".json")
            and extra not in ("dataset_info.json",)
            and not extra.startswith("f1_dataset_summary_")
        ):
            shutil.copy(os.path.join(src, extra), os.path.join(dst, extra))
    return written


def _fix_shard_length(split: dict, shard_name: str, n: int) -> None:
    marker = f"-{split['name']}.tfrecord-"
    if marker not in shard_name:
        return
    shard_index = int(shard_name.rsplit("-", 3)[-3])
    split["shardLengths"][shard_index] = str(n)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_pipelines.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("array-record", help="TFRecord TFDS dir -> ArrayRecord TFDS dir")
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    g = sub.add_parser("agibot", help="AgiBot-World raw -> RLDS-like segment records")
    g.add_argument(
        "--raw_root", required=True, help="folder with task_info/, observations/, proprio_stats/"
    )
    g.add_argument("--out", required=True, help="data dir; writes OUT/agibot_world/1.0.0")
    g.add_argument("--task_ids", type=int, nargs="*", default=None)
    g.add_argument("--segment_len", type=int, default=128)
    g.add_argument("--context_before", type=int, default=9)
    g.add_argument("--context_after", type=int, default=52)
    g.add_argument("--image_size", type=int, default=256)
    g.add_argument(
        "--frame_stride", type=int, default=1, help="keep every k-th frame (e.g. 3: 30 Hz -> 10 Hz)"
    )
    s = sub.add_parser("stats", help="compute and cache episode index + normalisation stats")
    s.add_argument("--source", required=True)
    s.add_argument("--path", required=True)
    s.add_argument("--name", default=None)
    s.add_argument("--split", default="train")
    s.add_argument("--stats_dir", default=None)
    args = p.parse_args(argv)
    if args.cmd == "stats":
        ds = DatasetConfig(args.name or args.source, args.source, args.path, split=args.split)
        summ = load_or_compute(EpisodeReader(args.path, args.split), ds, args.stats_dir)
        print(
            json.dumps(
                {
                    "name": ds.name,
                    "key": summ.key,
                    "episodes": int((summ.lengths > 0).sum()),
                    "transitions": summ.num_transitions,
                    "corrupt": len(summ.corrupt),
                    "unusable": len(summ.unusable),
                }
            )
        )
    elif args.cmd == "array-record":
        paths = tfrecord_to_array_record(args.src, args.dst)
        print(json.dumps({"written_shards": len(paths), "dst": args.dst}))
    else:
        report = agibot.convert(
            args.raw_root,
            args.out,
            task_ids=args.task_ids,
            segment_len=args.segment_len,
            context_before=args.context_before,
            context_after=args.context_after,
            image_size=args.image_size,
            frame_stride=args.frame_stride,
        )
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
