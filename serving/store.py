"""Reading a request's entities from the online store, within a bounded time.

Every entity of a request (the job, its client when known, each distinct freelancer) is read with
one `MGET` of their serving records (`features.online_layout`, the one module that knows the Redis
layout: one packed string per entity, written with its Feast hash by the same guarded script call),
and only the features the model reads are kept. An entity without a record of this feature schema
(its hash written by someone else, e.g. Feast, or by an older version, or an unknown entity) is read
from its hash: in a second round trip the first time, then in the same write as the `MGET` (the
reader remembers such entities), so a request takes one round trip. Each entity comes back with
the time of its last change (`_us:<view>`, which the record holds too), so the service can say
how old the features it serves are.

Faults: the client has short connect and read timeouts and no retries, so a slow or dead store
costs a request at most `redis_timeout_s` per round trip. After a failure, requests skip the store
for `redis_retry_s` (answering degraded at once) instead of each waiting for the timeout; the next
read after that, or a `/readyz` ping, finds the store again by itself.
"""

from __future__ import annotations

import select
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


_KEPT = 1 << 15  # entries per table below; a full table starts over
_MGET = _bulk(b"MGET")


def _table(tables: dict[str, dict[str, bytes]], project: str) -> dict[str, bytes]:
    table = tables.get(project)
    if table is None:
        table = tables[project] = {}
    elif len(table) >= _KEPT:
        table.clear()
    return table


