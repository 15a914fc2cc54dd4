"""The online store on a real 3-master Redis Cluster (`BESTMATCH_REDIS_CLUSTER=true`): the flow's
guarded writes, serving's one-call read per master, Feast's own cluster client, the flow itself,
and a master that stops answering mid-request."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from bestmatch.services import ensure_redis, free_port
from features.errors import ConfigError, StoreError
from features.online_layout import (
    EntityUpdate,
    hash_key_of,
    read_entities,
    record_key,
    redis_key,
    write_entities,
)
from features.redis_cluster import SLOTS, Cluster, discover, key_slot, slot_tag
from features.settings import Settings
from features.specs import CLIENT, ENTITIES, FREELANCER, JOB, Entity
from flows.runner import run_backfill
from serving.store import FeatureReader, connect, open_reader, read_stamped
from tests.redis_cluster_fixtures import RedisClusterServers
from tests.test_flow import random_events
from tests.test_online_layout import random_values
from tests.test_stream import line_of, write_lines

PROJECT = "p"


def random_updates(rng: random.Random, n: int, ids: int = 200) -> list[EntityUpdate]:
    updates = []
    for _ in range(n):
        entity = rng.choice(ENTITIES)
        updates.append(
            EntityUpdate(
                entity,
                f"{entity.name[0]}-{rng.randint(1, ids)}",
                random_values(rng, entity),
                rng.randint(1, 10**6) * 1_000_000,
            )
        )
    return updates


def every_key(client: redis.Redis) -> dict[bytes, Any]:
    """Each hash and string key of one Redis and what it holds (a hash's fields, a string's
    bytes): the online store, without the event bus's Stream."""
    found: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            found[key] = client.hgetall(key)
        elif kind == b"string":
            found[key] = client.get(key)
    return found


def cluster_keys(servers: RedisClusterServers) -> dict[bytes, Any]:
    found: dict[bytes, Any] = {}
    for node in servers.nodes:
        found |= every_key(node.client())
    return found


def test_every_slot_has_a_tag_and_records_live_with_their_hash(
    redis_cluster: RedisClusterServers,
) -> None:
    assert all(key_slot(b"{" + slot_tag(slot) + b"}") == slot for slot in range(SLOTS))
    assert all(len(slot_tag(slot)) == 3 and slot_tag(slot).isalnum() for slot in range(SLOTS))
    node = redis_cluster.nodes[0].client()
    rng = random.Random(3)
    for _ in range(50):
        entity = rng.choice(ENTITIES)
        entity_id = "".join(rng.choice("ab{}c-1") for _ in range(rng.randint(1, 8)))
        key, record = redis_key(PROJECT, entity, entity_id), record_key(PROJECT, entity, entity_id)
        # the server's own slot function, not redis-py's, places both keys together
        assert node.cluster("keyslot", key) == node.cluster("keyslot", record)
        assert hash_key_of(record) == key


def test_the_cluster_holds_exactly_what_one_redis_holds(
    redis_cluster: RedisClusterServers, redis_url: str
) -> None:
    redis_cluster.flush()
    updates = random_updates(random.Random(7), 3000)
    single = redis.Redis.from_url(redis_url)
    cluster = Cluster(redis_cluster.url)
    try:
        for start in range(0, len(updates), 500):  # batches, with older stamps skipped
            part = updates[start : start + 500]
            assert write_entities(cluster, PROJECT, part) == write_entities(single, PROJECT, part)
        want = every_key(single)
        got = cluster_keys(redis_cluster)
        assert got == want
        assert len({key_slot(k) for k in got}) > 100  # spread over the slots and so the nodes
        for node in redis_cluster.nodes:  # every master holds a share, records with their hashes
            keys = set(every_key(node.client()))
            assert len(keys) > len(want) / 10
            assert all(hash_key_of(k) in keys for k in keys if hash_key_of(k) is not None)
        asked = sorted({(u.entity, u.entity_id) for u in updates}, key=str) + [(JOB, "unknown")]
        assert read_entities(cluster, PROJECT, asked) == read_entities(single, PROJECT, asked)
    finally:
        cluster.close()
        single.close()


def test_replays_never_go_back_in_time_on_the_cluster(redis_cluster: RedisClusterServers) -> None:
    redis_cluster.flush()
    rng = random.Random(1)
    cluster = Cluster(redis_cluster.url)
    newer = [
        EntityUpdate(FREELANCER, f"f-{n}", random_values(rng, FREELANCER), 2000) for n in range(40)
    ]
    older = [u._replace(values=random_values(rng, FREELANCER), stamp_us=1000) for u in newer]
    try:
        assert write_entities(cluster, PROJECT, newer) == 40
        assert write_entities(cluster, PROJECT, older) == 0
        asked = [(FREELANCER, u.entity_id) for u in newer]
        assert read_entities(cluster, PROJECT, asked) == [tuple(u.values) for u in newer]
    finally:
        cluster.close()


