"""The processes the commands (and the tests) start and share: a local Redis, Feast's registry,
the ranking service and the stream as child processes, a local S3 server (moto, for the lake
benchmark and the tests), and what every child shares."""

from bestmatch.services.children import child_env, free_port
from bestmatch.services.feast_registry import ensure_feast_registry
from bestmatch.services.redis_server import ensure_redis, redis_reachable
from bestmatch.services.s3_server import LocalS3
from bestmatch.services.service import ServiceProcess
from bestmatch.services.stream import StreamProcess, stream_env

__all__ = [
    "LocalS3",
    "ServiceProcess",
    "StreamProcess",
    "child_env",
    "ensure_feast_registry",
    "ensure_redis",
    "free_port",
    "redis_reachable",
    "stream_env",
]
