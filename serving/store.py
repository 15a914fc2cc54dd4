"""Reading a request's entities from the online store, within a bounded time, on the event loop.

Every entity of a request (the job, its client when known, each distinct freelancer) is read with
one `MGET` of their serving records (`features.online_layout`, the one module that knows the Redis
layout: one packed string per entity, written with its Feast hash by the same guarded script call),
and only the features the model reads are kept. An entity without a record of this feature schema
(its hash written by someone else, e.g. Feast, or by an older version, or an unknown entity) is read
from its hash: in a second round trip the first time, then in the same pipeline as the `MGET` (the
reader remembers such entities), so a request takes one round trip. Each entity comes back with
the time of its last change (`_us:<view>`, which the record holds too), so the service can say
how old the features it serves are.

The reads go through redis-py's asyncio client (`redis.asyncio`): one command, or a pipeline
without a transaction, is one write and one round trip, and while Redis answers the event loop
serves other requests. A Redis that stalls holds only the requests that wait on it, never
`/healthz` or the answers that skip the store.

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

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from features.errors import StoreError
from features.online_layout import decode_record, decode_value, layout, record_key, redis_key
from features.ranking import STORE_FEATURES
from features.specs import CLIENT, FREELANCER, JOB, Dtype, Entity, features_of
from serving.inputs import FreelancerInput, freelancer_input


@dataclass(frozen=True, slots=True)
class Stamped:
    """An entity's values by feature name (shared between requests: never mutated), the time
    (µs) of its last change (None: not written by BestMatch's flow, e.g. by Feast), and for a
    freelancer its fixed part of the model's input (`serving.inputs.freelancer_input`)."""

    values: Mapping[str, Any]
    stamp_us: int | None
    columns: FreelancerInput | None = field(default=None, compare=False)  # computed once


_KEPT = 1 << 15  # entries per table below; a full table starts over


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
    once per project and entity, its record key and its hash key."""

    entity: Entity
    kind: str
    names: tuple[str, ...]
    wanted: tuple[int, ...]
    dtypes: tuple[Dtype, ...]
    fields: list[bytes]
    records: dict[str, dict[str, bytes]]  # project -> entity id -> record key
    hashes: dict[str, dict[str, bytes]]  # project -> entity id -> hash key

    def record_keys(self, project: str, entity_ids: Sequence[str]) -> list[bytes]:
        table = _table(self.records, project)
        keys = list(map(table.get, entity_ids))
        if None in keys:
            for n, (entity_id, key) in enumerate(zip(entity_ids, keys, strict=True)):
                if key is None:
                    key = table[entity_id] = record_key(project, self.entity, entity_id)
                    keys[n] = key
        return keys  # type: ignore[return-value]  # every None replaced

    def hash_key(self, project: str, entity_id: str) -> bytes:
        table = _table(self.hashes, project)
        found = table.get(entity_id)
        if found is None:
            found = table[entity_id] = redis_key(project, self.entity, entity_id)
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
    return _Read(
        entity=entity,
        kind=entity.name,
        names=tuple(features_of(entity)[i].name for i in wanted),
        wanted=wanted,
        dtypes=tuple(lay.dtypes[i] for i in wanted),
        fields=[*(lay.fields[i] for i in wanted), lay.ts_field, lay.stamp_field],
        records={},
        hashes={},
    )


class EntityMemo:
    """Decoded entities by their raw reply (a record's bytes, or a hash's fields), per kind. The
    same freelancers and jobs come back request after request with the same bytes (which hold the
    change stamp), so decoding is mostly one lookup, and so is a freelancer's part of the model's
    input, kept with it.

    And, per project and kind, the entities found without a record of this schema (unknown ones,
    or ones whose hash someone else wrote): their next reads send the HMGET of their hash in the
    same pipeline as the `MGET`, so a request naming them still takes one round trip.
    `round_trips` counts the round trips of the reads that used this memo.

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
        columns = freelancer_input(values) if read.entity == FREELANCER else None
        found = table[key] = Stamped(values, stamp_us, columns)
        return found


async def read_stamped(
    client: aioredis.Redis,
    project: str,
    requests: Sequence[tuple[Entity, str]],
    memo: EntityMemo | None = None,
) -> list[Stamped | None]:
    """Many entities' model features and change times (None: unknown), in one round trip.

    One `MGET` of the entities' serving records, pipelined with the HMGETs of the entities
    `memo` knows have no record of this schema. Entities it finds no record of, and that it sent
    no HMGET for, are read from their hashes in a second round trip (and remembered, so the next
    read of them takes one). There the keys, fields and value decoding are `online_layout`'s, and
    an entity exists when its `_ts:<view>` field does, as for `read_entities` and Feast.
    """
    memo = memo or EntityMemo()
    reads = [_read_of(entity) for entity, _ in requests]
    ids = [entity_id for _, entity_id in requests]
    keys = [read.record_keys(project, (i,))[0] for read, i in zip(reads, ids, strict=True)]
    return await _fetch(client, project, reads, ids, keys, _runs(reads), memo)


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


async def _fetch(
    client: aioredis.Redis,
    project: str,
    reads: Sequence[_Read],
    ids: Sequence[str],
    keys: list[bytes],
    runs: list[tuple[int, int, _Read]],
    memo: EntityMemo,
) -> list[Stamped | None]:
    """`read_stamped`, given the `MGET`'s keys and the runs of one kind."""
    hashed = _hashed(memo, project, runs, ids)
    if hashed:
        pipe = client.pipeline(transaction=False)
        pipe.mget(keys)
        for i in hashed:
            pipe.execute_command("HMGET", reads[i].hash_key(project, ids[i]), *reads[i].fields)
        records, *hashes = _replies(await pipe.execute(raise_on_error=False))
    else:
        try:
            records = await client.mget(keys)
        except redis.ResponseError as exc:
            raise _answered(exc) from None
        hashes = []
    memo.round_trips += 1
    if len(records) != len(reads):
        msg = f"the online store answered {len(records)} records for {len(reads)} keys"
        raise StoreError(msg)
    # A lookup first, per run of one kind: decoding is for the records not seen before.
    found: list[Stamped | None] = []
    for start, end, read in runs:
        found += map(memo.tables[read.kind].get, records[start:end])
    for n in [n for n, stamped in enumerate(found) if stamped is None]:
        raw = records[n]
        if raw is not None:
            found[n] = memo.from_record(reads[n], raw)
    for i, raw in zip(hashed, hashes, strict=True):
        if found[i] is None:
            found[i] = memo.decode(reads[i], raw) if raw[-2] else None
        else:  # it has a record now
            memo.unrecorded_of(project, reads[i]).discard(ids[i])
    read_already = set(hashed)  # found or not
    missing = [i for i, stamped in enumerate(found) if stamped is None and i not in read_already]
    if missing:
        pipe = client.pipeline(transaction=False)
        for i in missing:
            pipe.execute_command("HMGET", reads[i].hash_key(project, ids[i]), *reads[i].fields)
        replies = _replies(await pipe.execute(raise_on_error=False))
        memo.round_trips += 1
        for i, raw in zip(missing, replies, strict=True):
            found[i] = memo.decode(reads[i], raw) if raw[-2] else None
            memo.unrecorded_of(project, reads[i]).add(ids[i])
    return found


def _replies(replies: list[Any]) -> list[Any]:
    """A pipeline's replies; `StoreError` where Redis answered one with an error."""
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise _answered(reply)
    return replies


def _answered(error: Exception) -> StoreError:
    return StoreError(f"the online store answered an error: {error}")


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What the store holds for one request; None where an entity is unknown or unread."""

    job: Stamped | None
    client: Stamped | None
    freelancers: dict[str, Stamped | None]
    degraded: bool
    fetch_s: float


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """An asyncio client that fails fast: bounded connect and read, no backoff, and no retry
    but one, at once, of a command whose connection was found closed (the server closed an idle
    one, or restarted): never of one that timed out, so a stalled store costs one timeout. It
    connects when first used, on the event loop that uses it."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=0,
    )


