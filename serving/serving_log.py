"""The serving log: a sample of served feature vectors, in the Delta table `<lake>/serving_log`.

A sampled request (each with probability `log_rate`; whole requests, so a logged list can be
studied as a ranking) is handed to a queue and the request goes on. A feeder thread sends each
one, compactly pickled, to the writer: a process of its own (`writer_main`), in a process group
of its own (a terminal's Ctrl-C reaches the service, which closes the log, not the writer, which
would lose what it holds) and at nice 19, so that answers come first when the cores are busy. The
writer turns requests into rows (one per proposal: the request time, ids, model
version, the store values the model read, the bid, the score and rank), a chunk of requests at a
time as they come, and appends them to Delta when `log_batch_rows` rows wait or the oldest has
waited `log_flush_s`, and when the service closes the log (the end of its input). A full queue, a
request Arrow refuses or a failed write drops rows (counted in `bestmatch_serving_log_dropped`):
logging never slows or fails an answer.

Why a process: building Arrow columns from Python values holds the GIL, and so did the writer
thread that did it in the service (about 0.3 ms a request, in steps between answers); measured at
1 client, the log at its default rate cost the service's p99 about 0.85 ms against no log. The
feeder's share is what it sends: an entity's values (shared between requests by the store's memo)
go once and are named by a number afterwards, so a request costs tens of µs to send.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa

from features.offline_layout import ARROW_TYPES, UTC_US, day_of
from features.ranking import STORE_FEATURES
from features.specs import FEATURES_BY_NAME, FREELANCER
from serving.priority import lower_priority

if TYPE_CHECKING:  # not imported by the writer process, which needs none of them
    from features.settings import Settings
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


@dataclass(frozen=True, slots=True)
class _Logged:
    """One served request as the writer builds its rows from (plain values, no pydantic)."""

    served_at_us: int
    job_id: str
    client_id: str | None
    proposal_ids: list[str]
    freelancer_ids: list[str]
    bids: list[float]
    model_version: str
    degraded: bool
    job: Mapping[str, Any]
    freelancers: Mapping[str, Mapping[str, Any]]
    scores: list[float]
    ranks: list[int]
    job_stamp: int | None
    client_stamp: int | None
    freelancer_stamps: Mapping[str, int | None]


def _logged(served: ServedRequest) -> _Logged:
    request = served.request
    proposals = request.proposals
    return _Logged(
        served.served_at_us,
        request.job_id,
        request.client_id,
        [p.proposal_id for p in proposals],
        [p.freelancer_id for p in proposals],
        [p.bid_amount for p in proposals],
        served.model_version,
        served.degraded,
        served.job,
        served.freelancers,
        served.scores.tolist(),
        served.ranks.tolist(),
        served.stamps.job,
        served.stamps.client,
        served.stamps.freelancers,
    )


def _add_rows(columns: dict[str, list[Any]], logged: _Logged) -> None:
    """Append one request's rows to `columns`, column by column (no per-row objects)."""
    n = len(logged.proposal_ids)
    freelancer_ids = logged.freelancer_ids
    columns["served_at"] += [logged.served_at_us] * n
    columns["job_id"] += [logged.job_id] * n
    columns["client_id"] += [logged.client_id] * n
    columns["proposal_id"] += logged.proposal_ids
    columns["freelancer_id"] += freelancer_ids
    columns["model_version"] += [logged.model_version] * n
    columns["degraded"] += [logged.degraded] * n
    columns["job_stamp"] += [logged.job_stamp] * n
    columns["client_stamp"] += [logged.client_stamp] * n
    columns["freelancer_stamp"] += map(logged.freelancer_stamps.get, freelancer_ids)
    columns["bid_amount"] += logged.bids
    freelancers = list(map(logged.freelancers.__getitem__, freelancer_ids))
    for name in _FREELANCER_NAMES:
        columns[name] += [values.get(name) for values in freelancers]
    for name in _JOB_NAMES:
        columns[name] += [logged.job.get(name)] * n
    columns["score"] += logged.scores
    columns["rank"] += logged.ranks
    columns[PARTITION] += [day_of(logged.served_at_us)] * n


