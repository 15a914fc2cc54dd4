"""A real S3 server for the tests: moto's server mode (`moto[server]`), on a free loopback port
in a process of its own (`bestmatch.services.LocalS3`), spoken to over HTTP by delta-rs, polars
and boto3 exactly as they speak to AWS.

The server lives for the test session; each test gets a bucket of its own. Clients find it
through delta-rs's usual variables (`AWS_ENDPOINT_URL`, the keys, `AWS_REGION`,
`AWS_ALLOW_HTTP`), set in the environment, so the commands a test runs in a child process find
it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bestmatch.services import LocalS3
from features.settings import Settings


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    with LocalS3(log=tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The server's variables in this test's environment (and its child processes')."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.env


@pytest.fixture
def s3_bucket(s3_server: LocalS3) -> str:
    """A fresh, empty bucket."""
    return s3_server.create_bucket()


def s3_lake(settings: Settings, bucket: str, checkpoints: Path) -> Settings:
    """The settings with the lake at `s3://<bucket>/lake`; checkpoints stay on a local disk."""
    return settings.model_copy(
        update={"lake": f"s3://{bucket}/lake", "checkpoints": str(checkpoints)}
    )


@pytest.fixture
def s3_settings(
    settings: Settings,
    s3_env: dict[str, str],
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """`settings` (the test Redis) with the lake in a fresh bucket; `BESTMATCH_REDIS_URL`,
    `BESTMATCH_LAKE` and `BESTMATCH_CHECKPOINTS` set too, for the commands a test runs."""
    on_s3 = s3_lake(settings, s3_bucket, tmp_path / "checkpoints")
    monkeypatch.setenv("BESTMATCH_REDIS_URL", on_s3.redis_url)
    monkeypatch.setenv("BESTMATCH_LAKE", on_s3.lake)
    monkeypatch.setenv("BESTMATCH_CHECKPOINTS", str(on_s3.checkpoints))
    return on_s3
