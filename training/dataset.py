"""The training set: one row per proposal, grouped by job, features as of the ranking moment.

`build_training_set` joins three things, each documented where it is made:

- entity rows and labels (`proposals`): every proposal of the events file, its ranking moment (its
  submit time), its graded label within the horizon, only jobs whose labels are complete;
- point-in-time store features (`point_in_time`): every feature as of the ranking moment, from
  the Delta change logs, nulls where an entity has no history yet;
- the split by time: jobs belong to the UTC day of their first proposal; the last days are the
  test set, the days before them validation, the rest training. So the model is always judged on
  jobs that came after every job it learned from.

Rows are sorted by (job's first proposal, job, ranking moment, proposal id): groups are contiguous
and the order is the same on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.errors import ModelError
from features.offline_layout import TIMESTAMP_COLUMN
from features.settings import Settings
from training.point_in_time import historical_features
from training.proposals import (
    DEFAULT_HORIZON,
    DEFAULT_WINDOW,
    GROUP_COLUMN,
    LABEL_COLUMN,
    LABEL_GRADES,
    MarketEvents,
    complete_jobs,
    label_proposals,
    read_market_events,
)

SPLIT_COLUMN = "split"
SPLITS = ("train", "valid", "test")
TEST_SHARE = 0.2
VALID_SHARE = 0.15
_FIRST = "__job_first"


@dataclass(frozen=True)
class TrainingSet:
    """Proposals with labels, ranking moments, splits and point-in-time feature values."""

    frame: pl.DataFrame
    horizon: timedelta
    window: timedelta
    cutoff_us: int
    days: dict[str, tuple[date, date]]  # split → first and last day
    dropped_jobs: int  # jobs left out: window + horizon not over by the cutoff
    timings: dict[str, float] = field(default_factory=dict)

    def split(self, name: str) -> pl.DataFrame:
        return self.frame.filter(pl.col(SPLIT_COLUMN) == name)

    def summary(self) -> dict[str, Any]:
        """Counts per split and label, the days, the horizon: what MLflow and the report show."""
        out: dict[str, Any] = {
            "horizon_hours": self.horizon.total_seconds() / 3600,
            "window_hours": self.window.total_seconds() / 3600,
            "proposals": self.frame.height,
            "jobs": self.frame[GROUP_COLUMN].n_unique(),
            "dropped_jobs_incomplete_labels": self.dropped_jobs,
        }
        grade_names = {v: k for k, v in LABEL_GRADES.items()} | {0: "none"}
        for name in SPLITS:
            part = self.split(name)
            first, last = self.days[name]
            out[f"{name}_days"] = f"{first} → {last}"
            out[f"{name}_proposals"] = part.height
            out[f"{name}_jobs"] = part[GROUP_COLUMN].n_unique()
        counts = dict(self.frame[LABEL_COLUMN].value_counts().iter_rows())
        for grade in sorted(grade_names):
            out[f"label_{grade}_{grade_names[grade]}"] = int(counts.get(grade, 0))
        return out


def build_training_set(
    settings: Settings,
    events: Path | MarketEvents,
    *,
    horizon: timedelta = DEFAULT_HORIZON,
    window: timedelta = DEFAULT_WINDOW,
    test_share: float = TEST_SHARE,
    valid_share: float = VALID_SHARE,
    clock: Callable[[], float] | None = None,
) -> TrainingSet:
    """The training set of an events file over the lake's change logs.

    `clock` (e.g. `time.perf_counter`) times the two stages into `timings`.
    """
    tick = clock or (lambda: 0.0)
    started = tick()
    market = events if isinstance(events, MarketEvents) else read_market_events(events)
    if market.newest_us is None or market.proposals.is_empty():
        msg = "no proposals in the events: nothing to train on"
        raise ModelError(msg)
    labelled = label_proposals(market.proposals, market.actions, horizon)
    kept = complete_jobs(labelled, market.newest_us, horizon, window)
    dropped = labelled[GROUP_COLUMN].n_unique() - kept[GROUP_COLUMN].n_unique()
    kept = _sorted_groups(kept)
    read = tick()
    features = historical_features(settings, kept)
    joined = tick()
    frame, days = split_by_day(features, test_share=test_share, valid_share=valid_share)
    timings = {"entity_rows_s": read - started, "point_in_time_s": joined - read}
    return TrainingSet(frame, horizon, window, market.newest_us, days, dropped, timings)


def _sorted_groups(frame: pl.DataFrame) -> pl.DataFrame:
    first = pl.col(TIMESTAMP_COLUMN).min().over(GROUP_COLUMN).alias(_FIRST)
    return frame.with_columns(first).sort([_FIRST, GROUP_COLUMN, TIMESTAMP_COLUMN, "proposal_id"])


def split_by_day(
    frame: pl.DataFrame, *, test_share: float = TEST_SHARE, valid_share: float = VALID_SHARE
) -> tuple[pl.DataFrame, dict[str, tuple[date, date]]]:
    """`frame` (sorted by `_FIRST`) with a `split` column: train, valid, test by job day."""
    day = pl.col(_FIRST).dt.date()
    days = frame.select(day.unique().sort()).to_series().to_list()
    if len(days) < 3:
        msg = (
            f"need jobs on at least 3 days with complete labels to split by time, got {len(days)}:"
            " simulate more days or shorten the horizon"
        )
        raise ModelError(msg)
    n_test = max(1, round(len(days) * test_share))
    n_valid = max(1, round(len(days) * valid_share))
    n_train = max(1, len(days) - n_test - n_valid)
    n_valid = len(days) - n_test - n_train
    bounds = {
        "train": days[:n_train],
        "valid": days[n_train : n_train + n_valid],
        "test": days[n_train + n_valid :],
    }
    split = (
        pl.when(day <= bounds["train"][-1])
        .then(pl.lit("train"))
        .when(day <= bounds["valid"][-1])
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    ranges = {name: (part[0], part[-1]) for name, part in bounds.items()}
    return frame.with_columns(split.alias(SPLIT_COLUMN)).drop(_FIRST), ranges
