"""The event bus: a Redis Stream with one field, `event`, holding each event's JSON text."""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import redis

EVENT_FIELD = b"event"


def publish(
    client: redis.Redis,
    key: str,
    lines: Iterable[bytes],
    *,
    rate: float | None = None,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append events to the stream, pipelined; `rate` caps events per second. Returns the count."""
    sent = 0
    started = time.monotonic()
    pipe = client.pipeline(transaction=False)
    pending = 0
    step = batch if rate is None else max(1, min(batch, int(rate // 100) or 1))
    for line in lines:
        line = line.strip()
        if not line:
            continue
        pipe.xadd(key, {EVENT_FIELD: line})
        pending += 1
        sent += 1
        if pending >= step:
            pipe.execute()
            pending = 0
            if progress is not None:
                progress(sent)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    if pending:
        pipe.execute()
    if progress is not None:
        progress(sent)
    return sent


def open_events(path: Path) -> BinaryIO:
    """An events file for reading bytes: JSON Lines, gzip-compressed when it ends in `.gz`."""
    if path.name.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"))  # type: ignore[arg-type]
    return open(path, "rb")  # noqa: SIM115


def iter_lines(path: Path) -> Iterator[bytes]:
    with open_events(path) as handle:
        yield from handle
