"""A real 3-master Redis Cluster for the tests: Debian's `redis-server --cluster-enabled yes` on
three free loopback ports, joined with `redis-cli --cluster create`, no replicas, no persistence.

The session shares one cluster; `redis_cluster_url` flushes it for each test. A test that stops
a node (`ClusterNode.pause`, SIGSTOP: the node holds its connections and answers nothing, as a
hung host does) resumes it before it ends.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bestmatch.services import free_port
from features.settings import Settings

MASTERS = 3
NODE_TIMEOUT_MS = 60_000  # a paused node is not failed over (nor the cluster marked down) mid-test


class ClusterNode:
    def __init__(self, workdir: Path, binary: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        self.process.wait(timeout=10)


class RedisClusterServers:
    """Three masters covering all 16,384 slots; `url` names the first."""

    def __init__(self, workdir: Path) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            pytest.fail("redis-server/redis-cli are not installed: run the README's test command")
        self.nodes = [ClusterNode(workdir / f"node-{n}", binary) for n in range(MASTERS)]
        try:
            self._wait(lambda node: node.client().ping())
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self._wait(lambda node: node.client().cluster("info")["cluster_state"] == "ok")
        except BaseException:
            self.stop()
            raise
        self.url = self.nodes[0].url

    def _wait(self, ready: object) -> None:
        deadline = time.monotonic() + 30
        for node in self.nodes:
            while True:
                try:
                    if ready(node):  # type: ignore[operator]
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    msg = f"the Redis Cluster node on port {node.port} did not come up"
                    raise RuntimeError(msg)
                time.sleep(0.05)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def keys(self) -> dict[bytes, bytes]:
        """Every string key of the cluster and its value, node by node (a test's oracle)."""
        found: dict[bytes, bytes] = {}
        for node in self.nodes:
            client = node.client()
            for key in client.scan_iter(count=1000):
                if client.type(key) == b"string":
                    found[key] = client.get(key)  # type: ignore[assignment]
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    yield servers
    servers.stop()


@pytest.fixture
def cluster_settings(tmp_path: Path, redis_cluster: RedisClusterServers) -> Settings:
    """Settings on the (flushed) session cluster, with a fresh lake in tmp_path."""
    redis_cluster.flush()
    return Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        lake=str(tmp_path / "lake"),
        _env_file=None,
    )
