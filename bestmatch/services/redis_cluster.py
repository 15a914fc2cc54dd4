"""A local Redis Cluster of a few masters (Debian's `redis-server --cluster-enabled yes`, joined
with `redis-cli --cluster create`): what `bestmatch bench cluster` and the tests run against.
No replicas, no persistence; each node's files in a folder of its own under `workdir`."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from bestmatch.services.children import free_port
from bestmatch.services.redis_server import server_args
from features.errors import StoreError

NODE_TIMEOUT_MS = 60_000  # a paused node is not failed over (nor the cluster marked down) soon


BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10,000


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10,000) is free too, and below 65,536."""
    for _ in range(100):
        port = free_port()
        if port + BUS_OFFSET > 65_535:
            port = random.randrange(20_000, 55_000)
        if all(_free(p) for p in (port, port + BUS_OFFSET)):
            return port
    msg = "no free pair of loopback ports for a Redis Cluster node"
    raise StoreError(msg)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ClusterNode:
    """One master's `redis-server` on a free loopback port (its bus on port + 10,000)."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.port = cluster_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                *server_args(self.port, workdir),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the node keeps its connections and answers nothing, as a hung host."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        self.process.wait(timeout=10)


class LocalRedisCluster:
    """`masters` nodes covering all 16,384 slots; `url` names the first. `stop` ends them."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            msg = "redis-server and redis-cli are not installed: run ./scripts/bootstrap.sh"
            raise StoreError(msg)
        self.nodes = [ClusterNode(workdir / f"node-{n}", binary) for n in range(masters)]
        try:
            self._wait(lambda node: bool(node.client().ping()))
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

    def _wait(self, ready: Callable[[ClusterNode], bool]) -> None:
        deadline = time.monotonic() + 30
        for node in self.nodes:
            while True:
                if node.process.poll() is not None:
                    msg = f"the Redis Cluster node on port {node.port} exited at start"
                    raise StoreError(msg)
                try:
                    if ready(node):
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    msg = f"the Redis Cluster node on port {node.port} did not come up"
                    raise StoreError(msg)
                time.sleep(0.05)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