def rows_table(requests: list[ServedRequest]) -> pa.Table:
    """The rows of `requests`, in `SCHEMA` (what the writer appends for them)."""
    return rows_of([_logged(served) for served in requests])


def rows_of(requests: list[_Logged]) -> pa.Table:
    """Skill lists may be tuples: Arrow takes any sequence."""
    columns: dict[str, list[Any]] = {field.name: [] for field in SCHEMA}
    for logged in requests:
        _add_rows(columns, logged)
    arrays = {field.name: pa.array(columns.pop(field.name), field.type) for field in SCHEMA}
    return pa.table(arrays, schema=SCHEMA)


# --- what the feeder sends the writer ------------------------------------------------------------

_FRAME = struct.Struct(">I")
_FIELDS = tuple(field.name for field in dataclasses.fields(_Logged))
_FREELANCERS_AT = _FIELDS.index("freelancers")
_EMPTY = -1  # an entity's values: none (an unknown freelancer)
KEPT_VALUES = 1 << 15
"""Entity values the feeder has sent and names by number (it holds a reference to each, so the
number stays theirs); when full, both sides start over."""


class Encoder:
    """The feeder's side of the wire: a request as one pickled tuple. An entity's values mapping
    (the same object request after request: the store's memo shares them) is pickled the first
    time and named by its number after that."""

    def __init__(self, kept: int = KEPT_VALUES) -> None:
        self.kept = kept
        self._numbers: dict[int, tuple[Mapping[str, Any], int]] = {}  # id -> (values, number)

    def frame(self, served: ServedRequest) -> bytes:
        """The request's frame: its length (4 bytes), then its pickle."""
        logged = _logged(served)
        fresh = len(self._numbers) + len(served.freelancers) > self.kept
        if fresh:
            self._numbers.clear()
        numbers = self._numbers
        new: list[tuple[int, Mapping[str, Any]]] = []
        refs: list[int] = []
        for values in served.freelancers.values():
            if not values:
                refs.append(_EMPTY)
                continue
            # the table holds each mapping it numbers, so no other object can take its id
            known = numbers.get(id(values))
            if known is None:
                known = numbers[id(values)] = (values, len(numbers))
                new.append((known[1], values))
            refs.append(known[1])
        fields = [getattr(logged, name) for name in _FIELDS]
        fields[_FREELANCERS_AT] = list(served.freelancers)  # the ids, their values by `refs`
        body = pickle.dumps((fresh, new, refs, fields), pickle.HIGHEST_PROTOCOL)
        return _FRAME.pack(len(body)) + body


class Decoder:
    """The writer's side: a frame's pickle back to the request, its values by number."""

    def __init__(self) -> None:
        self._values: dict[int, Mapping[str, Any]] = {}

    def request(self, body: bytes) -> _Logged:
        fresh, new, refs, fields = pickle.loads(body)  # noqa: S301  # our feeder's, our pipe
        if fresh:
            self._values.clear()
        self._values.update(new)
        values = self._values
        fields[_FREELANCERS_AT] = {
            fid: values[ref] if ref != _EMPTY else {}
            for fid, ref in zip(fields[_FREELANCERS_AT], refs, strict=True)
        }
        return _Logged(*fields)


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's pickle; None at the end of the stream (or within a frame cut short)."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    return body if len(body) == size else None


# --- the writer process --------------------------------------------------------------------------

_STOP = object()
WRITER_NICE = 19
"""The writer process's nice value (its Delta threads inherit it): the answers come first when the
cores are busy. A Delta append of the log runs Rust threads on every core for tens of ms, and at
equal priority it stalled the answers it overlapped. The writer stays in the service's session,
so the scheduler weighs it against the service by this value alone."""
CHUNK_REQUESTS = 20
"""Requests the writer turns into Arrow together (about 1,000 rows, 10 ms of CPU), as they come,
so that a write has little left to do."""


