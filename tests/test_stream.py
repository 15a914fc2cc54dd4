"""`bestmatch stream` on the real event bus: the same stores as a backfill, exactly once through
SIGKILLs, continuing from a backfill, and one or two workers alike.

A stream's change-log rows are final once its clock moves past their stamp (features/engine.py),
so the rows at its newest event time stay pending while more events arrive; a backfill finalises
them at its end, a stream once the bus has been quiet for a second (flows/sources.py).
Comparisons made while events still flow leave those rows out, or publish one later event.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from features.events import Event, event_to_json, format_time
from features.settings import Settings
from flows.runner import run_backfill
from tests import oracle
from tests.streaming import (
    How,
    Publisher,
    Streams,
    changelog_rows,
    converge,
    dead_letters,
    mirror_stream,
    new_stream,
    online_dump,
    online_values,
    publish,
)
from tests.test_flow import random_events

SECOND = 1_000_000
DAY = 86_400 * SECOND
START_TIMEOUT = 120.0  # the first start imports the whole stack: slow on a loaded 2-core box
CATCH_UP_TIMEOUT = 60.0


def other_stores(settings: Settings, tmp_path: Path, name: str, db: int) -> Settings:
    """A second lake and Redis database on the same server (the fixture flushes them all)."""
    url = settings.redis_url.rsplit("/", 1)[0] + f"/{db}"
    return Settings(redis_url=url, lake=str(tmp_path / name), _env_file=None)


# --- events -----------------------------------------------------------------------------------

INVALID = [
    b"{oops",
    b'{"event_id": 1}',
    b'{"event_id": "x-1", "event_type": "job_closed", "event_time": "2026-01-01T00:00:00Z"}',
    b"[1, 2, 3]",
    b'{"event_id": "x-2", "event_type": "proposal_submitted", "event_time": "2026-01-01T00:00"}',
]


def line_of(event: Event) -> bytes:
    return orjson.dumps(event_to_json(event))


def dirty_lines(
    events: list[Event], seed: int, late: float = 0.02, back: int = 5, first: int = 5
) -> list[bytes]:
    """The events in order, with invalid lines, at-once repeats (dropped as duplicates) and, for
    a `late` share from event `first` on, repeats 1 to `back` events later (late by then, or
    not: dead letters or duplicates)."""
    rng = random.Random(seed)
    out = []
    for i, event in enumerate(events):
        line = line_of(event)
        out.append(line)
        roll = rng.random()
        if roll < 0.03:
            out.append(rng.choice(INVALID))
        elif roll < 0.06:
            out.append(line)
        elif roll < 0.06 + late and i >= first:
            out.append(line_of(events[i - rng.randint(1, min(i, back))]))
    return out


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def tick(t: int, name: str = "tick") -> bytes:
    """A later event for an entity of its own: moves the clock to t, so rows before t settle."""
    return orjson.dumps(
        {
            "event_id": f"{name}-{t}",
            "event_type": "freelancer_profile",
            "event_time": format_time(t),
            "freelancer_id": f"f-{name}",
            "country": "DE",
            "hourly_rate": 1,
            "skills": [],
            "job_success": None,
            "total_earned": 0,
            "top_rated": False,
        }
    )


def before(rows: list[tuple], t: int) -> list[tuple]:
    return [row for row in rows if row[2] < t]


def until(rows: list[tuple], t: int) -> list[tuple]:
    return [row for row in rows if row[2] <= t]


def reasons(letters: list[tuple[str, int, str, str]]) -> list[tuple[str, str]]:
    """Dead letters without where they were read (a file line or a stream entry id)."""
    return [(raw, reason) for _, _, raw, reason in letters]


def assert_no_repeated_stamps(rows: list[tuple]) -> None:
    repeated = [k for k, n in Counter(row[:3] for row in rows).items() if n > 1]
    assert not repeated, f"(entity, id, stamp) with more than one row: {repeated[:5]}"


# --- 1 and 4: stream = backfill, with one worker or two ---------------------------------------


@pytest.mark.parametrize(("workers", "how"), [(1, "cli"), (2, "fork")])
def test_stream_equals_backfill(
    tmp_path: Path, settings: Settings, streams: Streams, workers: int, how: How
) -> None:
    events = random_events(seed=20 + workers, n=800)
    lines = dirty_lines(events, seed=workers)
    final = events[-1].event_time
    backfilled = other_stores(settings, tmp_path, "backfill", db=1)
    run_backfill(backfilled, write_lines(tmp_path / "events.jsonl", lines))
    want_online = online_dump(backfilled)
    want_rows = changelog_rows(backfilled)
    want_reasons = reasons(dead_letters(backfilled))
    entities = oracle.entity_ids(events)
    assert any(row[2] == final for row in want_rows)  # so the pending rows matter
    assert len(want_reasons) > 10

    sent = publish(settings, lines)
    stream = new_stream(streams, settings, tmp_path, workers=workers, how=how)
    stream.wait_read(sent, START_TIMEOUT)

    assert converge(lambda: online_dump(settings), want_online, CATCH_UP_TIMEOUT) == want_online
    assert online_values(settings, entities) == online_values(backfilled, entities)
    # once the bus is quiet for a second the stream closes its newest instant, as a backfill's
    # end does: the change log then holds every row, the newest instant's included
    assert converge(lambda: changelog_rows(settings), want_rows, 20) == want_rows
    assert converge(lambda: reasons(dead_letters(settings)), want_reasons, 20) == want_reasons

    publish(settings, [tick(final + SECOND)])
    assert converge(lambda: until(changelog_rows(settings), final), want_rows, 20) == want_rows
    assert_no_repeated_stamps(changelog_rows(settings))
    stream.interrupt()  # Ctrl-C stops it


# --- 2: exactly once through crashes --------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "seed", "options", "stop"),
    [
        pytest.param(1, 5, (), "SIGKILL", id="1-worker"),
        # change-log rows buffered for up to 3 s: a kill loses them, the replay must redo them
        pytest.param(2, 6, ("--trigger", "3"), "SIGKILL", id="2-workers-trigger-3s"),
        # how a user stops it
        pytest.param(1, 7, (), "Ctrl-C", id="1-worker-ctrl-c"),
    ],
)
def test_crashes_lose_nothing_and_count_nothing_twice(
    tmp_path: Path,
    settings: Settings,
    streams: Streams,
    workers: int,
    seed: int,
    options: tuple[str, ...],
    stop: str,
) -> None:
    rng = random.Random(seed)
    events = random_events(seed=seed, n=1500)
    lines = dirty_lines(events, seed=seed)
    far = events[-1].event_time + 40 * DAY  # every window has emptied by then
    lines.append(tick(far))

    crashed = new_stream(streams, settings, tmp_path, workers=workers, options=options)
    crashed.wait_read(0, START_TIMEOUT)  # up, so the kills land while events arrive
    publisher = Publisher(settings, lines, rate=len(lines) / 6)
    publisher.start()
    read = []
    for _ in range(3 if stop == "SIGKILL" else 5):
        # let it read something, then stop it at a random moment: mid-batch, mid-epoch or
        # mid-commit, wherever that lands
        crashed.wait_read(1, START_TIMEOUT)
        time.sleep(rng.uniform(0.0, 2.0))
        read.append(crashed.events_in() or 0)
        crashed.kill() if stop == "SIGKILL" else crashed.interrupt()
        crashed.start()
    publisher.finish(60)

    # the run never killed: the same bus entries (ids too) in another database and lake
    calm = other_stores(settings, tmp_path, "calm", db=1)
    assert mirror_stream(settings, calm) == len(lines)
    new_stream(streams, calm, tmp_path, workers=workers)
    # it is done when it holds what a backfill of the same events holds (the rows at `far`
    # included: the bus goes quiet after the last event, and the stream closes that instant)
    backfilled = other_stores(settings, tmp_path, "backfill", db=2)
    run_backfill(backfilled, write_lines(tmp_path / "events.jsonl", lines))
    want_online = online_dump(backfilled)
    want_rows = changelog_rows(backfilled)
    assert any(row[2] == far for row in want_rows)
    want_reasons = reasons(dead_letters(backfilled))
    assert len(want_reasons) > 20, "the events must exercise the dead-letter table"
    assert converge(lambda: online_dump(calm), want_online, CATCH_UP_TIMEOUT) == want_online
    assert converge(lambda: changelog_rows(calm), want_rows, 20) == want_rows
    assert converge(lambda: reasons(dead_letters(calm)), want_reasons, 20) == want_reasons
    calm_letters = dead_letters(calm)

    # the crashed run holds exactly the same: no row lost, none twice, letters at the same ids
    assert converge(lambda: online_dump(settings), want_online, CATCH_UP_TIMEOUT) == want_online
    assert converge(lambda: changelog_rows(settings), want_rows, 20) == want_rows
    assert converge(lambda: dead_letters(settings), calm_letters, 20) == calm_letters
    assert_no_repeated_stamps(want_rows)
    time.sleep(1.0)  # and it stays so: nothing replayed arrives late
    assert changelog_rows(settings) == want_rows
    assert dead_letters(settings) == calm_letters
    assert online_dump(settings) == want_online
    # each restart resumed from its last epoch and read some events again
    assert sum(read) + (crashed.events_in() or 0) > len(lines), read


# --- 3: a stream continues where a backfill stopped -------------------------------------------


def joined_instant(rows: list[tuple], t: int) -> list[tuple]:
    """Rows as if a backfill ending at instant t had not been cut there.

    A backfill closes its last instant: a continuing stream stamps its changes at that same
    instant one microsecond later (`ShardEngine.finish`), so no row already written is rewritten.
    Here such a row takes the place of the entity's row at t.
    """
    after = {row[:2] for row in rows if row[2] == t + 1}
    return sorted(
        (*row[:2], t, row[3]) if row[2] == t + 1 else row
        for row in rows
        if not (row[2] == t and row[:2] in after)
    )


@pytest.mark.parametrize("split", ["between_instants", "inside_an_instant"])
def test_stream_continues_a_backfill(
    tmp_path: Path, settings: Settings, streams: Streams, split: str
) -> None:
    events = random_events(seed=31, n=600)
    lines = [line_of(e) for e in events]
    times = {e.event_time for e in events}
    if split == "inside_an_instant":
        # the backfill's last event and the stream's first: one freelancer's proposals at one
        # instant, so the whole file has one row for it there, with both counted
        cut = next(
            i
            for i in range(100, 500)
            if events[i - 1].event_time == events[i].event_time
            and events[i].event_time + 1 not in times  # so only restamped rows are there
            and events[i - 1].event_type == events[i].event_type == "proposal_submitted"
            and events[i - 1].freelancer_id == events[i].freelancer_id  # type: ignore[union-attr]
        )
    else:
        cut = next(
            i
            for i in range(300, 500)
            if events[i - 1].event_time < events[i].event_time
            and events[i - 1].event_time + 1 not in times
        )
    cut_at, final = events[cut - 1].event_time, events[-1].event_time
    entities = oracle.entity_ids(events)

    whole = other_stores(settings, tmp_path, "whole", db=1)
    run_backfill(whole, write_lines(tmp_path / "all.jsonl", lines))
    want_online = online_values(whole, entities)
    want_rows = changelog_rows(whole)

    run_backfill(settings, write_lines(tmp_path / "first.jsonl", lines[:cut]))
    sent = publish(settings, lines[cut:])
    stream = new_stream(streams, settings, tmp_path)
    stream.wait_read(sent, START_TIMEOUT)

    def rows() -> list[tuple]:
        return joined_instant(changelog_rows(settings), cut_at)

    got_online = converge(lambda: online_values(settings, entities), want_online, CATCH_UP_TIMEOUT)
    assert got_online == want_online
    if split == "between_instants":  # nothing restamped: the very same hashes
        assert online_dump(settings) == online_dump(whole)
    assert converge(rows, want_rows, 20) == want_rows  # the quiet bus closed the last instant
    restamped = [row for row in changelog_rows(settings) if row[2] == cut_at + 1]
    assert bool(restamped) == (split == "inside_an_instant")
    publish(settings, [tick(final + SECOND)])
    assert converge(lambda: until(rows(), final), want_rows, 20) == want_rows
    assert_no_repeated_stamps(changelog_rows(settings))
