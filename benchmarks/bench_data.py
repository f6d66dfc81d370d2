"""Data pipeline throughput: samples/s of the grain pipeline (0, 1, 2 worker processes) next to
a plain tf.data pipeline doing the same decoding and resizing, on one synthetic LIBERO-schema
fixture (2 cameras 256x256 JPEG). A sample = everything one F1 training example needs: 2
understanding cameras resized with padding to 224, 5 generation frames (offsets -9,-6,-3,0,+3)
resized to 288 (Lanczos) + one shared 256 crop, a 50-step action chunk, the state, 48 tokens.

  python -m benchmarks.bench_data [--episodes 12 --steps 40 --batch_size 8 --batches 8]
  python -m benchmarks.bench_data --checksums [--repeats 5]

Prints one JSON line per measurement. --checksums measures what record checksum verification
costs: raw record reads (MB/s) and the grain pipeline (0 workers, an episode cache of one record
so that nearly every sample reads its record, as with a large dataset), verification off and on,
alternating on the same fixture in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from data_pipelines import pipeline
from data_pipelines.config import DataConfig, DatasetConfig
from data_pipelines.reader import EpisodeReader
from data_pipelines.sources import libero
from f1_common.tokenizer import Tokenizer, train_tokenizer

OFFSETS = (-9, -6, -3, 0, 3)


def smooth_frame(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random image (realistic JPEG size, unlike white noise)."""
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def write_fixture(root: str, episodes: int, steps: int, size: int) -> str:
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    rng = np.random.default_rng(0)

    def episode(e):
        return {
            "steps": [
                {
                    "observation": {
                        "image": smooth_frame(rng, size),
                        "wrist_image": smooth_frame(rng, size),
                        "state": rng.normal(size=8).astype(np.float32),
                        "joint_state": np.zeros(7, np.float32),
                    },
                    "action": rng.normal(size=7).astype(np.float32),
                    "discount": 1.0,
                    "reward": 0.0,
                    "is_first": t == 0,
                    "is_last": t == steps - 1,
                    "is_terminal": t == steps - 1,
                    "language_instruction": "put the black bowl on the plate",
                }
                for t in range(steps)
            ],
            "episode_metadata": {"file_path": f"{e}"},
        }

    tfds.dataset_builders.store_as_tfds_dataset(
        name="libero_bench",
        version="1.0.0",
        features=libero.feature_spec((size, size)),
        data_dir=root,
        split_datasets={"train": [(f"e{e}", episode(e)) for e in range(episodes)]},
        file_format="tfrecord",
    )
    return os.path.join(root, "libero_bench", "1.0.0")


def write_tokenizer(root: str) -> str:
    texts = ["put the black bowl on the plate", "open the drawer"] * 8
    return train_tokenizer(texts, os.path.join(root, "tok.model"), vocab_size=40)


