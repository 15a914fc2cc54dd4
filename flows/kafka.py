"""The Kafka event bus in the flow: a source, one Bytewax partition per topic partition, and the
merge that puts the partitions' events in one order (the rule is docs/event-bus.md's).

Source: each partition has its own confluent-kafka consumer, `assign`ed to its topic partition
(no consumer group, nothing committed to the broker); its resume state, kept in the flow's
recovery snapshot, is the offset of its next message and the number of its next item (every
item is numbered, as `RawBatch.number` says). Bytewax spreads the partitions over workers and
processes. A partition that has read everything the broker holds (librdkafka's partition EOF,
and the broker's high watermark asked again before each) and got nothing new for the idle
timeout sends an empty `RawBatch`, and another every idle timeout while that lasts: "as of now
(its parse time), nothing is on its way from me".

Merge (`Merge`, inside the sequencer's step when the bus is Kafka: `flows.logic.SequencerLogic`
takes each partition's parsed batches in the order the source numbered them, then merges them
here, on its one worker, whatever process read and parsed which partition). Each partition's
*stream time* is the newest event time read from it. A line is merged at its partition's
stream time when it is read (its event's own time, unless it is out of order; a rejected line
keeps its place at the stream time), and released once every active partition's stream time
has passed that time; released lines go on as one columnar batch ordered by (merge time,
partition, offset). That order is a function of what each partition holds, never of when the
partitions' messages arrived, so the sequencer's admission (de-duplication, lateness, the
clock) sees the same events in the same order on every run, every replay and any number of
workers or processes. An idle partition holds back only what was parsed less than the idle
timeout before it last said it was idle. Both the buffered lines and the stream times are in
the sequencer's recovery snapshot, taken at the same epoch as the source offsets: a resumed
stream holds exactly the lines it had buffered and reads on after them.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from features.bus import QUIET
from features.sequencer import NEVER
from features.settings import KafkaBus
from flows.items import End, ParsedBatch, RawBatch, gather_lines

FETCH_WAIT_MS = 5  # how long a broker may hold a fetch that finds nothing new
PROBE_EVERY_S = 1.0  # while no broker answers, how often to ask again


def partition_name(topic: str, partition: int) -> str:
    """How the flow names a topic partition (dead letters' `source`): `topic/3`."""
    return f"{topic}/{partition}"


# --- the source -------------------------------------------------------------------------------


class _KafkaPartition(StatefulSourcePartition[RawBatch, tuple[int, int]]):
    def __init__(
        self,
        source: KafkaSource,
        partition: int,
        resume: tuple[int, int] | None,
    ) -> None:
        self._bus = source.bus
        self._partition = partition
        self._name = partition_name(source.bus.topic, partition)
        self._batch_size = source.batch_size
        self._idle_s = source.idle_ms / 1000
        self._retry_s = source.retry_s
        self._poll = source.poll
        self._stop_at_end = source.stop_at_end
        # the offset of the next message, and the number of the next item (`RawBatch.number`)
        self._next, self._number = resume if resume is not None else (0, 0)
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
        self._idle_at: float | None = None  # when it last said it is idle, while quiet
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
            self._idle_at = None
            self._awake = None
            return [self._item(positions, lines, published)]
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
            return [self._item([], [], None)]
        # idle once quiet for the idle timeout, and again every idle timeout while it stays so
        # (the merge may ask a partition to say it again: `Merge.merged`)
        since = caught_up if self._idle_at is None else self._idle_at
        if now - since < self._idle_s or self._behind():
            return []
        self._idle_at = now
        return [self._item([], [], None)]  # idle: see the module's docstring

    def _item(self, positions: list[int], lines: list[bytes], published: int | None) -> RawBatch:
        self._number += 1
        return RawBatch(self._name, positions, lines, published, self._number - 1)

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

    def snapshot(self) -> tuple[int, int]:
        return self._next, self._number

    def close(self) -> None:
        self._consumer.close()


def _give_up(message: str) -> None:
    """Stop the stream as a crash would (its checkpoint holds every change), with one line
    instead of an exception that the engine would print with its own stack."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


class KafkaSource(FixedPartitionedSource[RawBatch, tuple[int, int]]):
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

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _KafkaPartition:
        return _KafkaPartition(self, int(for_part.rpartition("/")[2]), resume_state)


# --- the merge --------------------------------------------------------------------------------


@dataclass
class Lane:
    """One partition in the merge: its stream time and its read, unreleased lines."""

    stream_time: int = NEVER  # the newest event time read from it
    idle_at: int | None = None  # when it last said it is idle (µs); None: it has data since
    batches: list[ParsedBatch] = field(default_factory=list)  # read, not wholly released
    times: list[np.ndarray] = field(default_factory=list)  # each line's merge time, per batch
    start: int = 0  # the first line of batches[0] not yet released

    def add(self, batch: ParsedBatch) -> None:
        """A batch's lines at their merge times: the partition's stream time once each is read
        (a rejected line keeps its place in the partition, at its stream time)."""
        times = np.full(len(batch), NEVER, np.int64)
        times[batch.events.line] = batch.events.event_time
        times = np.maximum.accumulate(np.maximum(times, self.stream_time))
        self.stream_time = int(times[-1])
        self.batches.append(batch)
        self.times.append(times)

    def take(self, frontier: int) -> list[tuple[ParsedBatch, np.ndarray, int, int]]:
        """The lines merged before `frontier` (a prefix: merge times never decrease), as
        (batch, its merge times, first line, end line); they leave the lane."""
        out = []
        while self.batches:
            batch, times = self.batches[0], self.times[0]
            end = int(np.searchsorted(times, frontier, side="left"))
            if end <= self.start:
                break
            out.append((batch, times, self.start, end))
            if end < len(batch):
                self.start = end
                break
            self.batches.pop(0)
            self.times.pop(0)
            self.start = 0
        return out

    def first_held(self, said: int, behind: int) -> int | None:
        """The merge time of its first unreleased line parsed after `said` and not older than
        `behind`, if any."""
        for k, (batch, times) in enumerate(zip(self.batches, self.times, strict=True)):
            if batch.seen_us <= said:
                continue
            first = max(self.start if k == 0 else 0, int(np.searchsorted(times, behind)))
            if first < len(times):
                return int(times[first])
        return None


@dataclass
class Merge:
    """The partitions' lines in one order (see the module's docstring); kept in the
    sequencer's state, so its snapshot holds the buffered lines and the stream times."""

    lanes: dict[str, Lane] = field(default_factory=dict)
    released_to: int = NEVER  # every line merged before this has been released (a late one: at
    # once)
    open: bool = False  # lines released since the last End
    window_us: int = 0  # the idle timeout

    def read_from(self, partitions: list[str], idle_ms: float) -> None:
        """The topic's partitions as the stream starts: a partition of a checkpoint that is no
        longer read (another topic) never holds the others back."""
        self.window_us = int(idle_ms * 1000)
        for name in partitions:
            self.lanes.setdefault(name, Lane())
        for name, lane in self.lanes.items():
            if name not in partitions:
                lane.idle_at = 2**62

    def merged(self, items: list[ParsedBatch | End]) -> list[ParsedBatch | End]:
        """Each partition's items in, in its own order; out, what every active partition has
        passed, as one batch in merged order, then, once every partition is idle and nothing is
        left, an `End` that closes the current instant (as a quiet Redis Stream does)."""
        out: list[ParsedBatch | End] = []
        for item in items:
            if isinstance(item, End):  # not from Kafka's source; keep its place
                out += [*self.release(final=True), item]
                continue
            lane = self.lanes.setdefault(item.partition, Lane())
            if not len(item):  # the partition is idle, as of its parse time
                lane.idle_at = item.seen_us
                continue
            lane.idle_at = None
            lane.add(item)
        return out + self.release()

    def release(self, final: bool = False) -> list[ParsedBatch | End]:
        """What no partition can still come before. An active partition holds back what is not
        older than its stream time; an idle one only what was parsed less than the idle timeout
        before it last said it was idle (and is not older than its stream time): what it could
        not have seen yet when it said so."""
        lanes = self.lanes
        everything = 2**62
        frontier = min(
            (lane.stream_time for lane in lanes.values() if lane.idle_at is None),
            default=everything,
        )
        idle = [lane for lane in lanes.values() if lane.idle_at is not None]
        if idle and not final:
            said = min(lane.idle_at for lane in idle if lane.idle_at is not None) - self.window_us
            behind = min(lane.stream_time for lane in idle)
            for lane in lanes.values():
                held = lane.first_held(said, behind)
                if held is not None:
                    frontier = min(frontier, held)
        if final:
            frontier = everything
        if frontier >= everything:
            newest = max((lane.stream_time for lane in lanes.values()), default=NEVER)
            self.released_to = max(self.released_to, newest + 1)
        else:
            # what is released past an idle partition may still be overtaken by its next events
            # (out of order): only every partition's stream time moves the mark
            passed = min((lane.stream_time for lane in lanes.values()), default=NEVER)
            frontier = max(self.released_to, frontier)
            self.released_to = max(self.released_to, min(passed, frontier))
        out: list[ParsedBatch | End] = []
        pieces = [
            (rank, *piece)
            for rank, name in enumerate(sorted(lanes, key=_partition_order))
            for piece in lanes[name].take(frontier)
        ]
        if len(pieces) == 1 and pieces[0][3] == 0 and pieces[0][4] == len(pieces[0][1]):
            out.append(pieces[0][1])  # one whole batch: as it is
        elif pieces:
            out.append(_in_merge_order(pieces))
        if out:
            self.open = True
        quiet = all(lane.idle_at is not None and not lane.batches for lane in lanes.values())
        if self.open and (quiet or final):
            self.open = False
            out.append(End(None))
        return out


def _in_merge_order(pieces: list[tuple[int, ParsedBatch, np.ndarray, int, int]]) -> ParsedBatch:
    """The pieces' lines as one batch, ordered by (merge time, partition, offset)."""
    times, ranks, positions, picks = [], [], [], []
    base = 0
    for rank, batch, merge_times, start, end in pieces:
        times.append(merge_times[start:end])
        ranks.append(np.full(end - start, rank, np.int64))
        positions.append(batch.positions[start:end])
        picks.append(np.arange(base + start, base + end, dtype=np.int64))
        base += len(batch)
    order = np.lexsort((np.concatenate(positions), np.concatenate(ranks), np.concatenate(times)))
    return gather_lines([batch for _, batch, *_ in pieces], np.concatenate(picks)[order])


def _partition_order(name: str) -> tuple[str, int]:
    topic, _, number = name.rpartition("/")
    return topic, int(number)
