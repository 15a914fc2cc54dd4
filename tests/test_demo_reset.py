"""`bestmatch demo` starts from empty stores: `reset_online` deletes the project's entities
(Feast's hashes and the serving records) and the event bus, and nothing else in Redis; and the
processes it starts do not inherit what importing Feast set."""

from __future__ import annotations

import random

import pytest
import redis

from bestmatch.demo.prepare import reset_online
from bestmatch.services import child_env
from features.online_layout import EntityUpdate, record_key, redis_key, write_entities
from features.settings import Settings
from features.specs import FREELANCER, JOB
from tests.test_online_layout import random_values


def test_reset_online_deletes_hashes_records_and_the_bus_only(settings: Settings) -> None:
    rng = random.Random(7)
    client = redis.Redis.from_url(settings.redis_url)
    project = settings.feast_project
    updates = [
        EntityUpdate(JOB, "j-1", random_values(rng, JOB), 1_000),
        EntityUpdate(FREELANCER, "f-1", random_values(rng, FREELANCER), 2_000),
    ]
    assert write_entities(client, project, updates) == 2
    other = [EntityUpdate(JOB, "j-1", random_values(rng, JOB), 1_000)]
    assert write_entities(client, "another_project", other) == 1
    client.xadd(settings.stream_key, {"e": "{}"})
    client.set("unrelated", "kept")

    assert reset_online(client, settings) == 2

    for entity, entity_id in ((JOB, "j-1"), (FREELANCER, "f-1")):
        assert not client.exists(redis_key(project, entity, entity_id))
        assert not client.exists(record_key(project, entity, entity_id))
    assert client.exists(redis_key("another_project", JOB, "j-1"))
    assert client.exists(record_key("another_project", JOB, "j-1"))
    assert not client.exists(settings.stream_key)
    assert client.get("unrelated") == b"kept"


def test_children_do_not_inherit_feasts_prometheus_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/feast_metrics_x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", "/tmp/feast_metrics_x")
    monkeypatch.setenv("BESTMATCH_KEPT", "yes")
    env = child_env(BESTMATCH_LAKE="/lake")
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in env
    assert env["BESTMATCH_KEPT"] == "yes"
    assert env["BESTMATCH_LAKE"] == "/lake"
