"""A local `redis-server` for the commands, started when none answers at the configured URL."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from features.errors import ConfigError, StoreError
from features.redis_cluster import discover, is_cluster_node


def server_args(port: int, workdir: Path, host: str = "127.0.0.1") -> list[str]:
    """`redis-server`'s arguments for a server of ours: this port and interface, its files in
    `workdir`, and no persistence (the flow rebuilds the online store from the lake)."""
    return [
        *("--port", str(port), "--bind", host, "--dir", str(workdir.resolve())),
        *("--save", "", "--appendonly", "no"),
    ]


def redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def check_redis_kind(url: str, cluster: bool) -> None:
    """Where a Redis answers at `url`, that it is a cluster node exactly when `cluster` says so:
    else a `ConfigError` naming `BESTMATCH_REDIS_CLUSTER`. A Redis that does not answer passes
    (the service starts degraded and finds it when it comes)."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 6379}"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
    try:
        found = is_cluster_node(client)
    except (redis.RedisError, OSError):
        return
    finally:
        client.close()
    if found and not cluster:
        msg = f"the Redis at {where} is a Redis Cluster node: set BESTMATCH_REDIS_CLUSTER=true"
        raise ConfigError(msg)
    if cluster and not found:
        msg = f"BESTMATCH_REDIS_CLUSTER=true, but the Redis at {where} is not a cluster node"
        raise ConfigError(msg)


def ensure_redis(url: str, workdir: Path, cluster: bool = False) -> str | None:
    """Start `redis-server` for a local URL that nothing answers; returns a note, or None.

    A Redis Cluster (`cluster`) is never started: its map is read, which says in one line what
    is wrong where the node does not answer or is no cluster node. A Redis that answers but is a
    cluster node while `cluster` is off is one line naming `BESTMATCH_REDIS_CLUSTER`."""
    if cluster:
        discover(url)
        return None
    if redis_reachable(url):
        check_redis_kind(url, cluster)
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in {"127.0.0.1", "localhost", "::1"}:
        msg = f"Redis at {host}:{port} does not answer (BESTMATCH_REDIS_URL)"
        raise StoreError(msg)
    binary = shutil.which("redis-server")
    if binary is None:
        msg = "redis-server is not installed and no Redis answers: run ./scripts/demo.sh"
        raise StoreError(msg)
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            binary,
            *server_args(port, workdir, host),
            "--daemonize",
            "yes",
            "--logfile",
            str((workdir / "redis.log").resolve()),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not redis_reachable(url):
        if time.monotonic() > deadline:
            msg = f"started redis-server on port {port}, but it does not answer"
            raise StoreError(msg)
        time.sleep(0.05)
    return f"started redis-server on {host}:{port} (stop it with: redis-cli -p {port} shutdown)"
