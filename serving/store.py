"""Reading a request's entities from the online store, within a bounded time, on the event loop.

Every entity of a request (the job, its client when known, each distinct freelancer) is read with
one call of a small Lua script (`READ_SCRIPT`): an `MGET` of their serving records
(`features.online_layout`, the one module that knows the Redis layout: one packed string per
entity, written with its Feast hash by the same guarded script call), and for each entity without
a record of this feature schema (its hash written by someone else, e.g. Feast, or by an older
version, or an unknown entity) an `HMGET` of its hash, in Redis. So a request is one command and
one round trip, whatever its entities, and only the features the model reads are kept. Each
entity comes back with the time of its last change (`_us:<view>`, which the record holds too), so
the service can say how old the features it serves are.

The call goes through redis-py's asyncio client (`redis.asyncio`, its `register_script`: EVALSHA,
the script loaded again where the server lost it): while Redis answers, the event loop serves
other requests. A Redis that stalls holds only the requests that wait on it, never `/healthz` or
the answers that skip the store.

Faults: the client has short connect and read timeouts and no retries, so a slow or dead store
costs a request at most `redis_timeout_s` per round trip. After a failure, requests skip the store
for `redis_retry_s` (answering degraded at once) instead of each waiting for the timeout; the next
read after that, or a `/readyz` ping, finds the store again by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from features.errors import StoreError
from features.online_layout import (
    RECORD_KEY_HEAD,
    decode_record,
    decode_value,
    layout,
    record_key,
)
from features.ranking import STORE_FEATURES
from features.redis_cluster import ClusterMap, check_url, key_slot, moved
from features.specs import CLIENT, ENTITIES, FREELANCER, JOB, Dtype, Entity, features_of
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
    once per project and entity, its record key."""

    entity: Entity
    kind: str
    names: tuple[str, ...]
    wanted: tuple[int, ...]
    dtypes: tuple[Dtype, ...]
    fields: list[bytes]
    records: dict[str, dict[str, bytes]]  # project -> entity id -> record key

    def record_keys(self, project: str, entity_ids: Sequence[str]) -> list[bytes]:
        table = _table(self.records, project)
        keys = list(map(table.get, entity_ids))
        if None in keys:
            for n, (entity_id, key) in enumerate(zip(entity_ids, keys, strict=True)):
                if key is None:
                    key = table[entity_id] = record_key(project, self.entity, entity_id)
                    keys[n] = key
        return keys  # type: ignore[return-value]  # every None replaced


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
    )


class EntityMemo:
    """Decoded entities by their raw reply (a record's bytes, or a hash's fields), per kind. The
    same freelancers and jobs come back request after request with the same bytes (which hold the
    change stamp), so decoding is mostly one lookup, and so is a freelancer's part of the model's
    input, kept with it. `round_trips` counts the round trips of the reads that used this memo.

    Bounded: a full table starts over."""

    def __init__(self, size: int = 1 << 15) -> None:
        self.size = size
        self.tables: defaultdict[str, dict[bytes | tuple[bytes | None, ...], Stamped]]
        self.tables = defaultdict(dict)
        self.round_trips = 0

    def from_record(self, read: _Read, raw: bytes) -> Stamped:
        """The entity of a serving record of this feature schema (as the script answers one)."""
        table = self.tables[read.kind]
        found = table.get(raw)
        if found is None:
            decoded = decode_record(read.entity, raw)
            if decoded is None:
                msg = f"{read.kind}: the read script answered a record of another schema"
                raise StoreError(msg)
            every, stamp_us = decoded
            values = dict(zip(read.names, [every[i] for i in read.wanted], strict=True))
            found = self._keep(table, raw, read, values, stamp_us)
        return found

    def decode(self, read: _Read, raw: list[bytes | None]) -> Stamped | None:
        """The entity of an HMGET reply (`_Read`'s fields); None where it has no hash (no
        `_ts:<view>`, as for `read_entities` and Feast)."""
        if not raw[-2]:
            return None
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
        columns = freelancer_input(values) if read.entity == FREELANCER else None
        found = table[key] = Stamped(values, stamp_us, columns)
        return found


def _lua(raw: bytes) -> str:
    """A Lua string literal of these bytes (printable ASCII as itself, others escaped)."""
    return '"' + "".join(_LUA_BYTES[byte] for byte in raw) + '"'


