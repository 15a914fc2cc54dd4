"""The demo's live day: published to the event bus with `bestmatch stream` running, sampled
events timed from the publish to Redis, then waited for until the change log holds them too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from bestmatch.benchmarks.flow import Watcher, pick_samples
from bestmatch.console import progress
from bestmatch.demo.summary import percentile
from bestmatch.services import StreamProcess
from features.settings import Settings

FRESHNESS_EVERY = 5  # every 5th proposal of the streamed day is timed publish → Redis
WARM_UP_EVENTS = 500  # published first, before the timed part of the stream
STREAM_TRIGGER_S = 1.0  # the stream commits the change log at most once a second


def stream_live_day(
    settings: Settings,
    client: redis.Redis,
    live: Path,
    rate: float | None,
    work: Path,
) -> dict[str, Any]:
    """Publish the last day to the bus with `bestmatch stream` running; time sampled events."""
    from features.bus import publish

    lines = [line.strip() for line in live.read_bytes().splitlines() if line.strip()]
    warm = min(WARM_UP_EVENTS, len(lines) // 10)
    samples = pick_samples(lines, warm, settings.feast_project, FRESHNESS_EVERY)
    watcher = Watcher(redis.Redis.from_url(settings.redis_url))
    shown = f"{rate:,.0f} events/s" if rate else "full speed"
    with StreamProcess(settings, work / "stream.log", trigger_s=STREAM_TRIGGER_S) as stream:
        stream.wait_ready()
        watcher.start()
        try:
            # The first events wait for the flow to load its state and make its first commits:
            # a start-up cost, timed apart from the steady state's freshness.
            begun = time.perf_counter()
            tail = pick_samples(lines[:warm], 0, settings.feast_project, 10**9)[-1]
            publish(client, settings.stream_key, lines[:warm])
            tail.published = time.perf_counter()
            watcher.inbox.put(tail)
            deadline = time.monotonic() + 180
            while tail.seen is None and time.monotonic() < deadline:
                time.sleep(0.02)
            warm_up_s = time.perf_counter() - begun
            with progress(
                f"3/7 streaming the last day ({len(lines):,} events, {shown}) through the bus",
                total=len(lines),
            ) as advance:
                queued = 0

                def sent_up_to(sent: int) -> None:
                    nonlocal queued
                    now = time.perf_counter()
                    while queued < len(samples) and samples[queued].index < warm + sent:
                        samples[queued].published = now
                        watcher.inbox.put(samples[queued])
                        queued += 1
                    advance(warm + sent)

                begun = time.perf_counter()
                publish(client, settings.stream_key, lines[warm:], rate=rate, progress=sent_up_to)
                published_s = time.perf_counter() - begun
                stream.wait_read(len(lines))
                time.sleep(0.5)  # the sinks' last writes
                deadline = time.monotonic() + 60
                while samples and samples[-1].seen is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(0.2)
                ended = time.perf_counter()
            with progress("waiting for the quiet bus to close the last instant in Delta"):
                wait_offline_complete(settings, lines, stream)
        finally:
            watcher.stop.set()
            watcher.join(timeout=5)
    seen = [s.freshness_ms(ended) for s in samples if s.seen is not None]
    return {
        "events": len(lines),
        "rate": rate,
        "warm_up_events": warm,
        "warm_up_s": warm_up_s,
        "published_s": published_s,
        "sampled": len(samples),
        "unseen": sum(1 for s in samples if s.seen is None),
        "freshness_ms": seen,
        "freshness_p50_ms": percentile(seen, 50),
        "freshness_p99_ms": percentile(seen, 99),
    }


def wait_offline_complete(
    settings: Settings, lines: list[bytes], stream: StreamProcess, timeout_s: float = 120.0
) -> None:
    """Until the change log's newest row of every entity an event of the newest instant touched
    holds what Redis holds: the stream closes an instant once the bus is quiet, and its sink then
    commits that instant's rows (an entity whose values did not change gets no row)."""
    import polars as pl

    from features.engine import route
    from features.events import Rejection, parse_event
    from features.offline_layout import (
        CREATED_COLUMN,
        TIMESTAMP_COLUMN,
        changelog_uri,
        record_values,
    )
    from features.online_layout import read_entities
    from features.specs import ENTITIES

    newest, touched = None, set()
    for line in reversed(lines):  # time-ordered: the newest instant is at the end
        event = parse_event(line)
        if type(event) is Rejection:
            continue
        if newest is not None and event.event_time < newest:  # type: ignore[union-attr]
            break
        newest = event.event_time  # type: ignore[union-attr]
        touched.update(route(event))  # type: ignore[arg-type]
    if not touched:
        return
    entities = {e.name: e for e in ENTITIES}
    wanted = sorted(touched)
    client = redis.Redis.from_url(settings.redis_url)

    def offline_latest() -> dict[tuple[str, str], tuple[Any, ...]]:
        """Each touched entity's newest change-log row (ties: the latest written), as values."""
        latest = {}
        for name in {n for n, _ in wanted}:
            entity = entities[name]
            rows = (
                pl.scan_delta(
                    changelog_uri(settings, entity), storage_options=settings.storage_options
                )
                .filter(pl.col(entity.join_key).is_in([i for n, i in wanted if n == name]))
                .sort(TIMESTAMP_COLUMN, CREATED_COLUMN)
                .collect()
            )
            for record in rows.iter_rows(named=True):  # in time order: the newest stays
                latest[(name, record[entity.join_key])] = record_values(entity, record)
        return latest

    def complete() -> bool:
        asked = [(entities[name], entity_id) for name, entity_id in wanted]
        online = read_entities(client, settings.feast_project, asked)
        offline = offline_latest()
        return all(
            offline.get(key) == values
            for key, values in zip(wanted, online, strict=True)
            if values is not None
        )

    stream.wait_until(complete, timeout_s, "close its last instant in the change log")