class _Writer:
    """The writer's loop: requests from a queue (`Decoder`'s), rows to Delta. `report` tells the
    service what happened to rows ("written N", "dropped N")."""

    def __init__(
        self,
        uri: str,
        batch_rows: int,
        flush_s: float,
        chunk_requests: int,
        report: Callable[[str, int], None],
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.storage_options = storage_options
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.chunk_requests = chunk_requests
        self.report = report
        self.queue: queue.Queue[Any] = queue.Queue()

    def run(self) -> None:
        waiting: list[_Logged] = []  # not yet Arrow
        converted: list[pa.Table] = []  # Arrow, not yet written
        rows = 0  # in both
        oldest = 0.0
        while True:
            wait = max(0.0, oldest + self.flush_s - time.monotonic()) if rows else None
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP:
                if not rows:
                    oldest = time.monotonic()
                waiting.append(item)
                rows += len(item.proposal_ids)
            due = rows > 0 and (item is None or item is _STOP or rows >= self.batch_rows)
            if len(waiting) >= self.chunk_requests or (due and waiting):
                rows -= self._convert(waiting, converted)
                waiting = []
            if due:
                if converted:
                    self._write(pa.concat_tables(converted), rows)
                converted, rows = [], 0
            if item is _STOP:
                return

    def _convert(self, waiting: list[_Logged], converted: list[pa.Table]) -> int:
        """Turn `waiting` into Arrow rows on `converted`; the rows lost if that fails (0 if not)."""
        try:
            converted.append(rows_of(waiting))
        except Exception as exc:  # a value Arrow refuses: those rows are lost, the log goes on
            lost = sum(len(logged.proposal_ids) for logged in waiting)
            log.error("serving log: %d rows not written: %s", lost, exc)
            self.report("dropped", lost)
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
                storage_options=self.storage_options,
            )
        except Exception as exc:  # a lake away for a while: the sample is lost, serving goes on
            log.error("serving log: %d rows not written to %s: %s", rows, self.uri, exc)
            self.report("dropped", rows)
            return
        self.report("written", rows)


def writer_main() -> None:
    """The writer process: its settings as JSON in argv[1], frames on stdin until it ends, what
    became of the rows as lines on stdout ("nice N" first, then "written N" or "dropped N")."""
    import json

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    given = json.loads(sys.argv[1])
    out = sys.stdout
    lock = threading.Lock()

    def report(what: str, n: int) -> None:
        with lock:
            out.write(f"{what} {n}\n")
            out.flush()

    nice = lower_priority(WRITER_NICE)
    if nice is not None:
        report("nice", nice)
    # Imported now, while the service starts, not at the first write: about a second of CPU
    # (deltalake, and pandas with it) that would otherwise land among the answers.
    import deltalake  # noqa: F401

    writer = _Writer(
        given["uri"],
        given["batch_rows"],
        given["flush_s"],
        given["chunk_requests"],
        report,
        given.get("storage_options"),
    )
    thread = threading.Thread(target=writer.run, name="serving-log-writer")
    thread.start()
    decoder = Decoder()
    stream = sys.stdin.buffer
    try:
        while (body := read_frame(stream)) is not None:
            try:
                item = decoder.request(body)
            except Exception as exc:  # a frame this writer cannot read: that request only
                log.error("serving log: a request not read: %s", exc)
                continue
            writer.queue.put(item)
    finally:
        writer.queue.put(_STOP)
        thread.join()


# --- the service's side --------------------------------------------------------------------------