_LUA_BYTES = [
    chr(byte) if 32 <= byte < 127 and chr(byte) not in '\\"' else f"\\{byte:03d}"
    for byte in range(256)
]


def _read_script(cluster: bool = False) -> str:
    fields = ",\n  ".join(
        f"[{_lua(entity.name.encode())}] = {{{', '.join(map(_lua, _read_of(entity).fields))}}}"
        for entity in ENTITIES
    )
    heads = ",\n  ".join(
        f"[{_lua(entity.name.encode())}] = {_lua(layout(entity).record_head)}"
        for entity in ENTITIES
    )
    if cluster:  # keys of many slots: in ARGV, one GET each (see features/redis_cluster.py)
        flags = "#!lua flags=no-writes,allow-cross-slot-keys\n"
        where = """-- ARGV: the number of runs of one kind, then each run's kind and length,
-- then the entities' record keys in that order (a cluster node's own keys, of many slots).
local first = 2 * tonumber(ARGV[1]) + 2
local out = {}
for k = first, #ARGV do
  out[k - first + 1] = redis.call('GET', ARGV[k])
end
local function key(i) return ARGV[first + i - 1] end"""
    else:
        flags = ""
        where = """-- KEYS: the entities' record keys; ARGV: the number of runs of one kind,
-- then each run's kind and length, in KEYS' order.
local out = redis.call('MGET', unpack(KEYS))
local function key(i) return KEYS[i] end"""
    return f"""{flags}-- BestMatch's read of one request's entities (serving/store.py).
-- An entity's hash key is its record key less its first {RECORD_KEY_HEAD} bytes (`bm:r:{{TAG}}`).
-- Answer: per entity, its record where it is of this feature schema, else its hash's fields.
local fields = {{
  {fields}
}}
local heads = {{
  {heads}
}}
{where}
local i = 1
for run = 1, tonumber(ARGV[1]) do
  local kind = ARGV[2 * run]
  local head = heads[kind]
  for _ = 1, tonumber(ARGV[2 * run + 1]) do
    local record = out[i]
    if not record or string.sub(record, 1, {_HEAD}) ~= head then
      out[i] = redis.call('HMGET', string.sub(key(i), {RECORD_KEY_HEAD + 1}), unpack(fields[kind]))
    end
    i = i + 1
  end
end
return out
"""


_HEAD = len(layout(ENTITIES[0]).record_head)
READ_SCRIPT = _read_script()
CLUSTER_READ_SCRIPT = _read_script(cluster=True)


async def read_stamped(
    client: aioredis.Redis,
    project: str,
    requests: Sequence[tuple[Entity, str]],
    memo: EntityMemo | None = None,
) -> list[Stamped | None]:
    """Many entities' model features and change times (None: unknown), in one round trip: one
    call of `READ_SCRIPT`. There the keys, fields and value decoding are `online_layout`'s."""
    memo = memo or EntityMemo()
    reads = [_read_of(entity) for entity, _ in requests]
    ids = [entity_id for _, entity_id in requests]
    keys = [read.record_keys(project, (i,))[0] for read, i in zip(reads, ids, strict=True)]
    script = client.register_script(READ_SCRIPT)
    return await _fetch(script, reads, keys, _runs(reads), memo)


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


async def _fetch(
    script: AsyncScript,
    reads: Sequence[_Read],
    keys: list[bytes],
    runs: list[tuple[int, int, _Read]],
    memo: EntityMemo,
) -> list[Stamped | None]:
    """`read_stamped`, given the record keys and the runs of one kind."""
    args: list[Any] = [len(runs)]
    for start, end, read in runs:
        args += (read.kind, end - start)
    try:
        replies = await script(keys=keys, args=args)
    except redis.ResponseError as exc:
        msg = f"the online store answered an error: {exc}"
        raise StoreError(msg) from None
    return _decoded(replies, reads, runs, memo)


