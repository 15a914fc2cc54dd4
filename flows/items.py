"""What travels between the flow's steps. Plain picklable values, no Bytewax types.

Every item carries a whole batch as columns (numpy arrays, Arrow tables), so a step's cost is per
batch and an item crossing to another process pickles as a few buffers, not one object per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from features.batch_events import EventBatch
from features.engine import Change, KindUpdates
from features.events import Rejection


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Consecutive raw events from one source partition; `positions[i]` orders `lines[i]`.

    `number` counts the partition's items (batches and ends) from 0, and resumes with the
    source: the sequencer takes a partition's items in this order, wherever they were parsed.
    """

    partition: str
    positions: list[int]
    lines: list[bytes]
    published_ms: int | None = None  # when the oldest event reached the bus (streams only)
    number: int = 0


@dataclass(frozen=True, slots=True)
class End:
    """The source has no more events: move the clock to `until` (None: the newest event time)."""

    until: int | None
    partition: str = ""
    number: int = 0


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A raw batch parsed: its valid events as columns, its rejections, and for each entity kind
    the shard of each event's entity (-1 where the event does not change that kind)."""

    partition: str
    positions: np.ndarray  # int64, one per raw line
    raw: bytes  # the raw lines, joined, for dead letters
    offsets: np.ndarray  # int64: line i is raw[offsets[i]:offsets[i + 1]]
    events: EventBatch
    rejected: list[tuple[int, Rejection]]  # (line, why)
    shards: dict[str, np.ndarray]
    seen_us: int
    published_ms: int | None = None
    number: int = 0
    # a merge of several partitions' lines (`gather_lines`): their names, and of each line the
    # index of its partition among them; None: every line is from `partition`
    sources: tuple[str, ...] = ()
    source_of: np.ndarray | None = None

    def line(self, i: int) -> str:
        return self.raw[self.offsets[i] : self.offsets[i + 1]].decode("utf-8", "replace")

    def partition_of(self, i: int) -> str:
        """The source partition of line `i`."""
        if self.source_of is None:
            return self.partition
        return self.sources[int(self.source_of[i])]

    def __len__(self) -> int:
        """Its raw lines (valid or rejected)."""
        return len(self.positions)


_ROW_COLUMNS = ("event_type", "event_time", "bid_amount", "action")
_ID_COLUMNS = ("event_id", "freelancer_id", "job_id", "client_id")


def gather_lines(batches: Sequence[ParsedBatch], picks: np.ndarray) -> ParsedBatch:
    """One batch of the batches' lines picked in this order: `picks` indexes the batches' lines
    numbered one after another (batch 0's lines, then batch 1's, ...). Valid events keep their
    columns and shards, rejections their reasons, each line its partition and position.

    The merge of a Kafka topic's partitions (`flows.kafka`) builds its batches with it."""
    assert batches, "gather_lines needs at least one batch"
    picks = np.asarray(picks, np.int64)
    sizes = [len(b) for b in batches]
    line_base = np.cumsum([0, *sizes])
    row_base = np.cumsum([0, *(len(b.events) for b in batches)])
    # the row of each line's event (-1: rejected), over the concatenation
    row_of = np.full(int(line_base[-1]), -1, np.int64)
    for k, b in enumerate(batches):
        row_of[line_base[k] + b.events.line] = row_base[k] + np.arange(len(b.events))
    rows = row_of[picks]
    valid = rows >= 0
    taken = rows[valid]
    new_row = np.full(int(row_base[-1]), -1, np.int64)
    new_row[taken] = np.arange(len(taken))
    new_line = np.full(int(line_base[-1]), -1, np.int64)
    new_line[picks] = np.arange(len(picks))
    wanted = taken.tolist()

    def rows_of(name: str) -> np.ndarray:
        return np.concatenate([getattr(b.events, name) for b in batches])[taken]

    def ids_of(name: str) -> list:
        joined = [v for b in batches for v in getattr(b.events, name)]
        return [joined[r] for r in wanted]

    profiles: dict[int, Any] = {}
    rejected: list[tuple[int, Rejection]] = []
    for k, b in enumerate(batches):
        for row, event in b.events.profiles.items():
            at = int(new_row[row_base[k] + row])
            if at >= 0:
                profiles[at] = event
        for line, why in b.rejected:
            at = int(new_line[line_base[k] + line])
            if at >= 0:
                rejected.append((at, why))
    rejected.sort(key=lambda r: r[0])
    events = EventBatch(
        line=np.flatnonzero(valid).astype(np.int64),
        profiles=dict(sorted(profiles.items())),
        **{name: rows_of(name) for name in _ROW_COLUMNS},
        **{name: ids_of(name) for name in _ID_COLUMNS},
    )
    raws = [b.raw for b in batches]
    starts = np.concatenate([b.offsets[:-1] for b in batches])[picks].tolist()
    ends = np.concatenate([b.offsets[1:] for b in batches])[picks].tolist()
    batch_of = (np.searchsorted(line_base, picks, side="right") - 1).tolist()
    pieces = [raws[k][a:z] for k, a, z in zip(batch_of, starts, ends, strict=True)]
    lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    names = tuple(dict.fromkeys(b.partition for b in batches))
    index = np.array([names.index(b.partition) for b in batches], np.int64)
    published = [b.published_ms for b in batches if b.published_ms]
    return ParsedBatch(
        names[0],
        np.concatenate([b.positions for b in batches])[picks],
        b"".join(pieces),
        offsets,
        events,
        rejected,
        {
            kind: np.concatenate([b.shards[kind] for b in batches])[taken]
            for kind in batches[0].shards
        },
        min(b.seen_us for b in batches),
        min(published, default=None),
        0,
        names,
        index[np.asarray(batch_of, np.int64)] if len(names) > 1 else None,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: str
    position: int
    raw: str
    reason: str
    seen_us: int


@dataclass(slots=True)
class Segment:
    """Updates for one shard up to a clock, then, if `finish`, the end of input at `until`."""

    updates: dict[str, list[KindUpdates]] = field(default_factory=dict)
    tick: int = -(2**62)
    finish: bool = False
    until: int | None = None


@dataclass(frozen=True, slots=True)
class ShardWork:
    """Everything one sequencer batch sends to one shard, in stream order."""

    shard: str
    segments: list[Segment]
    published_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ShardOutput:
    """What one shard produced from one batch: final change-log rows (a change-log table per
    entity kind, rows in stamp order) and fresh online values."""

    shard: str
    tables: dict[str, pa.Table]
    online: list[Change]
    clock: int
    published_ms: int | None = None  # of the oldest event behind `online`, for freshness

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


@dataclass(frozen=True, slots=True)
class SequencerOutput:
    work: list[ShardWork]
    dead: list[DeadLetter]
