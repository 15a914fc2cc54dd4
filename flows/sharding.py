"""A stable hash of an entity to one of a fixed number of shards."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import cache

import numpy as np


def shard_of(entity: str, entity_id: str, shards: int) -> int:
    """Stable across processes and runs (unlike `hash`, which is salted per process)."""
    return zlib.crc32(f"{entity}:{entity_id}".encode()) % shards


@cache
def _seed(entity: str) -> int:
    return zlib.crc32(f"{entity}:".encode())


def shards_of(entity: str, entity_ids: Sequence[str | None], shards: int) -> np.ndarray:
    """`shard_of` of each id (int64), -1 where the id is None; the same crc32 continued from the
    entity's prefix, so no string is built per id."""
    seed = _seed(entity)
    crc = zlib.crc32
    return np.array(
        [-1 if i is None else crc(i.encode(), seed) % shards for i in entity_ids], dtype=np.int64
    )
