"""What travels between the flow's steps. Plain picklable values, no Bytewax types.

Every item carries a whole batch as columns (numpy arrays, Arrow tables), so a step's cost is per
batch and an item crossing to another process pickles as a few buffers, not one object per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def line(self, i: int) -> str:
        return self.raw[self.offsets[i] : self.offsets[i + 1]].decode("utf-8", "replace")


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
