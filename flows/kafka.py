"""The Kafka event bus in the flow: a source, one Bytewax partition per topic partition, and the
merge that puts the partitions' events in one order (the rule is docs/event-bus.md's).

Source: each partition has its own confluent-kafka consumer, `assign`ed to its topic partition
(no consumer group, nothing committed to the broker); its resume state is the offset of its next
message, kept in the flow's recovery snapshot. Bytewax spreads the partitions over workers and
processes. A partition that has read everything the broker holds (librdkafka's partition EOF,
and the broker's high watermark asked again before each) and got nothing new for the idle
timeout sends an empty `RawBatch`, and another every idle timeout while that lasts: "as of now
(its parse time), nothing is on its way from me".

Merge (`merge_partitions`, inserted after parsing when the bus is Kafka): one stateful step
under the sequencer's own key, so it runs on the sequencer's worker, whatever process reads
which partition. Each partition's *stream time* is the newest event time read from it. An
event is merged at its partition's stream time when it is read (its own time, unless it is out
of order), and released once every active partition's stream time has passed that time;
released events go on ordered by (merge time, partition, offset). That order is a function of
what each partition holds, never of when the partitions' messages arrived, so the sequencer
after it (de-duplication, lateness, the clock) sees the same events in the same order on every
run, every replay and any number of workers or processes. An idle partition holds back only
what arrived less than the idle timeout before it last said it was idle. Both the buffered
events and the stream times are in the step's recovery snapshot, taken at the same epoch as the
source offsets: a resumed stream holds exactly the events it had buffered and reads on after
them.
"""

from __future__ import annotations

import heapq
import os
import pickle
import sys
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax import operators as op
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import KeyedStream, StatefulBatchLogic
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from features.bus import QUIET
from features.engine import NEVER
from features.events import Rejection
from features.settings import KafkaBus
from flows.items import End, ParsedBatch, RawBatch

MERGE_KEY = "sequence"  # the sequencer's key: the merge runs on its worker, no extra hop
FETCH_WAIT_MS = 5  # how long a broker may hold a fetch that finds nothing new
PROBE_EVERY_S = 1.0  # while no broker answers, how often to ask again


def partition_name(topic: str, partition: int) -> str:
    """How the flow names a topic partition (dead letters' `source`): `topic/3`."""
    return f"{topic}/{partition}"


# --- the source -------------------------------------------------------------------------------


class _KafkaPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self,
        source: KafkaSource,
        partition: int,
        resume: int | None,
    ) -> None:
        self._bus = source.bus
        self._partition = partition
        self._name = partition_name(source.bus.topic, partition)
        self._batch_size = source.batch_size
        self._idle_s = source.idle_ms / 1000
        self._retry_s = source.retry_s
        self._poll = source.poll
        self._stop_at_end = source.stop_at_end
        self._next = resume if resume is not None else 0
        self._consumer = Consumer(
            {
                "bootstrap.servers": source.bus.bootstrap,
                "group.id": "bestmatch-features",  # required by the client; never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                "auto.offset.reset": "earliest",
                "error_cb": self._on_error,
                "log_level": QUIET,
            }
        )
        # offset 0, not OFFSET_BEGINNING (which costs a round of offset look-ups, half a second
        # on the mock cluster); one no longer kept resets to the earliest (auto.offset.reset)
        self._consumer.assign([TopicPartition(source.bus.topic, partition, self._next)])
        self._caught_up_at: float | None = None  # when it last read all the broker held
        self._beat = 0.0  # when it last said it is idle
        self._down_since: float | None = None  # when every broker went away
        self._probed = 0.0
        self._awake: datetime | None = None
        self._done = False
        self._told: set[int] = set()

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN and self._down_since is None:
            self._down_since = time.monotonic()
        elif error.fatal():
            _give_up(f"event bus {self._bus}: {error.str()}")

    def next_batch(self) -> list[RawBatch]:
        if self._done:
            raise StopIteration
        messages = self._consumer.consume(self._batch_size, 0)
        positions: list[int] = []
        lines: list[bytes] = []
        published: int | None = None
        for message in messages:
            error = message.error()
            if error is None:
                if published is None:
                    kind, stamp = message.timestamp()
                    published = stamp if kind and stamp > 0 else None
                positions.append(message.offset())
                lines.append(message.value() or b"")
                self._caught_up_at = None
            elif error.code() == KafkaError._PARTITION_EOF:
                self._caught_up_at = time.monotonic()
            elif error.code() not in self._told:  # librdkafka retries it; say so once
                self._told.add(error.code())
                sys.stderr.write(f"event bus {self._bus}, {self._name}: {error.str()}\n")
        if messages:
            self._down_since = None  # a broker answered
        if lines:
            self._next = positions[-1] + 1
            self._awake = None
            return [RawBatch(self._name, positions, lines, published)]
        self._awake = datetime.now(UTC) + self._poll
        return self._quiet()

    def _quiet(self) -> list[RawBatch]:
        now = time.monotonic()
        if self._down_since is not None:
            self._probe(now)
        caught_up = self._caught_up_at
        if caught_up is None:
            return []
        if self._stop_at_end:  # a replay: the end it reached is the end
            self._done = True
            return [RawBatch(self._name, [], [], None)]
        if now - caught_up < self._idle_s or now - self._beat < self._idle_s or self._behind():
            return []
        self._beat = now
        return [RawBatch(self._name, [], [], None)]  # idle: see the module's docstring

    def _behind(self) -> bool:
        """Does the broker hold messages this partition has not read? Then its fetches are slow
        (a busy machine, a broker pause), not its producers quiet: it is not idle."""
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._bus.topic, self._partition), timeout=PROBE_EVERY_S
            )
        except KafkaException:
            return True  # no answer: the outage handling decides
        if high > self._next:
            self._caught_up_at = None  # wait for its next end of partition
            return True
        return False

    def _probe(self, now: float) -> None:
        """While no broker answers: ask again now and then, give up after the retry time."""
        assert self._down_since is not None
        if now - self._probed < PROBE_EVERY_S:
            return
        self._probed = now
        try:
            self._consumer.list_topics(self._bus.topic, timeout=min(PROBE_EVERY_S, self._retry_s))
            self._down_since = None
        except KafkaException:
            if time.monotonic() - self._down_since >= self._retry_s:
                _give_up(
                    f"event bus {self._bus}: no broker reachable for {self._retry_s:.0f} s; "
                    "`bestmatch stream` resumes from its last checkpoint once it is back"
                )

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


