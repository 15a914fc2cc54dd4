"""`bestmatch bench kafka`: the Kafka bus beside the Redis Stream and the backfill, in one run.

- Replay: the same events (a) by `bestmatch backfill` from a file and (b) by the stream flow
  from a Kafka topic, read from its start to its end (`run_stream(until_caught_up=True)`: the
  merge of docs/event-bus.md included) with the backfill's change-log trigger. Ratio (b)/(a).
- Freshness: `bestmatch stream` on the Redis Stream, then on the topic, each fed the same
  events at the same rate; publish (delivered to the bus) to visible in Redis, percentiles and
  the ratio Kafka/Redis (`bestmatch bench flow`'s measurement, with Kafka's producer).

The topic lives on librdkafka's mock cluster (3 brokers, 4 partitions per topic) in this process,
unless `--bootstrap` names a real cluster (its topics must auto-create, or exist).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from rich.table import Table

from bestmatch.benchmarks.flow import (
    DRAIN_TIMEOUT_S,
    SAMPLE_EVERY,
    START_TIMEOUT_S,
    BenchStores,
    Watcher,
    _marketplace_traffic,
    _open_stores,
    _timed,
    _wait,
    cached_events,
    changelog_rows,
    freshness_percentiles,
    measure_freshness,
    pick_samples,
)
from bestmatch.console import console
from bestmatch.services.stream import StreamProcess
from features.bus import iter_lines, kafka_partitions, publish_kafka
from features.errors import ConfigError, FlowError
from features.settings import Settings

GOAL_FRESHNESS_RATIO = 2.0
GOAL_REPLAY_RATIO = 1.5
TRIGGER_S = 1.0  # the stream's change-log trigger, both buses (`bestmatch stream`'s default)


class MockCluster:
    """librdkafka's mock cluster, alive while this handle is."""

    def __init__(self) -> None:
        from confluent_kafka import Producer

        self.handle: Any = Producer({"test.mock.num.brokers": 3, "log_level": 0})
        brokers = self.handle.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)


def _on_topic(settings: Settings, bootstrap: str, label: str) -> Settings:
    bus = f"kafka://{bootstrap}/bench-{label}-{uuid.uuid4().hex[:8]}"
    kafka = settings.model_copy(update={"bus": bus})
    assert kafka.kafka is not None
    kafka_partitions(kafka.kafka, kafka.kafka_retry_s, create=True)
    return kafka


# --- replay -----------------------------------------------------------------------------------


def _deleted(kafka: Settings) -> tuple[int, int]:
    """(messages the broker no longer keeps, messages ever written) on the topic: the mock
    cluster keeps about the last 5 MB of each partition."""
    from confluent_kafka import Consumer, TopicPartition

    assert kafka.kafka is not None
    partitions = kafka_partitions(kafka.kafka, kafka.kafka_retry_s)
    consumer = Consumer({"bootstrap.servers": kafka.kafka.bootstrap, "group.id": "bench"})
    try:
        marks = [
            consumer.get_watermark_offsets(TopicPartition(kafka.kafka.topic, p), timeout=10)
            for p in partitions
        ]
    finally:
        consumer.close()
    return sum(low for low, _ in marks), sum(high for _, high in marks)


def _check_kept(kafka: Settings, events: int) -> None:
    """Every event is still on the topic."""
    deleted, written = _deleted(kafka)
    kept = written - deleted
    if kept != events:
        msg = (
            f"the topic keeps {kept:,} of the {events:,} events published (retention; the mock "
            "cluster keeps about 5 MB per partition): use fewer --events, or a real cluster"
        )
        raise ConfigError(msg)


def measure_replay(
    stores: BenchStores, path: Path, events: int, repeat: int, bootstrap: str
) -> dict[str, Any]:
    from flows.runner import run_backfill, run_stream

    kafka = _on_topic(stores.settings, bootstrap, "replay")
    assert kafka.kafka is not None
    console.print(f"  publishing {events:,} events to {kafka.kafka} (not timed)")
    publish_kafka(kafka.kafka, iter_lines(path))
    partitions = kafka_partitions(kafka.kafka, kafka.kafka_retry_s)
    _check_kept(kafka, events)
    # untimed: the first run in a process pays one-off costs (imports, first tables)
    stores.reset()
    run_backfill(stores.settings, path)
    rows = changelog_rows(stores.settings)

    def replay() -> None:
        run_stream(kafka, trigger_s=3600.0, until_caught_up=True)

    backfill_runs: list[float] = []
    replay_runs: list[float] = []
    replay_rows = None
    for _ in range(repeat):  # interleaved, so a busy spell on the machine hits both
        runs, _ = _timed(
            "(a) backfill", 1, lambda: run_backfill(stores.settings, path), stores.reset
        )
        backfill_runs += runs
        runs, _ = _timed("(b) replay from Kafka", 1, replay, stores.reset)
        replay_runs += runs
        replay_rows = changelog_rows(stores.settings)
        if replay_rows != rows:
            msg = f"the replay wrote {replay_rows:,} change-log rows, the backfill {rows:,}"
            raise FlowError(msg)
    backfill_s, replay_s = statistics.median(backfill_runs), statistics.median(replay_runs)
    return {
        "events": events,
        "partitions": len(partitions),
        "changelog_rows": rows,
        "backfill_runs_s": backfill_runs,
        "replay_runs_s": replay_runs,
        "backfill_events_per_s": events / backfill_s,
        "replay_events_per_s": events / replay_s,
        "ratio": replay_s / backfill_s,
        "goal_ratio": GOAL_REPLAY_RATIO,
        "meets_goal": replay_s / backfill_s <= GOAL_REPLAY_RATIO,
    }


