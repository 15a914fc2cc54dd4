"""The consistency check itself: the serving log read, each served value recomputed point in
time from the change logs, and compared (see the package's docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from typing import Any

import polars as pl

from bestmatch.consistency.report import (
    SKIPPED_MODEL_INPUTS,
    ConsistencyReport,
    Example,
    FeatureCheck,
    iso_time,
)
from features.errors import StoreError
from features.offline_layout import TIMESTAMP_COLUMN
from features.ranking import (
    BID_COLUMN,
    LETTER_COLUMN,
    MODEL_FEATURES,
    REQUEST_COLUMN,
    STORE_FEATURES,
    model_frame,
)
from features.settings import Settings
from features.specs import ENTITIES, FEATURES_BY_NAME, Dtype, Entity

SERVED_AT = "served_at"
# `serving.serving_log.TABLE`, not imported: `serving` loads the whole service (LightGBM, MLflow:
# seconds) and this check reads only a Delta table. The tests hold the two names equal.
SERVING_LOG_TABLE = "serving_log"
EXAMPLES_PER_FEATURE = 3
_OFFLINE = "__offline_"  # offline, as of the change the service read
_NOW = "__now_"  # offline, as of served_at
_NUMERIC = (Dtype.INT, Dtype.FLOAT, Dtype.BOOL)
_UTC_US = pl.Datetime("us", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_consistency(
    settings: Settings, *, since_us: int | None = None, tolerance: float = 1e-9
) -> ConsistencyReport:
    """Compare the logged serving-time feature values with their point-in-time offline values."""
    from training.point_in_time import historical_features

    if tolerance < 0 or not math.isfinite(tolerance):
        msg = f"tolerance must be a finite number >= 0, got {tolerance}"
        raise ValueError(msg)
    uri, log = read_serving_log(settings, since_us)
    ok = log.filter(~pl.col("degraded"))
    wanted = [n for n in STORE_FEATURES if n in ok.columns]
    # As served: each entity as of the change the service read (its logged stamp; a log from
    # before stamps were kept: as of served_at). As of served_at: what a store with no lag
    # would have held then. Served values are compared with the first; the second only tells
    # how many were stale.
    as_served, as_of_now = [], []
    for entity in ENTITIES:
        names = [n for n in wanted if FEATURES_BY_NAME[n].entity == entity]
        if not names:
            continue
        stamp = f"{entity.name}_stamp"
        when = pl.col(SERVED_AT)
        if stamp in ok.columns:
            when = pl.coalesce(pl.col(stamp), when)
        for moment, out in ((when, as_served), (pl.col(SERVED_AT), as_of_now)):
            rows = ok.select(pl.col(entity.join_key), moment.alias(TIMESTAMP_COLUMN))
            prefix = _OFFLINE if out is as_served else _NOW
            out.append(
                historical_features(settings, rows, names).select(
                    pl.col(n).alias(prefix + n) for n in names
                )
            )
    both = pl.concat([ok, *as_served, *as_of_now], how="horizontal")

    features: list[FeatureCheck] = []
    examples: list[list[Example]] = []
    checked: dict[str, int] = {}
    for entity in ENTITIES:
        names = [n for n in wanted if FEATURES_BY_NAME[n].entity == entity]
        rows = _distinct(both, entity, names)
        checked[entity.name] = rows.height
        for name in names:
            check, bad = _compare(rows, name, entity.name, tolerance)
            features.append(check)
            examples.append(_examples(bad, name, entity))

    times = log[SERVED_AT].dt.epoch("us")
    return ConsistencyReport(
        table=uri,
        since_us=since_us,
        tolerance=tolerance,
        logged_rows=log.height,
        degraded_rows=log.height - ok.height,
        requests=ok.select(pl.struct(SERVED_AT, "job_id").n_unique()).item() if ok.height else 0,
        entity_rows=checked,
        clients_not_asked=ok["client_id"].null_count(),
        first_served_us=times.min(),  # type: ignore[arg-type]
        last_served_us=times.max(),  # type: ignore[arg-type]
        features=tuple(features),
        model_inputs=_model_inputs(both, wanted, tolerance),
        # Each disagreeing feature's first example before any feature's second.
        examples=tuple(e for round_ in zip_longest(*examples) for e in round_ if e is not None),
    )


def read_serving_log(settings: Settings, since_us: int | None = None) -> tuple[str, pl.DataFrame]:
    """The serving log's URI and its rows served at or after `since_us`, in served order."""
    from deltalake import DeltaTable

    uri = settings.lake_path(SERVING_LOG_TABLE)
    options = settings.storage_options
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        msg = (
            f"no serving log at {uri}: serve some requests with logging on "
            "(BESTMATCH_SERVE_LOG_RATE > 0) first"
        )
        raise StoreError(msg)
    scan = pl.scan_delta(uri, storage_options=options)
    if since_us is not None:
        since = pl.lit(since_us).cast(_UTC_US)
        scan = scan.filter(pl.col(SERVED_AT) >= since)
    return uri, scan.collect().sort(SERVED_AT, maintain_order=True)


