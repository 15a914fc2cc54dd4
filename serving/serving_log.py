"""The serving log: a sample of served feature vectors, in the Delta table `<lake>/serving_log`.

A sampled request (each with probability `log_rate`; whole requests, so a logged list can be
studied as a ranking) is handed to a queue and the request goes on. A background thread turns
requests into rows (one per proposal: the request time, ids, model version, the store values the
model read, the bid, the score and rank), a chunk of requests at a time as they come, and appends
them to Delta when `log_batch_rows` rows wait or the oldest has waited `log_flush_s`, and on
shutdown. A full queue, a request Arrow refuses or a failed write drops rows (counted in
`bestmatch_serving_log_dropped`): logging never slows or fails an answer.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from features.offline_layout import ARROW_TYPES, UTC_US, day_of
from features.ranking import STORE_FEATURES
from features.settings import Settings
from features.specs import FEATURES_BY_NAME, FREELANCER
from serving.schemas import RankRequest
from serving.store import RequestFeatures

TABLE = "serving_log"
PARTITION = "day"
log = logging.getLogger("bestmatch.serving")

SCHEMA = pa.schema(
    [
        pa.field("served_at", UTC_US, nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("client_id", pa.string()),
        pa.field("proposal_id", pa.string(), nullable=False),
        pa.field("freelancer_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("degraded", pa.bool_(), nullable=False),
        # When each entity last changed, as the service read it (`_us:<view>`): the consistency
        # check recomputes the offline value as of this time (exact), and as of `served_at`
        # (what a perfectly fresh store would have held) to tell lag from skew.
        *(pa.field(f"{kind}_stamp", UTC_US) for kind in ("job", "client", "freelancer")),
        pa.field("bid_amount", pa.float64(), nullable=False),
        *(pa.field(name, ARROW_TYPES[FEATURES_BY_NAME[name].dtype]) for name in STORE_FEATURES),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),
        pa.field(PARTITION, pa.string(), nullable=False),
    ]
)
_FREELANCER_COLUMNS = frozenset(
    n for n in STORE_FEATURES if FEATURES_BY_NAME[n].entity == FREELANCER
)


def serving_log_uri(settings: Settings) -> str:
    return settings.lake_path(TABLE)


@dataclass(frozen=True, slots=True)
class EntityStamps:
    """When the entities of one answer last changed (µs; None: unknown or not stamped)."""

    job: int | None
    client: int | None
    freelancers: Mapping[str, int | None]


def entity_stamps(found: RequestFeatures) -> EntityStamps:
    return EntityStamps(
        found.job.stamp_us if found.job is not None else None,
        found.client.stamp_us if found.client is not None else None,
        {f: s.stamp_us if s is not None else None for f, s in found.freelancers.items()},
    )


_NO_STAMPS = EntityStamps(None, None, {})


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """What one answer used: kept by reference, turned into rows off the request path."""

    served_at_us: int
    request: RankRequest
    model_version: str
    degraded: bool
    job: dict[str, Any]
    freelancers: dict[str, Mapping[str, Any]]
    scores: np.ndarray
    ranks: np.ndarray
    stamps: EntityStamps = _NO_STAMPS


_FREELANCER_NAMES = tuple(n for n in STORE_FEATURES if n in _FREELANCER_COLUMNS)
_JOB_NAMES = tuple(n for n in STORE_FEATURES if n not in _FREELANCER_COLUMNS)


def request_rows(served: ServedRequest) -> dict[str, list[Any]]:
    """One row per proposal, by column."""
    columns: dict[str, list[Any]] = {field.name: [] for field in SCHEMA}
    _add_rows(columns, served)
    return columns


def _add_rows(columns: dict[str, list[Any]], served: ServedRequest) -> None:
    """Append one request's rows to `columns`, column by column (no per-row objects)."""
    request = served.request
    proposals = request.proposals
    n = len(proposals)
    freelancer_ids = [p.freelancer_id for p in proposals]
    columns["served_at"] += [served.served_at_us] * n
    columns["job_id"] += [request.job_id] * n
    columns["client_id"] += [request.client_id] * n
    columns["proposal_id"] += [p.proposal_id for p in proposals]
    columns["freelancer_id"] += freelancer_ids
    columns["model_version"] += [served.model_version] * n
    columns["degraded"] += [served.degraded] * n
    columns["job_stamp"] += [served.stamps.job] * n
    columns["client_stamp"] += [served.stamps.client] * n
    columns["freelancer_stamp"] += map(served.stamps.freelancers.get, freelancer_ids)
    columns["bid_amount"] += [p.bid_amount for p in proposals]
    freelancers = list(map(served.freelancers.__getitem__, freelancer_ids))
    for name in _FREELANCER_NAMES:
        columns[name] += [values.get(name) for values in freelancers]
    for name in _JOB_NAMES:
        columns[name] += [served.job.get(name)] * n
    columns["score"] += served.scores.tolist()
    columns["rank"] += served.ranks.tolist()
    columns[PARTITION] += [day_of(served.served_at_us)] * n


