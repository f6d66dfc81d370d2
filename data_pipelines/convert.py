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
    and prints the dataset summary (counts, skipped records by shard and record). Any RLDS
    dataset: --source rlds --rlds_config CONFIG.json (docs/data.md). --official_stats DIR also
    writes DIR/<name>_stats.json in the official F1 format, which
    `python -m conversion export --input ... --stats` turns into norm_stats.json.
python -m data_pipelines.convert stats --source lerobot --path LEROBOT_ROOT [--state KEY ...]
    [--action KEY ...] [--gripper_dims 6 --gripper_open -1 --gripper_closed 1] [--fps 10]
    [--cameras primary=observation.images.top wrist=observation.images.wrist]
    The same for a LeRobot v2.x / v3.0 dataset (skipped episodes named by episode); or
    --lerobot my_robot.json: the same mapping as a JSON file or text, as the fine-tune's
    data.lerobot takes it (with "cameras"), so both find the same cached statistics.

Every DIR may be a gs:// URI (the `gcs` extra), except agibot's --raw_root: array-record reads a
bucket's shards with ranged reads and uploads what it writes; agibot converts into a local
scratch folder and uploads it; stats caches its summary beside the data in the bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Sequence

from data_pipelines import storage

from data_pipelines.config import DatasetConfig
from data_pipelines.integrity import masked_crc32c
from data_pipelines.reader import scan_tfrecord
from data_pipelines.sources import GRIPPER_CONVENTIONS, SOURCE_KINDS, agibot, for_dataset, open_reader
from data_pipelines.summary import load_or_compute
from f1_common.export_layout import official_stats, official_stats_file
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

    try:
        info = json.loads(storage.read_bytes(storage.join(src, "dataset_info.json")))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{src!r} is not a TFDS dataset directory (no dataset_info.json)"
        ) from None
    if info.get("fileFormat", "tfrecord") != "tfrecord":
        raise ValueError(f"{src}: fileFormat is {info.get('fileFormat')!r}, expected tfrecord")
    if storage.is_remote(dst):  # ArrayRecord writes local files: write, then upload
        with tempfile.TemporaryDirectory(prefix="f1_array_record_") as scratch:
            result = tfrecord_to_array_record(src, scratch)
            for name in sorted(os.listdir(scratch)):
                storage.upload(os.path.join(scratch, name), storage.join(dst, name))
        result["written_shards"] = [
            storage.join(dst, os.path.basename(p)) for p in result["written_shards"]
        ]
        return result
    os.makedirs(dst, exist_ok=True)
    sizes = storage.list_sizes(src)
    written, dropped = [], []
    for name in sorted(sizes):
        if ".tfrecord-" not in name:
            continue
        shard = storage.join(src, name)
        index = scan_tfrecord(shard, sizes[name])
        for p in index.problems:
            dropped.append([name, p.indexed_before, f"{p.reason} (header at byte {p.offset})"])
        out = os.path.join(dst, name.replace(".tfrecord-", ".array_record-"))
        writer = array_record_module.ArrayRecordWriter(out, "group_size:1")
        kept = 0
        with storage.open_ranged(shard, sizes[name]) as f:
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
    for extra in sizes:
        if (
            extra.endswith(".json")
            and extra not in ("dataset_info.json",)
            and not extra.startswith("f1_dataset_summary_")
        ):
            with open(os.path.join(dst, extra), "wb") as f:
                f.write(storage.read_bytes(storage.join(src, extra)))
    return {"written_shards": written, "dropped": dropped}


def _fix_shard_length(split: dict, shard_name: str, n: int) -> None:
    marker = f"-{split['name']}.tfrecord-"
    if marker not in shard_name:
        return
    shard_index = int(shard_name.rsplit("-", 3)[-3])
    split["shardLengths"][shard_index] = str(n)