def _distinct(both: pl.DataFrame, entity: Entity, names: Sequence[str]) -> pl.DataFrame:
    """One row per (entity id, served_at): an entity read once per request, compared once."""
    key = entity.join_key
    return (
        both.filter(pl.col(key).is_not_null())
        .select(key, SERVED_AT, *names, *(_OFFLINE + n for n in names), *(_NOW + n for n in names))
        .unique(subset=[key, SERVED_AT], keep="first", maintain_order=True)
    )


def _compare(
    rows: pl.DataFrame, name: str, entity: str, tolerance: float, dtype: Dtype | None = None
) -> tuple[FeatureCheck, pl.DataFrame]:
    """The counts for one column, and the rows that disagree (with a `__kind` column)."""
    dtype = dtype or FEATURES_BY_NAME[name].dtype
    served, offline = pl.col(name), pl.col(_OFFLINE + name)
    present = served.is_not_null() & offline.is_not_null()
    numeric = dtype in _NUMERIC
    if numeric:
        s, o = served.cast(pl.Float64), offline.cast(pl.Float64)
        scale = pl.max_horizontal(s.abs(), o.abs())
        diff = (s - o).abs()
        relative = pl.when(diff == 0).then(0.0).otherwise(diff / scale)
        bound = tolerance if dtype is Dtype.FLOAT else 0.0
        differs = ~((diff <= bound * scale) | (s.is_nan() & o.is_nan()))
    else:
        relative = pl.lit(None, pl.Float64)
        differs = served != offline
    kind = (
        pl.when(served.is_null() & offline.is_not_null())
        .then(pl.lit("served missing"))
        .when(served.is_not_null() & offline.is_null())
        .then(pl.lit("offline missing"))
        .when(present & differs)
        .then(pl.lit("mismatch"))
        .otherwise(None)
        .alias("__kind")
    )
    marked = rows.with_columns(kind, pl.when(present).then(relative).alias("__relative"))
    both_missing = marked.select((served.is_null() & offline.is_null()).sum()).item()
    by_kind = {
        row["__kind"]: row["count"]
        for row in marked["__kind"].value_counts().iter_rows(named=True)
        if row["__kind"] is not None
    }
    mean, worst = marked["__relative"].mean(), marked["__relative"].max()
    stale = 0
    if _NOW + name in rows.columns:  # consistent as read, though a newer change was logged
        newer = pl.col("__kind").is_null() & offline.ne_missing(pl.col(_NOW + name))
        stale = int(marked.select(newer.sum()).item())
    check = FeatureCheck(
        name=name,
        entity=entity,
        rows=rows.height,
        both_missing=int(both_missing),
        mismatches=by_kind.get("mismatch", 0),
        served_missing=by_kind.get("served missing", 0),
        offline_missing=by_kind.get("offline missing", 0),
        mean_relative_error=float(mean) if numeric and mean is not None else None,  # type: ignore[arg-type]
        max_relative_error=float(worst) if numeric and worst is not None else None,  # type: ignore[arg-type]
        stale=stale,
    )
    return check, marked.filter(pl.col("__kind").is_not_null())


def _examples(bad: pl.DataFrame, name: str, entity: Entity) -> list[Example]:
    out = []
    for row in bad.head(EXAMPLES_PER_FEATURE).iter_rows(named=True):
        out.append(
            Example(
                feature=name,
                entity=entity.name,
                entity_id=row[entity.join_key],
                served_at=iso_time(_micros(row[SERVED_AT])),
                kind=row["__kind"],
                served=_plain(row[name]),
                offline=_plain(row[_OFFLINE + name]),
            )
        )
    return out


def _model_inputs(
    both: pl.DataFrame, wanted: Sequence[str], tolerance: float
) -> tuple[FeatureCheck, ...]:
    """The model's input rebuilt from served and from offline values, compared column by column."""
    if not both.height or set(wanted) != set(STORE_FEATURES):
        return ()
    request = pl.concat_str(
        pl.col(SERVED_AT).dt.epoch("us").cast(pl.String), pl.col("job_id"), separator="|"
    )
    base = [request.alias(REQUEST_COLUMN), pl.col(BID_COLUMN), pl.lit("").alias(LETTER_COLUMN)]
    served = model_frame(both.select(*base, *STORE_FEATURES))
    offline = model_frame(
        both.select(*base, *(pl.col(_OFFLINE + n).alias(n) for n in STORE_FEATURES))
    )
    columns = [n for n in MODEL_FEATURES if n not in SKIPPED_MODEL_INPUTS]
    pairs = pl.concat(
        [served.select(columns), offline.select(pl.col(n).alias(_OFFLINE + n) for n in columns)],
        how="horizontal",
    )
    return tuple(
        _compare(pairs, name, "model input", tolerance, Dtype.FLOAT)[0] for name in columns
    )


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _plain(value: Any) -> Any:
    """A value as JSON takes it."""
    if isinstance(value, pl.Series):
        return value.to_list()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
