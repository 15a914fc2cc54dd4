"""The service's read of the online store against a real Redis: serving records with one MGET, and
each entity without a record of this schema read from its hash, as the layout's own reader does.
The reads are redis-py's asyncio client's, each test's on an event loop of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from unittest.mock import ANY

import pytest
import redis
import redis.asyncio as aioredis

from features.errors import StoreError
from features.online_layout import (
    EntityUpdate,
    encode_entity,
    encode_record,
    layout,
    read_entities,
    record_key,
    redis_key,
    write_entities,
)
from features.ranking import STORE_FEATURES
from features.specs import CLIENT, FREELANCER, JOB, Entity, features_of
from serving.inputs import freelancer_input
from serving.store import (
    EntityMemo,
    FeatureReader,
    HiredisConnection,
    Stamped,
    connect,
    read_stamped,
)
from tests.test_online_layout import random_values

PROJECT = "p"
Request = tuple[Entity, str]
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def read_once(url: str, requests: list[Request], memo: EntityMemo | None = None) -> Any:
    """`read_stamped` on a client of its own (closed after), on an event loop of its own."""

    async def main() -> Any:
        client = connect(url, 1.0)
        try:
            return await read_stamped(client, PROJECT, requests, memo)
        finally:
            await client.aclose()

    return run(main())


def hash_path(client: redis.Redis, requests: list[Request]) -> list[Any]:
    """What the hashes hold, read by the layout's reader: the model's features and the stamp."""
    stored = read_entities(client, PROJECT, requests)
    stamps = [
        client.hget(redis_key(PROJECT, entity, entity_id), layout(entity).stamp_field)
        for entity, entity_id in requests
    ]
    out: list[Any] = []
    for (entity, _), values, stamp in zip(requests, stored, stamps, strict=True):
        if values is None:
            out.append(None)
            continue
        names = [spec.name for spec in features_of(entity)]
        every = dict(zip(names, values, strict=True))
        out.append(({n: v for n, v in every.items() if n in STORE_FEATURES}, stamp and int(stamp)))
    return out


def served(found: list[Stamped | None]) -> list[Any]:
    return [None if s is None else (dict(s.values), s.stamp_us) for s in found]


def read(client: redis.Redis, requests: list[Request], memo: EntityMemo | None = None) -> Any:
    """`read_stamped`, checked against the hash path; with the MGETs and HMGETs it sent."""
    client.config_resetstat()
    found = read_once(url_of(client), requests, memo)
    stats = client.info("commandstats")
    sent = {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("mget", "hmget")}
    assert served(found) == hash_path(client, requests)
    for (entity, _), stamped in zip(requests, found, strict=True):
        if stamped is not None and entity is FREELANCER:
            assert stamped.columns is not None
            expected = freelancer_input(stamped.values)
            assert stamped.columns.packed == expected.packed
            assert stamped.columns.skills == expected.skills
        elif stamped is not None:
            assert stamped.columns is None
    return found, sent


def url_of(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def fill(client: redis.Redis, seed: int, *requests: Request) -> None:
    rng = random.Random(seed)
    updates = [
        EntityUpdate(entity, entity_id, random_values(rng, entity), 1_700_000_000_000_000 + n)
        for n, (entity, entity_id) in enumerate(requests)
    ]
    assert write_entities(client, PROJECT, updates) == len(updates)


def freelancers(n: int) -> list[Request]:
    return [(FREELANCER, f"f-{i}") for i in range(n)]


def test_records_are_read_with_one_mget(client: redis.Redis) -> None:
    requests = [(JOB, "j-1"), (CLIENT, "c-1"), *freelancers(50)]
    fill(client, 1, *requests)
    found, sent = read(client, requests)
    assert all(s is not None for s in found)
    assert sent == {"mget": 1, "hmget": 0}
    # What is served is the record: a hash changed behind the layout's back is not read.
    client.delete(redis_key(PROJECT, JOB, "j-1"))
    assert read_once(url_of(client), requests)[0] == found[0]


def test_an_entity_without_a_record_is_read_from_its_hash(client: redis.Redis) -> None:
    requests = [(JOB, "j-1"), *freelancers(4)]
    fill(client, 2, *requests)
    client.delete(record_key(PROJECT, FREELANCER, "f-1"), record_key(PROJECT, JOB, "j-1"))
    # Written as Feast's materialize writes: the hash alone, and no `_us:<view>`, so no stamp.
    values = random_values(random.Random(3), FREELANCER)
    key, mapping = encode_entity(PROJECT, FREELANCER, "f-9", values, 1_700_000_000_000_000)
    del mapping[layout(FREELANCER).stamp_field]
    client.hset(key, mapping=mapping)  # type: ignore[arg-type]
    requests.append((FREELANCER, "f-9"))

    found, sent = read(client, requests)
    assert all(s is not None for s in found)
    assert found[-1].stamp_us is None and found[0].stamp_us is not None
    assert dict(found[-1].values) == {
        spec.name: v
        for spec, v in zip(features_of(FREELANCER), values, strict=True)
        if spec.name in STORE_FEATURES
    }
    assert sent == {"mget": 1, "hmget": 3}


def test_a_record_of_another_schema_is_not_served(client: redis.Redis) -> None:
    requests = freelancers(3)
    fill(client, 4, *requests)
    other = random_values(random.Random(5), FREELANCER)
    foreign = encode_record(FREELANCER, other, 1_800_000_000_000_000)
    foreign = foreign[:4] + bytes(8) + foreign[12:]  # another layout's fingerprint
    old_format = b"bmr0" + encode_record(FREELANCER, other, 1_800_000_000_000_000)[4:]
    client.set(record_key(PROJECT, FREELANCER, "f-0"), foreign)
    client.set(record_key(PROJECT, FREELANCER, "f-2"), old_format)
    found, sent = read(client, requests)
    assert all(s is not None and s.stamp_us != 1_800_000_000_000_000 for s in found)
    assert sent == {"mget": 1, "hmget": 2}


def test_an_unknown_entity_is_none(client: redis.Redis) -> None:
    found, sent = read(client, [(JOB, "j-nobody"), (FREELANCER, "f-nobody")])
    assert found == [None, None]
    assert sent == {"mget": 1, "hmget": 2}


def test_a_request_mixing_every_case(client: redis.Redis) -> None:
    requests = [(JOB, "j-1"), (CLIENT, "c-1"), *freelancers(8)]
    fill(client, 6, *requests)
    client.delete(record_key(PROJECT, CLIENT, "c-1"), record_key(PROJECT, FREELANCER, "f-3"))
    foreign = client.get(record_key(PROJECT, FREELANCER, "f-5"))
    assert foreign is not None
    client.set(record_key(PROJECT, FREELANCER, "f-5"), foreign[:4] + bytes(8) + foreign[12:])
    asked = [*requests, (FREELANCER, "f-nobody"), (FREELANCER, "f-1"), (JOB, "j-nobody")]

    memo = EntityMemo()
    first, sent = read(client, asked, memo)
    assert [s is None for s in first] == [False] * 10 + [True, False, True]
    assert first[3] is first[-2]  # one entity asked twice
    assert sent == {"mget": 1, "hmget": 5}
    again, _ = read(client, asked, memo)
    assert all(a is b for a, b in zip(first, again, strict=True))  # remembered, not decoded


def test_entities_without_a_record_are_read_in_the_same_round_trip(client: redis.Redis) -> None:
    requests = [(JOB, "j-1"), (CLIENT, "c-1"), *freelancers(4)]
    fill(client, 11, *requests)
    client.delete(record_key(PROJECT, FREELANCER, "f-2"))  # its hash alone, as Feast writes
    asked = [*requests, (CLIENT, "c-nobody"), (FREELANCER, "f-nobody")]
    memo = EntityMemo()
    first, sent = read(client, asked, memo)
    assert sent == {"mget": 1, "hmget": 3} and memo.round_trips == 1
    for trips in (2, 3):
        again, sent = read(client, asked, memo)
        assert all(a is b for a, b in zip(first, again, strict=True))
        assert sent == {"mget": 1, "hmget": 3} and memo.round_trips == trips
    # One of them gets a record: served from it, and its hash is no longer read.
    fill(client, 12, (FREELANCER, "f-nobody"))
    found, sent = read(client, asked, memo)
    assert found[-1] is not None and found[-1].stamp_us is not None
    assert sent == {"mget": 1, "hmget": 2} and memo.round_trips == 4
    # A known entity whose record goes away is read from its hash, in the same round trip.
    client.delete(record_key(PROJECT, FREELANCER, "f-0"))
    found, sent = read(client, asked, memo)
    assert sent == {"mget": 1, "hmget": 3} and memo.round_trips == 5
    assert found[2] is not None and found[2].values == first[2].values


def test_a_connection_the_server_closed_is_connected_anew(client: redis.Redis) -> None:
    fill(client, 13, (JOB, "j-1"), (FREELANCER, "f-1"))

    async def main() -> None:
        reader = FeatureReader(connect(url_of(client), 1.0), PROJECT, retry_s=0.0)
        first = await reader.read("j-1", None, ["f-1"])
        assert not first.degraded
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1  # the reader's, idle
        again = await reader.read("j-1", None, ["f-1"])
        assert again == dataclasses.replace(first, fetch_s=ANY) and reader.up
        await reader.aclose()

    run(main())


def test_a_changed_record_is_read_anew(client: redis.Redis) -> None:
    memo = EntityMemo()
    rng = random.Random(7)
    for stamp in (1_000_000, 2_000_000, 2_000_000):
        values = random_values(rng, FREELANCER)
        write_entities(client, PROJECT, [EntityUpdate(FREELANCER, "f-1", values, stamp)])
        (found,), _ = read(client, [(FREELANCER, "f-1")], memo)
        assert found.stamp_us == stamp


def test_a_damaged_record_or_an_error_reply_fails_the_read(client: redis.Redis) -> None:
    fill(client, 8, (JOB, "j-1"), (FREELANCER, "f-1"))
    damaged = client.get(record_key(PROJECT, JOB, "j-1"))
    assert damaged is not None
    client.set(record_key(PROJECT, JOB, "j-1"), damaged[:-1])

    async def main() -> list[Stamped | None]:
        reader = connect(url_of(client), 1.0)
        with pytest.raises(StoreError, match="serving record"):
            await read_stamped(reader, PROJECT, [(JOB, "j-1")])
        client.delete(record_key(PROJECT, JOB, "j-1"))
        client.set(redis_key(PROJECT, JOB, "j-2"), b"not a hash")  # HMGET answers WRONGTYPE
        with pytest.raises(StoreError, match="answered an error"):
            await read_stamped(reader, PROJECT, [(FREELANCER, "f-1"), (JOB, "j-2"), (JOB, "j-1")])
        # The connection was not left half read: the next read on the client is whole.
        found = await read_stamped(reader, PROJECT, [(FREELANCER, "f-1"), (JOB, "j-1")])
        await reader.aclose()
        return found

    found = run(main())
    assert served(found) == hash_path(client, [(FREELANCER, "f-1"), (JOB, "j-1")])
    assert all(s is not None for s in found)


def test_a_request_reads_each_freelancer_once_in_one_round_trip(client: redis.Redis) -> None:
    fill(client, 9, (JOB, "j-1"), (CLIENT, "c-1"), (FREELANCER, "f-1"), (FREELANCER, "f-2"))

    async def main() -> None:
        reader = FeatureReader(connect(url_of(client), 1.0), PROJECT, retry_s=0.0)
        client.config_resetstat()
        found = await reader.read("j-1", "c-1", ["f-1", "f-2", "f-1"])
        assert not found.degraded and list(found.freelancers) == ["f-1", "f-2"]
        assert all(s is not None for s in found.freelancers.values())
        assert found.job is not None and found.client is not None
        stats = client.info("commandstats")
        assert stats["cmdstat_mget"]["calls"] == 1 and "cmdstat_hmget" not in stats
        no_client = await reader.read("j-1", None, ["f-2"])
        assert no_client.client is None and no_client.freelancers["f-2"] == found.freelancers["f-2"]
        await reader.aclose()

    run(main())


def test_a_read_of_a_store_that_stalls_is_degraded_in_time(client: redis.Redis) -> None:
    fill(client, 10, (JOB, "j-1"), (FREELANCER, "f-1"))

    async def main() -> None:
        reader = FeatureReader(connect(url_of(client), 0.05), PROJECT, retry_s=60.0)
        await reader.read("j-1", None, ["f-1"])  # connected before the store stalls
        client.client_pause(2_000)  # no answers for 2 s: longer than the reader waits
        try:
            started = time.monotonic()
            found = await reader.read("j-1", None, ["f-1"])
            assert time.monotonic() - started < 1.0
        finally:
            client.client_unpause()
        assert found.degraded and found.freelancers == {"f-1": None} and not reader.up
        skipped = await reader.read("j-1", None, ["f-1"])  # skipping the store for retry_s
        assert skipped.degraded and skipped.fetch_s == 0.0
        await reader.aclose()

    run(main())


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    """The service's connections pack commands with hiredis: the bytes redis-py's own asyncio
    connection writes, for what the service sends and for what redis-py sends on connecting."""
    ours, theirs = HiredisConnection(), aioredis.Connection()
    for args in [
        ("EVALSHA", "0" * 40, 2, b"bm:r:\x00\xff key", b"k2", "job", 1, "freelancer", 50),
        ("PING",),
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
        ("HMGET", b"key", b"\xff\x00\x10", "_ts:job_features"),
        ("SET", "k", 1.5, "EX", 60),
        ("GET", "ünïcödé"),
    ]:
        assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args)), args
    assert connect("redis://127.0.0.1:1/0", 1.0).connection_pool.connection_class is (
        HiredisConnection
    )
