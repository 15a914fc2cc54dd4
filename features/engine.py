"""The feature engine: columnar state, a batch of events at a time. Engine-agnostic and pure.

The Bytewax flow in `flows/` holds one `Sequencer` (`features.sequencer`: de-duplication,
lateness, the clock) and one `ShardEngine` per shard of entities, and only moves batches between
them. Tests and benchmarks drive the same classes directly.

What a shard computes (docs/contract.md §2). An admitted event reaches each entity it changes
with the stream's clock `c` when it was admitted. For a windowed feature it counts from `c` (its
change is stamped with the clock, never with a rewritten past) until its tile leaves the window, at
`floor_hop(event_time) + length + hop`; an event whose tile has left already changes nothing.
A profile feature takes the latest event by event time (a tie goes to the later event). So each
feature of an entity is a step function of time whose steps fall on update clocks and on tile
exits, and the change log holds a row at every such instant where the entity's vector changes,
plus one row when the entity first appears. A row at instant `s` is final once the clock has
passed `s`: later events carry later clocks and every tile exit up to the clock is applied.

How a batch is worked, per entity kind, with array operations and no Python step per event:
- entity ids are interned to dense indices; every per-entity value lives in a column;
- each event becomes one record of deltas (+1 per matching count, +value per matching mean) at
  its clock, and one pending exit per matching windowed feature, kept in buckets by exit time;
- the exits due by the batch's clock join the records; records are sorted by (entity, instant)
  and summed with `cumsum`, giving each entity's vector at each instant it changed;
- a vector is compared with the one before it; a change at an instant before the clock is a row.
Means are exact: sums are integers of 2**-64 units (`features.sums`), so the order of events and
of batches cannot change a bit. Rows at the clock itself stay pending until the clock moves.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from features import offline_layout, sums
from features.events import ACTIONS, EVENT_TYPES, Event
from features.sequencer import NEVER
from features.specs import ENTITIES, Agg, Dtype, Entity, entities_of_event, features_of

Values = tuple[Any, ...]  # one entity's features, in `features_of(entity)` order
TYPE_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
ACTION_CODE = {name: code for code, name in enumerate(ACTIONS)}
_I64 = np.int64


@dataclass(frozen=True, slots=True)
class Change:
    """An entity's full feature vector from `stamp` (µs since the epoch, UTC) on."""

    entity: str
    entity_id: str
    stamp: int
    values: Values


@dataclass(frozen=True, slots=True)
class KindUpdates:
    """Admitted events routed to entities of one kind, in stream order, as columns."""

    ids: list[str]  # the entity id each event changes
    clock: np.ndarray  # int64: the stream's clock when the event was admitted
    time: np.ndarray  # int64: event time
    etype: np.ndarray  # int8: `TYPE_CODE`
    action: np.ndarray  # int8: `ACTION_CODE`, -1 where none
    value: np.ndarray  # float64: the value a mean folds (bid_amount), NaN where none
    profiles: dict[int, Event] = field(default_factory=dict)  # row -> event, profile features

    def __len__(self) -> int:
        return len(self.ids)


def concat_updates(parts: Sequence[KindUpdates]) -> KindUpdates:
    """Consecutive updates of one kind as one (stream order kept)."""
    if len(parts) == 1:
        return parts[0]
    ids: list[str] = []
    profiles: dict[int, Event] = {}
    for part in parts:
        profiles.update({len(ids) + row: e for row, e in part.profiles.items()})
        ids += part.ids
    return KindUpdates(
        ids,
        np.concatenate([p.clock for p in parts]),
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.etype for p in parts]),
        np.concatenate([p.action for p in parts]),
        np.concatenate([p.value for p in parts]),
        profiles,
    )


def updates_from_events(
    kind: Entity, events: Sequence[Event], clocks: Sequence[int]
) -> KindUpdates:
    """Typed events (and their clocks) that change `kind`, as its update columns."""
    mine = [(e, c) for e, c in zip(events, clocks, strict=True) if kind in _ROUTES[e.event_type]]
    source = _PLANS[kind.name].last_type
    return KindUpdates(
        [getattr(e, kind.join_key) for e, _ in mine],
        np.array([c for _, c in mine], dtype=_I64),
        np.array([e.event_time for e, _ in mine], dtype=_I64),
        np.array([TYPE_CODE[e.event_type] for e, _ in mine], dtype=np.int8),
        np.array([ACTION_CODE.get(getattr(e, "action", ""), -1) for e, _ in mine], np.int8),
        np.array([getattr(e, "bid_amount", np.nan) for e, _ in mine], dtype=np.float64),
        {i: e for i, (e, _) in enumerate(mine) if TYPE_CODE[e.event_type] == source},
    )


