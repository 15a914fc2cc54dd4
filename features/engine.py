"""The feature engine: event-time clock, sawtooth tiles, hop boundaries and the change log.

Engine-agnostic and pure (no I/O): the Bytewax flow in `flows/` holds one `Sequencer` (the
stream's order: de-duplication, lateness, the clock) and one `ShardEngine` per shard of entities,
and only moves items between them. Tests drive the same classes directly.

How a shard turns events into changes (CONTRACT §2):
- Every item carries the stream's clock (the newest event time seen when it was admitted).
  `advance(t)` first finalises the entities changed at the old clock, then replays every hop
  boundary due before t, in time order, each stamped at its own boundary, so quiet entities still
  get their drop-outs during a fast replay with no wall-clock time passing.
- A change-log row is final once the clock has moved past its stamp: later items can only be
  stamped later (late events are stamped with the clock). So each (entity, stamp) has exactly one
  row, whatever the batch boundaries: a crash, a replay or a second backfill writes the same rows.
- The online view is fresher: after every batch, `drain_online` gives the current values (at the
  clock) of every entity that changed, including those whose row is not final yet.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from features import tiles
from features.events import Event
from features.specs import (
    ENTITIES,
    FEATURES,
    Agg,
    Entity,
    entities_of_event,
    features_of,
)

EntityKey = tuple[str, str]  # (entity name, entity id)
Values = tuple[Any, ...]  # one entity's features, in `features_of(entity)` order
NEVER = -(2**62)


@dataclass(frozen=True, slots=True)
class Change:
    """An entity's full feature vector from `stamp` (µs since the epoch, UTC) on."""

    entity: str
    entity_id: str
    stamp: int
    values: Values


@dataclass(frozen=True, slots=True)
class Update:
    """One event routed to one entity it changes, with the stream's clock when admitted."""

    entity: str
    entity_id: str
    event: Event
    clock: int


