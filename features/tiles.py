"""Pure aggregation math on tiles: build, fold, merge, read. No I/O, no clocks.

A windowed feature keeps one *partial* per tile, a tile being one hop of event time
(`[k*hop, (k+1)*hop)`). A sawtooth window at time t is the tiles that start at or after
`floor_hop(t) - length` (CONTRACT §2), so reading a window is merging whole tiles.

Partials:
- COUNT: an int.
- MEAN: a list `[count, p0, p1, ...]` whose tail is an exact sum kept as non-overlapping float
  partials (Shewchuk's algorithm, as in `math.fsum`). The mean is then the correctly rounded sum of
  the events divided by their count, whatever the order of the events or of the merges: folding is
  order-free and merging is associative to the last bit, so the streaming flow, a backfill and
  the brute-force oracle agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from features.specs import Agg, Window

Partial = Any  # int for COUNT, list[float] ([count, *partials]) for MEAN


def floor_hop(t: int, hop: int) -> int:
    """Round a time (µs since the epoch) down to a multiple of `hop`."""
    return t - t % hop


def window_start(t: int, window: Window) -> int:
    """The first instant a sawtooth window read at `t` includes."""
    return t - t % window.hop_us - window.length_us


def expiry(tile_start: int, window: Window) -> int:
    """When a tile's events leave the window: the first t with window_start(t) > tile_start."""
    return tile_start + window.length_us + window.hop_us


def _add_exact(partials: list[float], x: float) -> None:
    """Add x to an exact sum kept as partials in `partials[1:]` (Shewchuk / msum)."""
    i = 1
    for j in range(1, len(partials)):
        y = partials[j]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    del partials[i:]
    partials.append(x)


def build(agg: Agg, value: float | None = None) -> Partial:
    """The partial of a single event."""
    if agg is Agg.COUNT:
        return 1
    return [1, float(value)]  # type: ignore[arg-type]


def fold(agg: Agg, partial: Partial, value: float | None = None) -> Partial:
    """Add one event to a partial. May mutate and return it."""
    if agg is Agg.COUNT:
        return partial + 1
    partial[0] += 1
    _add_exact(partial, float(value))  # type: ignore[arg-type]
    return partial


def merge(agg: Agg, left: Partial, right: Partial) -> Partial:
    """Combine two partials into a new one (associative and commutative)."""
    if agg is Agg.COUNT:
        return left + right
    out = [left[0] + right[0], *left[1:]]
    for x in right[1:]:
        _add_exact(out, x)
    return out


def subtract(agg: Agg, total: Partial, partial: Partial) -> Partial:
    """Remove a partial that was merged into `total` (exact: the inverse of `merge`)."""
    if agg is Agg.COUNT:
        return total - partial
    total[0] -= partial[0]
    for x in partial[1:]:
        _add_exact(total, -x)
    return total


def value(agg: Agg, partial: Partial | None) -> int | float | None:
    """The feature value of one (merged) partial; None stands for no events."""
    if partial is None:
        return 0 if agg is Agg.COUNT else None
    if agg is Agg.COUNT:
        return partial  # type: ignore[no-any-return]
    return math.fsum(partial[1:]) / partial[0] if partial[0] else None


def finish(agg: Agg, partials: Iterable[Partial]) -> int | float | None:
    """The feature value of a set of partials: a count (0 if none), a mean (None if none)."""
    if agg is Agg.COUNT:
        return sum(partials)
    count = 0
    parts: list[float] = []
    for partial in partials:
        count += partial[0]
        parts.extend(partial[1:])
    return math.fsum(parts) / count if count else None


def read(agg: Agg, window: Window, tiles: dict[int, Partial], t: int) -> int | float | None:
    """A windowed feature at time t by the sawtooth rule, from its tiles."""
    lo = window_start(t, window)
    return finish(agg, (p for start, p in tiles.items() if lo <= start <= t))
