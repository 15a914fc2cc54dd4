"""`bestmatch consistency`: were the features served the features training would have used?

The serving log (`<lake>/serving_log`) holds, per served proposal, the store values the service
read from Redis. This check recomputes each of them point in time, as of the moment it was served,
from the Delta change logs through `training.point_in_time.historical_features` (the builder
training sets come from), and compares them feature by feature.

Per entity kind (freelancer, job, client) it checks each distinct `(entity id, served_at)` once:

- both present: equal, or a mismatch (strings, skill lists, bools and ints exactly; floats within
  a relative `tolerance`, `|served - offline| <= tolerance * max(|served|, |offline|)`);
- served missing, offline present / offline missing, served present: a one-sided missing value;
- both missing (an entity neither store knows): consistent, counted apart.

Relative error is `|served - offline| / max(|served|, |offline|)` (0 when both are 0), over the
numeric features' rows where both sides are present. Degraded answers (the store was not read)
carry no store values: they are counted, not compared. A client the request did not name was not
looked up: not compared either.

It also rebuilds the model's input (`features.ranking.model_frame`) for each logged proposal from
the served values and from the offline values, with the logged bid and the request's own rows as
its group, and compares it column by column: the impact of any store difference on what the
model saw. The log keeps no cover letter, so the two cover-letter features are left out.

Served values are compared with the change log as of the change the service read: the serving
log keeps, per entity, the stamp of the values it served (`_us:<view>` in Redis), so a value
served in the moment between an event and its arrival in Redis (the flow's freshness lag) is
still compared with the right row. Such a value is counted apart as `stale`: consistent as read,
though the change log holds a newer change at `served_at`. That is lag, not skew: it does not make
the verdict inconsistent, but it is the share of answers that a fresher store would have changed.
A log written before stamps were kept is compared as of `served_at`.

On a healthy platform every count but `rows` (and `stale`) is zero: the online store holds exactly
what the change log says it held (CONTRACT §2). One thing to know when reading it: a running
stream writes its newest instant's change-log rows only once its clock moves past it, or once the
bus has been quiet for a second (flows/sources.py); Redis has them at once. Values served from
that instant show as mismatches until then: check a quiet stream, or with `--since` / later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import polars as pl

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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SERVED_AT = "served_at"
# `serving.serving_log.TABLE`, not imported: `serving` loads the whole service (LightGBM, MLflow:
# seconds) and this check reads only a Delta table. The tests hold the two names equal.
SERVING_LOG_TABLE = "serving_log"
SKIPPED_MODEL_INPUTS: tuple[str, ...] = ("cover_letter_chars", "cover_letter_job_skills")
"""Model inputs not rebuilt: they read the cover letter, which the serving log does not keep."""
EXAMPLES_PER_FEATURE = 3
_OFFLINE = "__offline_"  # offline, as of the change the service read
_NOW = "__now_"  # offline, as of served_at
_NUMERIC = (Dtype.INT, Dtype.FLOAT, Dtype.BOOL)
_UTC_US = pl.Datetime("us", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FeatureCheck:
    """How one feature (or one model input) compared, served against offline."""

    name: str
    entity: str  # freelancer, job, client; "model input" for model columns
    rows: int  # distinct (entity, served_at) rows checked; proposals for model inputs
    both_missing: int
    mismatches: int  # both present, not equal
    served_missing: int  # served null, offline has a value
    offline_missing: int  # served a value the change log did not hold
    mean_relative_error: float | None  # numeric only, over rows with both present
    max_relative_error: float | None
    stale: int = 0  # consistent as read, but a newer change existed at served_at (flow lag)

    @property
    def problems(self) -> int:
        return self.mismatches + self.served_missing + self.offline_missing

    @property
    def problem_rate(self) -> float:
        return self.problems / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entity": self.entity,
            "rows": self.rows,
            "both_missing": self.both_missing,
            "mismatches": self.mismatches,
            "served_missing": self.served_missing,
            "offline_missing": self.offline_missing,
            "problem_rate": self.problem_rate,
            "mean_relative_error": self.mean_relative_error,
            "max_relative_error": self.max_relative_error,
            "stale": self.stale,
        }


@dataclass(frozen=True, slots=True)
class Example:
    """One disagreeing value, with what is needed to look it up again."""

    feature: str
    entity: str
    entity_id: str
    served_at: str  # RFC 3339, UTC, µs
    kind: str  # "mismatch", "served missing", "offline missing"
    served: Any
    offline: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "entity": self.entity,
            "entity_id": self.entity_id,
            "served_at": self.served_at,
            "kind": self.kind,
            "served": self.served,
            "offline": self.offline,
        }


@dataclass(frozen=True)
class ConsistencyReport:
    table: str  # the serving log's URI
    since_us: int | None
    tolerance: float
    logged_rows: int  # proposals in the log (since `since_us`)
    degraded_rows: int  # of which answered degraded: not compared
    requests: int  # non-degraded requests compared
    entity_rows: dict[str, int]  # distinct (entity, served_at) checked per entity kind
    clients_not_asked: int  # non-degraded proposals whose request named no client
    first_served_us: int | None
    last_served_us: int | None
    features: tuple[FeatureCheck, ...]
    model_inputs: tuple[FeatureCheck, ...]
    examples: tuple[Example, ...]

    @property
    def rows_compared(self) -> int:
        return sum(self.entity_rows.values())

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features)

    @property
    def served_missing(self) -> int:
        return sum(f.served_missing for f in self.features)

    @property
    def offline_missing(self) -> int:
        return sum(f.offline_missing for f in self.features)

    @property
    def stale(self) -> int:
        return sum(f.stale for f in self.features)

    @property
    def model_input_mismatches(self) -> int:
        return sum(f.problems for f in self.model_inputs)

    @property
    def healthy(self) -> bool:
        """No mismatch and no one-sided missing value, in the store features or model inputs."""
        problems = self.mismatches + self.served_missing + self.offline_missing
        return problems == 0 and self.model_input_mismatches == 0

    @property
    def verdict(self) -> str:
        if self.rows_compared == 0:
            return "no rows"
        return "healthy" if self.healthy else "inconsistent"

    def rows(self) -> list[tuple[str, str]]:
        """The summary, as (label, value) pairs for a two-column table."""
        span = "—"
        if self.first_served_us is not None and self.last_served_us is not None:
            span = f"{_iso(self.first_served_us)} → {_iso(self.last_served_us)}"
        per_entity = ", ".join(f"{n} {k}" for k, n in self.entity_rows.items())
        return [
            ("verdict", self.verdict),
            ("serving log", self.table),
            ("served", span),
            ("logged proposals", f"{self.logged_rows:,}"),
            ("degraded (not compared)", f"{self.degraded_rows:,}"),
            ("requests compared", f"{self.requests:,}"),
            ("entity rows compared", f"{self.rows_compared:,} ({per_entity})"),
            ("clients not named", f"{self.clients_not_asked:,}"),
            ("mismatches", f"{self.mismatches:,}"),
            ("served missing, offline present", f"{self.served_missing:,}"),
            ("offline missing, served present", f"{self.offline_missing:,}"),
            ("model input differences", f"{self.model_input_mismatches:,}"),
            ("stale (a newer change at served_at: lag)", f"{self.stale:,}"),
            ("not rebuilt (no cover letter)", ", ".join(SKIPPED_MODEL_INPUTS)),
            ("float tolerance (relative)", f"{self.tolerance:g}"),
        ]

    def feature_table(self, *, model_inputs: bool = False) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the per-feature table (or the per-model-input table)."""
        header = [
            "feature",
            "entity",
            "rows",
            "mismatches",
            "served missing",
            "offline missing",
            "both missing",
            "mean rel. error",
            "stale",
        ]
        checks = self.model_inputs if model_inputs else self.features
        body = [
            [
                c.name,
                c.entity,
                f"{c.rows:,}",
                f"{c.mismatches:,}",
                f"{c.served_missing:,}",
                f"{c.offline_missing:,}",
                f"{c.both_missing:,}",
                "—" if c.mean_relative_error is None else f"{c.mean_relative_error:.3g}",
                f"{c.stale:,}",
            ]
            for c in checks
        ]
        return header, body

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able (for `--json` and the demo's HTML report)."""
        return {
            "verdict": self.verdict,
            "healthy": self.healthy,
            "table": self.table,
            "since": None if self.since_us is None else _iso(self.since_us),
            "tolerance": self.tolerance,
            "served_from": None if self.first_served_us is None else _iso(self.first_served_us),
            "served_to": None if self.last_served_us is None else _iso(self.last_served_us),
            "logged_rows": self.logged_rows,
            "degraded_rows": self.degraded_rows,
            "requests": self.requests,
            "entity_rows": dict(self.entity_rows),
            "clients_not_asked": self.clients_not_asked,
            "totals": {
                "rows": self.rows_compared,
                "mismatches": self.mismatches,
                "served_missing": self.served_missing,
                "offline_missing": self.offline_missing,
                "model_input_differences": self.model_input_mismatches,
                "stale": self.stale,
            },
            "features": [f.to_dict() for f in self.features],
            "model_inputs": [f.to_dict() for f in self.model_inputs],
            "skipped_model_inputs": list(SKIPPED_MODEL_INPUTS),
            "examples": [e.to_dict() for e in self.examples],
        }


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
    if not DeltaTable.is_deltatable(uri):
        msg = (
            f"no serving log at {uri}: serve some requests with logging on "
            "(BESTMATCH_SERVE_LOG_RATE > 0) first"
        )
        raise StoreError(msg)
    scan = pl.scan_delta(uri)
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
                served_at=_iso(_micros(row[SERVED_AT])),
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


def consistency_figure(report: ConsistencyReport) -> Figure:
    """Per store feature: the share of rows that disagree, and the mean relative error."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    checks = list(report.features)[::-1]  # spec order, top to bottom
    names = [c.name for c in checks]
    figure = Figure(figsize=(10, 0.26 * len(names) + 1.6), layout="constrained")
    FigureCanvasAgg(figure)
    rate_axes, error_axes = figure.subplots(1, 2, sharey=True)
    rates = [100 * c.problem_rate for c in checks]
    colors = ["#c0392b" if c.problems else "#2e8b57" for c in checks]
    rate_axes.barh(names, rates, color=colors)
    rate_axes.set_xlabel("rows that disagree (%)")
    rate_axes.set_xlim(0, max(1.0, *rates) * 1.1 if rates else 1.0)
    errors = [c.mean_relative_error or 0.0 for c in checks]
    error_axes.barh(names, errors, color="#3b75af")
    error_axes.set_xlabel("mean relative error (numeric features)")
    if not any(errors):
        error_axes.set_xlim(0, 1e-9)
    figure.suptitle(
        f"Serving vs offline, point in time: {report.verdict} "
        f"({report.rows_compared:,} entity rows, {report.mismatches:,} mismatches, "
        f"{report.served_missing + report.offline_missing:,} one-sided missing)"
    )
    return figure


def _iso(stamp_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=stamp_us)).isoformat().replace("+00:00", "Z")


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _plain(value: Any) -> Any:
    """A value as JSON takes it."""
    if isinstance(value, pl.Series):
        return value.to_list()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
