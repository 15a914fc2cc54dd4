"""The offline store's layout: one Delta change-log table per entity.

A table holds a row whenever an entity's values change, stamped with the time of the change
(docs/contract.md §2), so the latest row with `event_timestamp <= t` is the value at `t`.
Columns, in order: the join key, `event_timestamp`, `created` (processing time; breaks ties
between rows with the same `event_timestamp`, later wins), every feature of `features_of(entity)`
in spec order, and
`day` (`YYYY-MM-DD` of `event_timestamp`, the partition column).

TIMESTAMP features are stored at whole seconds: Feast's `UnixTimestamp` online value holds seconds,
and the change log must hold exactly what the online store held (`online_layout` floors the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from features.specs import ENTITIES, Dtype, Entity, features_of, view_name

if TYPE_CHECKING:
    from features.settings import Settings

TIMESTAMP_COLUMN = "event_timestamp"
CREATED_COLUMN = "created"
PARTITION_COLUMN = "day"
CHANGELOG_DIR = "changelog"
SECOND_US = 1_000_000

UTC_US = pa.timestamp("us", tz="UTC")
ARROW_TYPES: dict[Dtype, pa.DataType] = {
    Dtype.INT: pa.int64(),
    Dtype.FLOAT: pa.float64(),
    Dtype.BOOL: pa.bool_(),
    Dtype.STRING: pa.string(),
    Dtype.STRINGS: pa.list_(pa.string()),
    Dtype.TIMESTAMP: UTC_US,
}

ChangeRow = tuple[str, int, Sequence[Any]]
"""`(entity_id, stamp_us, values)`: values in `features_of(entity)` order, TIMESTAMPs as int µs."""


@cache
def changelog_schema(entity: Entity) -> pa.Schema:
    """The Arrow schema of an entity's change-log table."""
    return pa.schema(
        [
            pa.field(entity.join_key, pa.string(), nullable=False),
            pa.field(TIMESTAMP_COLUMN, UTC_US, nullable=False),
            pa.field(CREATED_COLUMN, UTC_US, nullable=False),
            *(pa.field(spec.name, ARROW_TYPES[spec.dtype]) for spec in features_of(entity)),
            pa.field(PARTITION_COLUMN, pa.string(), nullable=False),
        ]
    )


def changelog_table_path(entity: Entity) -> str:
    """The table's path relative to the lake root (what the Feast source names)."""
    return f"{CHANGELOG_DIR}/{view_name(entity)}"


def changelog_uri(settings: Settings, entity: Entity) -> str:
    """The URI of an entity's change-log table in the configured lake."""
    return settings.lake_path(CHANGELOG_DIR, view_name(entity))


def floor_seconds(stamp_us: int) -> int:
    """A TIMESTAMP feature value at the precision both stores keep."""
    return stamp_us - stamp_us % SECOND_US


def record_values(entity: Entity, record: dict[str, Any]) -> tuple[Any, ...]:
    """A change-log row read back as a dict (polars `iter_rows(named=True)`) as the values the
    online store holds: `features_of(entity)` order, lists as tuples, TIMESTAMPs as int µs."""
    values = []
    for spec in features_of(entity):
        value = record[spec.name]
        if value is not None and spec.dtype is Dtype.STRINGS:
            value = tuple(value)
        elif value is not None and spec.dtype is Dtype.TIMESTAMP:
            value = int(value.timestamp() * SECOND_US)
        values.append(value)
    return tuple(values)


DAY_US = 86_400 * SECOND_US


def day_of(stamp_us: int) -> str:
    """The `day` partition value of a stamp (UTC), exact to the microsecond (integer days)."""
    return _day_name(stamp_us // DAY_US)


@lru_cache(maxsize=4096)
def _day_name(day: int) -> str:
    """A day's name, by its number since the epoch: formatted once per day, not per stamp."""
    return datetime.fromtimestamp(day * DAY_US // SECOND_US, tz=UTC).strftime("%Y-%m-%d")


def changelog_table(
    entity: Entity, rows: Iterable[ChangeRow], created_us: int | None = None
) -> pa.Table:
    """Change rows as an Arrow table in the entity's change-log schema.

    `created_us` stamps every row (the writer's processing time); None uses each row's own stamp.
    Readers keep, per `(entity_id, event_timestamp)`, the row with the greatest `created`. Within
    a batch the last row for an id and stamp wins (as in the online store), so only it is kept.
    """
    schema = changelog_schema(entity)
    specs = features_of(entity)
    rows = _last_per_stamp(list(rows))
    ids = [row[0] for row in rows]
    stamps = [row[1] for row in rows]
    created = stamps if created_us is None else [created_us] * len(rows)
    columns: list[pa.Array] = [
        pa.array(ids, pa.string()),
        pa.array(stamps, UTC_US),
        pa.array(created, UTC_US),
    ]
    for row in rows:
        if len(row[2]) != len(specs):
            msg = f"{view_name(entity)}: expected {len(specs)} values, got {len(row[2])}"
            raise ValueError(msg)
    values_by_feature = list(zip(*(row[2] for row in rows), strict=True)) or [() for _ in specs]
    for spec, values in zip(specs, map(list, values_by_feature), strict=True):
        if spec.dtype is Dtype.TIMESTAMP:
            values = [None if v is None else floor_seconds(v) for v in values]
        columns.append(pa.array(values, ARROW_TYPES[spec.dtype]))
    days = _days(stamps)
    columns.append(pa.array(days, pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


def _last_per_stamp(rows: list[ChangeRow]) -> list[ChangeRow]:
    last = {(row[0], row[1]): index for index, row in enumerate(rows)}
    if len(last) == len(rows):
        return rows
    return [rows[index] for index in sorted(last.values())]


def _days(stamps: list[int]) -> list[str]:
    # Many rows share a day: format each distinct day once.
    by_day: dict[int, str] = {}
    out = []
    for stamp in stamps:
        key = stamp // (86_400 * SECOND_US)
        day = by_day.get(key)
        if day is None:
            day = by_day[key] = day_of(stamp)
        out.append(day)
    return out


def create_changelog_tables(settings: Settings) -> None:
    """Create every entity's empty change-log table where none exists yet."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import CommitFailedError

    options = settings.storage_options
    for entity in ENTITIES:
        uri = changelog_uri(settings, entity)
        if DeltaTable.is_deltatable(uri, storage_options=options):
            continue
        empty = changelog_schema(entity).empty_table()
        try:
            write_deltalake(
                uri, empty, partition_by=[PARTITION_COLUMN], mode="append", storage_options=options
            )
        except CommitFailedError:
            # another writer (a worker building its sink partition) created it first
            if not DeltaTable.is_deltatable(uri, storage_options=options):
                raise
