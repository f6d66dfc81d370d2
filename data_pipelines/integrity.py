"""Data integrity: record checksums, the errors that name a bad record, and the bad-data budget.

TFRecord frames every record as
    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
(little endian; CRC-32C, Castagnoli, with TensorFlow's mask). The reader verifies both checksums on
every read; a record that fails is skipped, counted and named (dataset, shard, record), and a run
stops only when more than `DataConfig.max_bad_fraction` of a dataset's records are bad.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Mapping

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`: ((crc >> 15) | (crc << 17)) + 0xa282ead8 mod 2**32."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


class CorruptRecordError(RuntimeError):
    """A record could not be read, failed its checksum, or could not be parsed.

    Carries where it is: dataset directory, shard file name, position in the shard and index in
    the dataset (-1 when the framing is broken and the record has no index).
    """

    def __init__(
        self,
        message: str,
        dataset: str = "",
        shard: str = "",
        shard_record: int = -1,
        record: int = -1,
        reason: str = "",
    ):
        super().__init__(message)
        self.dataset, self.shard = dataset, shard
        self.shard_record, self.record = shard_record, record
        self.reason = reason or message  # the message without the location


class BadImageError(RuntimeError):
    """An image of an otherwise readable record cannot be decoded."""


class DataIntegrityError(RuntimeError):
    """Too much of a dataset is bad to go on (or a bad sample has no good replacement)."""


# Reasons a record is left out of sampling, as counted in the dataset summary.
CORRUPT = "corrupt"  # checksum, framing or parse failure
ZERO_STEPS = "zero_steps"  # a readable episode with no steps
UNUSABLE = "unusable"  # readable, but rejected by its source (e.g. Bridge episodes < 3 steps)
SKIP_KINDS = (CORRUPT, ZERO_STEPS, UNUSABLE)


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """One record (or, for broken framing, a run of `count` records) left out of sampling.

    record: index in the dataset, -1 when the record cannot be located (broken framing).
    shard: shard file name; shard_record: position of the (first) record in that shard.
    """

    kind: str
    record: int
    shard: str
    shard_record: int
    reason: str
    count: int = 1

    def __post_init__(self):
        if self.kind not in SKIP_KINDS:
            raise ValueError(f"unknown skip kind {self.kind!r}; expected one of {SKIP_KINDS}")

    def describe(self, dataset: str) -> str:
        what = f"record {self.record}" if self.record >= 0 else "unindexed record"
        n = f" ({self.count} records)" if self.count != 1 else ""
        return (
            f"dataset {dataset!r} shard {self.shard} record {self.shard_record} "
            f"({what}){n}: {self.kind}: {self.reason}"
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SkippedRecord":
        return cls(**d)


def bad_by_shard(skipped: Iterable[SkippedRecord], kind: str = CORRUPT) -> dict[str, int]:
    """{shard name: number of records of `kind`}."""
    out: dict[str, int] = collections.Counter()
    for s in skipped:
        if s.kind == kind:
            out[s.shard] += s.count
    return dict(out)


def worst_shards(bad: Mapping[str, int], records: Mapping[str, int], n: int = 5) -> str:
    """'shard a: 3 of 40 bad, shard b: 1 of 38 bad' for the n shards with the most bad records."""
    ranked = sorted(bad.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    parts = [f"{name}: {k} of {records.get(name, '?')} bad" for name, k in ranked]
    more = f" (+{len(bad) - n} more shards)" if len(bad) > n else ""
    return ", ".join(parts) + more


def check_bad_fraction(
    dataset: str,
    num_bad: int,
    num_records: int,
    max_bad_fraction: float,
    bad: Mapping[str, int],
    records: Mapping[str, int],
) -> None:
    """Raises DataIntegrityError when more than max_bad_fraction of the records are bad."""
    if num_records <= 0 or num_bad / num_records <= max_bad_fraction:
        return
    raise DataIntegrityError(
        f"dataset {dataset!r}: {num_bad} of {num_records} records are bad "
        f"({num_bad / num_records:.2%} > max_bad_fraction {max_bad_fraction:.2%}); worst shards: "
        f"{worst_shards(bad, records)}. Re-download or repair those shards (or raise "
        "DataConfig.max_bad_fraction to train on the rest)."
    )
