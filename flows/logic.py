"""The flow's steps, as Bytewax logic around the engine in `features/`."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bytewax.operators import StatefulBatchLogic

from features.batch_events import EventBatch, parse_lines
from features.engine import (
    TYPE_CODE,
    KindUpdates,
    ShardEngine,
    concat_updates,
    kinds_of,
    last_type,
)
from features.errors import FlowError
from features.sequencer import Sequencer
from features.specs import ENTITIES, Entity
from flows.items import (
    DeadLetter,
    End,
    ParsedBatch,
    RawBatch,
    Segment,
    SequencerOutput,
    ShardOutput,
    ShardWork,
)
from flows.journal import Journal
from flows.kafka import Merge
from flows.metrics import METRICS
from flows.sharding import shards_of

_KIND_TYPES = {e.name: [TYPE_CODE[t] for t in TYPE_CODE if e in kinds_of(t)] for e in ENTITIES}


_OLD_CHECKPOINT = (
    "the flow's checkpoint was written by an older BestMatch, whose state this one cannot read: "
    "run `bestmatch backfill` again (it starts the checkpoint afresh)"
)


def parse_batch(batch: RawBatch | End, shards: int) -> ParsedBatch | End:
    """Parse every line of a batch and find each event's shards; bad lines become rejections."""
    if isinstance(batch, End):
        return batch
    events, rejected = parse_lines(batch.lines)
    METRICS.events_in.inc(len(batch.lines))
    lengths = np.fromiter((len(line) for line in batch.lines), np.int64, len(batch.lines))
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    kinds = {}
    for kind in ENTITIES:
        shard = shards_of(kind.name, getattr(events, kind.join_key), shards)
        shard[~np.isin(events.event_type, _KIND_TYPES[kind.name])] = -1
        kinds[kind.name] = shard
    return ParsedBatch(
        batch.partition,
        np.asarray(batch.positions, np.int64),
        b"".join(batch.lines),
        offsets,
        events,
        rejected,
        kinds,
        time.time_ns() // 1000,
        batch.published_ms,
        batch.number,
    )


def _kind_updates(
    events: EventBatch, kind: Entity, rows: np.ndarray, clocks: np.ndarray
) -> KindUpdates:
    ids = getattr(events, kind.join_key)
    wanted = rows.tolist()
    source = last_type(kind)
    profiles = {}
    if source is not None and events.profiles:
        profiles = {
            i: events.profiles[r]
            for i, r in enumerate(wanted)
            if r in events.profiles and TYPE_CODE[events.profiles[r].event_type] == source
        }
    return KindUpdates(
        [ids[r] for r in wanted],
        clocks,
        events.event_time[rows],
        events.event_type[rows],
        events.action[rows],
        events.bid_amount[rows],
        profiles,
    )


@dataclass
class Ordered:
    """The sequencer's state: the engine's `Sequencer`, and per source partition the number of
    the next item to take and the items that came before their turn."""

    sequencer: Sequencer
    next_number: dict[str, int] = field(default_factory=dict)
    early: dict[str, dict[int, ParsedBatch | End]] = field(default_factory=dict)
    merge: Merge | None = None  # a Kafka topic's partitions, merged (`flows.kafka.Merge`)

    def in_order(self, items: list[ParsedBatch | End]) -> list[ParsedBatch | End]:
        """The items whose turn has come, in their partitions' order."""
        out = []
        for item in items:
            self.early.setdefault(item.partition, {})[item.number] = item
        for partition, held in self.early.items():
            number = self.next_number.get(partition, 0)
            while number in held:
                out.append(held.pop(number))
                number += 1
            self.next_number[partition] = number
        return out


