"""Where features go: the Delta change log (append), Redis (update), and dead letters.

Sinks see replays after a crash, so each is idempotent:
- Delta tables record, per writer lane (a shard, or a source partition), the newest stamp or
  position committed, as a Delta app transaction in the same atomic commit as the rows. A replayed
  row at or before that mark is skipped. A shard emits its rows in stamp order and each stamp's
  rows in one output, so the mark is exact.
- Redis writes are guarded per entity by the stamp they carry: an older value never overwrites a
  newer one (`features.online_layout`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import redis
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from features import offline_layout, online_layout
from features.lake import DEAD_LETTER_SCHEMA, dead_letter_uri
from features.redis_cluster import Cluster
from features.settings import Settings
from features.specs import ENTITIES
from flows.items import DeadLetter, ShardOutput
from flows.metrics import METRICS

_ENTITY = {e.name: e for e in ENTITIES}
DELTA_COMMIT_RETRIES = 15
"""delta-rs's own retries of a commit that another writer beat to a log version."""
COMMIT_ATTEMPTS = 4
"""Whole writes of one commit, after delta-rs's retries or a store error (then it stops the
flow, which replays from its last epoch)."""
COMMIT_BACKOFF_S = 0.5


class _Lanes:
    """Committed marks per lane of one table, loaded lazily from its Delta log."""

    def __init__(self, uri: str, storage: dict[str, str] | None) -> None:
        self.uri = uri
        self.storage = storage
        self.marks: dict[str, int] = {}
        self._table = (
            DeltaTable(uri, storage_options=storage)
            if DeltaTable.is_deltatable(uri, storage_options=storage)
            else None
        )

    def mark(self, lane: str) -> int:
        if lane not in self.marks:
            version = self._table.transaction_version(lane) if self._table else None
            self.marks[lane] = -1 if version is None else version
        return self.marks[lane]

    def commit(self, data: pa.Table, new_marks: dict[str, int], partition_by: list[str]) -> None:
        """Append `data` with `new_marks` in one commit. delta-rs retries a commit that lost the
        race for a log version (appends do not conflict); should that, or the store, still
        fail, the whole write is tried again a few times, after reading the marks back: a
        commit whose answer was lost may have landed, and then it is not written twice."""
        txns = [Transaction(lane, mark) for lane, mark in sorted(new_marks.items())]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                write_deltalake(
                    self.uri,
                    data,
                    mode="append",
                    partition_by=partition_by,
                    storage_options=self.storage,
                    commit_properties=CommitProperties(
                        app_transactions=txns, max_commit_retries=DELTA_COMMIT_RETRIES
                    ),
                )
                break
            except (CommitFailedError, OSError):
                if attempt == COMMIT_ATTEMPTS:
                    raise
                time.sleep(COMMIT_BACKOFF_S * attempt)
                if self._committed(new_marks):
                    break
        self.marks.update(new_marks)

    def _committed(self, new_marks: dict[str, int]) -> bool:
        """Whether the log already holds these marks (a commit that landed unbeknown)."""
        try:
            table = DeltaTable(self.uri, storage_options=self.storage)
        except (TableNotFoundError, OSError):
            return False
        versions = {lane: table.transaction_version(lane) for lane in new_marks}
        return all(v is not None and v >= new_marks[lane] for lane, v in versions.items())


class _ChangelogPartition(StatefulSinkPartition[ShardOutput, None]):
    def __init__(self, settings: Settings, trigger_s: float, max_rows: int) -> None:
        self._lanes = {
            e.name: _Lanes(offline_layout.changelog_uri(settings, e), settings.storage_options)
            for e in ENTITIES
        }
        self._tables: dict[str, list[pa.Table]] = defaultdict(list)
        self._marks: dict[str, dict[str, int]] = defaultdict(dict)
        self._buffered = 0
        self._trigger_s = trigger_s
        self._max_rows = max_rows
        self._last_flush = time.monotonic()
        # Commits run on a thread of their own, in order, so a stream's next batches (and their
        # Redis writes) do not wait for Delta; an epoch ends only once they are all done.
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="changelog")
        self._commits: list[Future[None]] = []

    def write_batch(self, values: list[ShardOutput]) -> None:
        self._reap()
        for out in values:
            lane = f"shard-{out.shard}"
            for name, table in out.tables.items():
                lanes = self._lanes[name]
                stamps = table.column(offline_layout.TIMESTAMP_COLUMN).cast(pa.int64())
                newest = pc.max(stamps).as_py()
                mark = lanes.mark(lane)
                if newest <= mark:
                    continue  # already committed by an earlier run
                if pc.min(stamps).as_py() <= mark:
                    table = table.filter(pc.greater(stamps, mark))
                self._tables[name].append(table)
                self._marks[name][lane] = newest
                self._buffered += table.num_rows
        if (
            self._buffered >= self._max_rows
            or time.monotonic() - self._last_flush >= self._trigger_s
        ):
            self.flush()

    def flush(self) -> None:
        # Take the buffer before committing: if a commit is interrupted (Ctrl-C lands here),
        # `close` must not commit the same rows again. Rows of a commit that never happened are
        # replayed from the last epoch on restart, and the marks keep out what did commit.
        buffered, marks = self._tables, self._marks
        self._tables, self._marks = defaultdict(list), defaultdict(dict)
        self._buffered = 0
        self._last_flush = time.monotonic()
        for name, tables in buffered.items():
            if tables:
                self._commits.append(
                    self._committer.submit(self._commit, name, tables, marks[name])
                )

    def _commit(self, name: str, tables: list[pa.Table], marks: dict[str, int]) -> None:
        table = pa.concat_tables(tables)
        self._lanes[name].commit(table, marks, [offline_layout.PARTITION_COLUMN])
        METRICS.changes.inc(table.num_rows)

    def _reap(self) -> None:
        """Raise a failed commit's error here, in the flow; forget the finished ones."""
        while self._commits and self._commits[0].done():
            self._commits.pop(0).result()

    def _wait(self) -> None:
        while self._commits:
            self._commits.pop(0).result()

    def snapshot(self) -> None:
        # An epoch ends: everything before it must be durable before Bytewax records the epoch.
        self.flush()
        self._wait()

    def close(self) -> None:
        try:
            self.flush()
            self._wait()
        finally:
            self._committer.shutdown(wait=True)


