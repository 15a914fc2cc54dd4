"""Platform settings: one class, read once at an entry point and passed down."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.errors import ConfigError


@dataclass(frozen=True)
class KafkaBus:
    """A Kafka topic as the event bus, from `BESTMATCH_BUS=kafka://HOST:PORT[,HOST:PORT]/TOPIC`."""

    brokers: tuple[str, ...]
    topic: str

    @property
    def bootstrap(self) -> str:
        """librdkafka's `bootstrap.servers`."""
        return ",".join(self.brokers)

    def __str__(self) -> str:
        return f"kafka://{self.bootstrap}/{self.topic}"


def parse_bus(value: str) -> KafkaBus | None:
    """`redis` (None: the Redis Stream) or a `kafka://` URL; anything else is a `ConfigError`."""
    if value.strip().lower() == "redis":
        return None
    msg = f"BESTMATCH_BUS must be `redis` or kafka://HOST:PORT[,HOST:PORT]/TOPIC, got {value!r}"
    scheme, sep, rest = value.partition("://")
    hosts, _, topic = rest.partition("/")
    if scheme.lower() != "kafka" or not sep or not topic or "/" in topic or "?" in topic:
        raise ConfigError(msg)
    brokers = tuple(h.strip() for h in hosts.split(","))
    for broker in brokers:
        host, colon, port = broker.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(msg)
    if not all(c.isalnum() or c in "._-" for c in topic) or len(topic) > 249:
        raise ConfigError(msg)
    return KafkaBus(brokers, topic)


LAKE_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
"""The lake's URI schemes: a local path (or `file://`), or an object store delta-rs opens."""
S3_SCHEMES = frozenset({"s3", "s3a"})


def check_lake(value: str) -> str:
    """A lake root: a path, or `SCHEME://BUCKET[/PREFIX]` of a store delta-rs opens."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() == "file" or (len(scheme) == 1 and scheme.isalpha()):
        return value  # a local path (or a Windows drive)
    if scheme.lower() not in LAKE_SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(LAKE_SCHEMES - {"file"}))
        msg = f"BESTMATCH_LAKE: unsupported store {scheme}:// (a local path, or one of {known})"
        raise ConfigError(msg)
    bucket = rest.partition("/")[0]
    if not bucket:
        msg = f"BESTMATCH_LAKE={value!r} names no bucket: {scheme}://BUCKET/PREFIX"
        raise ConfigError(msg)
    return value


class Settings(BaseSettings):
    """Everything configurable, from `BESTMATCH_*` variables (or a `.env` file)."""

    model_config = SettingsConfigDict(
        env_prefix="BESTMATCH_", env_file=".env", extra="ignore", populate_by_name=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    """Whether `redis_url` names a node of a Redis Cluster (`BESTMATCH_REDIS_CLUSTER=true`): the
    online store and the Redis Stream are then the cluster's (features/redis_cluster.py)."""
    lake: str = "./lake"
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri")
    )
    stream_key: str = "bestmatch:events"
    bus: str = "redis"
    """The event bus: `redis` (the Redis Stream `stream_key`) or kafka://HOST:PORT[,...]/TOPIC."""
    kafka_idle_ms: float = Field(default=200.0, ge=0)
    """A caught-up Kafka partition with no new message for this long stops holding the others
    back (docs/event-bus.md)."""
    kafka_retry_s: float = Field(default=30.0, gt=0)
    """How long `bestmatch stream` keeps retrying a Kafka cluster it cannot reach."""
    feast_project: str = "bestmatch"
    allowed_lateness_s: float = 300.0
    api_key: str | None = None
    checkpoints: str | None = None
    """A local folder for the flow's recovery checkpoints (default: `<lake>/_checkpoints`, or
    `./bestmatch-checkpoints` when the lake is an object store)."""
    aws_conditional_put: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_CONDITIONAL_PUT", "aws_conditional_put")
    )
    """delta-rs's commit protocol on S3 (`AWS_CONDITIONAL_PUT`); default `etag`."""

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            msg = "BESTMATCH_REDIS_URL must be a redis://, rediss:// or unix:// URL"
            raise ConfigError(msg)
        return value

    @model_validator(mode="after")
    def _check_cluster(self) -> Settings:
        if self.redis_cluster:
            from features.redis_cluster import check_url

            check_url(self.redis_url)
        return self

    @field_validator("lake")
    @classmethod
    def _check_lake(cls, value: str) -> str:
        return check_lake(value)

    @field_validator("bus")
    @classmethod
    def _check_bus(cls, value: str) -> str:
        parse_bus(value)
        return value

    @property
    def kafka(self) -> KafkaBus | None:
        """The Kafka topic when the bus is Kafka, else None (the Redis Stream)."""
        return parse_bus(self.bus)

    @property
    def bus_name(self) -> str:
        """The bus as a user names it: the Kafka URL, or the Redis Stream's key."""
        return str(self.kafka) if self.kafka else f"the Redis Stream {self.stream_key}"

    @property
    def allowed_lateness(self) -> timedelta:
        return timedelta(seconds=self.allowed_lateness_s)

    @property
    def lake_is_local(self) -> bool:
        return "://" not in self.lake or self.lake.startswith("file://")

    @property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs's storage options for the lake, for every table it opens or writes.

        On S3 a commit is a put-if-absent of the next log file: `conditional_put=etag` makes
        two writers that race for a version see it (one retries) without a DynamoDB lock, on AWS
        and on S3-compatible servers alike. It is set here, not left to delta-rs's default, so
        that a library upgrade cannot turn it off; a user's `AWS_CONDITIONAL_PUT` wins. The
        other `AWS_*` variables (endpoint, keys, region, `AWS_ALLOW_HTTP`) delta-rs reads from
        the environment itself.
        """
        scheme = self.lake.partition("://")[0].lower()
        if scheme in S3_SCHEMES:
            return {"conditional_put": self.aws_conditional_put or "etag"}
        return None

    @property
    def local_root(self) -> Path:
        """A local folder for what never goes to an object store (a Redis the commands start,
        the record of the last backfill): the lake when it is local, else `checkpoint_root`."""
        return Path(self.lake_path()) if self.lake_is_local else self.checkpoint_root

    def lake_path(self, *parts: str) -> str:
        """The URI of a table or file under the lake root."""
        root = self.lake.rstrip("/")
        if self.lake_is_local:
            root = str(Path(root.removeprefix("file://")).resolve())
        return "/".join([root, *parts])

    @property
    def checkpoint_root(self) -> Path:
        """Where the flow keeps its recovery checkpoints: always on a local disk."""
        if self.checkpoints:
            return Path(self.checkpoints).resolve()
        if self.lake_is_local:
            return Path(self.lake_path("_checkpoints"))
        return Path("bestmatch-checkpoints").resolve()

    @property
    def tracking_uri(self) -> str:
        """MLflow's tracking URI: the configured one, else a SQLite file in a local lake."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if not self.lake_is_local:
            msg = "MLFLOW_TRACKING_URI must be set when BESTMATCH_LAKE is an object store"
            raise ConfigError(msg)
        return f"sqlite:///{self.lake_path('mlflow.db')}"


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """These variables in this process's environment (what child processes, Feast and delta-rs
    read) for the block; each is given back its earlier value, or removed, after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