# --- plans: the specs compiled for one entity kind ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Windowed:
    slot: int  # position in the entity's vector
    etype: int
    action: int  # the action filter's code, -1 for none
    length: int
    hop: int
    mean: int  # its index among the kind's means, -1 for a count


@dataclass(frozen=True)
class _Plan:
    entity: Entity
    size: int  # features in the vector
    windowed: tuple[_Windowed, ...]  # count matrix column = index here
    counts: tuple[int, ...]  # windowed indices of COUNT features
    means: tuple[int, ...]  # windowed indices of MEAN features
    last_type: int | None  # the event type profile features come from
    last: tuple[tuple[int, str], ...]  # (slot, event field) of each profile feature
    empty: Values


def _plan(entity: Entity) -> _Plan:
    specs = features_of(entity)
    windowed: list[_Windowed] = []
    means: list[int] = []
    last: list[tuple[int, str]] = []
    last_types = set()
    for slot, spec in enumerate(specs):
        if spec.window is None:
            last.append((slot, spec.value or ""))
            last_types.add(TYPE_CODE[spec.event_type])
            continue
        action = -1
        for name, wanted in spec.where:
            if name != "action":
                msg = f"{spec.name}: the engine filters on `action` only, not {name!r}"
                raise ValueError(msg)
            action = ACTION_CODE[wanted]
        mean = -1
        if spec.agg is Agg.MEAN:
            mean = len(means)
            means.append(len(windowed))
        w = spec.window
        windowed.append(
            _Windowed(slot, TYPE_CODE[spec.event_type], action, w.length_us, w.hop_us, mean)
        )
    if len(last_types) > 1:
        msg = f"{entity.name}: profile features from more than one event type"
        raise ValueError(msg)
    counts = tuple(i for i, w in enumerate(windowed) if w.mean < 0)
    empty = tuple(0 if spec.agg is Agg.COUNT else None for spec in specs)
    return _Plan(
        entity,
        len(specs),
        tuple(windowed),
        counts,
        tuple(means),
        next(iter(last_types), None),
        tuple(last),
        empty,
    )


_PLANS = {e.name: _plan(e) for e in ENTITIES}
_ROUTES = {t: entities_of_event(t) for t in EVENT_TYPES}


def route(event: Event) -> list[tuple[str, str]]:
    """The (entity name, entity id) pairs an event changes."""
    return [(e.name, getattr(event, e.join_key)) for e in _ROUTES[event.event_type]]


def kinds_of(event_type: str) -> tuple[Entity, ...]:
    """The entity kinds an event type changes, in a fixed order."""
    return _ROUTES[event_type]


def last_type(entity: Entity) -> int | None:
    """The event type (`TYPE_CODE`) an entity's profile features come from, if any."""
    return _PLANS[entity.name].last_type


def empty_values(entity: Entity) -> Values:
    """An entity's values over no events (counts 0, everything else null)."""
    return _PLANS[entity.name].empty


# --- one entity kind's state -------------------------------------------------------------------


@dataclass
class _Rows:
    """Final change-log rows of one kind, as columns, in stamp order per entity."""

    entity: np.ndarray
    stamp: np.ndarray
    counts: np.ndarray  # (n, windowed) int64
    means: np.ndarray  # (n, means) float64, NaN for null
    refs: np.ndarray  # profile reference, -1 for none