class FeatureReader:
    """Reads a request's entities; remembers whether the store is reachable."""

    def __init__(self, client: aioredis.Redis, project: str, retry_s: float) -> None:
        self.client = client
        self.project = project
        self.retry_s = retry_s
        self._skip_until = 0.0
        self._memo = EntityMemo()
        self.up = True

    async def read(
        self, job_id: str, client_id: str | None, freelancer_ids: Sequence[str]
    ) -> RequestFeatures:
        """The request's entities; degraded (every entity unread) where the store is being
        skipped or fails now."""
        distinct = list(dict.fromkeys(freelancer_ids))
        if time.monotonic() < self._skip_until:
            return RequestFeatures(None, None, dict.fromkeys(distinct), True, 0.0)
        started = time.perf_counter()
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
            found = await _fetch(self.client, project, reads, ids, keys, runs, self._memo)
        except (redis.RedisError, OSError, StoreError):
            self._failed()
            return RequestFeatures(
                None, None, dict.fromkeys(distinct), True, time.perf_counter() - started
            )
        self.up = True
        offset = 1 if client_id is None else 2
        return RequestFeatures(
            job=found[0],
            client=found[1] if client_id is not None else None,
            freelancers=dict(zip(distinct, found[offset:], strict=True)),
            degraded=False,
            fetch_s=time.perf_counter() - started,
        )

    def _failed(self) -> None:
        self.up = False
        self._skip_until = time.monotonic() + self.retry_s

    async def ping(self) -> bool:
        """Whether the store answers now (for `/readyz`); a success ends the skipping."""
        try:
            await self.client.ping()  # type: ignore[misc]  # the asyncio client's: awaitable
        except (redis.RedisError, OSError):
            self._failed()
            return False
        self.up = True
        self._skip_until = 0.0
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
