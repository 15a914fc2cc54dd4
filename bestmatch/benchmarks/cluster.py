"""`bestmatch bench cluster`: the ranking service on a Redis Cluster beside the same service on one
Redis, in the same run.

A local cluster of `masters` nodes (`bestmatch.services.redis_cluster`) is started in a temporary
folder, and the online store of the settings' Redis (the project's Feast hashes and serving
records, byte for byte) is copied into it. Two services then run with the same champion, one on
each store (`BESTMATCH_REDIS_CLUSTER=true` for the second), and answer the same varied requests
(`bench serve`'s: a different job and 50 different freelancers each time), over HTTP/1.1
keep-alive, from 1 client and from 16; the two sides take turns, `rounds` times, so a burst of
load elsewhere hits both. Reported: the medians of p50, p99 and requests per second on each side,
the ratios, and whether both ranked the first requests alike.

On the cluster a request is one script call per master that owns some of its entities, sent to
all of them at once (serving/store.py), so it waits for the slowest of three round trips instead
of one; on one machine the three masters also share its cores with the service.

It needs a backfilled store and a registered champion (`bestmatch backfill`, `bestmatch train`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
import redis.cluster

from bestmatch.benchmarks.load import Connection, Figures, Runs, http_request
from bestmatch.benchmarks.serving import drive, make_requests, start_service, wait_ready
from bestmatch.services import free_port
from bestmatch.services.redis_cluster import LocalRedisCluster
from features.errors import ModelError
from features.settings import Settings

GOAL_RATIO = 1.5
CLIENTS = (1, 16)


@dataclass(frozen=True)
class ClusterBench:
    requests: int
    proposals: int
    masters: int
    copied: int
    single: dict[int, Runs]
    cluster: dict[int, Runs]
    same_ranking: bool

    def ratio(self, clients: int) -> float:
        """Cluster p50 / one Redis's p50."""
        return self.cluster[clients].p50_ms / self.single[clients].p50_ms

    def rows(self) -> list[tuple[str, str]]:
        one = min(self.single)
        rows = [
            ("requests", f"{self.requests:,} distinct, {self.proposals} proposals each"),
            ("online store copied", f"{self.copied:,} keys into {self.masters} masters"),
        ]
        for n in sorted(self.single):
            label = f"{n} client{'s' if n > 1 else ''}"
            rows.append((f"one Redis, {label}", self.single[n].line()))
            rows.append((f"Redis Cluster, {label}", self.cluster[n].line()))
        for n in sorted(self.single):
            single, cluster = self.single[n], self.cluster[n]
            rows.append(
                (
                    f"cluster / one Redis, {n} client{'s' if n > 1 else ''}",
                    f"p50 {self.ratio(n):.2f}x, p99 {cluster.p99_ms / single.p99_ms:.2f}x, "
                    f"req/s {cluster.rps / single.rps:.2f}x",
                )
            )
        rows.append(("goal: p50, 1 client", f"{self.ratio(one):.2f}x (<= {GOAL_RATIO:g}x)"))
        rows.append(("same rankings on both stores", "yes" if self.same_ranking else "NO"))
        return rows


def copy_online(settings: Settings, cluster_url: str) -> int:
    """Copy the project's keys (Feast's hashes, the serving records) from the settings' Redis
    into the cluster, byte for byte; returns how many."""
    source = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    target = redis.cluster.RedisCluster.from_url(cluster_url, socket_timeout=10)
    project = settings.feast_project.encode()
    copied = 0
    try:
        keys = list(source.scan_iter(match=b"*" + project, count=1000))
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            with source.pipeline(transaction=False) as pipe:
                for key in part:
                    pipe.type(key)
                kinds = pipe.execute()
            with source.pipeline(transaction=False) as pipe:
                for key, kind in zip(part, kinds, strict=True):
                    (pipe.hgetall if kind == b"hash" else pipe.get)(key)
                values = pipe.execute()
            with target.pipeline(transaction=False) as pipe:
                for key, kind, value in zip(part, kinds, values, strict=True):
                    if kind == b"hash" and value:
                        pipe.hset(key, mapping=value)
                    elif kind == b"string" and value is not None:
                        pipe.set(key, value)
                    else:
                        continue
                    copied += 1
                pipe.execute()
    finally:
        source.close()
        target.close()
    return copied


def _ranked(port: int, raw: bytes) -> list[tuple[str, float]]:
    conn = Connection(port)
    try:
        status, answer = conn.ask(raw)
    finally:
        conn.close()
    if status != 200:
        msg = f"the service on port {port} answered {status}: {answer[:300]!r}"
        raise ModelError(msg)
    body = orjson.loads(answer)
    if body["degraded"]:
        msg = f"the service on port {port} answered degraded: its store was not read"
        raise ModelError(msg)
    return [(p["proposal_id"], round(p["score"], 9)) for p in body["ranked"]]


def bench_cluster(
    settings: Settings,
    *,
    proposals: int = 50,
    requests: int = 500,
    clients: Sequence[int] = CLIENTS,
    duration_s: float = 5.0,
    rounds: int = 3,
    warmup_s: float = 2.0,
    seed: int = 1,
    masters: int = 3,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> ClusterBench:
    """Time the service on one Redis and on a local Redis Cluster holding the same keys."""
    say = progress or (lambda _message: None)
    say("building requests from the lake's entities")
    bodies = make_requests(settings, requests, proposals, seed)
    single: dict[int, list[Figures]] = {n: [] for n in clients}
    clustered: dict[int, list[Figures]] = {n: [] for n in clients}
    with tempfile.TemporaryDirectory(prefix="bestmatch-cluster-") as workdir:
        say(f"starting a local Redis Cluster of {masters} masters")
        cluster = LocalRedisCluster(Path(workdir), masters)
        processes = []
        try:
            copied = copy_online(settings, cluster.url)
            say(f"copied {copied:,} keys; starting the two services")
            on_cluster = settings.model_copy(
                update={"redis_url": cluster.url, "redis_cluster": True}
            )
            ports = {"single": free_port(), "cluster": free_port()}
            for name, stores in (("single", settings), ("cluster", on_cluster)):
                processes.append(start_service(stores, ports[name], 0.0, workers))
            for name, process in zip(ports, processes, strict=True):
                wait_ready(ports[name], process)
            raws = {
                name: [http_request(port, orjson.dumps(b), settings.api_key) for b in bodies]
                for name, port in ports.items()
            }
            same = all(
                _ranked(ports["single"], raws["single"][n])
                == _ranked(ports["cluster"], raws["cluster"][n])
                for n in range(min(20, len(bodies)))
            )
            pids = {name: p.pid for name, p in zip(ports, processes, strict=True)}
            for n in clients:  # warm-ups, not counted
                for name in ports:
                    drive(ports[name], pids[name], raws[name], warmup_s, n)
            for round_ in range(1, rounds + 1):
                for n in clients:
                    say(f"round {round_}/{rounds}: {n} client(s), {duration_s:g} s each side")
                    single[n].append(
                        drive(ports["single"], pids["single"], raws["single"], duration_s, n)
                    )
                    clustered[n].append(
                        drive(ports["cluster"], pids["cluster"], raws["cluster"], duration_s, n)
                    )
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
            cluster.stop()
    return ClusterBench(
        requests,
        proposals,
        masters,
        copied,
        {n: Runs(runs) for n, runs in single.items()},
        {n: Runs(runs) for n, runs in clustered.items()},
        same,
    )