class KindState:
    """Every entity of one kind in a shard: columns indexed by a dense entity number."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        n_w, n_m = len(plan.windowed), len(plan.means)
        cap = 16
        self.counts = np.zeros((cap, n_w), _I64)  # per windowed feature, events in the window
        self.limbs = np.zeros((cap, n_m, sums.LIMBS), _I64)  # per mean, the exact sum
        self.ref = np.full(cap, -1, _I64)  # the profile in force (a row of `profiles`)
        self.ref_time = np.full(cap, NEVER, _I64)  # its event time
        self.stamp = np.full(cap, NEVER, _I64)  # when its values (or an update) last came
        self.emitted = np.zeros(cap, np.bool_)  # it has a change-log row
        self.em_counts = np.zeros((cap, n_w), _I64)  # the vector of its latest row
        self.em_means = np.full((cap, n_m), np.nan)
        self.em_eq = np.full(cap, -1, _I64)
        self.dirty = np.zeros(cap, np.bool_)  # changed since the last online drain
        self.touched = np.zeros(cap, np.bool_)  # changed since the last `export_delta`
        self.odd: list[dict[int, int]] = [{} for _ in plan.means]  # exact sums as Python ints
        self.pending = np.zeros(0, _I64)  # entities with a change at the clock, not yet final
        # exits: chunks (first exit time, number, windowed index, exit times sorted, entities,
        # values) in a heap by first exit time; a chunk holds one batch's exits of one feature
        self.exits: list[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.chunks_made = 0
        self.new_chunks: list[tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self._ids_exported = 0
        self._profiles_exported = 0
        self._odd_changed: set[tuple[int, int]] = set()
        # profiles: values of every profile event kept, their equality class, by reference
        self.profiles: list[Values] = []
        self.profile_times: list[int] = []
        self.profile_eq = np.zeros(16, _I64)  # by reference: its equality class
        self.eq_classes: dict[Values, int] = {}
        self.rows: list[_Rows] = []
        specs = features_of(plan.entity)
        self._last_names = [specs[slot].name for slot, _ in plan.last]
        self._last_schema = pa.schema(
            [
                (specs[slot].name, offline_layout.ARROW_TYPES[specs[slot].dtype])
                for slot, _ in plan.last
            ]
        )
        self.profile_chunks: list[pa.Table] = []
        self._profile_table: pa.Table | None = None
        self.id_column = np.empty(16, dtype=object)  # `ids` as a column, for tables
        self._ids_in_column = 0

    # -- entities --

    def intern(self, ids: list[str]) -> np.ndarray:
        get = self.index.get
        out = [get(key, -1) for key in ids]
        if -1 in out:
            for i, key in enumerate(ids):
                if out[i] == -1:
                    number = get(key)
                    if number is None:
                        number = self.index[key] = len(self.ids)
                        self.ids.append(key)
                    out[i] = number
            self._grow(len(self.ids))
            column = self.id_column
            if len(column) < len(self.ref):
                grown = np.empty(len(self.ref), dtype=object)
                grown[: len(column)] = column
                self.id_column = column = grown
            known = self._ids_in_column
            column[known : len(self.ids)] = self.ids[known:]
            self._ids_in_column = len(self.ids)
        return np.array(out, dtype=_I64)

    def _grow(self, n: int) -> None:
        cap = len(self.ref)
        if n <= cap:
            return
        new = max(n, cap * 2)
        for name, fill in (
            ("counts", 0),
            ("limbs", 0),
            ("ref", -1),
            ("ref_time", NEVER),
            ("stamp", NEVER),
            ("emitted", False),
            ("em_counts", 0),
            ("em_means", np.nan),
            ("em_eq", -1),
            ("dirty", False),
            ("touched", False),
        ):
            old = getattr(self, name)
            grown = np.full((new, *old.shape[1:]), fill, dtype=old.dtype)
            grown[:cap] = old
            setattr(self, name, grown)

    def _profile(self, event: Event) -> int:
        values = tuple(getattr(event, name) for _, name in self.plan.last)
        eq = self.eq_classes.setdefault(values, len(self.eq_classes))
        ref = len(self.profiles)
        self.profiles.append(values)
        self.profile_times.append(event.event_time)
        if ref == len(self.profile_eq):
            self.profile_eq = np.concatenate([self.profile_eq, np.zeros(ref, _I64)])
        self.profile_eq[ref] = eq
        return ref

    def _keep_columns(self, first: int) -> None:
        """The profiles from `first` on as Arrow columns too, for change-log tables."""
        specs = features_of(self.plan.entity)
        kept = self.profiles[first:]
        arrays = []
        for j, (slot, _) in enumerate(self.plan.last):
            dtype = specs[slot].dtype
            values = [p[j] for p in kept]
            if dtype is Dtype.TIMESTAMP:
                values = [None if v is None else offline_layout.floor_seconds(v) for v in values]
            elif dtype is Dtype.STRINGS:  # pyarrow converts lists hundreds of times faster
                values = [None if v is None else list(v) for v in values]
            arrays.append(pa.array(values, offline_layout.ARROW_TYPES[dtype]))
        chunks = self.profile_chunks
        chunks.append(pa.Table.from_arrays(arrays, names=self._last_names))
        # merge a chunk into the one before it once that is at most twice its size: a few chunks
        # of geometric sizes, each profile copied O(log n) times in all
        while len(chunks) > 1 and chunks[-2].num_rows <= 2 * chunks[-1].num_rows:
            last = chunks.pop()
            chunks[-1] = pa.concat_tables([chunks[-1], last]).combine_chunks()
        self._profile_table = None

    def _profile_columns(self) -> pa.Table:
        if self._profile_table is None:
            self._profile_table = pa.concat_tables(self.profile_chunks)
        return self._profile_table

    # -- a batch --

    def step(self, up: KindUpdates | None, c0: int, c1: int) -> None:
        """Apply updates (clocks >= c0) and every exit up to c1; rows before c1 become final."""
        plan = self.plan
        n_w, n_m = len(plan.windowed), len(plan.means)
        parts_ent, parts_at, parts_cnt, parts_val, parts_ref = [], [], [], [], []
        updated = None
        if up is not None and len(up):
            ent = self.intern(up.ids)
            at = np.maximum(up.clock, c0)
            n = len(ent)
            cnt = np.zeros((n, n_w), _I64)
            val = np.zeros((n, n_m))
            for wi, w in enumerate(plan.windowed):
                match = up.etype == w.etype
                if w.action >= 0:
                    match &= up.action == w.action
                exit_at = up.time - up.time % w.hop + w.length + w.hop
                match &= exit_at > at
                if not match.any():
                    continue
                cnt[match, wi] = 1
                if w.mean >= 0:
                    val[match, w.mean] = up.value[match]
                self._schedule(wi, exit_at[match], ent[match], up.value[match])
            ref = np.full(n, -1, _I64)
            first = len(self.profiles)
            for row, event in up.profiles.items():
                if TYPE_CODE[event.event_type] == plan.last_type:
                    ref[row] = self._profile(event)
            if len(self.profiles) > first:
                self._keep_columns(first)
            parts_ent.append(ent)
            parts_at.append(at)
            parts_cnt.append(cnt)
            parts_val.append(val)
            parts_ref.append(ref)
            updated = (ent, at)
        due = self._due(c1)
        if due is not None:
            wis, at_exit, ents, values = due
            k = len(ents)
            cnt = np.zeros((k, n_w), _I64)
            cnt[np.arange(k), wis] = -1
            val = np.zeros((k, n_m))
            for wi in plan.means:
                mine = wis == wi
                val[mine, plan.windowed[wi].mean] = -values[mine]
            parts_ent.append(ents)
            parts_at.append(at_exit)
            parts_cnt.append(cnt)
            parts_val.append(val)
            parts_ref.append(np.full(k, -1, _I64))
            self.dirty[ents[at_exit == c1]] = True
        if len(self.pending):
            k = len(self.pending)
            parts_ent.append(self.pending)
            parts_at.append(np.full(k, c0, _I64))
            parts_cnt.append(np.zeros((k, n_w), _I64))
            parts_val.append(np.zeros((k, n_m)))
            parts_ref.append(np.full(k, -1, _I64))
        if not parts_ent:
            return
        ent = np.concatenate(parts_ent)
        at = np.concatenate(parts_at)
        order = np.lexsort((at, ent))  # stable: within an instant, stream order
        self._fold(
            ent[order],
            at[order],
            np.concatenate(parts_cnt)[order],
            np.concatenate(parts_val)[order],
            np.concatenate(parts_ref)[order],
            c1,
        )
        if updated is not None:
            ent, at = updated
            np.maximum.at(self.stamp, ent, at)
            self.dirty[ent] = True

    def _fold(
        self,
        ent: np.ndarray,
        at: np.ndarray,
        cnt: np.ndarray,
        val: np.ndarray,
        ref: np.ndarray,
        c1: int,
    ) -> None:
        """Records sorted by (entity, instant): each entity's vector at each of its instants."""
        plan = self.plan
        n = len(ent)
        new_run = np.empty(n, np.bool_)
        new_run[0] = True
        np.not_equal(ent[1:], ent[:-1], out=new_run[1:])
        new_group = new_run.copy()
        new_group[1:] |= at[1:] != at[:-1]
        starts = np.flatnonzero(new_group)
        ends = np.append(starts[1:] - 1, n - 1)
        g_ent = ent[ends]
        g_at = at[ends]
        g_run_start = new_run[starts]
        run_of_record = np.cumsum(new_run) - 1
        run_first = np.flatnonzero(new_run)
        g_run = run_of_record[ends]

        # counts: the state before the batch plus the records up to each group's end
        csum = np.cumsum(cnt, axis=0)
        before = np.zeros_like(csum)
        before[1:] = csum[:-1]
        g_counts = self.counts[g_ent] + csum[ends] - before[run_first][g_run]

        # exact sums of the means
        n_m = len(plan.means)
        g_means = np.full((len(ends), n_m), np.nan)
        if n_m:
            limbs, odd = sums.to_limbs(np.abs(val.reshape(-1)))
            limbs = limbs.reshape(n, n_m, sums.LIMBS) * np.sign(val)[:, :, None].astype(_I64)
            odd = odd.reshape(n, n_m) & (val != 0)
            lsum = np.cumsum(limbs, axis=0)
            lbefore = np.zeros_like(lsum)
            lbefore[1:] = lsum[:-1]
            g_limbs = self.limbs[g_ent] + lsum[ends] - lbefore[run_first][g_run]
            for k, wi in enumerate(plan.means):
                totals = sums.normalise(g_limbs[:, k, :])
                count = g_counts[:, wi]
                with np.errstate(invalid="ignore", divide="ignore"):
                    g_means[:, k] = np.where(count > 0, sums.to_double(totals) / count, np.nan)
                fit = sums.fits(totals)
                if self.odd[k] or odd[:, k].any() or not fit.all():
                    slow = set(ent[odd[:, k]].tolist()) | set(g_ent[~fit].tolist())
                    slow.update(n for n in np.unique(g_ent).tolist() if n in self.odd[k])
                    if slow:
                        groups = np.isin(g_ent, np.fromiter(slow, _I64, len(slow)))
                        self._exact_means(
                            k, val[:, k], ends, g_ent, g_counts[:, wi], g_means[:, k], groups
                        )

        # profiles: the one in force at each group (the state's before the batch, then the
        # latest by event time among the entity's profile events so far; a tie goes to the later)
        g_ref = np.full(len(ends), -2, _I64)  # -2: no profile event in the group
        rs = np.flatnonzero(g_run_start)
        ref_before = self.ref[g_ent[rs]]
        if (ref >= 0).any():
            group_of_record = np.cumsum(new_group) - 1
            holder: dict[int, tuple[int, int]] = {}
            times = self.profile_times
            for r in np.flatnonzero(ref >= 0).tolist():
                number = int(ent[r])
                kept = holder.get(number)
                if kept is None:
                    kept = (int(self.ref[number]), int(self.ref_time[number]))
                event_time = times[int(ref[r])]
                if kept[0] < 0 or kept[1] <= event_time:
                    kept = (int(ref[r]), event_time)
                holder[number] = kept
                g_ref[group_of_record[r]] = kept[0]
            for number, (held, held_time) in holder.items():
                self.ref[number] = held
                self.ref_time[number] = held_time
        first = g_ref[rs] == -2
        g_ref[rs[first]] = ref_before[first]
        filled = np.where(g_ref != -2, np.arange(len(ends)), 0)
        np.maximum.accumulate(filled, out=filled)
        g_ref = g_ref[filled]
        g_eq = np.full(len(ends), -1, _I64)
        has = g_ref >= 0
        if has.any():
            g_eq[has] = self.profile_eq[g_ref[has]]

        # compare each group's vector with the one before it (the state's at a run's start)
        prev_counts = np.empty_like(g_counts)
        prev_counts[1:] = g_counts[:-1]
        prev_means = np.empty_like(g_means)
        prev_means[1:] = g_means[:-1]
        prev_eq = np.empty_like(g_eq)
        prev_eq[1:] = g_eq[:-1]
        prev_counts[rs] = self.em_counts[g_ent[rs]]
        prev_means[rs] = self.em_means[g_ent[rs]]
        prev_eq[rs] = self.em_eq[g_ent[rs]]
        cols = list(plan.counts)
        changed = (g_counts[:, cols] != prev_counts[:, cols]).any(axis=1)
        if n_m:
            same = (g_means == prev_means) | (np.isnan(g_means) & np.isnan(prev_means))
            changed |= ~same.all(axis=1)
        changed |= g_eq != prev_eq
        changed[rs] |= ~self.emitted[g_ent[rs]]
        emit = changed & (g_at < c1)

        # the state after the batch: each entity's last group; its last emitted row
        last = np.append(g_ent[1:] != g_ent[:-1], True)
        self.touched[g_ent] = True
        self.counts[g_ent[last]] = g_counts[last]
        if n_m:
            self.limbs[g_ent[last]] = g_limbs[last]
        self.pending = np.unique(g_ent[g_at == c1])
        rows = np.flatnonzero(emit)
        if len(rows):
            r_ent = g_ent[rows]
            latest = rows[np.append(r_ent[1:] != r_ent[:-1], True)]
            e = g_ent[latest]
            self.emitted[e] = True
            self.em_counts[e] = g_counts[latest]
            self.em_means[e] = g_means[latest]
            self.em_eq[e] = g_eq[latest]
            np.maximum.at(self.stamp, r_ent, g_at[rows])
            self.dirty[r_ent] = True
            self.rows.append(_Rows(r_ent, g_at[rows], g_counts[rows], g_means[rows], g_ref[rows]))

    def _exact_means(
        self,
        k: int,
        val: np.ndarray,
        ends: np.ndarray,
        g_ent: np.ndarray,
        g_count: np.ndarray,
        out: np.ndarray,
        groups: np.ndarray,
    ) -> None:
        """Mean k at the chosen groups (all of their entities'), from exact Python integers."""
        odd = self.odd[k]
        starts = np.append(0, ends[:-1] + 1)
        running: dict[int, int] = {}
        for g in np.flatnonzero(groups).tolist():
            number = int(g_ent[g])
            total = running.get(number)
            if total is None:
                total = odd.get(number)
            if total is None:
                held = sums.normalise(self.limbs[number, k][None].copy())[0]
                total = sums.limbs_units(held)
            for x in val[starts[g] : ends[g] + 1].tolist():
                if x:
                    total += sums.odd_units(x)
            running[number] = total
            count = int(g_count[g])
            out[g] = sums.odd_double(total) / count if count > 0 else np.nan
        odd.update(running)
        self._odd_changed.update((k, number) for number in running)

    def _schedule(self, wi: int, exit_at: np.ndarray, ents: np.ndarray, values: np.ndarray) -> None:
        """Keep the exits of new events: one chunk, sorted by exit time."""
        order = np.argsort(exit_at, kind="stable")
        exit_at = exit_at[order]
        self.chunks_made += 1
        chunk = (int(exit_at[0]), self.chunks_made, wi, exit_at, ents[order], values[order])
        heapq.heappush(self.exits, chunk)
        self.new_chunks.append(chunk)

    def _due(self, c1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The exits at or before c1, taken out: (windowed index, time, entity, value) columns."""
        taken = []
        exits = self.exits
        while exits and exits[0][0] <= c1:
            _, _, wi, times, ents, values = heapq.heappop(exits)
            cut = int(np.searchsorted(times, c1, side="right"))
            taken.append((wi, times[:cut], ents[:cut], values[:cut]))
            if cut < len(times):
                self.chunks_made += 1
                rest = (int(times[cut]), self.chunks_made, wi, times[cut:], ents[cut:])
                heapq.heappush(exits, (*rest, values[cut:]))
        if not taken:
            return None
        return (
            np.concatenate([np.full(len(t), wi, np.int64) for wi, t, _, _ in taken]),
            np.concatenate([t for _, t, _, _ in taken]),
            np.concatenate([e for _, _, e, _ in taken]),
            np.concatenate([v for _, _, _, v in taken]),
        )

    # -- reading --

    def vectors(self, counts: np.ndarray, means: np.ndarray, refs: np.ndarray) -> list[Values]:
        """Entities' values as Python objects, from their columns (one row each)."""
        plan = self.plan
        n = len(refs)
        columns: list[list[Any]] = [[value] * n for value in plan.empty]
        for wi, w in enumerate(plan.windowed):
            if w.mean < 0:
                columns[w.slot] = counts[:, wi].tolist()
            else:
                columns[w.slot] = [None if x != x else x for x in means[:, w.mean].tolist()]
        if plan.last:
            profiles = self.profiles
            held = [None if r < 0 else profiles[r] for r in refs.tolist()]
            for j, (slot, _) in enumerate(plan.last):
                columns[slot] = [None if p is None else p[j] for p in held]
        return list(zip(*columns, strict=True))

    def means_of(self, numbers: np.ndarray) -> np.ndarray:
        """The current means of some entities, (n, means), NaN for null."""
        plan = self.plan
        out = np.full((len(numbers), len(plan.means)), np.nan)
        for k, wi in enumerate(plan.means):
            count = self.counts[numbers, wi]
            totals = sums.normalise(self.limbs[numbers, k].copy())
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, k] = np.where(count > 0, sums.to_double(totals) / count, np.nan)
            odd = self.odd[k]
            if odd:
                for i, number in enumerate(numbers.tolist()):
                    if number in odd and count[i] > 0:
                        out[i, k] = sums.odd_double(odd[number]) / int(count[i])
        return out

    def current(self, numbers: np.ndarray) -> list[Values]:
        """Entities' values at the clock."""
        return self.vectors(self.counts[numbers], self.means_of(numbers), self.ref[numbers])

    def drain_rows(self) -> list[_Rows]:
        out, self.rows = self.rows, []
        return out

    # -- recovery: what changed since the last export, and applying it to a restored copy --

    _COLUMNS = (
        "counts",
        "limbs",
        "ref",
        "ref_time",
        "stamp",
        "emitted",
        "em_counts",
        "em_means",
        "em_eq",
    )

    def export_delta(self) -> dict[str, Any]:
        """Everything that changed since the last export (or since the state was made): new
        entities, the columns of touched ones, new exits and profiles, the small scalars."""
        numbers = np.flatnonzero(self.touched[: len(self.ids)])
        self.touched[numbers] = False
        delta = {
            "ids": self.ids[self._ids_exported :],
            "numbers": numbers,
            "columns": {name: getattr(self, name)[numbers] for name in self._COLUMNS},
            "chunks": self.new_chunks,
            "profiles": self.profiles[self._profiles_exported :],
            "profile_times": self.profile_times[self._profiles_exported :],
            "odd": {(k, n): self.odd[k].get(n) for k, n in self._odd_changed},
            "pending": self.pending,
            "chunks_made": self.chunks_made,
        }
        self._ids_exported = len(self.ids)
        self._profiles_exported = len(self.profiles)
        self.new_chunks = []
        self._odd_changed = set()
        return delta

    def mark_exported(self) -> None:
        """The whole state is saved (a base): nothing is left to export."""
        self.touched[:] = False
        self._ids_exported = len(self.ids)
        self._profiles_exported = len(self.profiles)
        self.new_chunks = []
        self._odd_changed = set()

    def apply_delta(self, delta: dict[str, Any]) -> None:
        """Replay one `export_delta` on a restored state (call `restored` after the last)."""
        for key in delta["ids"]:
            self.index[key] = len(self.ids)
            self.ids.append(key)
        self._grow(len(self.ids))
        numbers = delta["numbers"]
        for name, values in delta["columns"].items():
            getattr(self, name)[numbers] = values
        self.exits.extend(delta["chunks"])
        for values, when in zip(delta["profiles"], delta["profile_times"], strict=True):
            self.profiles.append(values)
            self.profile_times.append(when)
        for (k, number), total in delta["odd"].items():
            self.odd[k][number] = total
        self.pending = delta["pending"]
        self.chunks_made = delta["chunks_made"]

    def restored(self, clock: int) -> None:
        """Derived state after a base and its deltas: exits still due, profile classes, columns."""
        kept = []
        for _, number, wi, times, ents, values in self.exits:
            cut = int(np.searchsorted(times, clock, side="right"))
            if cut < len(times):
                kept.append((int(times[cut]), number, wi, times[cut:], ents[cut:], values[cut:]))
        heapq.heapify(kept)
        self.exits = kept
        self.eq_classes = {}
        classes = [self.eq_classes.setdefault(v, len(self.eq_classes)) for v in self.profiles]
        self.profile_eq = np.array(classes + [0] * max(16, len(classes)), _I64)
        self.profile_chunks = []
        self._profile_table = None
        if self.profiles:
            self._keep_columns(0)
        self.id_column = np.empty(len(self.ref), dtype=object)
        self.id_column[: len(self.ids)] = self.ids
        self._ids_in_column = len(self.ids)
        self.dirty[:] = False
        self.mark_exported()

    def table(self, parts: list[_Rows]) -> pa.Table:
        """Final rows as an Arrow table in the entity's change-log schema (`offline_layout`)."""
        plan = self.plan
        entity = plan.entity
        ent = np.concatenate([p.entity for p in parts])
        stamp = np.concatenate([p.stamp for p in parts])
        counts = np.concatenate([p.counts for p in parts])
        means = np.concatenate([p.means for p in parts])
        refs = np.concatenate([p.refs for p in parts])
        when = pa.array(stamp, offline_layout.UTC_US)
        columns: list[Any] = [None] * plan.size
        for wi, w in enumerate(plan.windowed):
            if w.mean < 0:
                columns[w.slot] = pa.array(counts[:, wi], pa.int64())
            else:
                mean = means[:, w.mean]
                columns[w.slot] = pa.array(mean, pa.float64(), mask=np.isnan(mean))
        if plan.last:
            if self.profile_chunks:
                taken = self._profile_columns().take(pa.array(refs, pa.int64(), mask=refs < 0))
            else:
                taken = pa.table(  # no profile yet: every value null
                    [pa.nulls(len(refs), f.type) for f in self._last_schema],
                    schema=self._last_schema,
                )
            for j, (slot, _) in enumerate(plan.last):
                columns[slot] = taken.column(j)
        days = stamp // offline_layout.DAY_US
        unique_days, where = np.unique(days, return_inverse=True)
        names = np.array(
            [offline_layout.day_of(int(d) * offline_layout.DAY_US) for d in unique_days]
        )
        return pa.Table.from_arrays(
            [
                pa.array(self.id_column[ent], pa.string()),
                when,
                when,
                *columns,
                pa.array(names[where], pa.string()),
            ],
            schema=offline_layout.changelog_schema(entity),
        )

    def drain_online(self) -> list[Change]:
        """Current values (at the clock) of every entity changed since the last drain."""
        numbers = np.flatnonzero(self.dirty[: len(self.ids)])
        self.dirty[numbers] = False
        name = self.plan.entity.name
        ids = self.ids
        return [
            Change(name, ids[n], s, v)
            for n, s, v in zip(
                numbers.tolist(), self.stamp[numbers].tolist(), self.current(numbers), strict=True
            )
        ]

    def changes_of(self, rows: _Rows) -> list[Change]:
        name = self.plan.entity.name
        ids = self.ids
        return [
            Change(name, ids[e], s, v)
            for e, s, v in zip(
                rows.entity.tolist(),
                rows.stamp.tolist(),
                self.vectors(rows.counts, rows.means, rows.refs),
                strict=True,
            )
        ]


