"""Dataset conversion CLI.

python -m data_pipelines.convert array-record --src DIR/name/1.0.0 --dst OUT/name/1.0.0
    Byte-for-byte copy of every TFRecord episode into ArrayRecord shards (group_size 1, random
    access), plus TFDS metadata with fileFormat=array_record. No TF or Beam needed. Every record's
    checksums are verified first; a record that fails is not copied and is reported.
python -m data_pipelines.convert agibot --raw_root AGIBOT --out OUT [--task_ids 327 ...]
    AgiBot-World raw h5 + mp4 (unpacked or the release's .tar archives) -> RLDS-like TFRecord
    segment records (see sources/agibot.py); every skipped episode is listed with its reason.
python -m data_pipelines.convert stats --source bridge --path DIR/bridge_orig/1.0.0
    Precomputes (once, before a multi-host run) the cached episode index + normalisation stats
    and prints the dataset summary (counts, skipped records by shard and record).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Sequence

from data_pipelines.config import DatasetConfig
from data_pipelines.integrity import masked_crc32c
from data_pipelines.reader import EpisodeReader, scan_tfrecord
from data_pipelines.sources import GRIPPER_CONVENTIONS, agibot
from data_pipelines.summary import load_or_compute
from f1_common.tokenizer import Tokenizer


def tfrecord_to_array_record(src: str, dst: str) -> dict:
    """Copies the TFRecord shards of TFDS directory `src` into ArrayRecord shards under `dst`.

    Every record's checksums are verified before it is copied (ArrayRecord computes its own
    hashes, so a corrupt record copied as is would look sound afterwards): records that fail, and
    stretches of broken framing, are left out, reported on stderr and in the returned
    {"written_shards": [paths], "dropped": [[shard, position, reason], ...]}, and the shard
    lengths in the copy's dataset_info.json say what was actually written.
    """
    from array_record.python import array_record_module  # deferred: array_record ships with tensorflow-datasets; the array_record layout only

    info_path = os.path.join(src, "dataset_info.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{src!r} is not a TFDS dataset directory (no dataset_info.json)")
    with open(info_path) as f:
        info = json.load(f)
    if info.get("fileFormat", "tfrecord") != "tfrecord":
        raise ValueError(f"{src}: fileFormat is {info.get('fileFormat')!r}, expected tfrecord")
    os.makedirs(dst, exist_ok=True)
    written, dropped = [], []
    for name in sorted(os.listdir(src)):
        if ".tfrecord-" not in name:
            continue
        index = scan_tfrecord(os.path.join(src, name))
        for p in index.problems:
            dropped.append([name, p.shard_record, f"{p.reason} (header at byte {p.offset})"])
        out = os.path.join(dst, name.replace(".tfrecord-", ".array_record-"))
        writer = array_record_module.ArrayRecordWriter(out, "group_size:1")
        kept = 0
        with open(os.path.join(src, name), "rb") as f:
            for k, (off, ln, crc) in enumerate(zip(index.offsets, index.lengths, index.crcs)):
                f.seek(int(off))
                data = f.read(int(ln))
                if masked_crc32c(data) != int(crc):
                    dropped.append([name, k, "data fails its checksum"])
                    continue
                writer.write(data)
                kept += 1
        writer.close()
        written.append(out)
        for split in info["splits"]:  # keep shardLengths truthful
            _fix_shard_length(split, name, kept)
    for shard, k, why in dropped:
        print(f"warning: {src} shard {shard} record {k}: {why}; not copied", file=sys.stderr)
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
    return {"written_shards": written, "dropped": dropped}


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
    s.add_argument("--gripper_convention", default="native", choices=GRIPPER_CONVENTIONS)
    s.add_argument(
        "--tokenizer_path", default=None, help="also count instructions over the token budget"
    )
    s.add_argument("--max_token_len", type=int, default=48)
    args = p.parse_args(argv)
    if args.cmd == "stats":
        ds = DatasetConfig(args.name or args.source, args.source, args.path, split=args.split)
        summ = load_or_compute(
            EpisodeReader(args.path, args.split),
            ds,
            args.stats_dir,
            gripper_convention=args.gripper_convention,
        )
        if args.tokenizer_path:
            summ = summ.with_token_budget(Tokenizer(args.tokenizer_path, args.max_token_len))
        print(summ.describe(), file=sys.stderr)
        print(
            json.dumps(
                {
                    "name": ds.name,
                    "key": summ.key,
                    **summ.counts(),
                    "skipped": [s.to_json() for s in summ.skipped],
                }
            )
        )
    elif args.cmd == "array-record":
        result = tfrecord_to_array_record(args.src, args.dst)
        print(
            json.dumps(
                {
                    "written_shards": len(result["written_shards"]),
                    "dropped": result["dropped"],
                    "dst": args.dst,
                }
            )
        )
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
