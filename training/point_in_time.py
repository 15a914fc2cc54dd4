"""Point-in-time feature values from the Delta change logs: the fast path to a training set.

It returns what Feast's `get_historical_features` returns through `DeltaChangelogOfflineStore`
(the test suite checks it value for value): for each entity row and each entity, the change-log
row with the greatest `event_timestamp <= t`, ties to the greatest `created`; an entity row with no
such row keeps its place, with nulls. It is faster because it does less:

- each table is read once, by polars' native Delta reader (which follows the Delta log), only the
  columns asked for and only rows up to the newest entity time;
- the as-of join runs on a light frame (key, time, created, row number): polars' backward
  `join_asof` takes *the last* right row whose time is `<= t`, so sorting by (time, created) makes
  that row the tie-break winner with no dedupe pass, and the heavy feature columns (skill lists)
  are never sorted, only gathered once by the matched row numbers;
- entity rows already in time order (the usual case: proposals read from an event log) are not
  re-sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from features.offline_layout import (
    CREATED_COLUMN,
    TIMESTAMP_COLUMN,
    changelog_schema,
    changelog_uri,
)
from features.settings import Settings
from features.specs import ENTITIES, FEATURES, Entity, features_of

_UTC_US = pl.Datetime("us", "UTC")
_ROW = "__pit_row"
_MATCH = "__pit_match"
_TS = "__pit_ts"


def historical_features(
    settings: Settings,
    entity_rows: pl.DataFrame,
    features: Sequence[str] | None = None,
    *,
    timestamp: str = TIMESTAMP_COLUMN,
) -> pl.DataFrame:
    """`entity_rows` (join keys and `timestamp`) with each feature's value as of its timestamp.

    `features` defaults to every feature; the join key of each entity they belong to must be a
    column of `entity_rows`. Rows keep their order; feature columns follow in spec order.
    """
    wanted = set(features) if features is not None else {f.name for f in FEATURES}
    unknown = wanted - {f.name for f in FEATURES}
    if unknown:
        msg = f"historical_features: unknown features {sorted(unknown)}"
        raise ValueError(msg)
    times = entity_rows[timestamp].cast(_UTC_US)
    in_order = times.is_sorted()
    left = pl.DataFrame({_TS: times})
    order = None if in_order else left[_TS].arg_sort()
    if order is not None:
        left = left[order]
    until = left[_TS].max()
    assert until is None or isinstance(until, datetime)
    values: list[pl.DataFrame] = []
    for entity in ENTITIES:
        names = [f.name for f in features_of(entity) if f.name in wanted]
        if not names:
            continue
        if entity.join_key not in entity_rows.columns:
            msg = f"historical_features: entity rows need a {entity.join_key} column for {names}"
            raise ValueError(msg)
        keys = entity_rows[entity.join_key].cast(pl.String)
        left_keys = left.with_columns(keys if order is None else keys[order])
        values.append(_values_at(settings, entity, names, left_keys, until))
    joined = pl.concat(values, how="horizontal") if values else pl.DataFrame()
    if order is not None:
        joined = joined[order.arg_sort()]  # back to the entity rows' order
    return pl.concat([entity_rows, joined], how="horizontal")


def read_changelog(
    settings: Settings, entity: Entity, names: Sequence[str], until: datetime | None = None
) -> pl.DataFrame:
    """An entity's change-log rows (join key, times, the named features) up to `until`."""
    from deltalake import DeltaTable

    columns = [entity.join_key, TIMESTAMP_COLUMN, CREATED_COLUMN, *names]
    uri = changelog_uri(settings, entity)
    options = settings.storage_options
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        schema = changelog_schema(entity)
        empty = pl.from_arrow(schema.empty_table().select(columns))
        assert isinstance(empty, pl.DataFrame)
        return empty
    scan = pl.scan_delta(uri, storage_options=options).select(columns)
    if until is not None:
        scan = scan.filter(pl.col(TIMESTAMP_COLUMN) <= until)
    return scan.collect()


def _values_at(
    settings: Settings,
    entity: Entity,
    names: list[str],
    left: pl.DataFrame,
    until: datetime | None,
) -> pl.DataFrame:
    """Per row of `left` (`_TS` sorted, and the join key), the named features as of `_TS`."""
    log = read_changelog(settings, entity, names, until)
    key = entity.join_key
    light = (
        log.select(
            pl.col(key).cast(pl.String),
            pl.col(TIMESTAMP_COLUMN).cast(_UTC_US).alias(_TS + "_r"),
            pl.col(CREATED_COLUMN),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias(_MATCH),
        )
        .sort([_TS + "_r", CREATED_COLUMN])
        .drop(CREATED_COLUMN)
    )
    matched = left.join_asof(
        light,
        left_on=_TS,
        right_on=_TS + "_r",
        by=key,
        strategy="backward",
        check_sortedness=False,
    )[_MATCH]
    return log.select(pl.col(name).gather(matched) for name in names)