class ShardEngine:
    """All the state of one shard of entities, one `KindState` per entity kind."""

    def __init__(self) -> None:
        self.clock = NEVER
        self.kinds = {e.name: KindState(_PLANS[e.name]) for e in ENTITIES}

    def step(self, updates: Mapping[str, KindUpdates], tick: int) -> None:
        """One batch: the updates of each kind, then the clock moves to `tick` (or later)."""
        c0 = self.clock
        c1 = max([c0, tick, *(int(u.clock.max()) for u in updates.values() if len(u))])
        if c1 == c0 and not any(len(u) for u in updates.values()):
            return
        for name, state in self.kinds.items():
            state.step(updates.get(name), c0, c1)
        self.clock = c1

    def finish(self, until: int | None = None) -> None:
        """End of input: move the clock to `until` (if later) and finalise every row.

        The rows at the final clock are then written, so the instant is closed: should the
        state go on (a stream continuing a backfill), a later event at that same instant is
        stamped one microsecond after it, never rewriting the row already written.
        """
        if until is not None and until > self.clock:
            self.step({}, until)
        if self.clock != NEVER:
            self.step({}, self.clock + 1)

    def export_delta(self) -> dict[str, Any]:
        """What changed since the last export: small when few entities changed."""
        return {"clock": self.clock, "kinds": {n: s.export_delta() for n, s in self.kinds.items()}}

    def mark_exported(self) -> None:
        for state in self.kinds.values():
            state.mark_exported()

    @classmethod
    def restore(cls, base: ShardEngine, deltas: Sequence[dict[str, Any]]) -> ShardEngine:
        """A base state (as saved whole) with the deltas exported after it, in order."""
        for delta in deltas:
            base.clock = delta["clock"]
            for name, kind in delta["kinds"].items():
                base.kinds[name].apply_delta(kind)
        for state in base.kinds.values():
            state.restored(base.clock)
        return base

    def drain_rows(self) -> dict[str, list[_Rows]]:
        """Final change-log rows since the last drain, per kind, as columns."""
        return {name: rows for name, s in self.kinds.items() if (rows := s.drain_rows())}

    def drain_tables(self) -> dict[str, pa.Table]:
        """Final change-log rows since the last drain, per kind, as change-log tables."""
        return {name: self.kinds[name].table(rows) for name, rows in self.drain_rows().items()}

    def drain_changes(self) -> list[Change]:
        """Final change-log rows since the last drain, in (stamp, kind, id) order."""
        out = []
        for name, rows in self.drain_rows().items():
            for part in rows:
                out += self.kinds[name].changes_of(part)
        kind_order = {e.name: i for i, e in enumerate(ENTITIES)}
        out.sort(key=lambda c: (c.stamp, kind_order[c.entity], c.entity_id))
        return out

    def drain_online(self) -> list[Change]:
        """Current values (at the clock) of every entity changed since the last drain."""
        out = []
        for state in self.kinds.values():
            out += state.drain_online()
        return out

    def value(self, entity: Entity, entity_id: str) -> Values | None:
        """An entity's values at the clock (None if it has no state)."""
        state = self.kinds[entity.name]
        number = state.index.get(entity_id)
        return None if number is None else state.current(np.array([number]))[0]


__all__ = [
    "Change",
    "concat_updates",
    "KindUpdates",
    "ShardEngine",
    "empty_values",
    "kinds_of",
    "last_type",
    "route",
    "updates_from_events",
]