def rows_table(
    requests: list[ServedRequest], between: Callable[[], None] | None = None
) -> pa.Table:
    """The rows of `requests`, in `SCHEMA` (skill lists may be tuples: Arrow takes any sequence).

    `between` is called after each request's rows and after each column's conversion: the
    writer sleeps there (`YIELD_S`), so that the GIL it holds while building rows is held for
    one such step at a time (measured: 0.1 to 0.3 ms), not for the whole chunk."""
    columns: dict[str, list[Any]] = {field.name: [] for field in SCHEMA}
    for served in requests:
        _add_rows(columns, served)
        if between is not None:
            between()
    arrays = {}
    for field in SCHEMA:
        arrays[field.name] = pa.array(columns.pop(field.name), field.type)
        if between is not None:
            between()
    return pa.table(arrays, schema=SCHEMA)


_STOP = object()
WRITER_NICE = 19
"""The writer thread's nice value (Linux; and that of the Delta writer's Rust threads, which
inherit it when this thread is the first to write Delta, as in the service: checked in
/proc): the answers' threads come first when the cores are busy. A Delta append
of the log runs Rust threads on every core for tens of ms, and at equal priority it stalled the
answers it overlapped: measured at 1 client, with a write every 3 s, p99 6.6, 5.8 and 5.0 ms
against 4.2, 4.9 and 5.0 ms with the writer at 19, and no loss of throughput at 16 clients."""


def _lower_priority() -> int | None:
    """Lower this thread's priority to `WRITER_NICE`: its nice value after (None off Linux, or
    where the system refuses)."""
    if sys.platform != "linux":
        return None
    thread = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, thread, max(WRITER_NICE, os.getpriority(os.PRIO_PROCESS, thread))
        )
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError:
        return None


CHUNK_REQUESTS = 20
"""Sampled requests turned into Arrow together (about 1,000 rows, 10 ms of CPU)."""
CHUNK_PAUSE_S = 0.05
"""The writer's pause after a chunk, while it is not falling behind: answers run meanwhile."""
YIELD_S = 0.0002
"""The writer's sleep between the steps of a chunk (`rows_table`'s `between`). A thread that
releases the GIL without sleeping takes it straight back, and one waiting for it (an answer,
woken by its socket) would then wait for Python's switch interval, 5 ms: longer than an answer.
Sleeping hands the GIL over."""


class ServingLog:
    """The background writer. `offer` never blocks; `close` flushes what is left."""

    def __init__(
        self,
        uri: str,
        *,
        batch_rows: int,
        flush_s: float,
        max_queued: int,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        chunk_requests: int = CHUNK_REQUESTS,
        pause_s: float = CHUNK_PAUSE_S,
        yield_s: float = YIELD_S,
    ) -> None:
        self.uri = uri
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.chunk_requests = chunk_requests
        self.pause_s = pause_s
        self.yield_s = yield_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._on_written = on_written or (lambda _n: None)
        self._on_dropped = on_dropped or (lambda _n: None)
        self.niceness: int | None = None  # the writer thread's, once it runs (Linux)
        self._thread = threading.Thread(target=self._run, name="serving-log", daemon=True)
        self._thread.start()

    def offer(self, served: ServedRequest) -> None:
        try:
            self._queue.put_nowait(served)
        except queue.Full:
            self._on_dropped(len(served.request.proposals))

    def close(self, timeout_s: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        self.niceness = _lower_priority()
        waiting: list[ServedRequest] = []  # not yet Arrow
        converted: list[pa.Table] = []  # Arrow, not yet written
        rows = 0  # in both
        oldest = 0.0
        while True:
            wait = max(0.0, oldest + self.flush_s - time.monotonic()) if rows else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP:
                if not rows:
                    oldest = time.monotonic()
                waiting.append(item)
                rows += len(item.request.proposals)
            due = rows > 0 and (item is None or item is _STOP or rows >= self.batch_rows)
            if len(waiting) >= self.chunk_requests or (due and waiting):
                rows -= self._convert(waiting, converted)
                waiting = []
                if not due and self._queue.qsize() < self.chunk_requests:  # not falling behind
                    time.sleep(self.pause_s)
            if due:
                if converted:
                    self._write(pa.concat_tables(converted), rows)
                converted, rows = [], 0
            if item is _STOP:
                return

    def _between(self) -> None:
        time.sleep(self.yield_s)

    def _convert(self, waiting: list[ServedRequest], converted: list[pa.Table]) -> int:
        """Turn `waiting` into Arrow rows on `converted`; the rows lost if that fails (0 if not).

        Done a chunk of requests at a time as they come, not all at once when the log is
        written: building Arrow columns from Python values holds the GIL, and the 20,000 rows of
        a write held it for about 0.2 s at once, stalling every answer meanwhile. A chunk takes
        about 10 ms of CPU, in steps of 0.1 to 0.3 ms with a sleep between them (the GIL goes to
        an answer that waits for it), and the pause between chunks leaves the core to answers."""
        try:
            converted.append(rows_table(waiting, self._between))
        except Exception as exc:  # a value Arrow refuses: those rows are lost, the log goes on
            lost = sum(len(served.request.proposals) for served in waiting)
            log.error("serving log: %d rows not written: %s", lost, exc)
            self._on_dropped(lost)
            return lost
        return 0

    def _write(self, table: pa.Table, rows: int) -> None:
        from deltalake import write_deltalake

        try:
            write_deltalake(
                self.uri,
                table,
                mode="append",
                partition_by=[PARTITION],
                schema_mode="merge",  # a log written before the stamp columns takes them on
            )
        except Exception as exc:  # a lake away for a while: the sample is lost, serving goes on
            log.error("serving log: %d rows not written to %s: %s", rows, self.uri, exc)
            self._on_dropped(rows)
            return
        self._on_written(rows)
