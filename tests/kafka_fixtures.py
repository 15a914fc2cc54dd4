"""A real Kafka-protocol broker for the tests: librdkafka's mock cluster (shipped inside
confluent-kafka), three brokers serving any client over TCP on loopback.

It lives as long as the client handle that created it, here for the test session. Its
CreateTopics request times out; topics are created on first use (a producer's metadata request)
with 4 partitions, which `kafka_settings` checks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from features.bus import kafka_partitions
from features.settings import Settings

PARTITIONS = 4
IDLE_MS = 2000  # generous: a loaded 2-core box must not time a partition out mid-test


class MockKafka:
    """A 3-broker mock cluster; `stop` takes it down (every broker at once)."""

    def __init__(self) -> None:
        self._handle: Any = Producer({"test.mock.num.brokers": 3, "log_level": 0})
        brokers = self._handle.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)

    def bus(self, topic: str) -> str:
        return f"kafka://{self.bootstrap}/{topic}"

    def stop(self) -> None:
        self._handle = None  # the last reference: librdkafka destroys the cluster with it


def new_mock_kafka() -> MockKafka:
    return MockKafka()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[MockKafka]:
    cluster = MockKafka()
    yield cluster
    cluster.stop()


def on_topic(settings: Settings, cluster: MockKafka, topic: str | None = None) -> Settings:
    """The settings with a Kafka bus: a fresh topic of the cluster (created, 4 partitions)."""
    topic = topic or f"events-{uuid.uuid4().hex[:10]}"
    bus = settings.model_copy(
        update={"bus": cluster.bus(topic), "kafka_idle_ms": IDLE_MS, "kafka_retry_s": 10.0}
    )
    assert bus.kafka is not None
    assert len(kafka_partitions(bus.kafka, 10, create=True)) == PARTITIONS
    return bus


@pytest.fixture
def kafka_settings(settings: Settings, kafka_cluster: MockKafka) -> Settings:
    return on_topic(settings, kafka_cluster)