# --- freshness --------------------------------------------------------------------------------


def measure_kafka_freshness(
    stores: BenchStores, kafka: Settings, path: Path, rate: float, duration: float
) -> dict[str, Any]:
    """`bench flow`'s freshness stage (same warm-up, samples and percentiles), publishing to
    the topic: a sample counts as published once its producer step is delivered (flushed)."""
    assert kafka.kafka is not None
    bus = kafka.kafka
    burst, settle = max(500, int(rate)), max(100, int(rate))
    first = burst + settle
    lines = _marketplace_traffic(path, first + int(rate * duration))
    samples = pick_samples(lines, first, kafka.feast_project, SAMPLE_EVERY)
    timed = lines[first:]
    stores.reset()
    # the child's bus comes with its settings (`stream_env`)
    stream = StreamProcess(kafka, stores.root / "stream-kafka.log", trigger_s=TRIGGER_S)
    stream.start()
    watcher = Watcher(redis.Redis.from_url(kafka.redis_url))
    try:
        watcher.start()
        console.print(f"  warming up: {first:,} events, waiting for the stream to apply them")
        for start, end, pace in ((0, burst, None), (burst, first, rate)):
            tail = pick_samples(lines[:end], start, kafka.feast_project, 10**9)[-1]
            publish_kafka(bus, lines[start:end], rate=pace)
            tail.published = time.perf_counter()
            watcher.inbox.put(tail)
            _wait(
                "the stream's warm-up", lambda t=tail: t.seen is not None, stream, START_TIMEOUT_S
            )
        queued = 0

        def sent_up_to(sent: int) -> None:
            nonlocal queued
            now = time.perf_counter()
            while queued < len(samples) and samples[queued].index - first < sent:
                samples[queued].published = now
                watcher.inbox.put(samples[queued])
                queued += 1

        console.print(f"  publishing {len(timed):,} events at {rate:,.0f}/s")
        started = time.perf_counter()
        publish_kafka(bus, timed, rate=rate, progress=sent_up_to)
        published_s = time.perf_counter() - started
        tail = samples[-1]
        drained = time.monotonic() + DRAIN_TIMEOUT_S
        while tail.seen is None and time.monotonic() < drained and watcher.error is None:
            stream.check()
            time.sleep(0.01)
        time.sleep(0.2)
        ended = time.perf_counter()
    finally:
        watcher.stop.set()
        stream.stop()
    watcher.join(timeout=5)
    if watcher.error is not None:
        raise watcher.error
    deleted, _ = _deleted(kafka)
    if deleted:
        console.print(
            f"  [red]the broker deleted {deleted:,} messages (retention)[/]: the samples among "
            "them are lost, not late; publish for less time, or use a real cluster"
        )
    figures: dict[str, Any] = {
        "rate": rate,
        "deleted_by_retention": deleted,
        "published": len(timed),
        "published_s": published_s,
        "published_per_s": len(timed) / published_s,
    }
    return figures | freshness_percentiles(samples, ended)


def _redis_freshness(stores: BenchStores, path: Path, rate: float, duration: float) -> Any:
    """`bench flow`'s freshness stage on the Redis Stream, whatever bus the settings name."""
    on_redis = dataclasses.replace(
        stores, settings=stores.settings.model_copy(update={"bus": "redis"})
    )
    return measure_freshness(on_redis, path, rate, duration, TRIGGER_S)


