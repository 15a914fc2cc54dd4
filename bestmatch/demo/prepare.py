"""What the demo does before its steps: its events split into history and the live day, and its
own keys cleared from Redis."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis

from features.events import parse_time
from features.settings import Settings

DAY_US = 86_400 * 1_000_000


def split_last_day(events: Path, history: Path, live: Path) -> tuple[int, int]:
    """Split a time-ordered events file: everything before its last day, and the last day."""
    lines = events.read_bytes().splitlines(keepends=True)
    last = parse_time(orjson.loads(lines[-1])["event_time"])
    cut = last - last % DAY_US
    index = len(lines)
    while index > 0 and parse_time(orjson.loads(lines[index - 1])["event_time"]) >= cut:
        index -= 1
    history.write_bytes(b"".join(lines[:index]))
    live.write_bytes(b"".join(lines[index:]))
    return index, len(lines) - index


def reset_online(client: redis.Redis, settings: Settings) -> int:
    """Delete the project's entities (Feast's hashes and the serving records) and the event bus
    from Redis (and nothing else there): the demo's own stores start empty, so an earlier run's
    newer values cannot mask this one's. Returns how many entities were deleted."""
    from features.online_layout import hash_key_of, layout
    from features.specs import ENTITIES

    hashes = tuple(layout(entity).key_prefix for entity in ENTITIES)
    project = settings.feast_project.encode()
    pattern = b"*" + project  # Feast project names are letters, digits and underscores
    keys = [
        key
        for key in client.scan_iter(match=pattern, count=1000)
        if (hash_key_of(key) or key).startswith(hashes) and key.endswith(project)
    ]  # Feast's hashes, and the serving records beside them
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    client.delete(settings.stream_key)
    return sum(hash_key_of(key) is None for key in keys)


# --- the demo ---------------------------------------------------------------------------------
