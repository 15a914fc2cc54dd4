"""A deliberately naive, obviously correct reading of docs/contract.md §2. Tests only.

No tiles, no clocks, no incremental state: every value is recomputed from the whole list of
events by the definition's words.
"""

from __future__ import annotations

import math
from typing import Any

from features.events import Event
from features.specs import ENTITIES, Agg, Entity, FeatureSpec, features_of, windows


def admitted(events: list[Event], lateness_us: int) -> list[Event]:
    """The events a flow applies: first copy of each event_id, none later than the lateness."""
    seen: set[str] = set()
    newest = None
    out = []
    for event in events:
        if event.event_id in seen:
            continue
        if newest is not None and event.event_time < newest - lateness_us:
            continue
        seen.add(event.event_id)
        newest = event.event_time if newest is None else max(newest, event.event_time)
        out.append(event)
    return out


def value(spec: FeatureSpec, events: list[Event], entity_id: str, t: int) -> Any:
    """One feature of one entity at time t."""
    mine = [
        e
        for e in events
        if e.event_type == spec.event_type
        and getattr(e, spec.entity.join_key) == entity_id
        and all(getattr(e, k) == v for k, v in spec.where)
        and e.event_time <= t
    ]
    if spec.window is not None:
        floor = t - t % spec.window.hop_us
        mine = [e for e in mine if floor - spec.window.length_us <= e.event_time]
    if spec.agg is Agg.COUNT:
        return len(mine)
    if spec.agg is Agg.MEAN:
        amounts = [getattr(e, spec.value) for e in mine]
        return math.fsum(amounts) / len(amounts) if amounts else None
    if not mine:
        return None
    latest = max(range(len(mine)), key=lambda i: (mine[i].event_time, i))
    return getattr(mine[latest], spec.value)


def vector(entity: Entity, events: list[Event], entity_id: str, t: int) -> tuple[Any, ...]:
    return tuple(value(f, events, entity_id, t) for f in features_of(entity))


def entity_ids(events: list[Event]) -> list[tuple[Entity, str]]:
    out = []
    for entity in ENTITIES:
        types = {f.event_type for f in features_of(entity)}
        ids = sorted({getattr(e, entity.join_key) for e in events if e.event_type in types})
        out.extend((entity, i) for i in ids)
    return out


def changelog(events: list[Event], until: int) -> list[tuple[str, str, int, tuple[Any, ...]]]:
    """Every (entity, id, stamp, values) where an entity's values change, for in-order events.

    Values can only change at an event or where an event's tile leaves a window, so those are
    the only instants worth evaluating.
    """
    rows = []
    for entity, entity_id in entity_ids(events):
        types = {f.event_type for f in features_of(entity)}
        mine = [
            e
            for e in events
            if e.event_type in types and getattr(e, entity.join_key, None) == entity_id
        ]
        candidates = set()
        for e in mine:
            candidates.add(e.event_time)
            for w in windows():
                candidates.add(e.event_time - e.event_time % w.hop_us + w.length_us + w.hop_us)
        previous = None  # an entity's first row comes when it first appears
        for t in sorted(c for c in candidates if c <= until):
            values = vector(entity, events, entity_id, t)
            if values != previous:
                rows.append((entity.name, entity_id, t, values))
                previous = values
    return rows
