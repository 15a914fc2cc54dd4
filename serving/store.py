"""Reading a request's entities from the online store, within a bounded time.

Every entity of a request (the job, its client when known, each distinct freelancer) is read in
one round trip, with the keys, fields and decoding of `features.online_layout` (the one module that
knows the Redis layout), and only the features the model reads. Each entity comes back with the
time of its last change (`_us:<view>`), so the service can say how old the features it serves are.

Faults: the client has short connect and read timeouts and no retries, so a slow or dead store
costs a request at most `redis_timeout_s`. After a failure, requests skip the store for
`redis_retry_s` (answering degraded at once) instead of each waiting for the timeout; the next
read after that, or a `/readyz` ping, finds the store again by itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.errors import StoreError
from features.online_layout import decode_value, layout, redis_key
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


@dataclass(frozen=True, slots=True)
class _Read:
    """What is read of one entity kind: the store features the model uses (`STORE_FEATURES`),
    then `_ts:<view>` (whether the entity exists) and `_us:<view>` (when it last changed); and
    the HMGET command around a key, in RESP, built once per entity (bounded: a full table starts
    over)."""

    entity: Entity
    kind: str
    names: tuple[str, ...]
    dtypes: tuple[Dtype, ...]
    head: bytes  # `*<n>` and HMGET
    tail: bytes  # the fields
    commands: dict[tuple[str, str], bytes]

    def command(self, project: str, entity_id: str) -> bytes:
        found = self.commands.get((project, entity_id))
        if found is None:
            if len(self.commands) >= _COMMANDS_KEPT:
                self.commands.clear()
            key = redis_key(project, self.entity, entity_id)
            found = self.commands[project, entity_id] = self.head + _bulk(key) + self.tail
        return found


@cache
def _read_of(entity: Entity) -> _Read:
    lay = layout(entity)
    wanted = [i for i, spec in enumerate(features_of(entity)) if spec.name in STORE_FEATURES]
    fields = (*(lay.fields[i] for i in wanted), lay.ts_field, lay.stamp_field)
    return _Read(
        entity=entity,
        kind=entity.name,
        names=tuple(features_of(entity)[i].name for i in wanted),
        dtypes=tuple(lay.dtypes[i] for i in wanted),
        head=b"*%d\r\n%s" % (2 + len(fields), _bulk(b"HMGET")),
        tail=b"".join(_bulk(field) for field in fields),
        commands={},
    )


class EntityMemo:
    """Decoded entities by their raw reply, per kind. The same freelancers and jobs come back
    request after request with the same bytes (the reply holds the change stamp), so decoding is
    mostly one lookup, and so is a freelancer's part of the model's input, kept with it.
    Bounded: a full table starts over."""

    def __init__(self, size: int = 1 << 15) -> None:
        self.size = size
        self.tables: dict[str, dict[tuple[bytes | None, ...], Stamped]] = {}

    def decode(self, read: _Read, raw: list[bytes | None]) -> Stamped:
        table = self.tables.setdefault(read.kind, {})
        key = tuple(raw)
        found = table.get(key)
        if found is None:
            if len(table) >= self.size:
                table.clear()
            values = {
                name: decode_value(dtype, value) if value else None
                for name, dtype, value in zip(read.names, read.dtypes, raw, strict=False)
            }
            columns = freelancer_columns(values) if read.entity == FREELANCER else None
            found = table[key] = Stamped(values, int(raw[-1]) if raw[-1] else None, columns)
        return found


def read_stamped(
    client: redis.Redis,
    project: str,
    requests: Sequence[tuple[Entity, str]],
    memo: EntityMemo | None = None,
) -> list[Stamped | None]:
    """Many entities' model features and change times in one round trip (None: unknown).

    The keys, fields and value decoding are `online_layout`'s; an entity exists when its
    `_ts:<view>` field does, as for `read_entities` and Feast. The HMGETs (their RESP built once
    per entity) go out in one write on one pooled connection, and the replies are parsed from the
    socket by one hiredis reader: what a redis-py pipeline does, without its per-command packing
    and per-reply bookkeeping (most of the read's CPU with 50 freelancers, measured). redis-py
    still connects (AUTH, SELECT, TLS) and sets the socket's timeouts. A connection that fails
    midway is dropped, never reused.
    """
    memo = memo or EntityMemo()
    reads = [_read_of(entity) for entity, _ in requests]
    packed = b"".join(
        [
            read.command(project, entity_id)
            for (_, entity_id), read in zip(requests, reads, strict=True)
        ]
    )
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        replies = _exchange(conn, packed, len(reads))
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return [
        memo.decode(read, raw) if raw[-2] else None
        for read, raw in zip(reads, replies, strict=True)
    ]


def _exchange(conn: Any, packed: bytes, count: int) -> list[list[bytes | None]]:
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
