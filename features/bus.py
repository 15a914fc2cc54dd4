"""The event bus: a Redis Stream with one field, `event`, holding each event's JSON text, or a
Kafka topic with one JSON event per message value (`BESTMATCH_BUS`, docs/event-bus.md).

Kafka messages are keyed by the entity whose order matters most: the job for `job_posted`,
`proposal_submitted` and `proposal_action` (a job's posting, its proposals and their actions
stay in one partition, in publish order), the freelancer for `freelancer_profile` (a
freelancer's profile changes stay in order, which decides the latest one at an instant). A line
with neither (an invalid event: it becomes a dead letter) is keyed by its `event_id`, else by a
hash of its text, so where every line goes is a function of its content.
"""

from __future__ import annotations

import gzip
import io
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
import redis
from redis.cluster import RedisCluster

from features import redis_cluster
from features.errors import StoreError

if TYPE_CHECKING:
    from features.settings import KafkaBus, Settings

EVENT_FIELD = b"event"
KEY_FIELDS = {
    "job_posted": "job_id",
    "proposal_submitted": "job_id",
    "proposal_action": "job_id",
    "freelancer_profile": "freelancer_id",
}
QUIET = 0  # librdkafka's log level for our clients: failures reach us as errors, not log lines


def publish(
    client: redis.Redis | RedisCluster,
    key: str,
    lines: Iterable[bytes],
    *,
    rate: float | None = None,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append events to the stream, pipelined; `rate` caps events per second. Returns the count."""
    sent = 0
    started = time.monotonic()
    pipe = client.pipeline(transaction=False)
    pending = 0
    step = batch if rate is None else max(1, min(batch, int(rate // 100) or 1))
    for line in lines:
        line = line.strip()
        if not line:
            continue
        pipe.xadd(key, {EVENT_FIELD: line})
        pending += 1
        sent += 1
        if pending >= step:
            pipe.execute()
            pending = 0
            if progress is not None:
                progress(sent)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    if pending:
        pipe.execute()
    if progress is not None:
        progress(sent)
    return sent


def publish_events(
    settings: Settings,
    lines: Iterable[bytes],
    *,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append events to the settings' bus (Redis Stream or Kafka topic). Returns the count."""
    bus = settings.kafka
    if bus is not None:
        return publish_kafka(
            bus, lines, rate=rate, progress=progress, timeout_s=settings.kafka_retry_s
        )
    client = redis_cluster.client(settings.redis_url, settings.redis_cluster)
    try:
        return publish(client, settings.stream_key, lines, rate=rate, progress=progress)
    finally:
        client.close()


def event_key(line: bytes) -> bytes:
    """The Kafka key of an event's line (see the module's docstring)."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict):
        value = event.get(KEY_FIELDS.get(event.get("event_type"), ""))  # type: ignore[arg-type]
        if not isinstance(value, str) or not value:
            value = event.get("event_id")
        if isinstance(value, str) and value:
            return value.encode()
    return b"crc32:%08x" % zlib.crc32(line)


def publish_kafka(
    bus: KafkaBus,
    lines: Iterable[bytes],
    *,
    rate: float | None = None,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
    partition: Callable[[bytes], int] | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Produce events to the topic, keyed by `event_key` (or into `partition(line)`: tools and
    tests that choose the partitions). With `rate`, every step of up to `rate / 100` events is
    flushed (delivered, as an XADD returns) before `progress` is told and the pace is kept."""
    from confluent_kafka import KafkaException, Producer

    kafka_partitions(bus, timeout_s, create=True)  # one clear line if it cannot be reached
    failed: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failed.append(error)

    producer = Producer(
        {
            "bootstrap.servers": bus.bootstrap,
            "enable.idempotence": True,  # a retried send is written once, in order
            "linger.ms": 1 if rate else 5,
            "message.timeout.ms": int(timeout_s * 1000),
            "log_level": QUIET,
        }
    )
    sent = 0
    started = time.monotonic()
    step = 10_000 if rate is None else max(1, min(batch, int(rate // 100) or 1))
    pending = 0
    try:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            options: dict[str, Any] = {"on_delivery": delivered}
            if partition is None:
                options["key"] = event_key(line)
            else:
                options["partition"] = partition(line)
            while True:
                try:
                    producer.produce(bus.topic, line, **options)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            producer.poll(0)
            sent += 1
            pending += 1
            if pending >= step:
                pending = 0
                if rate:
                    _flush(producer, bus, failed, timeout_s)
                if progress is not None:
                    progress(sent)
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        _flush(producer, bus, failed, timeout_s)
    except KafkaException as exc:
        msg = f"event bus {bus}: {exc.args[0].str() if exc.args else exc}"
        raise StoreError(msg) from None
    if progress is not None:
        progress(sent)
    return sent


def _flush(producer: Any, bus: KafkaBus, failed: list[Any], timeout_s: float) -> None:
    left = producer.flush(timeout_s)
    if failed or left:
        why = failed[0].str() if failed else f"{left:,} events not delivered in {timeout_s:.0f} s"
        msg = f"event bus {bus}: publishing failed: {why}"
        raise StoreError(msg)


def kafka_partitions(bus: KafkaBus, timeout_s: float, *, create: bool = False) -> list[int]:
    """The topic's partition ids, or one clear `StoreError` when the cluster cannot be reached
    or has no such topic. `create`: ask as a producer does, so a broker that auto-creates topics
    creates it."""
    from confluent_kafka import Consumer, KafkaException, Producer

    config = {"bootstrap.servers": bus.bootstrap, "log_level": QUIET}
    client: Any = (
        Producer(config)
        if create
        else Consumer({**config, "group.id": "bestmatch", "enable.auto.commit": False})
    )
    try:
        metadata = client.list_topics(bus.topic, timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        msg = (
            f"event bus {bus}: no broker reachable within {timeout_s:.0f} s "
            f"({error.str() if hasattr(error, 'str') else error})"
        )
        raise StoreError(msg) from None
    finally:
        if not create:
            client.close()
    topic = metadata.topics.get(bus.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        why = (
            topic.error.str() if topic is not None and topic.error is not None else "no partitions"
        )
        msg = f"event bus {bus}: topic {bus.topic!r} is not there ({why}); create it or publish"
        raise StoreError(msg)
    return sorted(topic.partitions)


def open_events(path: Path) -> BinaryIO:
    """An events file for reading bytes: JSON Lines, gzip-compressed when it ends in `.gz`."""
    if path.name.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"))  # type: ignore[arg-type]
    return open(path, "rb")  # noqa: SIM115


def iter_lines(path: Path) -> Iterator[bytes]:
    with open_events(path) as handle:
        yield from handle