YIELD_S = 0.0002
"""The feeder's sleep after each request it sends. A thread that releases the GIL without
sleeping takes it straight back, and one waiting for it (an answer, woken by its socket) would
then wait for Python's switch interval, 5 ms: longer than an answer. Sleeping hands it over."""
RESTART_S = 5.0
"""A writer that died is started again on the next request, at most once per this long (the
requests in between are dropped and counted)."""
CLOSE_SLACK_S = 10.0
"""`close` waits this long beyond its timeout for the feeder: to send the requests still queued,
and to read the writer's last reports."""


class ServingLog:
    """The service's side: `offer` never blocks; `close` ends the writer's input and waits for
    it to write what is left."""

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        batch_rows: int,
        flush_s: float,
        max_queued: int,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        chunk_requests: int = CHUNK_REQUESTS,
        yield_s: float = YIELD_S,
        restart_s: float = RESTART_S,
    ) -> None:
        self.uri = uri
        self.yield_s = yield_s
        self.restart_s = restart_s
        self._given = {
            "uri": uri,
            "storage_options": storage_options,
            "batch_rows": batch_rows,
            "flush_s": flush_s,
            "chunk_requests": chunk_requests,
        }
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._on_written = on_written or (lambda _n: None)
        self._on_dropped = on_dropped or (lambda _n: None)
        self.niceness: int | None = None  # the writer process's, once it runs (Linux)
        self._process: subprocess.Popen[bytes] | None = None
        self._reports: threading.Thread | None = None
        self._stop_timeout_s = 60.0  # `close`'s
        self._start_writer()
        self._thread = threading.Thread(target=self._feed, name="serving-log", daemon=True)
        self._thread.start()

    @property
    def writer_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def writer_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def offer(self, served: ServedRequest) -> None:
        try:
            self._queue.put_nowait(served)
        except queue.Full:
            self._on_dropped(len(served.request.proposals))

    def close(self, timeout_s: float = 60.0) -> None:
        """End the writer's input and wait up to `timeout_s` for it to write what is left (then
        it is killed, and what it held is lost)."""
        self._stop_timeout_s = timeout_s
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s + CLOSE_SLACK_S)

    def _start_writer(self) -> None:
        import json

        self._started_at = time.monotonic()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = "from serving.serving_log import writer_main; writer_main()"
        # A process group of its own: a Ctrl-C at the terminal (SIGINT to the foreground group)
        # reaches the service, which closes the log; the writer then writes what is left and
        # stops at the end of its input.
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(self._given)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            process_group=0,
        )
        self._reports = threading.Thread(
            target=self._read_reports,
            args=(self._process,),
            name="serving-log-reports",
            daemon=True,
        )
        self._reports.start()

    def _read_reports(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            what, _, n = line.decode().partition(" ")
            if what == "written":
                self._on_written(int(n))
            elif what == "dropped":
                self._on_dropped(int(n))
            elif what == "nice":
                self.niceness = int(n)

    def _feed(self) -> None:
        encoder = Encoder()
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            process = self._process
            if process is None or process.poll() is not None:
                if time.monotonic() - self._started_at < self.restart_s:
                    self._on_dropped(len(item.request.proposals))
                    continue
                log.error(
                    "serving log: the writer stopped (exit %s); starting another",
                    process.returncode if process is not None else None,
                )
                self._start_writer()
                process, encoder = self._process, Encoder()
            assert process is not None and process.stdin is not None
            try:
                process.stdin.write(encoder.frame(item))
                process.stdin.flush()
            except (OSError, ValueError):  # the writer died: this request is lost
                self._on_dropped(len(item.request.proposals))
                process.kill()
            time.sleep(self.yield_s)
        self._stop_writer()

    def _stop_writer(self) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        try:
            process.stdin.close()  # the end of its input: it writes what is left and stops
        except OSError:
            pass
        try:
            process.wait(timeout=self._stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.error(
                "serving log: the writer did not stop within %g s; killed", self._stop_timeout_s
            )
            process.kill()
            process.wait()
        if self._reports is not None:
            self._reports.join(timeout=5)