def _decoded(
    replies: list[Any], reads: Sequence[_Read], runs: list[tuple[int, int, _Read]], memo: EntityMemo
) -> list[Stamped | None]:
    """The entities of a read script's answer, decoded (through `memo`)."""
    memo.round_trips += 1
    if len(replies) != len(reads):
        msg = f"the online store answered {len(replies)} entities for {len(reads)} keys"
        raise StoreError(msg)
    found: list[Stamped | None] = []
    for start, end, read in runs:  # a lookup first: decoding is for the replies not seen before
        table = memo.tables[read.kind]
        for raw in replies[start:end]:
            stamped = table.get(raw) if type(raw) is bytes else None
            if stamped is None:
                stamped = (
                    memo.from_record(read, raw) if type(raw) is bytes else memo.decode(read, raw)
                )
            found.append(stamped)
    return found


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What the store holds for one request; None where an entity is unknown or unread."""

    job: Stamped | None
    client: Stamped | None
    freelancers: dict[str, Stamped | None]
    degraded: bool
    fetch_s: float


class _HiredisPacking:
    """A connection that packs commands with hiredis (`redis.connection.HiredisRespSerializer`),
    as redis-py's synchronous client does where hiredis is installed; its asyncio client packs
    them in Python, which cost a request's read about 0.08 ms for 50 proposals. The same bytes:
    a test compares them with the asyncio client's own packing."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _PACKER.pack(*args)


_PACKER = HiredisRespSerializer()


class HiredisConnection(_HiredisPacking, aioredis.Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


_CONNECTIONS: dict[str, type[aioredis.Connection]] = {
    "redis": HiredisConnection,
    "rediss": HiredisSSLConnection,
}


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """An asyncio client that fails fast: bounded connect and read, no backoff, and no retry
    but one, at once, of a command whose connection was found closed (the server closed an idle
    one, or restarted): never of one that timed out, so a stalled store costs one timeout. It
    connects when first used, on the event loop that uses it."""
    options: dict[str, Any] = {}
    connection = _CONNECTIONS.get(url.partition("://")[0])
    if connection is not None and HIREDIS_AVAILABLE:
        options["connection_class"] = connection
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=0,
        **options,
    )


class ClusterNodes:
    """A Redis Cluster as serving reads it: an asyncio client per master (`connect`'s, failing
    fast), the slot map, and `CLUSTER_READ_SCRIPT` on each. A request's keys are split by the
    master owning them and read from all of them at once: one round trip per master, in
    parallel, so a request waits about as long as for one Redis. The map is read again
    (`refresh`) after a node fails or answers that a key is not its own."""

    def __init__(self, url: str, timeout_s: float) -> None:
        check_url(url)
        self.url = url
        self.timeout_s = timeout_s
        self.map = ClusterMap((), ())
        self.nodes: list[aioredis.Redis] = []
        self.scripts: list[AsyncScript] = []
        self.stale = True
        self._where: dict[bytes, int] = {}  # record key -> its master's index

    async def refresh(self) -> None:
        """Ask the configured node for the map, else any master known before."""
        known = (self.map.node_url(self.url, i) for i in range(len(self.map.nodes)))
        error: BaseException | None = None
        for url in dict.fromkeys([self.url, *known]):
            asked = connect(url, self.timeout_s)
            try:
                reply = await asked.execute_command("CLUSTER SLOTS")
            except (redis.RedisError, OSError) as exc:
                error = exc
                continue
            finally:
                await asked.aclose()
            found = ClusterMap.from_slots(reply, urlsplit(url).hostname or "127.0.0.1")
            if not found.nodes:
                msg = "the Redis Cluster has no slots assigned yet"
                raise StoreError(msg)
            await self.aclose()
            self.map = found
            self.nodes = [
                connect(found.node_url(self.url, i), self.timeout_s)
                for i in range(len(found.nodes))
            ]
            self.scripts = [node.register_script(CLUSTER_READ_SCRIPT) for node in self.nodes]
            self._where.clear()
            self.stale = False
            return
        msg = f"no node of the Redis Cluster answers: {error}"
        raise StoreError(msg)

    def _owners(self, keys: list[bytes]) -> list[int]:
        """The index of the master owning each key (-1: none), remembered per key until the
        map is read again."""
        where = self._where
        found = list(map(where.get, keys))
        if None in found:
            if len(where) >= _KEPT:
                where.clear()
            owner = self.map.owner
            for n, key in enumerate(keys):
                if found[n] is None:
                    found[n] = where[key] = owner[key_slot(key)]
        return found  # type: ignore[return-value]  # every None replaced

    async def fetch(
        self, reads: Sequence[_Read], keys: list[bytes], memo: EntityMemo
    ) -> list[Stamped | None]:
        """`read_stamped` on the cluster: each master's share of `keys` at once."""
        if self.stale:
            await self.refresh()
        groups: dict[int, list[int]] = {}
        for n, node in enumerate(self._owners(keys)):
            places = groups.get(node)
            if places is None:
                groups[node] = [n]
            else:
                places.append(n)
        if -1 in groups:
            self.stale = True
            msg = "some hash slots of the Redis Cluster have no master"
            raise StoreError(msg)
        calls = [
            self._node(node, [reads[n] for n in places], [keys[n] for n in places], memo)
            for node, places in groups.items()
        ]
        # the other masters' calls as tasks, the first in this one: all sent before any answer
        others = [asyncio.ensure_future(call) for call in calls[1:]]
        answers: list[Any] = []
        try:
            answers.append(await calls[0])
        except (redis.RedisError, OSError, StoreError) as exc:
            answers.append(exc)
        answers += await asyncio.gather(*others, return_exceptions=True)
        found: list[Stamped | None] = [None] * len(keys)
        for places, answer in zip(groups.values(), answers, strict=True):
            if isinstance(answer, BaseException):
                self.stale = self.stale or moved(answer)
                raise answer
            for n, stamped in zip(places, answer, strict=True):
                found[n] = stamped
        return found

    async def _node(
        self, node: int, reads: list[_Read], keys: list[bytes], memo: EntityMemo
    ) -> list[Stamped | None]:
        runs = _runs(reads)
        args: list[Any] = [len(runs)]
        for start, end, read in runs:
            args += (read.kind, end - start)
        try:
            replies = await self.scripts[node](keys=[], args=[*args, *keys])
        except redis.ResponseError as exc:
            msg = f"the online store answered an error: {exc}"
            raise StoreError(msg) from None
        return _decoded(replies, reads, runs, memo)

    async def ping(self) -> None:
        """Every master answers, and has the read script (loaded where it lacked it)."""
        if self.stale:
            await self.refresh()
        await asyncio.gather(*(node.ping() for node in self.nodes))  # type: ignore[misc,arg-type]
        await asyncio.gather(*(node.script_load(CLUSTER_READ_SCRIPT) for node in self.nodes))

    async def aclose(self) -> None:
        for node in self.nodes:
            await node.aclose()
        self.nodes, self.scripts = [], []