def _give_up(message: str) -> None:
    """Stop the stream as a crash would (its checkpoint holds every change), with one line
    instead of an exception that the engine would print with its own stack."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


class KafkaSource(FixedPartitionedSource[RawBatch, int]):
    """A Kafka topic: one Bytewax partition per topic partition, resumed from its offset.

    `partitions` are the topic's partition ids, looked up once when the stream starts
    (`features.bus.kafka_partitions`); a partition added later is read after a restart.
    `stop_at_end`: each partition stops where the topic ended when it got there (a replay that
    finishes, for benchmarks); otherwise the stream runs until stopped.
    """

    def __init__(
        self,
        bus: KafkaBus,
        partitions: list[int],
        batch_size: int = 2000,
        *,
        idle_ms: float = 200.0,
        retry_s: float = 30.0,
        poll: timedelta = timedelta(milliseconds=2),
        stop_at_end: bool = False,
    ) -> None:
        self.bus = bus
        self.partitions = list(partitions)
        self.batch_size = batch_size
        self.idle_ms = idle_ms
        self.retry_s = retry_s
        self.poll = poll
        self.stop_at_end = stop_at_end

    def list_parts(self) -> list[str]:
        return [partition_name(self.bus.topic, p) for p in self.partitions]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        return _KafkaPartition(self, int(for_part.rpartition("/")[2]), resume_state)


# --- the merge --------------------------------------------------------------------------------


@dataclass
class Lane:
    """One partition in the merge: its stream time and its read, unreleased events."""

    stream_time: int = NEVER  # the newest event time read from it
    idle_at: int | None = None  # when it last said it is idle (µs); None: it has data since
    merge_times: list[int] = field(default_factory=list)  # non-decreasing
    positions: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    parsed: list[Any] = field(default_factory=list)
    seen_us: list[int] = field(default_factory=list)  # when the batch of each was parsed
    published_ms: list[int | None] = field(default_factory=list)

    def add(self, batch: ParsedBatch) -> None:
        t = self.stream_time
        times = self.merge_times
        for event in batch.parsed:
            if type(event) is not Rejection and event.event_time > t:
                t = event.event_time
            times.append(t)  # a rejection keeps its place in the partition, at its stream time
        self.stream_time = t
        self.positions += batch.positions
        self.lines += batch.lines
        self.parsed += batch.parsed
        n = len(batch.parsed)
        self.seen_us += [batch.seen_us] * n
        self.published_ms += [batch.published_ms] * n

    def take(self, start: int, end: int, name: str) -> ParsedBatch:
        return ParsedBatch(
            name,
            self.positions[start:end],
            self.lines[start:end],
            self.parsed[start:end],
            self.seen_us[start],
            self.published_ms[start],
        )

    def drop(self, count: int) -> None:
        for values in (
            self.merge_times,
            self.positions,
            self.lines,
            self.parsed,
            self.seen_us,
            self.published_ms,
        ):
            del values[:count]


@dataclass
class MergeState:
    lanes: dict[str, Lane]
    released_to: int = NEVER  # every event merged before this has been released (a late one:
    # at once)
    open: bool = False  # events released since the last End


def release(state: MergeState, window_us: int, final: bool = False) -> list[ParsedBatch | End]:
    """Everything no partition can still come before, in (merge time, partition, offset)
    order, as one batch per run of one partition; then, once every partition is idle and
    nothing is left, an `End` that closes the current instant (as a quiet Redis Stream does).

    An active partition holds back what is not older than its stream time. An idle one holds
    back only what arrived less than the idle window before it last said it was idle (and is
    not older than its stream time): what it could not have seen yet when it said so.
    """
    lanes = state.lanes
    everything = 2**62
    frontier = min((n.stream_time for n in lanes.values() if n.idle_at is None), default=everything)
    idle = [lane for lane in lanes.values() if lane.idle_at is not None]
    if idle and not final:
        said = min(lane.idle_at for lane in idle) - window_us  # type: ignore[type-var]
        behind = min(lane.stream_time for lane in idle)
        for lane in lanes.values():
            first = max(bisect_right(lane.seen_us, said), bisect_left(lane.merge_times, behind))
            if first < len(lane.merge_times):
                frontier = min(frontier, lane.merge_times[first])
    if final:
        frontier = everything
    if frontier >= everything:
        newest = max((lane.stream_time for lane in lanes.values()), default=NEVER)
        state.released_to = max(state.released_to, newest + 1)
    else:
        # what is released past an idle partition may still be overtaken by its next events
        # (out of order): only every partition's stream time moves the mark
        passed = min((lane.stream_time for lane in lanes.values()), default=NEVER)
        frontier = max(state.released_to, frontier)
        state.released_to = max(state.released_to, min(passed, frontier))
    names = sorted(lanes, key=_partition_order)  # it breaks ties between equal merge times
    cuts = {name: bisect_left(lanes[name].merge_times, frontier) for name in names}
    heads = [(lanes[n].merge_times[0], i, n) for i, n in enumerate(names) if cuts[n]]
    out: list[ParsedBatch | End] = []
    if len(heads) == 1:
        name = heads[0][2]
        out.append(lanes[name].take(0, cuts[name], name))
    elif heads:
        heapq.heapify(heads)
        starts = dict.fromkeys(names, 0)
        while heads:
            _, rank, name = heapq.heappop(heads)
            lane, start, cut = lanes[name], starts[name], cuts[name]
            end = cut
            if heads:  # run on until the next partition's head comes first
                time_next, rank_next, _ = heads[0]
                bound = bisect_right if rank < rank_next else bisect_left
                end = bound(lane.merge_times, time_next, start, cut)
            out.append(lane.take(start, end, name))
            starts[name] = end
            if end < cut:
                heapq.heappush(heads, (lane.merge_times[end], rank, name))
    for name, cut in cuts.items():
        if cut:
            lanes[name].drop(cut)
    if out:
        state.open = True
    quiet = all(lane.idle_at is not None and not lane.merge_times for lane in lanes.values())
    if state.open and (quiet or final):
        state.open = False
        out.append(End(None))
    return out


def _partition_order(name: str) -> tuple[str, int]:
    topic, _, number = name.rpartition("/")
    return topic, int(number)


class MergeLogic(StatefulBatchLogic[Any, ParsedBatch | End, bytes]):
    """The merge step's Bytewax logic around `MergeState` (see the module's docstring)."""

    def __init__(self, partitions: list[str], idle_ms: float, resume: bytes | None) -> None:
        self.window_us = int(idle_ms * 1000)
        self.state: MergeState = pickle.loads(resume) if resume is not None else MergeState({})
        for name in partitions:
            self.state.lanes.setdefault(name, Lane())
        for name, lane in self.state.lanes.items():
            if name not in partitions:  # a checkpoint of another topic: never read again
                lane.idle_at = 2**62

    def on_batch(self, values: list[ParsedBatch | End]) -> tuple[list[ParsedBatch | End], bool]:
        lanes = self.state.lanes
        passed: list[ParsedBatch | End] = []
        for batch in values:
            if isinstance(batch, End):  # not from Kafka's source; keep its place
                passed += [*release(self.state, self.window_us, final=True), batch]
                continue
            lane = lanes.setdefault(batch.partition, Lane())
            if not batch.lines:
                lane.idle_at = batch.seen_us
                continue
            lane.idle_at = None
            lane.add(batch)
        return passed + release(self.state, self.window_us), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[ParsedBatch | End], bool]:
        """Every partition has stopped (a replay that ends): release what is left."""
        return release(self.state, self.window_us, final=True), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # an immutable copy, as in flows/logic.py; the buffer holds only the events not yet
        # passed by every partition, so it is small
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def merge_partitions(
    parsed: Stream[Any], partitions: list[str], idle_ms: float
) -> KeyedStream[Any]:
    """The merge after parsing: parsed per-partition batches in, one ordered stream out, still
    under the sequencer's key (so it goes straight into the sequencer, on the same worker)."""
    keyed = op.key_on("key_partitions", parsed, lambda _: MERGE_KEY)
    return op.stateful_batch(
        "merge_partitions", keyed, lambda resume: MergeLogic(partitions, idle_ms, resume)
    )