@dataclass(frozen=True, slots=True)
class Tick:
    """The stream's clock moved to `clock` (sent to every shard after each batch)."""

    clock: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one event type does to one entity, compiled from the specs for the hot path.

    windowed: (feature index, aggregation, window, event field folded or None, filter or None)
    last: (feature index, event field) of the profile features this event type sets
    """

    windowed: tuple[tuple[int, Agg, Any, str | None, tuple[tuple[str, str], ...] | None], ...]
    last: tuple[tuple[int, str], ...]


def _plans() -> dict[tuple[str, str], _Plan]:
    plans = {}
    for entity in ENTITIES:
        specs = features_of(entity)
        for event_type in {f.event_type for f in specs}:
            mine = [(i, f) for i, f in enumerate(specs) if f.event_type == event_type]
            windowed = tuple(
                (i, f.agg, f.window, f.value, f.where or None) for i, f in mine if f.windowed
            )
            last = tuple((i, f.value) for i, f in mine if not f.windowed and f.value)
            plans[(entity.name, event_type)] = _Plan(windowed, last)
    return plans


_PLANS = _plans()
_SPECS = {e.name: features_of(e) for e in ENTITIES}
_EMPTY = {
    e.name: tuple(0 if f.agg is Agg.COUNT else None for f in features_of(e)) for e in ENTITIES
}
_WINDOWED = {
    e.name: tuple((i, f.agg, f.window) for i, f in enumerate(features_of(e)) if f.window)
    for e in ENTITIES
}
_ROUTES = {
    t: tuple(entities_of_event(t))
    for t in ("job_posted", "freelancer_profile", "proposal_submitted", "proposal_action")
}


def route(event: Event) -> list[tuple[str, str]]:
    """The (entity name, entity id) pairs an event changes."""
    return [(e.name, getattr(event, e.join_key)) for e in _ROUTES[event.event_type]]


class EntityState:
    """One entity's tiles and running totals (per windowed feature), its latest profile values,
    and its current feature vector, kept up to date as tiles come and go.

    Invariant: `totals[i]` is the merge of `tiles[i]`, `values[i]` is its value, and `tiles[i]`
    holds only tiles inside the window at the latest time the state was pruned to, in start
    order. Reading is then a tuple copy, and pruning subtracts exactly (see `tiles.subtract`).
    """

    __slots__ = ("tiles", "totals", "values", "last_times", "emitted", "stamp")

    def __init__(self, empty: Values) -> None:
        self.tiles: list[dict[int, Any] | None] = [None] * len(empty)
        self.totals: list[Any] = [None] * len(empty)
        self.values: list[Any] = list(empty)
        self.last_times: dict[str, int] = {}  # event type -> event_time of the values kept
        # the values of its latest change-log row; None until its first, which an entity gets
        # when it first appears, even if its events leave every value empty (so the offline
        # store knows it exactly as the online store does)
        self.emitted: Values | None = None
        self.stamp = NEVER  # when its values last changed

    def fold(self, i: int, agg: Agg, start: int, value: Any) -> bool:
        """Add one event to tile `start` of feature i; True if the tile is new."""
        held = self.tiles[i]
        if held is None:
            held = self.tiles[i] = {}
        total = self.totals[i]
        total = self.totals[i] = (
            tiles.build(agg, value) if total is None else tiles.fold(agg, total, value)
        )
        self.values[i] = total if agg is Agg.COUNT else tiles.value(agg, total)
        partial = held.get(start)
        if partial is not None:
            held[start] = tiles.fold(agg, partial, value)
            return False
        out_of_order = bool(held) and start < next(reversed(held))
        held[start] = tiles.build(agg, value)
        if out_of_order:  # a late event opened an older tile: keep start order
            self.tiles[i] = dict(sorted(held.items()))
        return True

    def keep_latest(self, event: Event, fields: tuple[tuple[int, str], ...]) -> None:
        """Take a profile event's values unless a later one of its type is already kept."""
        kept = self.last_times.get(event.event_type)
        if kept is None or kept <= event.event_time:
            self.last_times[event.event_type] = event.event_time
            for i, name in fields:
                self.values[i] = getattr(event, name)

    def read(self) -> Values:
        """The entity's feature vector (as of the time it was last pruned to)."""
        return tuple(self.values)

    def prune(self, windowed: tuple[tuple[int, Agg, Any], ...], t: int) -> None:
        """Drop the tiles that have left their window at t (reads come at non-decreasing t)."""
        for i, agg, window in windowed:
            held = self.tiles[i]
            if not held:
                continue
            lo = t - t % window.hop_us - window.length_us
            if next(iter(held)) >= lo:
                continue
            gone = []
            for start in held:
                if start >= lo:
                    break
                gone.append(start)
            total = self.totals[i]
            for start in gone:
                total = tiles.subtract(agg, total, held.pop(start))
            if held:
                self.totals[i] = total
                self.values[i] = total if agg is Agg.COUNT else tiles.value(agg, total)
            else:
                self.tiles[i] = self.totals[i] = None
                self.values[i] = tiles.value(agg, None)


