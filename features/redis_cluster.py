"""A Redis Cluster as BestMatch's own writers and readers address it (`BESTMATCH_REDIS_CLUSTER`).

A cluster splits its keys into 16,384 hash slots, each owned by one master. Commands of several
keys must keep to one slot, so the flow's guarded writes and serving's one-call read, which touch
many entities at once, are sent to each master for the keys it owns, as scripts flagged
`allow-cross-slot-keys` (Redis 7): such a script may touch keys of several slots of its own node,
one slot per command inside it. An entity's Feast hash and its serving record share a slot (the
record's key carries a hash tag naming its hash's slot, `online_layout.record_key`), so the script
commands that read or write one entity touch one slot.

Who owns which slot is read with `CLUSTER SLOTS` from any node (`discover`), and read again when a
node answers that a key has moved or is not its own, or cannot be reached.

Feast's own client (`redis_type: redis_cluster`) reads the same hashes through redis-py's
`RedisCluster`; so do the Redis Stream's publisher and source (`client`).
"""

from __future__ import annotations

import binascii
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.cluster
from redis.crc import key_slot

from features.errors import ConfigError, StoreError

SLOTS = 16384
TAG_SIZE = 3

__all__ = ["SLOTS", "TAG_SIZE", "ClusterMap", "client", "discover", "key_slot", "slot_tag"]


@cache
def _tags() -> tuple[bytes, ...]:
    """For each slot, the first 3-character alphanumeric string whose CRC16 falls in it."""
    alphabet = (string.digits + string.ascii_letters).encode()
    tags: list[bytes | None] = [None] * SLOTS
    left = SLOTS
    for a in alphabet:
        for b in alphabet:
            for c in alphabet:
                tag = bytes((a, b, c))
                slot = binascii.crc_hqx(tag, 0) & (SLOTS - 1)
                if tags[slot] is None:
                    tags[slot] = tag
                    left -= 1
                    if not left:
                        return tuple(tags)  # type: ignore[arg-type]  # every slot filled
    msg = "no 3-character tag for some hash slot"  # not so: a test checks every slot has one
    raise AssertionError(msg)


def slot_tag(slot: int) -> bytes:
    """Three alphanumeric bytes that, as a key's hash tag (`{...}`), put the key in `slot`."""
    return _tags()[slot]


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """The masters of a cluster (`nodes`: host, port) and, per slot, the index of its owner
    (`owner`; -1 where no master owns it)."""

    nodes: tuple[tuple[str, int], ...]
    owner: tuple[int, ...]

    @classmethod
    def from_slots(cls, reply: Sequence[Any], asked_host: str) -> ClusterMap:
        """From a `CLUSTER SLOTS` reply; an empty endpoint means the host that was asked."""
        nodes: list[tuple[str, int]] = []
        owner = [-1] * SLOTS
        for start, end, primary, *_ in reply:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0] or "")
            node = (host if host and host != "?" else asked_host, int(primary[1]))
            if node not in nodes:
                nodes.append(node)
            index = nodes.index(node)
            owner[int(start) : int(end) + 1] = [index] * (int(end) - int(start) + 1)
        return cls(tuple(nodes), tuple(owner))

    def node_of(self, slot: int) -> int:
        """The index of the master owning `slot`; a `StoreError` where none does."""
        index = self.owner[slot]
        if index < 0:
            msg = f"no master of the Redis Cluster owns hash slot {slot}"
            raise StoreError(msg)
        return index

    def node_url(self, url: str, index: int) -> str:
        """`url` (its scheme, user and password) pointed at master `index`, database 0."""
        host, port = self.nodes[index]
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        netloc += f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, "/0", parts.query, ""))


def check_url(url: str) -> None:
    """A cluster has database 0 only, and is reached over TCP: say so in one line."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        msg = "BESTMATCH_REDIS_CLUSTER=true needs a redis:// or rediss:// BESTMATCH_REDIS_URL"
        raise ConfigError(msg)
    if parts.path.strip("/") not in {"", "0"}:
        msg = "BESTMATCH_REDIS_URL names a database other than 0: a Redis Cluster has only 0"
        raise ConfigError(msg)


def discover(url: str, timeout_s: float = 5.0) -> ClusterMap:
    """The cluster's masters and slots, asked of the node `url` names."""
    check_url(url)
    node = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        reply = node.execute_command("CLUSTER SLOTS")
    except redis.ResponseError as exc:
        if "cluster support disabled" in str(exc):
            msg = (
                f"BESTMATCH_REDIS_CLUSTER=true, but the Redis at {_where(url)} is not a "
                "cluster node"
            )
            raise ConfigError(msg) from None
        msg = f"the Redis Cluster at {_where(url)} answered: {exc}"
        raise StoreError(msg) from None
    except (redis.RedisError, OSError) as exc:
        msg = f"cannot reach the Redis Cluster at {_where(url)}: {exc}"
        raise StoreError(msg) from None
    finally:
        node.close()
    found = ClusterMap.from_slots(reply, urlsplit(url).hostname or "127.0.0.1")
    if not found.nodes:
        msg = f"the Redis Cluster at {_where(url)} has no slots assigned yet"
        raise StoreError(msg)
    return found


def is_cluster_node(client: redis.Redis) -> bool:
    """Whether a Redis runs with `cluster-enabled yes`."""
    info: Any = client.info("cluster")
    return bool(info.get("cluster_enabled"))


def client(url: str, cluster: bool, **options: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A redis-py client for single-key commands (the Redis Stream): `RedisCluster` on a
    cluster, which follows each key to its master."""
    if cluster:
        check_url(url)
        return redis.cluster.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def moved(exc: BaseException) -> bool:
    """Whether an error says the map is out of date (a slot moved, a node failed over or left)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
        return True
    text = str(exc)
    return any(
        sign in text for sign in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "non local key")
    )


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


class Cluster:
    """A Redis Cluster's masters, a synchronous client for each, and who owns which slot: what
    the flow's writes (`online_layout.write_entities`) address instead of one Redis."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.map = ClusterMap((), ())
        self.nodes: list[redis.Redis] = []
        self.refresh()

    def refresh(self) -> None:
        """Read the map again: from the configured node, else from any master known before."""
        urls = [self.url, *(self.map.node_url(self.url, i) for i in range(len(self.map.nodes)))]
        error: BaseException | None = None
        for url in dict.fromkeys(urls):
            try:
                found = discover(url, self.options.get("socket_connect_timeout") or 5.0)
            except StoreError as exc:
                error = exc
                continue
            self.close()
            self.map = found
            self.nodes = [
                redis.Redis.from_url(found.node_url(self.url, i), **self.options)
                for i in range(len(found.nodes))
            ]
            return
        assert error is not None
        raise error

    def group(self, keys: Sequence[bytes]) -> dict[int, list[int]]:
        """The places of `keys` by the index of the master that owns each."""
        owner = self.map.owner
        groups: dict[int, list[int]] = {}
        for n, key in enumerate(keys):
            index = owner[key_slot(key)]
            if index < 0:
                self.map.node_of(key_slot(key))  # raises, naming the slot
            found = groups.get(index)
            if found is None:
                groups[index] = [n]
            else:
                found.append(n)
        return groups

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes = []
