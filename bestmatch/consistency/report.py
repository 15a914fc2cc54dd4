"""What the consistency check found: per feature and model input, the counts and examples of
each kind of difference, a summary for the terminal, a JSON-able form, and a figure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SKIPPED_MODEL_INPUTS: tuple[str, ...] = ("cover_letter_chars", "cover_letter_job_skills")
"""Model inputs not rebuilt: they read the cover letter, which the serving log does not keep."""
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
            span = f"{iso_time(self.first_served_us)} → {iso_time(self.last_served_us)}"
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
            "since": None if self.since_us is None else iso_time(self.since_us),
            "tolerance": self.tolerance,
            "served_from": None if self.first_served_us is None else iso_time(self.first_served_us),
            "served_to": None if self.last_served_us is None else iso_time(self.last_served_us),
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


def iso_time(stamp_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=stamp_us)).isoformat().replace("+00:00", "Z")