def read_with(reader: FeatureReader, job: str, client: str, freelancers: list[str]) -> Any:
    async def main() -> Any:
        try:
            assert await reader.ping()
            return await reader.read(job, client, freelancers)
        finally:
            await reader.aclose()

    return asyncio.run(main())


def test_serving_reads_each_master_once_and_equals_one_redis(
    redis_cluster: RedisClusterServers, redis_url: str
) -> None:
    redis_cluster.flush()
    updates = random_updates(random.Random(11), 2000, ids=60)
    single = redis.Redis.from_url(redis_url)
    cluster = Cluster(redis_cluster.url)
    write_entities(cluster, PROJECT, updates)
    write_entities(single, PROJECT, updates)
    cluster.close()
    freelancers = [f"f-{n}" for n in range(1, 61)] + ["f-unknown", "f-3"]
    reader = open_reader(redis_cluster.url, True, PROJECT, 2.0, 0.0)
    found = read_with(reader, "j-5", "c-7", freelancers)
    assert not found.degraded
    assert reader._memo.round_trips == len(redis_cluster.nodes)  # one call per master

    async def one_redis() -> Any:
        client = connect(redis_url, 2.0)
        try:
            requests: list[tuple[Entity, str]] = [(JOB, "j-5"), (CLIENT, "c-7")]
            requests += [(FREELANCER, f) for f in dict.fromkeys(freelancers)]
            return await read_stamped(client, PROJECT, requests)
        finally:
            await client.aclose()

    want = asyncio.run(one_redis())
    assert [found.job, found.client, *found.freelancers.values()] == want
    assert want[0] is not None and found.freelancers["f-unknown"] is None
    single.close()


def test_a_paused_master_gives_a_degraded_answer_within_the_timeout(
    redis_cluster: RedisClusterServers,
) -> None:
    redis_cluster.flush()
    cluster = Cluster(redis_cluster.url)
    write_entities(cluster, PROJECT, random_updates(random.Random(2), 500, ids=50))
    cluster.close()
    freelancers = [f"f-{n}" for n in range(1, 51)]
    timeout_s = 0.2
    reader = open_reader(redis_cluster.url, True, PROJECT, timeout_s, 0.0)
    paused = redis_cluster.nodes[1]

    async def main() -> tuple[Any, float, Any, Any]:
        try:
            assert await reader.ping()
            assert not (await reader.read("j-1", "c-1", freelancers)).degraded
            paused.pause()
            try:
                started = time.perf_counter()
                during = await reader.read("j-1", "c-1", freelancers)
                took = time.perf_counter() - started
            finally:
                paused.resume()
            assert await reader.ping()
            after = await reader.read("j-1", "c-1", freelancers)
            return during, took, after, reader.up
        finally:
            await reader.aclose()

    during, took, after, up = asyncio.run(main())
    assert during.degraded and all(v is None for v in during.freelancers.values())
    # about one timeout (the bound of tests/test_serving_faults.py: generous, a loaded box)
    assert timeout_s <= took < 1.0
    assert not after.degraded and up
    assert sum(v is not None for v in after.freelancers.values()) > 40


def test_the_flow_writes_the_cluster_as_it_writes_one_redis(
    tmp_path: Path, cluster_settings: Settings, settings: Settings
) -> None:
    events = random_events(seed=31, n=600)
    path = write_lines(tmp_path / "events.jsonl", [line_of(e) for e in events])
    run_backfill(settings, path)
    run_backfill(cluster_settings, path)
    single = redis.Redis.from_url(settings.redis_url)
    want = every_key(single)
    single.close()
    got: dict[bytes, Any] = {}
    for url in (cluster_settings.redis_url,):
        cluster = Cluster(url)
        for node in cluster.nodes:
            got |= every_key(node)
        cluster.close()
    assert got == want and len(want) > 20


