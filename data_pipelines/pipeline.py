"""The public entry point: a data mixture config -> deterministic, resumable batch iterator.

Order of operations (all grain MapDataset ops are index arithmetic, nothing is read early):
  per dataset: frame index (record, t) -> global shuffle (seeded) -> repeat
  -> mix by weight -> random_map(build example; rng from (seed, global index))
  -> host slice [process_index::process_count] -> batch -> iterator (threads / worker processes)
  -> IntegrityMonitor (in this process: logs and counts replaced bad samples, enforces the budget)
Because the example at global position i depends only on (seed, i), the batches a host sees do
not depend on the number of worker processes, and `get_state()/set_state()` (a few integers)
resumes exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Sequence

import grain
import numpy as np
from absl import flags

from data_pipelines import sources
from data_pipelines.config import DataConfig
from data_pipelines.integrity import check_bad_fraction
from data_pipelines.reader import EpisodeReader
from data_pipelines.sample import BAD_IMAGE, BAD_RECORD, SampleBuilder
from data_pipelines.summary import DatasetSummary, load_or_compute
from f1_common.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Bookkeeping keys a host batch carries beside the model inputs
# (`config.observation.example_spec()`): where each example came from, and `replaced`
# int32 [3] = (bad record, bad step, reason 1 record / 2 image) when a bad sample was replaced
# ((-1, -1, 0) otherwise). Never sent to the device.
HOST_ONLY_KEYS = ("dataset_index", "episode_index", "step_index", "replaced")


class FrameSource:
    """Random-access grain source of (dataset index, record, t) int64 [3] for one dataset.

    ranges: int64 [num_records, 2], the drawable [lo, hi) steps of each record."""

    def __init__(self, dataset_index: int, ranges: np.ndarray):
        lo, hi = ranges[:, 0], ranges[:, 1]
        counts = hi - lo
        # int32 halves the index that is pickled into every worker process.
        self._record = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        self._t = (np.arange(len(self._record), dtype=np.int64) + starts).astype(np.int32)
        self._d = dataset_index

    def __len__(self) -> int:
        return len(self._record)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.array([self._d, self._record[i], self._t[i]], np.int64)


def _sub_seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def load_summaries(
    config: DataConfig, progress: bool = True
) -> tuple[list[EpisodeReader], list[DatasetSummary]]:
    """Opens every dataset and loads (or computes and caches) its summary and statistics.

    Logs each dataset's summary (counts, skipped records by shard and record) and raises
    integrity.DataIntegrityError, naming the worst shards, when more than
    `config.max_bad_fraction` of a dataset's records are bad.
    """
    tokenizer = Tokenizer(config.tokenizer_path, config.observation.max_token_len)
    readers, summaries = [], []
    for ds in config.datasets:
        reader = sources.open_reader(ds)
        summary = load_or_compute(
            reader, ds, config.stats_dir, progress, config.gripper_convention
        ).with_token_budget(tokenizer)
        # Corruption is worth a warning; routine skips (e.g. short Bridge episodes) are info.
        log.log(logging.WARNING if summary.num_corrupt else logging.INFO, "%s", summary.describe())
        check_bad_fraction(
            ds.name,
            summary.num_corrupt,
            summary.num_records,
            config.max_bad_fraction,
            summary.bad_by_shard(),
            summary.shard_records,
        )
        if hasattr(reader, "check_videos"):
            # The stats pass checked the videos of every episode it kept (LeRobotReader); a video
            # damaged since then shows as undecodable frames, which are replaced and counted.
            reader.check_videos = False
        readers.append(reader)
        summaries.append(summary)
    return readers, summaries


def dataset_statistics(config: DataConfig) -> dict[str, dict[str, Any]]:
    """{dataset name: {"state": stats, "action": stats, "norm_mode": mode, "gripper_convention",
    "action_to_native" (only when the convention changes this dataset's gripper dims), "cameras"
    (standard camera -> the dataset's image key),
    "num_transitions" (sampled), "num_corrupt", "counts"}} for checkpointing with the model and
    un-normalising its actions."""
    readers, summaries = load_summaries(config, progress=False)
    out = {}
    for d, (ds, s, reader) in enumerate(zip(config.datasets, summaries, readers)):
        entry = {
            "state": s.state_stats,
            "action": s.action_stats,
            "norm_mode": ds.norm_mode or config.norm_mode,
            "gripper_convention": config.gripper_convention,
            "num_transitions": s.num_sampled(config.drop_unlabeled_for(d)),
            "num_corrupt": s.num_corrupt,
            "counts": s.counts(),
        }
        source = sources.for_dataset(ds)
        # The cameras a run records: configured, else the reader's (lerobot: from meta/info.json),
        # else the source's defaults.
        entry["cameras"] = dict(
            ds.cameras
            or getattr(reader, "cameras", None)
            or getattr(source, "DEFAULT_CAMERAS", None)
            or {}
        )
        to_native = sources.action_to_native(source, config.gripper_convention, ds.lerobot)
        if to_native is not None:
            entry["action_to_native"] = to_native
        out[s.name] = entry
    return out


def mixture_weights(config: DataConfig, summaries: Sequence[DatasetSummary]) -> np.ndarray:
    """Normalised sampling weights (times the number of sampled transitions if
    balance_weights)."""
    w = np.array([d.weight for d in config.datasets], np.float64)
    if config.balance_weights:
        w = w * np.array(
            [s.num_sampled(config.drop_unlabeled_for(d)) for d, s in enumerate(summaries)],
            np.float64,
        )
    if w.sum() <= 0:
        raise ValueError("all dataset weights are zero")
    return w / w.sum()


class IntegrityMonitor:
    """Runs on the host, after batching: logs every bad sample the workers replaced (dataset,
    shard, record, step, reason), counts them, and stops the run (DataIntegrityError naming the
    worst shards) once a dataset's bad records, those of the stats pass included, exceed
    `max_bad_fraction`. Returns batches unchanged."""

    def __init__(
        self,
        config: DataConfig,
        readers: Sequence[EpisodeReader],
        summaries: Sequence[DatasetSummary],
    ):
        self.config = config
        self.readers = list(readers)
        self.summaries = list(summaries)
        self.bad: list[set[int]] = [set() for _ in summaries]  # records found bad at sample time
        self.replaced = collections.Counter()  # dataset name -> samples replaced

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.flatnonzero(batch["replaced"][:, 2])
        for row in rows.tolist():
            d = int(batch["dataset_index"][row])
            record, t, code = (int(v) for v in batch["replaced"][row])
            name = self.config.datasets[d].name
            self.replaced[name] += 1
            if record in self.bad[d]:
                continue
            self.bad[d].add(record)
            why = {BAD_RECORD: "unreadable record", BAD_IMAGE: "undecodable image"}[code]
            log.warning(
                "bad sample replaced: %s, step %d: %s (%d bad records found while sampling %r)",
                self.readers[d].where(record),
                t,
                why,
                len(self.bad[d]),
                name,
            )
            self._check(d)
        return batch

    def _check(self, d: int) -> None:
        summary, reader = self.summaries[d], self.readers[d]
        by_shard = collections.Counter(summary.bad_by_shard())
        for record in self.bad[d]:
            by_shard[reader.locate(record)[0]] += 1
        check_bad_fraction(
            self.config.datasets[d].name,
            summary.num_corrupt + len(self.bad[d]),
            summary.num_records,
            self.config.max_bad_fraction,
            by_shard,
            summary.shard_records,
        )


def make_example_dataset(
    config: DataConfig,
    seed: int,
    readers: Sequence[EpisodeReader],
    summaries: Sequence[DatasetSummary],
) -> "grain.MapDataset":
    """The global (all hosts), unbatched grain MapDataset of examples.

    grain's `mix` interleaves the datasets deterministically in the exact weight proportions
    (every window of the sequence holds each dataset in proportion), not by random draws.
    """

    weights = mixture_weights(config, summaries)
    parts, part_weights = [], []
    for d, summary in enumerate(summaries):
        if weights[d] == 0:
            continue
        ranges = summary.sampling_ranges(config.drop_unlabeled_for(d))
        if not (ranges[:, 1] > ranges[:, 0]).any():
            raise ValueError(
                f"dataset {summary.name!r} has no usable steps ({summary.counts()}; "
                f"drop_unlabeled={config.drop_unlabeled_for(d)})"
            )
        ds = grain.MapDataset.source(FrameSource(d, ranges))
        if config.shuffle:
            ds = ds.shuffle(seed=_sub_seed(seed, 1, d))
        ds = ds.repeat(config.num_epochs)
        parts.append(ds)
        part_weights.append(float(weights[d]))
    if len(parts) == 1:
        mixed = parts[0]
    elif config.num_epochs is None:
        mixed = grain.MapDataset.mix(parts, part_weights)
    else:
        # A finite pass (evaluation, dataset export) must visit every frame once; mixing by weight
        # would stop at the first exhausted dataset, so datasets are concatenated instead.
        mixed = grain.MapDataset.concatenate(parts)
    return mixed.random_map(SampleBuilder(config, readers, summaries), seed=_sub_seed(seed, 2))


def _ensure_absl_flags_parsed() -> None:
    # grain 0.2.18 worker processes read absl flags (google/grain#1355); outside absl.app they are
    # unparsed and mp_prefetch fails, so mark them parsed with their defaults.

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_iterator(
    config: DataConfig, seed: int, process_index: int = 0, process_count: int = 1
) -> "grain.DatasetIterator":
    """Iterator of host-local numpy batch dicts: `config.observation.example_spec()` with a
    leading batch axis, plus HOST_ONLY_KEYS. Bad samples met while reading are replaced, logged
    and counted (IntegrityMonitor).

    Host `process_index` of `process_count` reads the disjoint slice [process_index::process_count]
    of the global example sequence and yields batches of config.batch_size // process_count.
    The returned grain DatasetIterator supports get_state()/set_state() (exact resume) and close()
    (call it when config.num_workers > 0).
    """

    if config.batch_size % process_count:
        raise ValueError(
            f"batch_size {config.batch_size} not divisible by process_count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    readers, summaries = load_summaries(config, progress=process_index == 0)
    ds = make_example_dataset(config, seed, readers, summaries)
    ds = ds[process_index::process_count]
    ds = ds.batch(config.batch_size // process_count, drop_remainder=config.num_epochs is None)
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_buffer_size
        )
    )
    if config.num_workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    # After the workers, in this process: one monitor sees every bad sample this host meets.
    return iter(it_ds.map(IntegrityMonitor(config, readers, summaries)))


def eval_config(config: DataConfig) -> DataConfig:
    """The same mixture read once, in order, centred crops and no augmentation."""
    return dataclasses.replace(config, train=False, shuffle=False, num_epochs=1, num_workers=0)
