"""Shared fixtures: real services on free ports, real tables in temp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bestmatch.services import free_port
from bestmatch.services.redis_server import server_args
from features.settings import Settings
from tests.kafka_fixtures import kafka_cluster, kafka_settings  # noqa: F401  (Kafka fixtures)
from tests.redis_cluster_fixtures import cluster_settings, redis_cluster  # noqa: F401
from tests.s3_fixtures import s3_bucket, s3_env, s3_server, s3_settings  # noqa: F401  (S3)

__all__ = ["RedisServer", "free_port"]  # the tests' servers use the product's free_port


class RedisServer:
    """A real `redis-server` on a free loopback port, with no persistence."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run the README's test command")
        self.port = free_port()
        self.workdir = workdir
        self.process = subprocess.Popen(
            [binary, *server_args(self.port, workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's Redis server."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings pointing at a fresh lake in tmp_path and the test Redis."""
    return Settings(redis_url=redis_url, lake=str(tmp_path / "lake"), _env_file=None)


@pytest.fixture
def streams() -> Iterator[list[Any]]:
    """`bestmatch stream` processes a test starts (`tests.streaming.new_stream`): all killed
    at teardown, whatever happened."""
    started: list[Any] = []
    yield started
    for process in started:
        process.kill()


# --- Feast ----------------------------------------------------------------------------------

FEAST_REPO = Path(__file__).resolve().parents[1] / "features"


def copy_feast_repo(target: Path) -> Path:
    """The repo's `feature_store.yaml` in `target`, so its registry (`data/`) lands there."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", ".feastignore"):
        shutil.copy(FEAST_REPO / name, target / name)
    return target


@pytest.fixture
def feast_store(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`feast apply` against the test Redis and a tmp lake; yields `FeatureStore(repo_path=...)`.

    The objects are discovered in the real features/ folder exactly as the `feast` CLI does; the
    yaml is a copy in tmp_path, so the registry lands there. Feast is imported here only (slow).
    """
    from feast import FeatureStore
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    monkeypatch.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BESTMATCH_LAKE", settings.lake)
    repo = copy_feast_repo(tmp_path / "repo")
    monkeypatch.chdir(FEAST_REPO.parent)  # Feast names repo modules relative to the working dir
    contents = parse_repo(FEAST_REPO)
    store = FeatureStore(repo_path=str(repo))
    apply_total_with_repo_instance(
        store, settings.feast_project, store.registry, contents, skip_source_validation=False
    )
    return FeatureStore(repo_path=str(repo))


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True, scope="module")
def _mlflow_env_per_module() -> Iterator[None]:
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI, which `Settings` reads: without
    this, one test's tracking store would leak into the next module's settings."""
    with pytest.MonkeyPatch.context() as patch:
        for name in _MLFLOW_ENV:
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def _mlflow_env_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


_COMPILED = "BESTMATCH_SERVE_COMPILED_CACHE"


def pytest_configure(config: pytest.Config) -> None:
    """Compiled models (`serving.compiled`) go to a temp dir of the run, not the user's cache:
    set before collection (a module may build its `ServingSettings` at import), read by the
    services the tests start too."""
    config._compiled_cache = tempfile.mkdtemp(prefix="bestmatch-compiled-")  # type: ignore[attr-defined]
    os.environ[_COMPILED] = config._compiled_cache  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    cache = getattr(config, "_compiled_cache", None)
    if cache is not None:
        os.environ.pop(_COMPILED, None)
        shutil.rmtree(cache, ignore_errors=True)


# --- the quick tier ---------------------------------------------------------------------------
# `pytest --quick` (`./scripts/test.sh --quick`) runs the pure and unit tests only: every test
# that starts a real service is marked `integration` here and left out, and the modules that
# hold nothing else are not even imported. The full suite is plain `pytest`.

SERVICE_FIXTURES = frozenset({"redis_server", "feast_store", "redis_cluster", "s3_server"})
"""Fixtures that start a real service: a test that uses one (even through another fixture) is
an integration test."""
INTEGRATION_MODULES = frozenset(
    {
        "test_notebooks",  # executes the notebooks in kernels of their own
        "test_serving_compiled",  # compiles models with LLVM in processes of their own
        "test_serving_faults",  # services whose Redis goes away
        "test_serving_log",  # the serving log's writer processes
        "test_serving_workers",  # `bestmatch serve --workers`
    }
)
"""Test modules that start processes of their own without those fixtures: all their tests are
integration tests."""
SERVICE_MODULES = frozenset(
    {"test_consistency", "test_demo", "test_feast_parity", "test_s3_lake", "test_stream"}
)
"""Modules whose every test uses a service fixture: `--quick` does not import them."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        help="only the pure and unit tests: none that starts a real service (marked integration)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("--quick") and collection_path.stem in (
        INTEGRATION_MODULES | SERVICE_MODULES
    ):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts a real service `integration`; `--quick` leaves them out."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.path.stem
        if fixtures & SERVICE_FIXTURES or module in INTEGRATION_MODULES | SERVICE_MODULES:
            item.add_marker(pytest.mark.integration)
    if config.getoption("--quick"):
        slow = [item for item in items if item.get_closest_marker("integration")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("integration")]
