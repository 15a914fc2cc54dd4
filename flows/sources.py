"""Where events come from: JSON Lines files (backfill) and a Redis Stream (stream).

Both yield `RawBatch`es of many events at once (Bytewax's cost is per item, so one item per
batch), and positions that order them within their partition and resume them after a crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from features import redis_cluster
from features.bus import EVENT_FIELD, open_events
from flows.items import End, RawBatch


class _FilePartition(StatefulSourcePartition[RawBatch | End, tuple[int, int]]):
    def __init__(
        self, path: Path, batch_size: int, until: int | None, resume: tuple[int, int] | None
    ):
        self._file = open_events(path)
        self._line = 0
        self._number = 0
        self._batch_size = batch_size
        self._until = until
        self._done = False
        if resume is not None:  # skip what an earlier run already read
            line, self._number = resume
            for _ in range(line):
                self._file.readline()
            self._line = line

    def next_batch(self) -> Iterable[RawBatch | End]:
        if self._done:
            raise StopIteration
        lines = self._file.readlines(self._batch_size * 400)
        number = self._number
        self._number += 1
        if not lines:
            self._done = True
            return [End(self._until, "file", number)]
        start = self._line
        self._line += len(lines)
        kept = [(start + i, line.rstrip(b"\r\n")) for i, line in enumerate(lines) if line.strip()]
        return [RawBatch("file", [p for p, _ in kept], [line for _, line in kept], None, number)]

    def snapshot(self) -> tuple[int, int]:
        return self._line, self._number

    def close(self) -> None:
        self._file.close()


class JsonlSource(FixedPartitionedSource[RawBatch | End, tuple[int, int]]):
    """A JSON Lines file (gzip if it ends in .gz), then an `End(until)`."""

    def __init__(self, path: Path, batch_size: int = 2000, until: int | None = None):
        self.path = path
        self.batch_size = batch_size
        self.until = until

    def list_parts(self) -> list[str]:
        return ["file"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FilePartition:
        return _FilePartition(self.path, self.batch_size, self.until, resume_state)


def entry_position(entry_id: bytes) -> int:
    """A Redis Stream entry id (`<ms>-<seq>`) as one ordered integer."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms) * 1_000_000 + int(seq or 0)


class _StreamPartition(StatefulSourcePartition[RawBatch | End, tuple[str, int]]):
    def __init__(
        self,
        url: str,
        key: str,
        batch_size: int,
        poll: timedelta,
        close_after: timedelta | None,
        resume: tuple[str, int] | None,
        cluster: bool = False,
    ):
        self._client = redis_cluster.client(url, cluster)
        self._key = key
        self._last, self._number = resume or ("0-0", 0)
        self._batch_size = batch_size
        self._poll = poll
        self._close_after_s = None if close_after is None else close_after.total_seconds()
        self._awake: datetime | None = None
        self._open_since: float | None = None  # monotonic time of the first read since a close

    def next_batch(self) -> list[RawBatch | End]:
        reply: Any = self._client.xread({self._key: self._last}, count=self._batch_size)
        if not reply:
            self._awake = datetime.now(UTC) + self._poll
            return self._quiet()
        self._awake = None
        entries = reply[0][1]
        self._last = entries[-1][0].decode()
        positions = [entry_position(entry_id) for entry_id, _ in entries]
        lines = [fields.get(EVENT_FIELD, b"") for _, fields in entries]
        self._open_since = time.monotonic()
        self._number += 1
        published = positions[0] // 1_000_000
        return [RawBatch(self._key, positions, lines, published, self._number - 1)]

    def _quiet(self) -> list[RawBatch | End]:
        """After `close_after` without a new event, one `End(None)`: the flow closes the current
        instant, so the change log gets its rows without waiting for the next event."""
        if self._open_since is None or self._close_after_s is None:
            return []
        if time.monotonic() - self._open_since < self._close_after_s:
            return []
        self._open_since = None
        self._number += 1
        return [End(None, self._key, self._number - 1)]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[str, int]:
        return self._last, self._number

    def close(self) -> None:
        self._client.close()


class RedisStreamSource(FixedPartitionedSource[RawBatch | End, tuple[str, int]]):
    """Redis Streams, one partition per stream key, resumed from the last entry id read.

    A stream that goes quiet for `close_after` (wall clock) emits one `End(None)`: the flow then
    closes its current instant, as a file's end does, and the change log receives the rows of
    that instant; a later event at the very same instant is stamped one microsecond after it.
    Without this, the offline store would lag the online one by the last instant until the next
    event arrives. None: never.
    """

    def __init__(
        self,
        url: str,
        keys: list[str],
        batch_size: int = 2000,
        poll: timedelta = timedelta(milliseconds=2),
        close_after: timedelta | None = timedelta(seconds=1),
        cluster: bool = False,
    ):
        self.url = url
        self.cluster = cluster
        self.keys = keys
        self.batch_size = batch_size
        self.poll = poll
        self.close_after = close_after

    def list_parts(self) -> list[str]:
        return list(self.keys)

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[str, int] | None
    ) -> _StreamPartition:
        return _StreamPartition(
            self.url,
            for_part,
            self.batch_size,
            self.poll,
            self.close_after,
            resume_state,
            self.cluster,
        )
