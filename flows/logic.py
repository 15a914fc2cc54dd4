"""The flow's two stateful steps, as Bytewax logic around the engine in `features/`."""

from __future__ import annotations

import pickle
import time
from typing import Any

from bytewax.operators import StatefulBatchLogic

from features.engine import Sequencer, ShardEngine, Tick, Update, route
from features.events import Rejection, parse_event
from flows.items import (
    DeadLetter,
    End,
    Finish,
    ParsedBatch,
    RawBatch,
    SequencerOutput,
    ShardOutput,
    ShardWork,
)
from flows.metrics import METRICS
from flows.sharding import shard_of


def parse_batch(batch: RawBatch | End) -> ParsedBatch | End:
    """Parse every line of a batch; bad lines become rejections, nothing raises."""
    if isinstance(batch, End):
        return batch
    parsed = [parse_event(line) for line in batch.lines]
    METRICS.events_in.inc(len(parsed))
    return ParsedBatch(
        batch.partition,
        batch.positions,
        batch.lines,
        parsed,
        time.time_ns() // 1000,
        batch.published_ms,
    )


class SequencerLogic(StatefulBatchLogic[Any, SequencerOutput, bytes | Sequencer]):
    """The one ordered step: de-duplicates, rejects late events, stamps the clock, routes."""

    def __init__(self, shards: int, lateness_us: int, recoverable: bool, state: Sequencer | None):
        self.shards = [str(i) for i in range(shards)]
        self.state = _thawed(state) if state is not None else Sequencer(lateness_us)
        self.recoverable = recoverable

    def on_batch(self, values: list[ParsedBatch | End]) -> tuple[list[SequencerOutput], bool]:
        work: dict[str, list[Any]] = {shard: [] for shard in self.shards}
        dead: list[DeadLetter] = []
        seq = self.state
        n_shards = len(self.shards)
        for batch in values:
            if isinstance(batch, End):
                until = batch.until if batch.until is not None else seq.clock
                for items in work.values():
                    items.append(Finish(until))
                continue
            for index, event in enumerate(batch.parsed):
                position = batch.positions[index]
                if type(event) is Rejection:
                    dead.append(
                        DeadLetter(
                            batch.partition, position, event.raw, event.reason, batch.seen_us
                        )
                    )
                    continue
                why = seq.admit(event)  # type: ignore[arg-type]
                if why is not None:
                    if why == "late":
                        raw = batch.lines[index].decode("utf-8", "replace")
                        dead.append(
                            DeadLetter(batch.partition, position, raw, "late", batch.seen_us)
                        )
                    else:
                        METRICS.duplicates.inc()
                    continue
                clock = seq.clock
                for name, entity_id in route(event):  # type: ignore[arg-type]
                    work[self.shards[shard_of(name, entity_id, n_shards)]].append(
                        Update(name, entity_id, event, clock)
                    )  # type: ignore[arg-type]
        tick = Tick(seq.clock)
        for items in work.values():
            if not items or not isinstance(items[-1], Finish):
                items.append(tick)
        for letter in dead:
            METRICS.dead_letters.labels(reason=letter.reason.split(":")[0]).inc()
        published = min(
            (b.published_ms for b in values if type(b) is ParsedBatch and b.published_ms),
            default=None,
        )
        out = SequencerOutput([ShardWork(s, items, published) for s, items in work.items()], dead)
        return [out], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | Sequencer:
        return _frozen(self.state) if self.recoverable else self.state


class ShardLogic(StatefulBatchLogic[ShardWork, ShardOutput, bytes | ShardEngine]):
    """One shard of entities: tiles, hop boundaries, change-log rows, online values."""

    def __init__(self, recoverable: bool, fresh_online: bool, state: ShardEngine | None):
        self.engine = _thawed(state) if state is not None else ShardEngine()
        self.recoverable = recoverable
        # A stream refreshes the online store every batch; a backfill only needs the final
        # values, so it writes each entity once, at the end.
        self.fresh_online = fresh_online

    def on_batch(self, values: list[ShardWork]) -> tuple[list[ShardOutput], bool]:
        engine = self.engine
        shard = values[0].shard
        finished = False
        for work in values:
            for item in work.items:
                if type(item) is Update:
                    engine.apply(item)
                elif type(item) is Finish:
                    engine.finish(item.until)
                    finished = True
                else:
                    engine.advance(item.clock)  # type: ignore[union-attr]
        changes = engine.drain_changes()
        online = engine.drain_online() if self.fresh_online or finished else []
        if not changes and not online:
            return [], StatefulBatchLogic.RETAIN
        published = min((w.published_ms for w in values if w.published_ms), default=None)
        out = ShardOutput(shard, changes, online, engine.clock, published)
        return [out], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | ShardEngine:
        # Bytewax asks every epoch, and keeps the snapshot only with recovery on: copy only then.
        return _frozen(self.engine) if self.recoverable else self.engine


def _frozen(state: Any) -> bytes:
    """An immutable copy of a state for Bytewax to keep: its pickle. Cheaper than a live copy
    (pickling once instead of pickling and unpickling, every shard, every epoch: about a third
    of the time), and Bytewax pickles bytes for nothing."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _thawed(state: Any) -> Any:
    """A state as resumed: a `_frozen` pickle, or the state itself (an older checkpoint)."""
    return pickle.loads(state) if isinstance(state, bytes) else state