@dataclass(frozen=True, slots=True)
class _Read:
    """What is read of one entity kind: the store features the model uses (`STORE_FEATURES`,
    `wanted` their places among the entity's features); from the hash, those fields, then
    `_ts:<view>` (whether the entity exists) and `_us:<view>` (when it last changed). And, built
    once per project and entity, its record key as an `MGET` argument and the HMGET command
    around its hash key, in RESP."""

    entity: Entity
    kind: str
    names: tuple[str, ...]
    wanted: tuple[int, ...]
    dtypes: tuple[Dtype, ...]
    head: bytes  # `*<n>` and HMGET
    tail: bytes  # the fields
    records: dict[str, dict[str, bytes]]  # project -> entity id -> record key, as RESP
    commands: dict[str, dict[str, bytes]]  # project -> entity id -> HMGET command

    def record_keys(self, project: str, entity_ids: Sequence[str]) -> list[bytes]:
        table = _table(self.records, project)
        keys = list(map(table.get, entity_ids))
        if None in keys:
            for n, (entity_id, key) in enumerate(zip(entity_ids, keys, strict=True)):
                if key is None:
                    key = table[entity_id] = _bulk(record_key(project, self.entity, entity_id))
                    keys[n] = key
        return keys  # type: ignore[return-value]  # every None replaced

    def command(self, project: str, entity_id: str) -> bytes:
        table = _table(self.commands, project)
        found = table.get(entity_id)
        if found is None:
            key = redis_key(project, self.entity, entity_id)
            found = table[entity_id] = self.head + _bulk(key) + self.tail
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
    input, kept with it.

    And, per project and kind, the entities found without a record of this schema (unknown ones,
    or ones whose hash someone else wrote): their next reads send the HMGET of their hash in the
    same write as the `MGET`, so a request naming them still takes one round trip. `round_trips`
    counts the round trips of the reads that used this memo.

    Bounded: a full table starts over."""

    def __init__(self, size: int = 1 << 15) -> None:
        self.size = size
        self.tables: defaultdict[str, dict[bytes | tuple[bytes | None, ...], Stamped]]
        self.tables = defaultdict(dict)
        self.unrecorded: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        self.round_trips = 0

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

    def unrecorded_of(self, project: str, read: _Read) -> set[str]:
        found = self.unrecorded[project, read.kind]
        if len(found) >= self.size:
            found.clear()
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


class Connections:
    """The connections a reader sends on, kept between reads rather than returned to redis-py's
    pool: taking one from the pool and giving it back cost about as much CPU as the `MGET` reply's
    decoding (measured: 0.1 ms a request). A kept connection is checked before it is used, as the
    pool checks one: if its socket is readable (`_readable`: the server closed it, or left a reply
    unread), it is connected anew (redis-py's `connect`: AUTH, SELECT, TLS). One that failed
    midway is disconnected, so it too is connected anew when next taken."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self.idle: list[Any] = []

    def take(self) -> Any:
        try:
            conn = self.idle.pop()
        except IndexError:
            conn = self.pool.make_connection()
        sock = conn._sock
        if sock is None or _readable(sock):
            conn.disconnect()
            try:
                conn.connect()
            except BaseException:
                self.idle.append(conn)
                raise
        return conn

    def give(self, conn: Any) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().disconnect()


def _readable(sock: Any) -> bool:
    """Whether a socket has something to read now (data, or the peer's close). `poll`, not
    `select`, which refuses descriptors from 1024 on; and not a non-blocking `recv`, which on a
    socket with a timeout waits for it."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Pooled(Connections):
    """Connections from redis-py's pool, given back to it (`read_stamped` on a plain client)."""

    def take(self) -> Any:
        return self.pool.get_connection()

    def give(self, conn: Any) -> None:
        self.pool.release(conn)


def read_stamped(
    client: redis.Redis,
    project: str,
    requests: Sequence[tuple[Entity, str]],
    memo: EntityMemo | None = None,
) -> list[Stamped | None]:
    """Many entities' model features and change times (None: unknown), in one round trip.

    One `MGET` of the entities' serving records, in one write with the HMGETs of the entities
    `memo` knows have no record of this schema. Entities it finds no record of, and that it sent
    no HMGET for, are read from their hashes in a second round trip (and remembered, so the next
    read of them takes one). There the keys, fields and value decoding are `online_layout`'s, and
    an entity exists when its `_ts:<view>` field does, as for `read_entities` and Feast. Each
    round trip's commands (their RESP built once per entity) go out in one write on one
    connection, and the replies are parsed from the socket by one hiredis reader: what a redis-py
    pipeline does, without its per-command packing and per-reply bookkeeping (measured: most of
    the read's CPU, with HMGETs). redis-py still connects (AUTH, SELECT, TLS) and sets the
    socket's timeouts. A connection that fails midway is dropped, never reused.

    It is `receive_records(send_records(...))`: a caller with other work can do it between the
    two, while Redis answers.
    """
    memo = memo or EntityMemo()
    reads = [_read_of(entity) for entity, _ in requests]
    ids = [entity_id for _, entity_id in requests]
    connections = _Pooled(client.connection_pool)
    return receive_records(send_records(connections, project, reads, ids, memo), memo)


@dataclass(frozen=True, slots=True)
class SentRead:
    """An `MGET` of serving records sent (with the HMGETs of `hashed`, the places of the entities
    known to have no record), its reply not read yet: it holds a connection until
    `receive_records` (which must come, and on the same thread: the connection is the caller's
    meanwhile)."""

    connections: Connections  # where `conn` goes back
    project: str
    reads: Sequence[_Read]  # each entity's kind
    ids: Sequence[str]
    runs: list[tuple[int, int, _Read]]  # `_runs(reads)`
    hashed: list[int]
    conn: Any


def send_records(
    connections: Connections,
    project: str,
    reads: Sequence[_Read],
    ids: Sequence[str],
    memo: EntityMemo,
    keys: list[bytes] | None = None,
    runs: list[tuple[int, int, _Read]] | None = None,
) -> SentRead:
    """Send the `MGET` of `read_stamped` (`keys`: its arguments, and `runs`: `_runs(reads)`,
    if the caller has them)."""
    if keys is None:
        keys = [read.record_keys(project, (i,))[0] for read, i in zip(reads, ids, strict=True)]
    if runs is None:
        runs = _runs(reads)
    hashed = _hashed(memo, project, runs, ids)
    packed = b"*%d\r\n%s%s" % (len(keys) + 1, _MGET, b"".join(keys))
    if hashed:
        packed += b"".join([reads[i].command(project, ids[i]) for i in hashed])
    conn = connections.take()
    try:
        _send(conn, packed)
    except BaseException:
        conn.disconnect()
        connections.give(conn)
        raise
    return SentRead(connections, project, reads, ids, runs, hashed, conn)


def _runs(reads: Sequence[_Read]) -> list[tuple[int, int, _Read]]:
    """The places of `reads` as runs of one kind: (start, end, read). A request's are the job,
    its client, then every freelancer: three runs, whatever the number of proposals."""
    runs: list[tuple[int, int, _Read]] = []
    start = 0
    for n in range(1, len(reads) + 1):
        if n == len(reads) or reads[n] is not reads[start]:
            runs.append((start, n, reads[start]))
            start = n
    return runs


def _hashed(
    memo: EntityMemo, project: str, runs: list[tuple[int, int, _Read]], ids: Sequence[str]
) -> list[int]:
    """The places of the entities `memo` knows have no record: per run of one kind, a set
    lookup (in C) first, a look at each entity only where one of them is there."""
    hashed: list[int] = []
    for start, end, read in runs:
        known = memo.unrecorded_of(project, read)
        if known and not known.isdisjoint(ids[start:end]):
            hashed += [n for n in range(start, end) if ids[n] in known]
    return hashed


def receive_records(sent: SentRead, memo: EntityMemo) -> list[Stamped | None]:
    """Read the reply of `send_records` (and the hashes of entities without a record)."""
    reads, ids, conn, project = sent.reads, sent.ids, sent.conn, sent.project
    try:
        records, *hashes = _receive(conn, 1 + len(sent.hashed))
        memo.round_trips += 1
        if len(records) != len(reads):
            msg = f"the online store answered {len(records)} records for {len(reads)} keys"
            raise StoreError(msg)
        # A lookup first, per run of one kind: decoding is for the records not seen before.
        found: list[Stamped | None] = []
        for start, end, read in sent.runs:
            found += map(memo.tables[read.kind].get, records[start:end])
        for n in [n for n, stamped in enumerate(found) if stamped is None]:
            raw = records[n]
            if raw is not None:
                found[n] = memo.from_record(reads[n], raw)
        for i, raw in zip(sent.hashed, hashes, strict=True):
            if found[i] is None:
                found[i] = memo.decode(reads[i], raw) if raw[-2] else None
            else:  # it has a record now
                memo.unrecorded_of(project, reads[i]).discard(ids[i])
        hashed = set(sent.hashed)  # read already, found or not
        missing = [i for i, stamped in enumerate(found) if stamped is None and i not in hashed]
        if missing:
            _send(conn, b"".join([reads[i].command(project, ids[i]) for i in missing]))
            replies = _receive(conn, len(missing))
            memo.round_trips += 1
            for i, raw in zip(missing, replies, strict=True):
                found[i] = memo.decode(reads[i], raw) if raw[-2] else None
                memo.unrecorded_of(project, reads[i]).add(ids[i])
    except BaseException:
        conn.disconnect()
        raise
    finally:
        sent.connections.give(conn)
    return found


def _send(conn: Any, packed: bytes) -> None:
    sock = conn._sock  # connected by redis-py; nothing is left unread on it between commands
    if sock is None:
        msg = "the online store connection is closed"
        raise redis.ConnectionError(msg)
    sock.sendall(packed)


def _receive(conn: Any, count: int) -> list[Any]:
    """Read `count` replies."""
    sock = conn._sock
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


@dataclass(frozen=True, slots=True)
class Sent:
    """A request's read, sent (`FeatureReader.send`) and not received yet."""

    asked: tuple[str, str | None, tuple[str, ...]]  # job, client, freelancers as asked
    distinct: list[str]  # the freelancers, each once, in order
    records: SentRead
    send_s: float


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
    """Reads a request's entities; remembers whether the store is reachable.

    `read` is one call. A caller with other work to do meanwhile (the service, parsing the body)
    can `send` first and hand what it returns to `read`, which then only receives: the parsing
    then overlaps Redis's answering instead of waiting for it. A `Sent` read of other ids than
    `read` asks for (a body whose validated ids differ from those its raw JSON named) is received
    and dropped, and the right ones read.
    """

    def __init__(self, client: redis.Redis, project: str, retry_s: float) -> None:
        self.client = client
        self.project = project
        self.retry_s = retry_s
        self._skip_until = 0.0
        self._memo = EntityMemo()
        self._connections = Connections(client.connection_pool)
        self.up = True

    def send(
        self, job_id: str, client_id: str | None, freelancer_ids: Sequence[str]
    ) -> Sent | None:
        """Send the read of these entities (None: the store is being skipped, or failed now)."""
        if time.monotonic() < self._skip_until:
            return None
        started = time.perf_counter()
        asked = (job_id, client_id, tuple(freelancer_ids))
        distinct = list(dict.fromkeys(freelancer_ids))
        project = self.project
        job, freelancer = _read_of(JOB), _read_of(FREELANCER)
        reads: list[_Read] = [job]
        ids = [job_id]
        runs = [(0, 1, job)]
        keys = job.record_keys(project, ids)
        if client_id is not None:
            client = _read_of(CLIENT)
            reads.append(client)
            ids.append(client_id)
            runs.append((1, 2, client))
            keys += client.record_keys(project, (client_id,))
        if distinct:
            runs.append((len(ids), len(ids) + len(distinct), freelancer))
        reads += [freelancer] * len(distinct)
        ids += distinct
        keys += freelancer.record_keys(project, distinct)
        try:
            sent = send_records(self._connections, project, reads, ids, self._memo, keys, runs)
        except (redis.RedisError, OSError, StoreError):
            self._failed()
            return None
        return Sent(asked, distinct, sent, time.perf_counter() - started)

    def read(
        self,
        job_id: str,
        client_id: str | None,
        freelancer_ids: Sequence[str],
        sent: Sent | None = None,
    ) -> RequestFeatures:
        if sent is not None and sent.asked != (job_id, client_id, tuple(freelancer_ids)):
            self.drop(sent)
            sent = None
        if sent is None:
            sent = self.send(job_id, client_id, freelancer_ids)
        if sent is None:
            distinct = list(dict.fromkeys(freelancer_ids))
            return RequestFeatures(None, None, dict.fromkeys(distinct), True, 0.0)
        started = time.perf_counter()
        found = self._receive(sent)
        fetch_s = sent.send_s + time.perf_counter() - started  # not what ran in between
        if found is None:
            return RequestFeatures(None, None, dict.fromkeys(sent.distinct), True, fetch_s)
        offset = 1 if client_id is None else 2
        return RequestFeatures(
            job=found[0],
            client=found[1] if client_id is not None else None,
            freelancers=dict(zip(sent.distinct, found[offset:], strict=True)),
            degraded=False,
            fetch_s=fetch_s,
        )

    def drop(self, sent: Sent | None) -> None:
        """Receive a sent read and forget it (the request failed before using it)."""
        if sent is not None:
            self._receive(sent)

    def _receive(self, sent: Sent) -> list[Stamped | None] | None:
        try:
            found = receive_records(sent.records, self._memo)
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
        self._connections.close()
        self.client.close()
