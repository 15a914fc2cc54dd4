"""A real 3-master Redis Cluster for the tests: the product's `LocalRedisCluster` (Debian's
`redis-server --cluster-enabled yes` on three free loopback ports, joined with `redis-cli
--cluster create`), no replicas, no persistence.

The session shares one cluster; `cluster_settings` flushes it for each test. A test that pauses
a node (`ClusterNode.pause`, SIGSTOP) resumes it before it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bestmatch.services.redis_cluster import LocalRedisCluster
from features.errors import StoreError
from features.settings import Settings

RedisClusterServers = LocalRedisCluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    try:
        servers = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    except StoreError as exc:
        pytest.fail(f"{exc}: run the README's test command")
    yield servers
    servers.stop()


@pytest.fixture
def cluster_settings(tmp_path: Path, redis_cluster: LocalRedisCluster) -> Settings:
    """Settings on the (flushed) session cluster, with a fresh lake in tmp_path (apart from the
    `settings` fixture's)."""
    redis_cluster.flush()
    return Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        lake=str(tmp_path / "cluster-lake"),
        _env_file=None,
    )