@dataclass
class ShardEngine:
    """All the state of one shard of entities. Picklable, so the flow can snapshot it."""

    clock: int = NEVER
    entities: dict[EntityKey, EntityState] = field(default_factory=dict)
    due: list[tuple[int, str, str]] = field(default_factory=list)  # (time, entity, id) heap
    pending: dict[EntityKey, None] = field(default_factory=dict)  # changed at `clock`
    changes: list[Change] = field(default_factory=list)  # final rows not yet drained
    dirty: dict[EntityKey, None] = field(default_factory=dict)  # changed since drain_online

    def process(self, items: Iterable[Update | Tick]) -> None:
        for item in items:
            if type(item) is Update:
                self.apply(item)
            else:
                self.advance(item.clock)

    def apply(self, update: Update) -> None:
        """Fold one routed event into its entity; its change is stamped with the clock."""
        if update.clock > self.clock:
            self.advance(update.clock)
        key = (update.entity, update.entity_id)
        state = self.entities.get(key)
        if state is None:
            state = self.entities[key] = EntityState(_EMPTY[update.entity])
        event = update.event
        plan = _PLANS[(update.entity, event.event_type)]
        t = event.event_time
        pushed = 0  # features sharing a window share its boundary: push it once
        for i, agg, window, field_name, where in plan.windowed:
            if where is not None and any(getattr(event, k) != v for k, v in where):
                continue
            start = t - t % window.hop_us
            expires = start + window.length_us + window.hop_us
            if expires <= self.clock:
                continue  # so late it has already left its window: changes nothing now
            value = getattr(event, field_name) if field_name else None
            if state.fold(i, agg, start, value) and expires != pushed:
                heapq.heappush(self.due, (expires, update.entity, update.entity_id))
                pushed = expires
        if plan.last:
            state.keep_latest(event, plan.last)
        state.stamp = self.clock
        self.pending[key] = None
        self.dirty[key] = None

    def advance(self, t: int) -> None:
        """Move the clock to t: finalise rows at the old clock, replay boundaries before t."""
        if t <= self.clock:
            return
        self._finalise_pending()
        due = self.due
        while due and due[0][0] < t:
            stamp = due[0][0]
            keys: dict[EntityKey, None] = {}
            while due and due[0][0] == stamp:
                _, name, entity_id = heapq.heappop(due)
                keys[(name, entity_id)] = None
            for key in sorted(keys):
                state = self.entities.get(key)
                if state is not None:
                    state.prune(_WINDOWED[key[0]], stamp)
                    self._record(key, stamp)
        while due and due[0][0] == t:
            _, name, entity_id = heapq.heappop(due)
            key = (name, entity_id)
            state = self.entities.get(key)
            if state is not None:
                state.prune(_WINDOWED[name], t)  # its row comes with the clock's other changes
            self.pending[key] = None
            self.dirty[key] = None
        self.clock = t

    def finish(self, until: int | None = None) -> None:
        """End of input: move the clock to `until` (if later) and finalise every row.

        The rows at the final clock are then written, so the instant is closed: should the
        state go on (a stream continuing a backfill), a later event at that same instant is
        stamped one microsecond after it, never rewriting the row already written.
        """
        if until is not None:
            self.advance(until)
        self._finalise_pending()
        if self.clock != NEVER:
            self.advance(self.clock + 1)

    def drain_changes(self) -> list[Change]:
        """Final change-log rows since the last drain, in stamp order."""
        out, self.changes = self.changes, []
        return out

    def drain_online(self) -> list[Change]:
        """Current values (at the clock) of every entity changed since the last drain."""
        out = []
        for key in self.dirty:
            state = self.entities[key]
            name, entity_id = key
            out.append(Change(name, entity_id, state.stamp, state.read()))
        self.dirty = {}
        return out

    def value(self, entity: Entity, entity_id: str) -> Values | None:
        """An entity's values at the clock (None if it has no state)."""
        state = self.entities.get((entity.name, entity_id))
        if state is None:
            return None
        state.prune(_WINDOWED[entity.name], self.clock)
        return state.read()

    def _finalise_pending(self) -> None:
        for key in self.pending:
            self._record(key, self.clock)
        self.pending = {}

    def _record(self, key: EntityKey, stamp: int) -> None:
        """Write the entity's row at `stamp` if its values changed (its tiles are pruned to it:
        every tile leaves at a boundary, and `advance` prunes at each boundary it replays)."""
        state = self.entities.get(key)
        if state is None:
            return
        values = state.read()
        if values != state.emitted:
            change = Change(key[0], key[1], stamp, values)
            self.changes.append(change)
            state.emitted = values
            state.stamp = stamp
            self.dirty[key] = None


@dataclass
class Sequencer:
    """The stream's order: drops repeated event ids, rejects late events, keeps the clock.

    Event ids are remembered only while a repeat could still be admitted: a repeat older than the
    allowed lateness is rejected as late anyway.
    """

    lateness_us: int
    clock: int = NEVER
    seen: dict[str, int] = field(default_factory=dict)
    _expiry: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0

    def admit(self, event: Event) -> str | None:
        """None if the event is admitted (and the clock moved), else why not."""
        if event.event_id in self.seen:
            self.duplicates += 1
            return "duplicate"
        if event.event_time < self.clock - self.lateness_us:
            return "late"
        if event.event_time > self.clock:
            self.clock = event.event_time
            self._forget(self.clock - self.lateness_us)
        self.seen[event.event_id] = event.event_time
        heapq.heappush(self._expiry, (event.event_time, event.event_id))
        return None

    def _forget(self, before: int) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < before:
            _, event_id = heapq.heappop(expiry)
            del self.seen[event_id]


def empty_values(entity: Entity) -> Values:
    """An entity's values over no events (counts 0, everything else null)."""
    return _EMPTY[entity.name]


__all__ = [
    "FEATURES",
    "Change",
    "EntityState",
    "Sequencer",
    "ShardEngine",
    "Tick",
    "Update",
    "empty_values",
    "route",
]
