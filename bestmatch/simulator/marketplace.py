"""The marketplace simulator: a realistic, deterministic event stream as JSON Lines.

`simulate` draws a whole market with `behaviour` (columnar numpy, one seed), sorts every
event by time and writes the lines in chunks straight from the columns, so a month at a thousand
jobs a day (a few million events) takes seconds and little memory. Same seed, same bytes: no clock
is read, ties in time keep a fixed order, and gzip output carries no name and mtime 0.

With `dirty=True` about 1% of lines are exact duplicates (the same line again a few seconds of
event time later, as an at-least-once producer would send it) and about 0.6% are invalid events
that `features.events.parse_event` rejects. The valid lines are the same as without `dirty`.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from bestmatch.simulator import behaviour as mb
from bestmatch.simulator.lines import EventWriter

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What one `simulate` run wrote, and how fast."""

    path: Path
    events: int  # lines written, duplicates and invalid lines included
    counts: dict[str, int]  # valid events by event_type (duplicates not counted)
    actions: dict[str, int]  # proposal_action events by action
    duplicates: int
    invalid: int
    jobs: int
    freelancers: int
    clients: int
    share_25_in_24h: float  # jobs with >= 25 proposals in their first 24h (complete days only)
    seconds: float
    events_per_s: float
    bytes: int
    start: datetime = field(default=DEFAULT_START)
    end: datetime = field(default=DEFAULT_START)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, ready for a two-column table."""
        rows = [
            ("file", str(self.path)),
            ("period", f"{self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M} UTC"),
            ("events written", f"{self.events:,}"),
        ]
        rows += [(f"  {name}", f"{count:,}") for name, count in self.counts.items()]
        rows += [(f"    {name}", f"{count:,}") for name, count in self.actions.items()]
        rows += [
            ("duplicates (dirty)", f"{self.duplicates:,}"),
            ("invalid (dirty)", f"{self.invalid:,}"),
            ("jobs", f"{self.jobs:,}"),
            ("freelancers", f"{self.freelancers:,}"),
            ("clients", f"{self.clients:,}"),
            ("jobs with 25+ proposals in 24h", f"{self.share_25_in_24h:.1%}"),
            ("seconds", f"{self.seconds:.2f}"),
            ("events/s", f"{self.events_per_s:,.0f}"),
            ("bytes written", f"{self.bytes:,}"),
        ]
        return rows


def simulate(
    days: int,
    seed: int,
    out: Path,
    *,
    jobs_per_day: int = 1000,
    dirty: bool = False,
    start: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulationReport:
    """Write `days` of marketplace events from `start` (default 2026-01-05 00:00Z) to `out`.

    `out` is JSON Lines, gzip-compressed when its name ends in `.gz`. `progress` is called with the
    number of lines written so far after every chunk of about 100,000 lines.
    """
    if days < 1 or jobs_per_day < 1:
        msg = f"days and jobs_per_day must be >= 1, got days={days}, jobs_per_day={jobs_per_day}"
        raise ValueError(msg)
    begin = start or DEFAULT_START
    if begin.tzinfo is None:
        msg = f"start must be timezone-aware, got {begin.isoformat()}"
        raise ValueError(msg)
    clock = time.perf_counter()
    start_ms = round(begin.timestamp() * 1000)
    market = mb.simulate_market(days, jobs_per_day, seed, start_ms)
    writer = EventWriter(market, seed if dirty else None)
    out = Path(out)
    with _open(out) as sink:
        for written in writer.write(sink):
            if progress is not None:
                progress(written)
    seconds = time.perf_counter() - clock
    return SimulationReport(
        path=out,
        events=writer.written,
        counts=writer.counts,
        actions=writer.action_counts,
        duplicates=writer.duplicates,
        invalid=writer.invalid,
        jobs=len(market.jobs),
        freelancers=len(market.freelancers),
        clients=market.clients,
        share_25_in_24h=market.share_25_in_24h,
        seconds=seconds,
        events_per_s=writer.written / seconds if seconds > 0 else 0.0,
        bytes=out.stat().st_size,
        start=begin.astimezone(UTC),
        end=datetime.fromtimestamp(market.end / 1000, UTC),
    )


@contextmanager
def _open(out: Path) -> Iterator[IO[bytes]]:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw:
        if out.name.endswith(".gz"):
            # no file name and mtime 0 in the header: the same events give the same bytes
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=3
            ) as zipped:
                yield zipped
        else:
            yield raw
