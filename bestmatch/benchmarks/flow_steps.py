"""The flow's steps one by one, in this process, with the ceilings beside them.

One pass over the events file, a batch at a time, times each step of the flow as the flow runs
it (`flows.logic`: parse, the sequencer, one shard), and beside them, on the same lines and the
same rows:
- `orjson` decoding the lines in a Python loop: the ceiling of reading JSON at all;
- a Delta append of the change rows the shard produced, alone, in 100k-row commits;
- the Redis writes of the entities' final values alone (`online_layout.write_entities`).
It also reports the engine's state: bytes per entity in memory (its columns) and as saved (a
journal base), so a reader sees what a quiet entity costs.
"""

from __future__ import annotations

import pickle
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from features.settings import Settings

BATCH_LINES = 20_000
DELTA_ROWS = 100_000


@dataclass
class StepTimes:
    seconds: dict[str, float] = field(default_factory=dict)  # wall clock
    cpu_s: dict[str, float] = field(default_factory=dict)  # this process's CPU, all threads

    def add(self, name: str, seconds: float, cpu_s: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.cpu_s[name] = self.cpu_s.get(name, 0.0) + cpu_s


def _batches(path: Path) -> Iterator[list[bytes]]:
    from features.bus import open_events

    with open_events(path) as handle:
        batch: list[bytes] = []
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line:
                batch.append(line)
            if len(batch) == BATCH_LINES:
                yield batch
                batch = []
        if batch:
            yield batch


def _engine_bytes(engine: Any) -> int:
    """The bytes of an engine's columns (numpy arrays), the bulk of its memory."""
    total = 0
    for state in engine.kinds.values():
        for value in vars(state).values():
            if hasattr(value, "nbytes"):
                total += int(value.nbytes)
    return total


def measure_steps(settings: Settings, path: Path, scratch: Path) -> dict[str, Any]:
    """Each step's CPU seconds over the whole file, the ceilings' beside them, and the state."""
    import redis
    from deltalake import write_deltalake

    from features import online_layout
    from features.specs import ENTITIES
    from flows.items import End, RawBatch
    from flows.logic import SequencerLogic, ShardLogic, parse_batch

    lateness_us = int(settings.allowed_lateness_s * 1_000_000)
    times = StepTimes()
    sequencer = SequencerLogic(1, lateness_us, False, None)
    shard = ShardLogic(None, False, None)
    shutil.rmtree(scratch, ignore_errors=True)
    pending: dict[str, list[pa.Table]] = {}
    buffered = 0
    rows = events = 0
    entity_of = {e.name: e for e in ENTITIES}

    def clock(name: str, work: Any, *args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        result = work(*args, **kwargs)
        times.add(name, time.perf_counter() - started, time.process_time() - cpu)
        return result

    def append_delta() -> None:
        nonlocal buffered
        for name, tables in pending.items():
            if tables:
                table = pa.concat_tables(tables)
                uri = str(scratch / name)
                clock(
                    "delta_alone", write_deltalake, uri, table, mode="append", partition_by=["day"]
                )
        pending.clear()
        buffered = 0

    def work_on(item: RawBatch | End) -> None:
        nonlocal rows, buffered
        parsed = clock("parse", parse_batch, item, 1)
        (out,), _ = clock("sequence", sequencer.on_batch, [parsed])
        for w in out.work:
            for produced in clock("shard", shard.on_batch, [w])[0]:
                for name, table in produced.tables.items():
                    pending.setdefault(name, []).append(table)
                    rows += table.num_rows
                    buffered += table.num_rows
                online.extend(produced.online)
        if buffered >= DELTA_ROWS:
            append_delta()

    online: list[Any] = []
    number = 0
    for lines in _batches(path):
        clock("orjson", lambda lines=lines: [orjson.loads(line) for line in lines])
        events += len(lines)
        work_on(RawBatch("file", list(range(events - len(lines), events)), lines, None, number))
        number += 1
    work_on(End(None, "file", number))
    append_delta()

    client = redis.Redis.from_url(settings.redis_url)
    try:
        updates = [
            online_layout.EntityUpdate(entity_of[c.entity], c.entity_id, c.values, c.stamp)
            for c in online
        ]
        for start in range(0, len(updates), 10_000):
            clock(
                "redis_alone",
                online_layout.write_entities,
                client,
                settings.feast_project,
                updates[start : start + 10_000],
            )
    finally:
        client.close()
    engine = shard.engine
    entities = sum(len(state.ids) for state in engine.kinds.values())
    saved = len(pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL))
    shutil.rmtree(scratch, ignore_errors=True)
    flow_steps = ("parse", "sequence", "shard")
    engine_s = sum(times.seconds.get(s, 0.0) for s in flow_steps)
    return {
        "events": events,
        "changes": rows,
        "entities": entities,
        "online_writes": len(online),
        "seconds": {**times.seconds, "engine": engine_s},
        "cpu_s": times.cpu_s,
        "share_of_engine": {s: times.seconds.get(s, 0.0) / engine_s for s in flow_steps},
        "state_bytes_per_entity": _engine_bytes(engine) / max(1, entities),
        "saved_bytes_per_entity": saved / max(1, entities),
    }
