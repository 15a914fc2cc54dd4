"""Reading a request's entities from the online store, within a bounded time.

Every entity of a request (the job, its client when known, each distinct freelancer) is read in
one pipeline round trip through `features.online_layout`, the one module that knows the Redis
layout. Each entity comes back with the time of its last change (`_us:<view>`), so the service can
say how old the features it serves are.

Faults: the client has short connect and read timeouts and no retries, so a slow or dead store
costs a request at most `redis_timeout_s`. After a failure, requests skip the store for
`redis_retry_s` (answering degraded at once) instead of each waiting for the timeout; the next
read after that, or a `/readyz` ping, finds the store again by itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.errors import StoreError
from features.online_layout import decode_value, layout, redis_key
from features.specs import CLIENT, FREELANCER, JOB, Entity

Values = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Stamped:
    """An entity's values and the time (µs) of its last change (None: not written by BestMatch)."""

    values: Values
    stamp_us: int | None


def read_stamped(
    client: redis.Redis, project: str, requests: Sequence[tuple[Entity, str]]
) -> list[Stamped | None]:
    """`online_layout.read_entities`, plus each entity's change time, in one round trip.

    An entity exists when its `_ts:<view>` field does (as for `read_entities` and Feast).
    """
    with client.pipeline(transaction=False) as pipe:
        for entity, entity_id in requests:
            lay = layout(entity)
            fields = [*lay.read_fields, lay.stamp_field]
            pipe.hmget(redis_key(project, entity, entity_id), fields)  # type: ignore[arg-type]
        replies = pipe.execute()
    out: list[Stamped | None] = []
    for (entity, _), raw in zip(requests, replies, strict=True):
        if not raw[-2]:
            out.append(None)
            continue
        lay = layout(entity)
        values = tuple(decode_value(d, r) for d, r in zip(lay.dtypes, raw, strict=False))
        out.append(Stamped(values, int(raw[-1]) if raw[-1] else None))
    return out


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
            found = read_stamped(self.client, self.project, requests)
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