def time_batches(it, batch_size: int, batches: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def time_batches_cpu(it, batch_size: int, batches: int, warmup: int = 2) -> tuple[float, float]:
    """(samples/s wall, CPU ms of this process per sample): the CPU figure is what the pipeline
    itself spends (0 workers), unaffected by other processes sharing the cores."""
    for _ in range(warmup):
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    n = batches * batch_size
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3


def bench_grain(path, tok, workers, args, episode_cache_size: int = 8, cpu: bool = False):
    cfg = DataConfig(
        datasets=(DatasetConfig("libero_bench", "libero", path),),
        tokenizer_path=tok,
        batch_size=args.batch_size,
        num_workers=workers,
        read_threads=args.read_threads,
        prefetch_buffer_size=2 * args.batch_size,
        episode_cache_size=episode_cache_size,
    )
    it = pipeline.make_train_iterator(cfg, seed=0)
    try:
        timer = time_batches_cpu if cpu else time_batches
        return timer(it, args.batch_size, args.batches)
    finally:
        if hasattr(it, "close"):
            it.close()


def bench_tfdata(path, tok, args) -> float:
    """Octo/dlimp-style tf.data: episodes -> frame windows -> shuffle(256) -> parallel
    decode/resize/augment (AUTOTUNE) -> batch; not deterministic, not resumable."""
    import tensorflow as tf  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read
    import tensorflow_datasets as tfds  # deferred: TensorFlow loads in seconds; only where RLDS shards are written or read

    tf.config.set_visible_devices([], "GPU")
    builder = tfds.builder_from_directory(path)
    skip = tfds.decode.SkipDecoding()
    ds = builder.as_dataset(
        split="train",
        shuffle_files=True,
        decoders={"steps": {"observation": {"image": skip, "wrist_image": skip}}},
    )
    tokens, _ = Tokenizer(tok).encode("put the black bowl on the plate")
    chunk = 50

    def frames(ep):
        s = ep["steps"].batch(100000).get_single_element()
        n = tf.shape(s["action"])[0]

        def window(t):
            idx = tf.clip_by_value(t + tf.constant(OFFSETS, tf.int32), 0, n - 1)
            aidx = tf.minimum(t + tf.range(chunk), n - 1)
            obs = s["observation"]
            return {
                "und": tf.stack([obs["image"][t], obs["wrist_image"][t]]),
                "gen": tf.gather(s["observation"]["image"], idx),
                "actions": tf.gather(s["action"], aidx),
                "state": s["observation"]["state"][t],
                "action_is_pad": t + tf.range(chunk) >= n,
            }

        return tf.data.Dataset.range(tf.cast(n, tf.int64)).map(
            lambda t: window(tf.cast(t, tf.int32))
        )

    def decode(x):
        und = tf.map_fn(
            lambda b: tf.image.resize(tf.io.decode_jpeg(b, channels=3), (224, 224)),
            x["und"],
            fn_output_signature=tf.float32,
        )
        gen = tf.map_fn(
            lambda b: tf.image.resize(
                tf.io.decode_jpeg(b, channels=3), (288, 288), method="lanczos3", antialias=True
            ),
            x["gen"],
            fn_output_signature=tf.float32,
        )
        gen = tf.image.random_crop(gen, (len(OFFSETS), 256, 256, 3))
        # Same colour augmentation as the grain pipeline (multiplicative brightness).
        und = und * tf.random.uniform((), 0.8, 1.2)
        und = tf.image.random_saturation(tf.image.random_contrast(und / 255.0, 0.8, 1.2), 0.5, 1.5)
        und = und * 255.0
        x = dict(
            x,
            und=tf.cast(tf.clip_by_value(tf.round(und), 0, 255), tf.uint8),
            gen=tf.cast(tf.clip_by_value(tf.round(gen), 0, 255), tf.uint8),
        )
        x["tokens"] = tf.constant(tokens)
        return x

    ds = (
        ds.repeat()
        .flat_map(frames)
        .shuffle(256)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(args.batch_size)
        .prefetch(2)
    )
    return time_batches(ds.as_numpy_iterator(), args.batch_size, args.batches)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--read_threads", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--skip_tfdata", action="store_true")
    p.add_argument("--checksums", action="store_true", help="only the checksum-cost comparison")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="bench_data_")
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: str) -> None:
    path = write_fixture(root, args.episodes, args.steps, args.image_size)
    tok = write_tokenizer(root)
    common = {
        "bench": "data",
        "batch_size": args.batch_size,
        "batches": args.batches,
        "image": args.image_size,
        "und": 224,
        "gen": "288->256",
        "frames": len(OFFSETS),
        "chunk": 50,
        "cpus": os.cpu_count(),
    }
    pipeline.load_summaries(
        DataConfig(datasets=(DatasetConfig("libero_bench", "libero", path),), tokenizer_path=tok),
        progress=False,
    )  # stats pass untimed
    if args.checksums:
        bench_checksums(path, tok, args, common)
        return
    for w in args.workers:
        sps = bench_grain(path, tok, w, args)
        print(
            json.dumps(
                {
                    **common,
                    "pipeline": "grain",
                    "workers": w,
                    "read_threads": args.read_threads,
                    "samples_per_s": round(sps, 2),
                }
            ),
            flush=True,
        )
    if not args.skip_tfdata:
        sps = bench_tfdata(path, tok, args)
        print(
            json.dumps(
                {**common, "pipeline": "tf.data", "workers": 0, "samples_per_s": round(sps, 2)}
            ),
            flush=True,
        )


def bench_checksums(path, tok, args, common) -> None:
    """Verification off vs on, alternating, same fixture and process: raw reads, then grain."""
    reader = EpisodeReader(path)
    total = sum(len(reader.serialized(i)) for i in range(len(reader)))
    for verify in (False, True, False, True):
        reader.verify_checksums = verify
        t0 = time.perf_counter()
        for _ in range(args.repeats * 4):
            for i in range(len(reader)):
                reader.serialized(i)
        dt = (time.perf_counter() - t0) / (args.repeats * 4)
        print(
            json.dumps(
                {
                    **common,
                    "pipeline": "record reads",
                    "verify_checksums": verify,
                    "records": len(reader),
                    "mean_record_mb": round(total / len(reader) / 1e6, 3),
                    "mb_per_s": round(total / dt / 1e6, 1),
                    "us_per_record": round(dt / len(reader) * 1e6, 1),
                }
            ),
            flush=True,
        )
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for _ in range(args.repeats):
            for verify in (False, True):
                EpisodeReader.VERIFY_CHECKSUMS = verify
                runs[verify].append(bench_grain(path, tok, 0, args, episode_cache_size=1, cpu=True))
    finally:
        EpisodeReader.VERIFY_CHECKSUMS = True
    for verify, results in runs.items():
        sps, cpu_ms = np.array(results).T
        print(
            json.dumps(
                {
                    **common,
                    "pipeline": "grain",
                    "workers": 0,
                    "episode_cache_size": 1,
                    "verify_checksums": verify,
                    "samples_per_s_runs": [round(x, 2) for x in sps],
                    "samples_per_s_median": round(float(np.median(sps)), 2),
                    "cpu_ms_per_sample_median": round(float(np.median(cpu_ms)), 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
