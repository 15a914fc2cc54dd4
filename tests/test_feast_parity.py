"""Parity through the standard Feast client: flow -> Redis / Delta -> `FeatureStore` == oracle.

For seeded random event streams the real Bytewax flow runs a backfill into a real Redis and Delta
tables in a temp lake. Then `feast.FeatureStore(repo_path=...)` on a copy of the project's
`feature_store.yaml` (registry applied by `ensure_registry`, stores configured by the `BESTMATCH_*`
variables) answers:

- `get_online_features` for every entity: the oracle at the flow's final clock T;
- `get_historical_features` for every entity at every event time, every hop boundary near its
  events (where a value can change), one microsecond either side, before the first event and
  after the last: the oracle at t;
- the same after `compact_tables` (compaction and vacuum).

TIMESTAMP features are compared at whole seconds (both stores keep seconds); everything else is
compared exactly, means included (the engine sums exactly, as the oracle's `fsum` does).

Before an entity's first change the stores hold nothing for it, so Feast answers nulls: an unknown
entity, not "0 events". The oracle's defaults (counts 0) are checked to be what that means, and
`test_before_its_first_change_an_entity_is_unknown` pins it down.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from feast import FeatureStore

from features.engine import empty_values, route
from features.events import Event, format_time, parse_event
from features.lake import compact_tables
from features.offline_layout import TIMESTAMP_COLUMN, changelog_uri
from features.registry import ensure_registry
from features.settings import Settings
from features.specs import (
    DAY_US,
    ENTITIES,
    FREELANCER,
    MINUTE_US,
    Dtype,
    Entity,
    features_of,
    view_name,
    windows,
)
from flows.runner import run_backfill
from tests import oracle
from tests.conftest import RedisServer, copy_feast_repo
from tests.streams import BASE
from tests.test_flow import _floor, random_events, write_events

UTC_US = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Scenario:
    seed: int
    n: int
    workers: int
    after_last_us: int | None  # the clock T past the newest event; None: T is the newest event
    backfills: int = 1  # > 1: backfills over growing prefixes of the file, each adding files

    @property
    def id(self) -> str:
        tail = "T=last" if self.after_last_us is None else f"T=last+{self.after_last_us}us"
        runs = f"-{self.backfills}runs" if self.backfills > 1 else ""
        return f"seed{self.seed}-n{self.n}-w{self.workers}-{tail}{runs}"


SCENARIOS = [
    Scenario(seed=21, n=300, workers=1, after_last_us=40 * DAY_US),  # every window empties
    Scenario(seed=22, n=300, workers=2, after_last_us=2 * 3_600_000_000 + 7 * 60_000_000),
    Scenario(seed=23, n=250, workers=1, after_last_us=None),
    Scenario(seed=24, n=300, workers=2, after_last_us=40 * DAY_US, backfills=4),
]


def prefixes(events: list[Event], parts: int) -> list[int]:
    """Where to cut the file for `parts` backfills: between two distinct event times.

    A backfill recomputes from scratch and appends only the rows past what each lane committed,
    so each prefix's run adds the next stretch of the change log as new files.
    """
    cuts = []
    for k in range(1, parts):
        cut = k * len(events) // parts
        while cut < len(events) and events[cut].event_time == events[cut - 1].event_time:
            cut += 1
        cuts.append(cut)
    return [*cuts, len(events)]


@dataclass
class Run:
    """One scenario's flow runs and the Feast client over its stores."""

    scenario: Scenario
    settings: Settings
    events: list[Event]
    until: int
    store: FeatureStore
    mine: dict[tuple[Entity, str], list[Event]]  # each entity's events, in time order

    def expected(self, entity: Entity, entity_id: str, t: int) -> tuple[Any, ...]:
        # The oracle reads all events by its definition's words; it filters to this entity and
        # to event_time <= t itself, so handing it only those is the same answer, sooner.
        events = self.mine[(entity, entity_id)]
        before = events[: bisect_right([e.event_time for e in events], t)]
        return _floor(entity, oracle.vector(entity, before, entity_id, t))

    @cached_property
    def first_changes(self) -> dict[tuple[Entity, str], int | None]:
        """When each entity first appears: its first event, changing a value or not (its first
        change-log row is written then, so online and offline know it from the same moment)."""
        out: dict[tuple[Entity, str], int | None] = {}
        for (entity, entity_id), events in self.mine.items():
            out[(entity, entity_id)] = events[0].event_time if events else None
        return out

    @cached_property
    def history(self) -> dict[Entity, tuple[list[tuple[str, int]], list[tuple[Any, ...]]]]:
        """Per entity kind: the `(entity_id, t)` rows to ask Feast for, and the oracle's answers.

        Only times at or after the entity's first change: before it, see the module docstring.
        """
        out = {}
        for entity in ENTITIES:
            rows, want = [], []
            for kind, entity_id in self.mine:
                first = self.first_changes[(kind, entity_id)]
                if kind != entity or first is None:
                    continue
                for t in query_times(self, entity, entity_id):
                    if t >= first:
                        rows.append((entity_id, t))
                        want.append(self.expected(entity, entity_id, t))
            out[entity] = (rows, want)
        return out


