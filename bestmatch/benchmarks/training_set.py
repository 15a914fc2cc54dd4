"""The training-set benchmark (`bestmatch bench training`): the point-in-time join, Feast
against the fast path.

Both answer the same question on the same entity rows (every proposal of the events file: its
freelancer, job and client and its ranking moment) over the lake's change logs, for every feature
of every view: Feast's `FeatureStore.get_historical_features` through BestMatch's Delta change-log
offline store (`training.feast_reference`), and `training.point_in_time.historical_features`.
With `rows`, the proposals are resampled (seeded, with replacement, kept in time order) to that
many entity rows, so a small market can stand in for a big one. Each side is timed `repeat` times
(Feast `feast_repeat` times: it is the slow one) and the medians are compared; the answers are
checked equal, value for value.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features.offline_layout import TIMESTAMP_COLUMN
from features.settings import Settings
from features.specs import ENTITIES, view_name
from training.feast_reference import feast_historical_features, feast_store
from training.point_in_time import historical_features, read_changelog
from training.proposals import read_market_events

GOAL_RATIO = 30.0
GOAL_MILLION_S = 5.0


@dataclass(frozen=True)
class TrainingSetBench:
    entity_rows: int
    changelog_rows: dict[str, int]
    feast_s: list[float]
    fast_s: list[float]
    identical: bool
    read_events_s: float

    @property
    def ratio(self) -> float:
        return statistics.median(self.feast_s) / statistics.median(self.fast_s)

    @property
    def fast_per_million_s(self) -> float:
        return statistics.median(self.fast_s) * 1_000_000 / max(self.entity_rows, 1)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs: the figures side by side, the ratio and the goals."""

        def times(values: list[float]) -> str:
            runs = ", ".join(f"{v:.2f}" for v in values)
            return f"{statistics.median(values):.2f} s (runs: {runs})"

        return [
            ("entity rows", f"{self.entity_rows:,}"),
            *(
                (f"change log: {name}", f"{count:,} rows")
                for name, count in self.changelog_rows.items()
            ),
            ("Feast get_historical_features", times(self.feast_s)),
            ("fast path (polars as-of)", times(self.fast_s)),
            ("ratio (Feast / fast)", f"{self.ratio:.1f}x (goal >= {GOAL_RATIO:g}x)"),
            (
                "fast path per 1M entity rows",
                f"{self.fast_per_million_s:.2f} s (goal < {GOAL_MILLION_S:g} s)",
            ),
            ("same values", "yes" if self.identical else "NO"),
            ("reading the events file", f"{self.read_events_s:.2f} s (not in either figure)"),
        ]


def entity_rows(proposals: pl.DataFrame, rows: int | None, seed: int) -> pl.DataFrame:
    """The join keys and ranking moments of the proposals, resampled to `rows` if given."""
    keys = proposals.select(*(e.join_key for e in ENTITIES), TIMESTAMP_COLUMN)
    if rows is None or rows == keys.height:
        return keys
    return keys.sample(rows, with_replacement=rows > keys.height, seed=seed).sort(
        TIMESTAMP_COLUMN, maintain_order=True
    )


def _timed(run: Callable[[], pl.DataFrame], repeat: int) -> tuple[list[float], pl.DataFrame]:
    seconds, result = [], pl.DataFrame()
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def bench_training_set(
    settings: Settings,
    *,
    events: Path,
    rows: int | None = None,
    repeat: int = 3,
    feast_repeat: int = 1,
    seed: int = 1,
    progress: Callable[[str], None] | None = None,
) -> TrainingSetBench:
    """Time Feast and the fast path on the same entity rows; check they agree."""
    say = progress or (lambda _message: None)
    say(f"reading {events}")
    started = time.perf_counter()
    market = read_market_events(events)
    read_s = time.perf_counter() - started
    keys = entity_rows(market.proposals, rows, seed)
    counts = {view_name(e): read_changelog(settings, e, []).height for e in ENTITIES}
    say(f"fast path on {keys.height:,} entity rows")
    fast_s, fast = _timed(lambda: historical_features(settings, keys), repeat)
    with tempfile.TemporaryDirectory(prefix="bestmatch-feast-") as workdir:
        store = feast_store(settings, Path(workdir))
        say(f"Feast on {keys.height:,} entity rows")
        feast_s, reference = _timed(lambda: feast_historical_features(store, keys), feast_repeat)
    identical = reference.select(fast.columns).equals(fast)
    return TrainingSetBench(keys.height, counts, feast_s, fast_s, identical, read_s)