class ChangelogSink(FixedPartitionedSink[ShardOutput, None]):
    """The offline store: append each entity's change-log rows to its Delta table, through
    `writers` partitions that each commit the rows of their own shards."""

    def __init__(
        self, settings: Settings, trigger_s: float = 0.0, max_rows: int = 500_000, writers: int = 1
    ):
        self.settings = settings
        self.trigger_s = trigger_s
        self.max_rows = max_rows
        self.writers = writers

    def list_parts(self) -> list[str]:
        return [f"writer-{i}" for i in range(self.writers)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ChangelogPartition:
        # deltalake imports pandas on a first write: do it now, not while a stream is waiting
        import pandas  # noqa: F401
        import pyarrow.dataset  # noqa: F401

        offline_layout.create_changelog_tables(self.settings)
        return _ChangelogPartition(self.settings, self.trigger_s, self.max_rows)


class _DeadLetterPartition(StatefulSinkPartition[DeadLetter, None]):
    def __init__(self, uri: str, storage: dict[str, str] | None) -> None:
        self._lanes = _Lanes(uri, storage)
        self._rows: list[DeadLetter] = []

    def write_batch(self, values: list[DeadLetter]) -> None:
        for letter in values:
            if letter.position > self._lanes.mark(f"source-{letter.partition}"):
                self._rows.append(letter)
        self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []  # taken first, as in the change log's flush
        table = pa.Table.from_pydict(
            {
                "source": [r.partition for r in rows],
                "position": [r.position for r in rows],
                "raw": [r.raw for r in rows],
                "reason": [r.reason for r in rows],
                "seen": [r.seen_us for r in rows],
            },
            schema=DEAD_LETTER_SCHEMA,
        )
        marks: dict[str, int] = {}
        for r in rows:
            marks[f"source-{r.partition}"] = max(marks.get(f"source-{r.partition}", -1), r.position)
        self._lanes.commit(table, marks, [])

    def snapshot(self) -> None:
        self.flush()

    def close(self) -> None:
        self.flush()


class DeadLetterSink(FixedPartitionedSink[DeadLetter, None]):
    """Events that broke the contract, with their raw text, the reason and when they were seen."""

    def __init__(self, settings: Settings):
        self.uri = dead_letter_uri(settings)
        self.storage = settings.storage_options

    def list_parts(self) -> list[str]:
        return ["dead_letters"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.uri, self.storage)


class _OnlinePartition(StatelessSinkPartition[ShardOutput]):
    def __init__(self, url: str, cluster: bool, project: str) -> None:
        self._client: redis.Redis | Cluster = Cluster(url) if cluster else redis.Redis.from_url(url)
        self._project = project

    def write_batch(self, items: list[ShardOutput]) -> None:
        updates = [
            online_layout.EntityUpdate(_ENTITY[c.entity], c.entity_id, c.values, c.stamp)
            for out in items
            for c in out.online
        ]
        if updates:
            online_layout.write_entities(self._client, self._project, updates)
            METRICS.online_writes.inc(len(updates))
        now = time.time()
        for out in items:
            if out.published_ms and out.online:
                METRICS.freshness.observe(max(0.0, now - out.published_ms / 1000))
        if items:
            clock = max(out.clock for out in items)
            METRICS.clock.set(clock / 1e6)
            METRICS.lag.set(time.time() - clock / 1e6)

    def close(self) -> None:
        self._client.close()


class OnlineSink(DynamicSink[ShardOutput]):
    """The online store: each changed entity's latest values, in Feast's Redis layout, on one
    Redis or a Redis Cluster's masters."""

    def __init__(self, settings: Settings):
        self.url = settings.redis_url
        self.cluster = settings.redis_cluster
        self.project = settings.feast_project

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OnlinePartition:
        return _OnlinePartition(self.url, self.cluster, self.project)
