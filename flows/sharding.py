"""A stable hash of an entity to one of a fixed number of shards."""

from __future__ import annotations

import zlib


def shard_of(entity: str, entity_id: str, shards: int) -> int:
    """Stable across processes and runs (unlike `hash`, which is salted per process)."""
    return zlib.crc32(f"{entity}:{entity_id}".encode()) % shards