class SequencerLogic(StatefulBatchLogic[Any, SequencerOutput, bytes | Ordered]):
    """The one ordered step: de-duplicates, rejects late events, stamps the clock, routes.

    Batches from several workers reach it interleaved, in any order between workers; each
    partition's items are taken in the order the source numbered them. `merged`: the partitions
    of a Kafka topic, merged into one order by stream time before they are admitted (`idle_ms`:
    the source's idle timeout)."""

    def __init__(
        self,
        shards: int,
        lateness_us: int,
        recoverable: bool,
        state: Any,
        merged: list[str] | None = None,
        idle_ms: float = 0.0,
    ):
        self.shards = [str(i) for i in range(shards)]
        self.state = _thawed(state) if state is not None else Ordered(Sequencer(lateness_us))
        if not isinstance(self.state, Ordered):
            raise FlowError(_OLD_CHECKPOINT)
        self.recoverable = recoverable
        self.merging = merged is not None
        if merged is not None:
            self.state.merge = self.state.merge or Merge()
            self.state.merge.read_from(merged, idle_ms)

    def on_batch(self, values: list[ParsedBatch | End]) -> tuple[list[SequencerOutput], bool]:
        values = self.state.in_order(values)
        merge = self.state.merge
        if merge is not None and self.merging:
            values = merge.merged(values)
        elif merge is not None:  # a Kafka checkpoint resumed on another bus: its lines go first
            values = [*merge.release(final=True), *values]
            self.state.merge = None
        return self._sequenced(values), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[SequencerOutput], bool]:
        """The input has ended (a replay of a topic to its end): what the merge holds goes."""
        if self.state.merge is None:
            return [], StatefulBatchLogic.RETAIN
        return self._sequenced(self.state.merge.release(final=True)), StatefulBatchLogic.RETAIN

    def _sequenced(self, values: list[ParsedBatch | End]) -> list[SequencerOutput]:
        seq = self.state.sequencer
        segments: list[list[Segment]] = [[Segment()] for _ in self.shards]
        dead: list[DeadLetter] = []
        for batch in values:
            if isinstance(batch, End):
                until = batch.until if batch.until is not None else seq.clock
                for own in segments:
                    own[-1].tick = seq.clock
                    own[-1].finish = True
                    own[-1].until = until
                    own.append(Segment())
                continue
            self._admit(batch, segments, dead)
        for own in segments:
            own[-1].tick = seq.clock
            if not own[-1].updates and len(own) > 1:
                own.pop()  # the open segment after a finish, with nothing in it
        for letter in dead:
            METRICS.dead_letters.labels(reason=letter.reason.split(":")[0]).inc()
        published = min(
            (b.published_ms for b in values if type(b) is ParsedBatch and b.published_ms),
            default=None,
        )
        work = [ShardWork(s, own, published) for s, own in zip(self.shards, segments, strict=True)]
        return [SequencerOutput(work, dead)]

    def _admit(self, batch: ParsedBatch, segments: list[list[Segment]], dead: list) -> None:
        events = batch.events
        for line, rejection in batch.rejected:
            dead.append(
                DeadLetter(
                    batch.partition_of(line),
                    int(batch.positions[line]),
                    rejection.raw,
                    rejection.reason,
                    batch.seen_us,
                )
            )
        admitted, clock_of, rejected = self.state.sequencer.admit_batch(
            events.event_id, events.event_time
        )
        for row, why in rejected:
            if why == "late":
                line = int(events.line[row])
                dead.append(
                    DeadLetter(
                        batch.partition_of(line),
                        int(batch.positions[line]),
                        batch.line(line),
                        "late",
                        batch.seen_us,
                    )
                )
            else:
                METRICS.duplicates.inc()
        if not len(admitted):
            return
        for kind in ENTITIES:
            shard = batch.shards[kind.name][admitted]
            keep = shard >= 0
            if not keep.any():
                continue
            shard = shard[keep]
            order = np.argsort(shard, kind="stable")
            shard = shard[order]
            mine = admitted[keep][order]
            when = clock_of[keep][order]
            bounds = np.flatnonzero(shard[1:] != shard[:-1]) + 1
            for start, stop in zip(
                np.append(0, bounds).tolist(), np.append(bounds, len(shard)).tolist(), strict=True
            ):
                # a stable sort: stream order within the shard
                part = _kind_updates(events, kind, mine[start:stop], when[start:stop])
                own = segments[int(shard[start])][-1]
                own.updates.setdefault(kind.name, []).append(part)

    def snapshot(self) -> bytes | Ordered:
        return _frozen(self.state) if self.recoverable else self.state


class ShardLogic(StatefulBatchLogic[ShardWork, ShardOutput, Any]):
    """One shard of entities: columnar state, change-log rows, online values.

    With recovery, its snapshot is a reference into its journal (`flows.journal`): what an
    epoch costs follows what changed in it."""

    def __init__(self, state_dir: Path | None, fresh_online: bool, state: Any):
        self.state_dir = state_dir
        self.journal: Journal | None = None
        self.shard: str | None = None
        if state is None:
            self.engine = ShardEngine()
        else:
            if not isinstance(state, tuple):
                raise FlowError(_OLD_CHECKPOINT)
            shard, generation, offset = state
            self.shard = shard
            self.journal = self._journal(shard)
            self.engine = self.journal.load((generation, offset))
        # A stream refreshes the online store every batch; a backfill only needs the final
        # values, so it writes each entity once, at the end.
        self.fresh_online = fresh_online

    def _journal(self, shard: str) -> Journal:
        assert self.state_dir is not None
        return Journal(self.state_dir / f"shard-{shard}")

    def on_batch(self, values: list[ShardWork]) -> tuple[list[ShardOutput], bool]:
        engine = self.engine
        shard = self.shard = values[0].shard
        finished = False
        for work in values:
            for segment in work.segments:
                updates = {k: concat_updates(parts) for k, parts in segment.updates.items()}
                engine.step(updates, segment.tick)
                if segment.finish:
                    engine.finish(segment.until)
                    finished = True
        tables = engine.drain_tables()
        online = engine.drain_online() if self.fresh_online or finished else []
        if not tables and not online:
            return [], StatefulBatchLogic.RETAIN
        published = min((w.published_ms for w in values if w.published_ms), default=None)
        out = ShardOutput(shard, tables, online, engine.clock, published)
        return [out], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        # Bytewax asks every epoch, and keeps the snapshot only with recovery on: save only then.
        if self.state_dir is None or self.shard is None:
            return None
        if self.journal is None:
            self.journal = self._journal(self.shard)
        generation, offset = self.journal.save(self.engine)
        return self.shard, generation, offset


def _frozen(state: Any) -> bytes:
    """An immutable copy of a state for Bytewax to keep: its pickle."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _thawed(state: Any) -> Any:
    """A state as resumed: a `_frozen` pickle, or the state itself."""
    return pickle.loads(state) if isinstance(state, bytes) else state
