"""What travels between the flow's steps. Plain picklable values, no Bytewax types."""

from __future__ import annotations

from dataclasses import dataclass

from features.engine import Change, Tick, Update
from features.events import Event, Rejection


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Consecutive raw events from one source partition; `positions[i]` orders `lines[i]`."""

    partition: str
    positions: list[int]
    lines: list[bytes]
    published_ms: int | None = None  # when the oldest event reached the bus (streams only)


@dataclass(frozen=True, slots=True)
class End:
    """The source has no more events: move the clock to `until` (None: the newest event time)."""

    until: int | None


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    partition: str
    positions: list[int]
    lines: list[bytes]
    parsed: list[Event | Rejection]
    seen_us: int
    published_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: str
    position: int
    raw: str
    reason: str
    seen_us: int


@dataclass(frozen=True, slots=True)
class Finish:
    """End of input for a shard: finalise every row at `until`."""

    until: int | None


@dataclass(frozen=True, slots=True)
class ShardWork:
    """Everything one sequencer batch sends to one shard, in stream order."""

    shard: str
    items: list[Update | Tick | Finish]
    published_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ShardOutput:
    """What one shard produced from one batch: final change-log rows and fresh online values."""

    shard: str
    changes: list[Change]
    online: list[Change]
    clock: int
    published_ms: int | None = None  # of the oldest event behind `online`, for freshness


@dataclass(frozen=True, slots=True)
class SequencerOutput:
    work: list[ShardWork]
    dead: list[DeadLetter]