def _freshness_rounds(
    stores: BenchStores, path: Path, address: str, rate: float, duration: float, rounds: int
) -> dict[str, Any]:
    """Redis, then Kafka, `rounds` times: a busy spell on a shared machine hits both; the
    verdict is on the median of the rounds' p50 ratios."""
    measured = []
    for round_ in range(1, rounds + 1):
        console.print(f"[bold]freshness[/] round {round_}/{rounds}: the Redis Stream")
        redis_figures = _redis_freshness(stores, path, rate, duration)
        console.print(f"[bold]freshness[/] round {round_}/{rounds}: the Kafka topic")
        kafka = _on_topic(stores.settings, address, "fresh")
        kafka_figures = measure_kafka_freshness(stores, kafka, path, rate, duration)
        measured.append(
            {
                "redis": redis_figures,
                "kafka": kafka_figures,
                "p50_ratio": kafka_figures["p50_ms"] / redis_figures["p50_ms"],
                "p99_ratio": kafka_figures["p99_ms"] / redis_figures["p99_ms"],
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    ratio = statistics.median(r["p50_ratio"] for r in measured)
    lost = sum(r["kafka"]["lost"] + r["redis"]["lost"] for r in measured)
    return {
        "rate": rate,
        "rounds": measured,
        "p50_ratio": ratio,
        "p99_ratio": statistics.median(r["p99_ratio"] for r in measured),
        "goal_ratio": GOAL_FRESHNESS_RATIO,
        "lost": lost,
        "meets_goal": ratio <= GOAL_FRESHNESS_RATIO and not lost,
    }


# --- the command ------------------------------------------------------------------------------


def _print(figures: dict[str, Any]) -> None:
    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]not met[/]"

    if "replay" in figures:
        r = figures["replay"]
        table = Table(
            title=f"replay: {r['events']:,} events, {r['partitions']} partitions (medians)",
            title_justify="left",
        )
        for column in ("", "s", "events/s", "runs"):
            table.add_column(column, justify="left" if not column else "right")
        backfill_s = statistics.median(r["backfill_runs_s"])
        replay_s = statistics.median(r["replay_runs_s"])
        table.add_row(
            "(a) bestmatch backfill, a file",
            f"{backfill_s:.2f}",
            f"{r['backfill_events_per_s']:,.0f}",
            str(len(r["backfill_runs_s"])),
        )
        table.add_row(
            "(b) the stream flow, the topic to its end",
            f"{replay_s:.2f}",
            f"{r['replay_events_per_s']:,.0f}",
            str(len(r["replay_runs_s"])),
        )
        console.print(table)
        goal = f"goal ≤ {GOAL_REPLAY_RATIO}"
        console.print(f"(b) ÷ (a) = {r['ratio']:.2f} ({goal}) — {verdict(r['meets_goal'])}")
    if "freshness" in figures:
        f = figures["freshness"]
        table = Table(
            title=f"freshness: publish → visible in Redis, {f['rate']:,.0f} events/s, "
            "p50 / p99 per round",
            title_justify="left",
        )
        for column in ("round", "Redis Stream", "Kafka topic", "Kafka ÷ Redis", "not visible"):
            table.add_column(column, justify="right")
        for i, r in enumerate(f["rounds"], 1):
            a, b = r["redis"], r["kafka"]
            table.add_row(
                str(i),
                f"{a['p50_ms']:,.0f} / {a['p99_ms']:,.0f} ms",
                f"{b['p50_ms']:,.0f} / {b['p99_ms']:,.0f} ms",
                f"{r['p50_ratio']:.2f} / {r['p99_ratio']:.2f}",
                f"{a['lost']:,} / {b['lost']:,}",
            )
        console.print(table)
        console.print(
            f"median p50 Kafka ÷ Redis = {f['p50_ratio']:.2f} (goal ≤ {GOAL_FRESHNESS_RATIO}, "
            f"every sample visible) — {verdict(f['meets_goal'])}"
        )


def bench_kafka(
    settings: Settings,
    *,
    events: int,
    rate: float,
    duration: float,
    repeat: int,
    rounds: int,
    bootstrap: str | None,
    seed: int,
    redis_db: int,
    skip_replay: bool,
    skip_freshness: bool,
    force: bool,
    json_out: Path | None,
) -> None:
    """Kafka bus: replay vs backfill, and freshness vs the Redis Stream, in the same run."""
    started = time.perf_counter()
    cluster = None if bootstrap else MockCluster()
    address = bootstrap or cluster.bootstrap  # type: ignore[union-attr]
    stores = _open_stores(settings, redis_db, force)
    figures: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_start": os.getloadavg()[0]},
        "cluster": "librdkafka mock, 3 brokers" if cluster else address,
        "idle_ms": stores.settings.kafka_idle_ms,
    }
    try:
        if not skip_replay:
            path = cached_events(stores.root, events, seed)
            console.print(f"[bold]replay[/] of {path.name}")
            figures["replay"] = measure_replay(stores, path, events, repeat, address)
        if not skip_freshness:
            path = cached_events(stores.root, int(rate * duration * 1.5) + 20_000, seed)
            figures["freshness"] = _freshness_rounds(stores, path, address, rate, duration, rounds)
    finally:
        stores.close()
    figures["elapsed_s"] = time.perf_counter() - started
    figures["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    _print(figures)
    console.print(
        f"bench took {figures['elapsed_s']:.0f} s; load average "
        f"{figures['machine']['load_avg_1m_start']:.1f} at the start, "
        f"{figures['machine']['load_avg_1m_end']:.1f} at the end"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures written to {json_out}")