@pytest.fixture(scope="module", params=SCENARIOS, ids=[s.id for s in SCENARIOS])
def run(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    scenario: Scenario = request.param
    db = 1 + SCENARIOS.index(scenario)  # a database of its own: Feast must honour the URL's db
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    redis_server.client().flushall()
    work = tmp_path_factory.mktemp(scenario.id)
    settings = Settings(redis_url=url, lake=str(work / "lake"), _env_file=None)
    events = random_events(seed=scenario.seed, n=scenario.n)
    assert oracle.admitted(events, int(settings.allowed_lateness_s * 1e6)) == events
    last = events[-1].event_time
    until = last if scenario.after_last_us is None else last + scenario.after_last_us
    for end in prefixes(events, scenario.backfills):
        path = write_events(work / f"events-{end}.jsonl", events[:end])
        final = end == len(events) and scenario.after_last_us is not None
        run_backfill(
            settings, path, until=until if final else None, workers=scenario.workers, shards=4
        )

    repo = copy_feast_repo(work / "repo")
    assert ensure_registry(settings, repo)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
        env.setenv("BESTMATCH_LAKE", settings.lake)
        store = FeatureStore(repo_path=str(repo))
        mine = {
            (entity, entity_id): [e for e in events if (entity.name, entity_id) in route(e)]
            for entity, entity_id in oracle.entity_ids(events)
        }
        yield Run(scenario, settings, events, until, store, mine)


def event(event_type: str, t: int, **fields: Any) -> Event:
    text = orjson.dumps(
        {"event_id": f"e-{t}", "event_type": event_type, "event_time": format_time(t), **fields}
    )
    parsed = parse_event(text)
    assert isinstance(parsed, Event), parsed
    return parsed


def refs(entity: Entity) -> list[str]:
    return [f"{view_name(entity)}:{spec.name}" for spec in features_of(entity)]


def online_value(dtype: Dtype, value: Any) -> Any:
    if value is None:
        return None
    if dtype is Dtype.STRINGS:
        return tuple(value)
    if dtype is Dtype.TIMESTAMP:
        return int(pd.Timestamp(value).value // 1000)
    return value


def query_times(run: Run, entity: Entity, entity_id: str) -> list[int]:
    """Every event time; around each of the entity's events, every instant a value can change."""
    times = {e.event_time for e in run.events}
    for event in run.mine[(entity, entity_id)]:
        t = event.event_time
        times |= {t - 1, t, t + 1}
        for window in windows():
            floor = t - t % window.hop_us
            leaves = floor + window.length_us + window.hop_us  # the event leaves the window
            for boundary in (floor, floor + window.hop_us, leaves - window.hop_us, leaves):
                times |= {boundary - 1, boundary, boundary + 1}
    first, last = run.events[0].event_time, run.events[-1].event_time
    times |= {first - DAY_US, first - 1, last + 1, run.until - 1, run.until}
    return sorted(t for t in times if t <= run.until)


def historical(run: Run, entity: Entity, rows: list[tuple[str, int]]) -> list[tuple[Any, ...]]:
    """Feast's `get_historical_features` for `(entity_id, t)` rows, as value tuples."""
    entity_df = pd.DataFrame(
        {
            entity.join_key: [entity_id for entity_id, _ in rows],
            TIMESTAMP_COLUMN: pd.to_datetime([t for _, t in rows], unit="us", utc=True),
        }
    )
    table = run.store.get_historical_features(entity_df=entity_df, features=refs(entity)).to_arrow()
    assert table.num_rows == len(rows)
    assert table[entity.join_key].to_pylist() == [entity_id for entity_id, _ in rows]
    stamps = table[TIMESTAMP_COLUMN].cast(UTC_US).cast(pa.int64()).to_pylist()
    assert stamps == [t for _, t in rows]  # rows come back in entity_df order
    columns = []
    for spec in features_of(entity):
        column = table[spec.name]
        if spec.dtype is Dtype.TIMESTAMP:
            column = column.cast(UTC_US).cast(pa.int64())
        values = column.to_pylist()
        if spec.dtype is Dtype.STRINGS:
            values = [None if v is None else tuple(v) for v in values]
        columns.append(values)
    return list(zip(*columns, strict=True))


def check_history(run: Run) -> int:
    """Every entity at every query time equals the oracle; returns how many rows were checked."""
    checked = 0
    for entity, (rows, want) in run.history.items():
        got = historical(run, entity, rows)
        mismatches = [(row, g, w) for row, g, w in zip(rows, got, want, strict=True) if g != w]
        assert not mismatches, (entity.name, len(mismatches), mismatches[:5])
        checked += len(rows)
    return checked


def test_online_features_are_the_oracle_at_the_final_clock(run: Run) -> None:
    for entity in ENTITIES:
        ids = [entity_id for kind, entity_id in run.mine if kind == entity]
        rows = [{entity.join_key: entity_id} for entity_id in [*ids, "nobody"]]
        online = run.store.get_online_features(features=refs(entity), entity_rows=rows).to_dict()
        specs = features_of(entity)
        for n, entity_id in enumerate(ids):
            got = tuple(online_value(s.dtype, online[s.name][n]) for s in specs)
            assert got == run.expected(entity, entity_id, run.until), (entity.name, entity_id)
        assert all(online[s.name][len(ids)] is None for s in specs)


def files(settings: Settings) -> list[int]:
    return [len(DeltaTable(changelog_uri(settings, e)).file_uris()) for e in ENTITIES]


def test_historical_features_are_the_oracle_at_t_through_compaction(run: Run) -> None:
    checked = check_history(run)
    assert checked > 1000
    before = files(run.settings)
    compact_tables(run.settings)
    after = files(run.settings)
    assert after <= before
    if run.scenario.backfills > 1:
        assert after != before  # several files per day to compact, and old ones to vacuum
    assert check_history(run) == checked
    test_online_features_are_the_oracle_at_the_final_clock(run)


def test_before_its_first_change_an_entity_is_unknown(run: Run) -> None:
    for entity in ENTITIES:
        rows = []
        for (kind, entity_id), first in run.first_changes.items():
            if kind != entity or first is None:
                continue
            before = [t for t in query_times(run, entity, entity_id) if t < first]
            for t in before:  # the oracle's own answer there: no events at all
                assert run.expected(entity, entity_id, t) == _floor(entity, empty_values(entity))
            rows += [(entity_id, t) for t in before]
        nulls = tuple(None for _ in features_of(entity))
        assert rows
        assert all(got == nulls for got in historical(run, entity, rows))


def test_an_entity_whose_events_change_nothing_reads_the_same_online_and_offline(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = BASE + 10 * MINUTE_US
    common = {"proposal_id": "p-1", "job_id": "j-1", "client_id": "c-1"}
    events = [
        event(
            "proposal_submitted",
            t0,
            freelancer_id="f-1",
            bid_amount=10,
            cover_letter="hi",
            **common,
        ),
        event("proposal_action", t0 + 1, freelancer_id="f-2", action="viewed", **common),
    ]
    run_backfill(settings, write_events(tmp_path / "events.jsonl", events))
    repo = copy_feast_repo(tmp_path / "repo")
    ensure_registry(settings, repo)
    monkeypatch.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BESTMATCH_LAKE", settings.lake)
    store = FeatureStore(repo_path=str(repo))
    row = {FREELANCER.join_key: "f-2"}
    online = store.get_online_features(features=refs(FREELANCER), entity_rows=[row]).to_dict()
    online_values = tuple(online_value(s.dtype, online[s.name][0]) for s in features_of(FREELANCER))
    assert online_values == _floor(FREELANCER, oracle.vector(FREELANCER, events, "f-2", t0 + 1))
    run = Run(Scenario(0, 2, 1, None), settings, events, t0 + 1, store, {})
    assert historical(run, FREELANCER, [("f-2", t0 + 1)]) == [online_values]
