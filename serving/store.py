"""Reading a request's entities from the online store, within a bounded time.

Every entity of a request (the job, its client when known, each distinct freelancer) is read with
one `MGET` of their serving records (`features.online_layout`, the one module that knows the Redis
layout: one packed string per entity, written with its Feast hash by the same guarded script call),
and only the features the model reads are kept. An entity without a record of this feature schema
(its hash written by someone else, e.g. Feast, or by an older version, or an unknown entity) is read
from its hash in a second round trip. Each entity comes back with the time of its last change
(`_us:<view>`, which the record holds too), so the service can say how old the features it serves
are.

Faults: the client has short connect and read timeouts and no retries, so a slow or dead store
costs a request at most `redis_timeout_s` per round trip. After a failure, requests skip the store
for `redis_retry_s` (answering degraded at once) instead of each waiting for the timeout; the next
read after that, or a `/readyz` ping, finds the store again by itself.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.errors import StoreError
from features.online_layout import decode_record, decode_value, layout, record_key, redis_key
from features.ranking import STORE_FEATURES, FreelancerColumns, freelancer_columns
from features.specs import CLIENT, FREELANCER, JOB, Dtype, Entity, features_of


@dataclass(frozen=True, slots=True)
class Stamped:
    """An entity's values by feature name (shared between requests: never mutated), the time
    (µs) of its last change (None: not written by BestMatch's flow, e.g. by Feast), and for a
    freelancer its fixed part of the model's input (`features.ranking.freelancer_columns`)."""

    values: Mapping[str, Any]
    stamp_us: int | None
    columns: FreelancerColumns | None = field(default=None, compare=False)  # computed once


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


_COMMANDS_KEPT = 1 << 15
_MGET = _bulk(b"MGET")


def _kept(table: dict[tuple[str, str], bytes], key: tuple[str, str], value: bytes) -> bytes:
    """`table[key] = value`, in a table that starts over when full."""
    if len(table) >= _COMMANDS_KEPT:
        table.clear()
    table[key] = value
    return value


@dataclass(frozen=True, slots=True)
class _Read:
    """What is read of one entity kind: the store features the model uses (`STORE_FEATURES`,
    `wanted` their places among the entity's features); from the hash, those fields, then
    `_ts:<view>` (whether the entity exists) and `_us:<view>` (when it last changed). And, built
    once per entity (bounded: a full table starts over), its record key as an `MGET` argument and
    the HMGET command around its hash key, in RESP."""

    entity: Entity
    kind: str
    names: tuple[str, ...]
    wanted: tuple[int, ...]
    dtypes: tuple[Dtype, ...]
    head: bytes  # `*<n>` and HMGET
    tail: bytes  # the fields
    records: dict[tuple[str, str], bytes]
    commands: dict[tuple[str, str], bytes]

    def record(self, project: str, entity_id: str) -> bytes:
        found = self.records.get((project, entity_id))
        if found is None:
            key = _bulk(record_key(project, self.entity, entity_id))
            found = _kept(self.records, (project, entity_id), key)
        return found

    def command(self, project: str, entity_id: str) -> bytes:
        found = self.commands.get((project, entity_id))
        if found is None:
            key = redis_key(project, self.entity, entity_id)
            found = _kept(self.commands, (project, entity_id), self.head + _bulk(key) + self.tail)
        return found


_READS: dict[str, _Read] = {}


def _read_of(entity: Entity) -> _Read:
    # Found by name (a str hashes once), not by the dataclass (which hashes all its fields).
    found = _READS.get(entity.name)
    if found is None or found.entity is not entity:
        found = _READS[entity.name] = _build_read(entity)
    return found


def _build_read(entity: Entity) -> _Read:
    lay = layout(entity)
    wanted = tuple(i for i, spec in enumerate(features_of(entity)) if spec.name in STORE_FEATURES)
    fields = (*(lay.fields[i] for i in wanted), lay.ts_field, lay.stamp_field)
    return _Read(
        entity=entity,
        kind=entity.name,
        names=tuple(features_of(entity)[i].name for i in wanted),
        wanted=wanted,
        dtypes=tuple(lay.dtypes[i] for i in wanted),
        head=b"*%d\r\n%s" % (2 + len(fields), _bulk(b"HMGET")),
        tail=b"".join(_bulk(field) for field in fields),
        records={},
        commands={},
    )


class EntityMemo:
    """Decoded entities by their raw reply (a record's bytes, or a hash's fields), per kind. The
    same freelancers and jobs come back request after request with the same bytes (which hold the
    change stamp), so decoding is mostly one lookup, and so is a freelancer's part of the model's
    input, kept with it. Bounded: a full table starts over."""

    def __init__(self, size: int = 1 << 15) -> None:
        self.size = size
        self.tables: defaultdict[str, dict[bytes | tuple[bytes | None, ...], Stamped]]
        self.tables = defaultdict(dict)

    def from_record(self, read: _Read, raw: bytes) -> Stamped | None:
        """The entity of a serving record; None for a record of another format or schema."""
        table = self.tables[read.kind]
        found = table.get(raw)
        if found is None:
            decoded = decode_record(read.entity, raw)
            if decoded is None:
                return None
            every, stamp_us = decoded
            values = dict(zip(read.names, [every[i] for i in read.wanted], strict=True))
            found = self._keep(table, raw, read, values, stamp_us)
        return found

    def decode(self, read: _Read, raw: list[bytes | None]) -> Stamped:
        """The entity of an HMGET reply (`_Read`'s fields)."""
        table = self.tables[read.kind]
        key = tuple(raw)
        found = table.get(key)
        if found is None:
            values = {
                name: decode_value(dtype, value) if value else None
                for name, dtype, value in zip(read.names, read.dtypes, raw, strict=False)
            }
            found = self._keep(table, key, read, values, int(raw[-1]) if raw[-1] else None)
        return found

    def _keep(
        self,
        table: dict[bytes | tuple[bytes | None, ...], Stamped],
        key: bytes | tuple[bytes | None, ...],
        read: _Read,
        values: dict[str, Any],
        stamp_us: int | None,
    ) -> Stamped:
        if len(table) >= self.size:
            table.clear()
        columns = freelancer_columns(values) if read.entity == FREELANCER else None
        found = table[key] = Stamped(values, stamp_us, columns)
        return found


def read_stamped(
    client: redis.Redis,
    project: str,
    requests: Sequence[tuple[Entity, str]],
    memo: EntityMemo | None = None,
) -> list[Stamped | None]:
    """Many entities' model features and change times (None: unknown), mostly in one round trip.

    One `MGET` of the entities' serving records; the entities it finds no record of this schema
    for are read from their hashes, with HMGETs, in a second round trip. There the keys, fields
    and value decoding are `online_layout`'s, and an entity exists when its `_ts:<view>` field
    does, as for `read_entities` and Feast. Each round trip's commands (their RESP built once per
    entity) go out in one write on one pooled connection, and the replies are parsed from the
    socket by one hiredis reader: what a redis-py pipeline does, without its per-command packing
    and per-reply bookkeeping (measured: most of the read's CPU, with HMGETs). redis-py still
    connects (AUTH, SELECT, TLS) and sets the socket's timeouts. A connection that fails midway
    is dropped, never reused.
    """
    memo = memo or EntityMemo()
    reads = [_read_of(entity) for entity, _ in requests]
    keys = [
        read.record(project, entity_id)
        for (_, entity_id), read in zip(requests, reads, strict=True)
    ]
    (records,) = _round_trip(client, b"*%d\r\n%s%s" % (len(keys) + 1, _MGET, b"".join(keys)), 1)
    tables = memo.tables  # a lookup first: decoding is for the records not seen before
    found = [
        None if raw is None else tables[read.kind].get(raw) or memo.from_record(read, raw)
        for read, raw in zip(reads, records, strict=True)
    ]
    missing = [i for i, stamped in enumerate(found) if stamped is None]
    if missing:
        packed = b"".join([reads[i].command(project, requests[i][1]) for i in missing])
        replies = _round_trip(client, packed, len(missing))
        for i, raw in zip(missing, replies, strict=True):
            found[i] = memo.decode(reads[i], raw) if raw[-2] else None
    return found


def _round_trip(client: redis.Redis, packed: bytes, count: int) -> list[Any]:
    """Send `packed` on a pooled connection, read `count` replies."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        return _exchange(conn, packed, count)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def _exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
    """Send `packed`, read `count` replies."""
    sock = conn._sock  # connected by redis-py; nothing is left unread on it between commands
    if sock is None:
        msg = "the online store connection is closed"
        raise redis.ConnectionError(msg)
    sock.sendall(packed)
    reader = hiredis.Reader()
    replies: list[Any] = []
    while len(replies) < count:
        chunk = sock.recv(1 << 17)
        if not chunk:
            msg = "the online store closed the connection"
            raise redis.ConnectionError(msg)
        reader.feed(chunk)
        while (reply := reader.gets()) is not False:
            if isinstance(reply, Exception):
                msg = f"the online store answered an error: {reply}"
                raise StoreError(msg)
            replies.append(reply)
    return replies


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What the store holds for one request; None where an entity is unknown or unread."""

    job: Stamped | None
    client: Stamped | None
    freelancers: dict[str, Stamped | None]
    degraded: bool
    fetch_s: float


def connect(url: str, timeout_s: float) -> redis.Redis:
    """A client that fails fast: bounded connect and read, no retries, no hidden backoff."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


class FeatureReader:
    """Reads a request's entities; remembers whether the store is reachable."""

    def __init__(self, client: redis.Redis, project: str, retry_s: float) -> None:
        self.client = client
        self.project = project
        self.retry_s = retry_s
        self._skip_until = 0.0
        self._memo = EntityMemo()
        self.up = True

    def read(
        self, job_id: str, client_id: str | None, freelancer_ids: Sequence[str]
    ) -> RequestFeatures:
        requests: list[tuple[Entity, str]] = [(JOB, job_id)]
        if client_id is not None:
            requests.append((CLIENT, client_id))
        distinct = list(dict.fromkeys(freelancer_ids))
        requests += [(FREELANCER, f) for f in distinct]
        started = time.perf_counter()
        found = self._read(requests)
        fetch_s = time.perf_counter() - started
        if found is None:
            return RequestFeatures(None, None, dict.fromkeys(distinct), True, fetch_s)
        offset = 1 if client_id is None else 2
        return RequestFeatures(
            job=found[0],
            client=found[1] if client_id is not None else None,
            freelancers=dict(zip(distinct, found[offset:], strict=True)),
            degraded=False,
            fetch_s=fetch_s,
        )

    def _read(self, requests: list[tuple[Entity, str]]) -> list[Stamped | None] | None:
        if time.monotonic() < self._skip_until:
            return None
        try:
            found = read_stamped(self.client, self.project, requests, self._memo)
        except (redis.RedisError, OSError, StoreError):
            self._failed()
            return None
        self.up = True
        return found

    def _failed(self) -> None:
        self.up = False
        self._skip_until = time.monotonic() + self.retry_s

    def ping(self) -> bool:
        """Whether the store answers now (for `/readyz`); a success ends the skipping."""
        try:
            self.client.ping()
        except (redis.RedisError, OSError):
            self._failed()
            return False
        self.up = True
        self._skip_until = 0.0
        return True

    def close(self) -> None:
        self.client.close()