def test_feasts_own_cluster_client_reads_what_the_flow_wrote(
    tmp_path: Path, cluster_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import FeatureStore, RepoConfig

    from features.feast_repo import FEAST_ENTITIES, FEATURE_SERVICE, FEATURE_VIEWS
    from features.specs import features_of, view_name
    from tests.test_online_layout import feast_value

    rng = random.Random(5)
    updates = [
        EntityUpdate(entity, f"{entity.name}-{n}", random_values(rng, entity), 10**12 + n)
        for entity in ENTITIES
        for n in range(20)
    ]
    cluster = Cluster(cluster_settings.redis_url)
    write_entities(cluster, cluster_settings.feast_project, updates)
    cluster.close()
    port = cluster_settings.redis_url.rsplit(":", 1)[1].split("/")[0]
    monkeypatch.setenv("BESTMATCH_REDIS_CLUSTER", "true")
    stores = {
        # Feast's standard Redis store, as a user configures it for a cluster
        "feast": {
            "type": "redis",
            "redis_type": "redis_cluster",
            "connection_string": f"127.0.0.1:{port}",
        },
        # BestMatch's (features/feature_store.yaml), with BESTMATCH_REDIS_CLUSTER=true
        "bestmatch": {
            "type": "features.feast_stores.BestMatchRedisOnlineStore",
            "url": cluster_settings.redis_url,
        },
    }
    for name, online_store in stores.items():
        config = RepoConfig(
            project=cluster_settings.feast_project,
            provider="local",
            registry={"registry_type": "file", "path": str(tmp_path / f"{name}.db")},
            online_store=online_store,
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
            repo_path=str(tmp_path),
        )
        assert config.online_store.redis_type.value == "redis_cluster"
        store = FeatureStore(config=config)
        store.apply([*FEAST_ENTITIES, *FEATURE_VIEWS, FEATURE_SERVICE])
        for entity in ENTITIES:
            mine = [u for u in updates if u.entity is entity]
            names = [f"{view_name(entity)}:{spec.name}" for spec in features_of(entity)]
            rows = [{entity.join_key: u.entity_id} for u in mine]
            got = store.get_online_features(features=names, entity_rows=rows).to_dict()
            for place, spec in enumerate(features_of(entity)):
                column = [feast_value(spec.dtype, value) for value in got[spec.name]]
                assert column == [u.values[place] for u in mine], (name, spec.name)


def test_misconfigured_clusters_are_one_line_naming_the_variable(
    redis_cluster: RedisClusterServers, redis_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="BESTMATCH_REDIS_CLUSTER=true"):
        ensure_redis(redis_cluster.url, tmp_path)  # a cluster node, the setting off
    with pytest.raises(ConfigError, match="BESTMATCH_REDIS_CLUSTER=true, but .* not a cluster"):
        ensure_redis(redis_url, tmp_path, cluster=True)
    with pytest.raises(ConfigError, match="database other than 0"):
        Settings(redis_url=redis_cluster.url.replace("/0", "/2"), redis_cluster=True)
    with pytest.raises(StoreError, match="cannot reach the Redis Cluster"):
        discover("redis://127.0.0.1:1/0", timeout_s=0.5)
    assert len(discover(redis_cluster.url).nodes) == len(redis_cluster.nodes)


def test_the_commands_say_a_misconfigured_cluster_in_one_line(
    redis_cluster: RedisClusterServers, redis_url: str, tmp_path: Path
) -> None:
    """Against a cluster node without the variable, `backfill` (which died in Bytewax with
    "error writing output batch") and `serve` stop with one line; so does the variable on a
    plain Redis."""
    from tests.test_kafka import assert_one_line, run_command

    events = write_lines(tmp_path / "e.jsonl", [line_of(e) for e in random_events(1, 20)])
    backfill = ["backfill", "--events", str(events)]
    lake = {"BESTMATCH_LAKE": str(tmp_path / "lake")}
    for args in (backfill, ["serve", "--port", str(free_port())]):
        code, output = run_command(args, {**lake, "BESTMATCH_REDIS_URL": redis_cluster.url})
        assert code == 2, output
        assert_one_line(output, "is a Redis Cluster node", "BESTMATCH_REDIS_CLUSTER=true")
    plain = {**lake, "BESTMATCH_REDIS_URL": redis_url, "BESTMATCH_REDIS_CLUSTER": "true"}
    code, output = run_command(backfill, plain)
    assert code == 2, output
    assert_one_line(output, "BESTMATCH_REDIS_CLUSTER=true", "not a cluster node")


def test_a_stream_from_the_clusters_redis_stream_equals_a_backfill(
    tmp_path: Path,
    cluster_settings: Settings,
    settings: Settings,
    redis_cluster: RedisClusterServers,
) -> None:
    """`BESTMATCH_BUS=redis` on a cluster: `publish` and `stream` use the cluster's Stream."""
    from features.bus import publish_events
    from tests.streaming import StreamProcess, converge

    lines = [line_of(e) for e in random_events(seed=33, n=500)]
    run_backfill(settings, write_lines(tmp_path / "events.jsonl", lines))
    single = redis.Redis.from_url(settings.redis_url)
    want = every_key(single)
    single.close()
    assert publish_events(cluster_settings, lines) == len(lines)
    stream = StreamProcess(cluster_settings, tmp_path / "stream.log", free_port(), how="fork")
    try:
        stream.start()
        stream.wait_read(len(lines), 120)

        assert converge(lambda: cluster_keys(redis_cluster), want, 60) == want
    finally:
        stream.kill()