class FeatureReader:
    """Reads a request's entities; remembers whether the store is reachable."""

    def __init__(
        self,
        client: aioredis.Redis,
        project: str,
        retry_s: float,
        cluster: ClusterNodes | None = None,
    ) -> None:
        self.client = client
        self.project = project
        self.retry_s = retry_s
        self.cluster = cluster
        self._skip_until = 0.0
        self._memo = EntityMemo()
        self._script = client.register_script(READ_SCRIPT)
        self._loaded = False  # the script, by `ping`
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
            if self.cluster is None:
                found = await _fetch(self._script, reads, keys, runs, self._memo)
            else:
                found = await self.cluster.fetch(reads, keys, self._memo)
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
        self._loaded = False  # a store that comes back may have lost its scripts
        self._skip_until = time.monotonic() + self.retry_s

    async def ping(self) -> bool:
        """Whether the store answers now (for `/readyz`, and once at start); a success ends the
        skipping. The first success after a failure loads the read script too, so the next
        read does not pay for loading it (two more round trips) within its timeout."""
        try:
            if self.cluster is not None:
                await self.cluster.ping()
            else:
                await self.client.ping()  # type: ignore[misc]  # the asyncio client's: awaitable
                if not self._loaded:
                    await self.client.script_load(READ_SCRIPT)
                    self._loaded = True
        except (redis.RedisError, OSError, StoreError):
            self._failed()
            return False
        self.up = True
        self._skip_until = 0.0
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.cluster is not None:
            await self.cluster.aclose()


def open_reader(
    url: str, cluster: bool, project: str, timeout_s: float, retry_s: float
) -> FeatureReader:
    """The reader of the online store at `url`: one Redis, or the Redis Cluster it is a node
    of (`BESTMATCH_REDIS_CLUSTER`). Nothing connects until first used, on the event loop."""
    nodes = ClusterNodes(url, timeout_s) if cluster else None
    return FeatureReader(connect(url, timeout_s), project, retry_s, nodes)
