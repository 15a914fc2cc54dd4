"""The offline store: Delta change logs read point-in-time through Feast, through maintenance."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pytest
import redis
from deltalake import DeltaTable, write_deltalake
from feast import FeatureStore

from features.feast_repo import SERVICE_NAME
from features.offline_layout import (
    CREATED_COLUMN,
    PARTITION_COLUMN,
    TIMESTAMP_COLUMN,
    changelog_schema,
    changelog_table,
    changelog_uri,
    create_changelog_tables,
    day_of,
)
from features.online_layout import read_entities
from features.settings import Settings
from features.specs import ENTITIES, JOB, Dtype, Entity, features_of, view_name
from tests.test_online_layout import random_values

BASE_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR_US = 3_600_000_000


class Row(NamedTuple):
    entity_id: str
    stamp_us: int
    created_us: int
    values: tuple[Any, ...]


def write(settings: Settings, entity: Entity, rows: Sequence[Row], mode: str = "append") -> None:
    """One Delta commit per distinct `created` (the writer's processing time)."""
    uri = changelog_uri(settings, entity)
    for created in sorted({r.created_us for r in rows}, reverse=True):
        batch = [(r.entity_id, r.stamp_us, r.values) for r in rows if r.created_us == created]
        table = changelog_table(entity, batch, created)
        write_deltalake(uri, table, mode=mode, partition_by=[PARTITION_COLUMN])  # type: ignore[arg-type]
        mode = "append"


def oracle(rows: Sequence[Row], entity: Entity, entity_id: str, t_us: int) -> tuple[Any, ...]:
    """The value at t by brute force: the latest row at or before t, ties to the later `created`."""
    seen = [r for r in rows if r.entity_id == entity_id and r.stamp_us <= t_us]
    if not seen:
        return tuple(None for _ in features_of(entity))
    best = max(seen, key=lambda r: (r.stamp_us, r.created_us))
    return tuple(
        v - v % 1_000_000 if s.dtype is Dtype.TIMESTAMP and v is not None else v
        for s, v in zip(features_of(entity), best.values, strict=True)
    )


def from_arrow(dtype: Dtype, value: Any) -> Any:
    if value is None:
        return None
    if dtype is Dtype.STRINGS:
        return tuple(value)
    if dtype is Dtype.TIMESTAMP:
        return (value - datetime(1970, 1, 1, tzinfo=UTC)) // pd.Timedelta(microseconds=1)
    return value


def make_log(rng: random.Random) -> dict[Entity, list[Row]]:
    logs: dict[Entity, list[Row]] = {}
    for entity in ENTITIES:
        rows = []
        for n in range(4):
            entity_id = f"{entity.name}-{n}"
            stamp = BASE_US + rng.randrange(HOUR_US)
            for _ in range(rng.randint(1, 5)):
                rows.append(Row(entity_id, stamp, stamp + 1000, random_values(rng, entity)))
                stamp += rng.choice([1, 999_999, 25 * HOUR_US])  # also across day partitions
        # A second change at the same instant, written earlier but processed later: it wins.
        first = rows[0]
        rows.append(
            Row(first.entity_id, first.stamp_us, first.created_us + 5, random_values(rng, entity))
        )
        logs[entity] = rows
    return logs


def query_times(rows: Sequence[Row]) -> list[int]:
    stamps = {r.stamp_us for r in rows}
    return sorted(
        {s + d for s in stamps for d in (-1, 0, 1)} | {BASE_US - 1, BASE_US + 400 * HOUR_US}
    )


def check_history(store: FeatureStore, logs: dict[Entity, list[Row]], rng: random.Random) -> None:
    times = sorted({t for rows in logs.values() for t in query_times(rows)})
    ids = {e: sorted({r.entity_id for r in rows}) + ["nobody"] for e, rows in logs.items()}
    picks = [({e: rng.choice(ids[e]) for e in ENTITIES}, rng.choice(times)) for _ in range(300)]
    for entity in ENTITIES:  # every id at every time, whatever the other keys
        picks += [
            ({**{e: ids[e][0] for e in ENTITIES}, entity: i}, t) for i in ids[entity] for t in times
        ]
    entity_df = pd.DataFrame(
        {
            **{e.join_key: [p[0][e] for p in picks] for e in ENTITIES},
            TIMESTAMP_COLUMN: pd.to_datetime([p[1] for p in picks], unit="us", utc=True),
        }
    )
    service = store.get_feature_service(SERVICE_NAME)
    result = store.get_historical_features(entity_df=entity_df, features=service).to_arrow()
    assert result.num_rows == len(picks)  # no entity row is dropped, whatever it matched
    got = result.to_pylist()
    for (chosen, t_us), row in zip(picks, got, strict=True):
        assert row[TIMESTAMP_COLUMN] == datetime.fromtimestamp(t_us / 1e6, tz=UTC).replace(
            microsecond=t_us % 1_000_000
        )
        for entity in ENTITIES:
            entity_id = chosen[entity]
            assert row[entity.join_key] == entity_id  # rows come back in entity_df order
            values = tuple(from_arrow(s.dtype, row[s.name]) for s in features_of(entity))
            assert values == oracle(logs[entity], entity, entity_id, t_us), (entity_id, t_us)


def test_historical_values_are_the_values_at_t_through_maintenance(
    feast_store: FeatureStore,
    settings: Settings,
) -> None:
    rng = random.Random(42)
    logs = make_log(rng)
    for entity, rows in logs.items():
        write(settings, entity, rows)
    check_history(feast_store, logs, rng)

    # Compaction + vacuum rewrite every file; the log decides what is live.
    for entity in ENTITIES:
        table = DeltaTable(changelog_uri(settings, entity))
        table.optimize.compact()
        table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    check_history(feast_store, logs, rng)

    # A delete, then an overwrite: the removed rows are gone from every answer.
    victim = logs[ENTITIES[0]][0]
    DeltaTable(changelog_uri(settings, ENTITIES[0])).delete(
        f"{ENTITIES[0].join_key} = '{victim.entity_id}' AND {TIMESTAMP_COLUMN} > "
        f"'{datetime.fromtimestamp(victim.stamp_us / 1e6, tz=UTC).isoformat()}'"
    )
    logs[ENTITIES[0]] = [
        r
        for r in logs[ENTITIES[0]]
        if r.entity_id != victim.entity_id or r.stamp_us <= victim.stamp_us
    ]
    kept = [r for r in logs[JOB] if r.entity_id != "job-1"]
    write(settings, JOB, kept, mode="overwrite")
    logs[JOB] = kept
    check_history(feast_store, logs, rng)


def test_missing_tables_read_as_nulls(feast_store: FeatureStore, settings: Settings) -> None:
    entity_df = pd.DataFrame(
        {
            "job_id": ["j-1"],
            TIMESTAMP_COLUMN: [datetime(2026, 1, 1, tzinfo=UTC)],
        }
    )
    refs = [f"job_features:{s.name}" for s in features_of(JOB)]
    result = feast_store.get_historical_features(entity_df=entity_df, features=refs).to_arrow()
    assert result.to_pylist() == [
        {"job_id": "j-1", TIMESTAMP_COLUMN: entity_df[TIMESTAMP_COLUMN][0]}
        | {s.name: None for s in features_of(JOB)}
    ]
    create_changelog_tables(settings)
    create_changelog_tables(settings)  # idempotent
    result = feast_store.get_historical_features(entity_df=entity_df, features=refs).to_arrow()
    assert all(result[s.name].null_count == 1 for s in features_of(JOB))


def test_changelog_table_follows_the_schema() -> None:
    rng = random.Random(3)
    rows = [
        ("j-1", BASE_US + 1_234_567, random_values(rng, JOB)),
        ("j-2", BASE_US - 1, random_values(rng, JOB)),
    ]
    table = changelog_table(JOB, rows)
    schema = changelog_schema(JOB)
    assert table.schema == schema
    assert schema.names == [
        JOB.join_key,
        TIMESTAMP_COLUMN,
        CREATED_COLUMN,
        *(s.name for s in features_of(JOB)),
        PARTITION_COLUMN,
    ]
    assert table[PARTITION_COLUMN].to_pylist() == ["2026-01-01", "2025-12-31"]
    assert table[CREATED_COLUMN] == table[TIMESTAMP_COLUMN]
    posted = [v[2][-1] for v in rows]
    assert table["job_posted_at"].cast(pa.int64()).to_pylist() == [
        None if p is None else p - p % 1_000_000 for p in posted
    ]
    assert changelog_table(JOB, [], created_us=5).num_rows == 0
    assert changelog_table(JOB, rows, created_us=5)[CREATED_COLUMN].cast(
        pa.int64()
    ).to_pylist() == [5, 5]
    assert day_of(BASE_US) == "2026-01-01"
    # the day of a stamp is exact to the microsecond, before and after the epoch
    midnight = 1_795_651_200_000_000  # 2026-11-26T00:00:00Z
    assert (day_of(midnight - 1), day_of(midnight)) == ("2026-11-25", "2026-11-26")
    assert (day_of(-1), day_of(0)) == ("1969-12-31", "1970-01-01")
    # Two changes at one instant in one batch: the later one is the value at that instant.
    twice = changelog_table(JOB, [rows[0], ("j-1", rows[0][1], rows[1][2]), rows[1]])
    assert twice.num_rows == 2
    assert twice["job_category"].to_pylist() == [rows[1][2][7], rows[1][2][7]]
    with pytest.raises(ValueError):
        changelog_table(JOB, [("j-1", BASE_US, (1, 2))])


def test_materialize_rebuilds_the_online_store_from_the_change_log(
    feast_store: FeatureStore,
    settings: Settings,
) -> None:
    rng = random.Random(9)
    rows = [
        Row("j-1", BASE_US, BASE_US, random_values(rng, JOB)),
        Row("j-1", BASE_US + HOUR_US, BASE_US + HOUR_US, random_values(rng, JOB)),
        Row("j-2", BASE_US + 5, BASE_US + 5, random_values(rng, JOB)),
    ]
    write(settings, JOB, rows)
    start, end = (
        datetime.fromtimestamp(us / 1e6, tz=UTC) for us in (BASE_US - 1, BASE_US + 2 * HOUR_US)
    )
    feast_store.materialize(start, end, feature_views=[view_name(JOB)])
    client = redis.Redis.from_url(settings.redis_url)
    got = read_entities(client, settings.feast_project, [(JOB, "j-1"), (JOB, "j-2")])
    assert got == [oracle(rows, JOB, i, BASE_US + 2 * HOUR_US) for i in ("j-1", "j-2")]


def test_full_feature_names(feast_store: FeatureStore, settings: Settings) -> None:
    rows = [Row("j-1", BASE_US, BASE_US, random_values(random.Random(2), JOB))]
    write(settings, JOB, rows)
    entity_df = pd.DataFrame(
        {"job_id": ["j-1"], TIMESTAMP_COLUMN: [datetime(2026, 1, 2, tzinfo=UTC)]}
    )
    refs = [f"{view_name(JOB)}:{s.name}" for s in features_of(JOB)]
    job = feast_store.get_historical_features(
        entity_df=entity_df, features=refs, full_feature_names=True
    )
    result = job.to_arrow().to_pylist()[0]
    assert tuple(
        from_arrow(s.dtype, result[f"{view_name(JOB)}__{s.name}"]) for s in features_of(JOB)
    ) == oracle(rows, JOB, "j-1", BASE_US + 1)