def write_official_stats(directory: str, name: str, state: dict, action: dict) -> str:
    """DIR/<name>_stats.json: statistics in the official F1 format (lerobot's stats.json)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, official_stats_file(name))
    with open(path, "w") as f:
        json.dump(official_stats({"state": state, "action": action}), f, indent=4)
    return path


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
    s.add_argument("--source", required=True, choices=SOURCE_KINDS)
    s.add_argument("--path", required=True)
    s.add_argument(
        "--rlds_config", help="--source rlds: the dataset's configuration (JSON file or text)"
    )
    s.add_argument(
        "--official_stats", help="also write DIR/<name>_stats.json (the official F1 format)"
    )
    s.add_argument("--name", default=None)
    s.add_argument("--split", default="train")
    s.add_argument("--stats_dir", default=None)
    s.add_argument("--gripper_convention", default="native", choices=GRIPPER_CONVENTIONS)
    s.add_argument(
        "--tokenizer_path", default=None, help="also count instructions over the token budget"
    )
    s.add_argument("--max_token_len", type=int, default=48)
    s.add_argument(
        "--cameras",
        nargs="*",
        default=None,
        metavar="NAME=KEY",
        help="standard camera -> dataset image key, e.g. primary=observation.images.top",
    )
    lr = s.add_argument_group("lerobot source (DatasetConfig.lerobot)")
    lr.add_argument(
        "--lerobot",
        default=None,
        metavar="JSON",
        help="the whole mapping as a JSON file or text (the fine-tune's data.lerobot: cameras, "
        "state, action, gripper_dims, ...), instead of the options below",
    )
    lr.add_argument("--state", nargs="+", default=None, help="state feature(s), concatenated")
    lr.add_argument("--action", nargs="+", default=None, help="action feature(s), concatenated")
    lr.add_argument("--gripper_dims", type=int, nargs="*", default=None)
    lr.add_argument("--gripper_open", type=float, default=None, help="native value meaning open")
    lr.add_argument("--gripper_closed", type=float, default=None, help="native value, closed")
    lr.add_argument("--fps", type=float, default=None, help="refuse a dataset at another fps")
    lr.add_argument("--frame_stride", type=int, default=None)
    args = p.parse_args(argv)
    if args.cmd == "stats":
        names = ("state", "action", "gripper_dims", "gripper_open", "gripper_closed", "fps")
        options = {
            k: getattr(args, k) for k in (*names, "frame_stride") if getattr(args, k) is not None
        }
        if args.lerobot is not None and options:
            p.error(f"give --lerobot or --{', --'.join(options)}, not both")
        given = [*options, *(["lerobot"] if args.lerobot is not None else [])]
        if given and args.source != "lerobot":
            p.error(f"--{', --'.join(given)} apply to --source lerobot only")
        if args.lerobot is not None:
            options = args.lerobot  # JSON text or a file: DatasetConfig reads it
        cameras = None
        if args.cameras is not None:
            try:
                cameras = dict(c.split("=", 1) for c in args.cameras)
            except ValueError:
                p.error(f"--cameras takes NAME=KEY pairs, got {args.cameras}")
        try:
            ds = DatasetConfig(
                args.name or args.source,
                args.source,
                args.path,
                split=args.split,
                cameras=cameras,
                lerobot=options or None,
                rlds=args.rlds_config or None,  # a JSON file or text: DatasetConfig reads it
            )
        except ValueError as e:
            p.error(str(e))
        reader = open_reader(ds)
        summ = load_or_compute(
            reader,
            ds,
            args.stats_dir,
            gripper_convention=args.gripper_convention,
        )
        if args.tokenizer_path:
            summ = summ.with_token_budget(Tokenizer(args.tokenizer_path, args.max_token_len))
        print(summ.describe(), file=sys.stderr)
        result = {
            "name": ds.name,
            "key": summ.key,
            **summ.counts(),
            "skipped": [s.to_json() for s in summ.skipped],
            "cameras": ds.cameras
            or getattr(reader, "cameras", None)
            or getattr(for_dataset(ds), "DEFAULT_CAMERAS", None),
            "control_frequency": getattr(for_dataset(ds), "CONTROL_FREQUENCY", None),
        }
        if args.official_stats:
            result["official_stats"] = write_official_stats(
                args.official_stats, ds.name, summ.state_stats, summ.action_stats
            )
        print(json.dumps(result))
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
        if storage.is_remote(args.raw_root):
            raise SystemExit(
                "--raw_root must be a local folder (the release's h5, mp4 and tar files are read "
                f"in place): copy {args.raw_root} to a local disk first; --out may be gs://"
            )
        if storage.is_remote(args.out):  # converted into a scratch folder, then uploaded
            with tempfile.TemporaryDirectory(prefix="f1_agibot_") as scratch:
                report = _agibot(args, scratch)
                for root, _, files in os.walk(scratch):
                    for name in files:
                        path = os.path.join(root, name)
                        rel = os.path.relpath(path, scratch).replace(os.sep, "/")
                        storage.upload(path, storage.join(args.out, rel))
        else:
            report = _agibot(args, args.out)
        print(json.dumps(report))
    return 0


def _agibot(args: argparse.Namespace, out: str) -> dict:
    return agibot.convert(
        args.raw_root,
        out,
        task_ids=args.task_ids,
        segment_len=args.segment_len,
        context_before=args.context_before,
        context_after=args.context_after,
        image_size=args.image_size,
        frame_stride=args.frame_stride,
    )


if __name__ == "__main__":
    sys.exit(main())
