"""The real Bytewax flow, end to end into a real Redis and real Delta tables."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import polars as pl
import pytest
from deltalake import DeltaTable

from features import offline_layout, online_layout
from features.engine import empty_values
from features.events import Event, event_to_json, parse_event
from features.lake import dead_letter_uri
from features.settings import Settings
from features.specs import ENTITIES, Dtype, features_of
from flows.runner import run_backfill
from tests import oracle
from tests.streams import BASE

MINUTE = 60_000_000


def random_events(seed: int, n: int) -> list[Event]:
    """Seeded, in time order, with instants repeated and times on hop boundaries."""
    rng = random.Random(seed)
    t = BASE
    lines = []
    for i in range(n):
        t += rng.choice([0, 1, MINUTE, 5 * MINUTE, 47 * MINUTE, 60 * MINUTE, 1440 * MINUTE])
        f, j, c = f"f-{rng.randint(1, 6)}", f"j-{rng.randint(1, 4)}", f"c-{rng.randint(1, 3)}"
        kind = rng.random()
        when = {"event_id": f"e{i}", "event_time": t}
        if kind < 0.5:
            body = {
                "event_type": "proposal_submitted",
                "proposal_id": f"p{i}",
                "job_id": j,
                "client_id": c,
                "freelancer_id": f,
                "bid_amount": rng.choice([5, 12.5, 40.1]),
                "cover_letter": "hello",
            }
        elif kind < 0.8:
            body = {
                "event_type": "proposal_action",
                "proposal_id": f"p{i}",
                "job_id": j,
                "client_id": c,
                "freelancer_id": f,
                "action": rng.choice(["viewed", "shortlisted", "messaged", "hired"]),
            }
        elif kind < 0.9:
            body = {
                "event_type": "job_posted",
                "job_id": j,
                "client_id": c,
                "title": "t",
                "skills": ["python"],
                "budget_type": "fixed",
                "budget_min": 10,
                "budget_max": rng.choice([10, 99.5]),
                "experience_level": "expert",
                "category": "data",
            }
        else:
            body = {
                "event_type": "freelancer_profile",
                "freelancer_id": f,
                "country": "DE",
                "hourly_rate": rng.choice([10, 55.5]),
                "skills": ["python", "sql"],
                "job_success": rng.choice([None, 97]),
                "total_earned": 1000,
                "top_rated": rng.random() < 0.5,
            }
        from features.events import format_time

        text = orjson.dumps({**body, **when, "event_time": format_time(when["event_time"])})
        event = parse_event(text)
        assert not hasattr(event, "reason"), event
        lines.append(event)
    return lines


def write_events(path: Path, events: list[Event], extra: list[bytes] = ()) -> Path:
    with path.open("wb") as out:
        for i, event in enumerate(events):
            out.write(orjson.dumps(event_to_json(event)) + b"\n")
            if i < len(extra):
                out.write(extra[i] + b"\n")
    return path


def changelog(settings: Settings) -> list[tuple[str, str, int, tuple]]:
    rows = []
    for entity in ENTITIES:
        uri = offline_layout.changelog_uri(settings, entity)
        frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
        for record in frame.iter_rows(named=True):
            values = offline_layout.record_values(entity, record)
            stamp = int(record["event_timestamp"].timestamp() * 1_000_000)
            rows.append((entity.name, record[entity.join_key], stamp, values))
    return sorted(rows)


def expected_changelog(events: list[Event], until: int) -> list[tuple[str, str, int, tuple]]:
    out = []
    for name, entity_id, stamp, values in oracle.changelog(events, until):
        entity = next(e for e in ENTITIES if e.name == name)
        fixed = tuple(
            offline_layout.floor_seconds(v) if s.dtype is Dtype.TIMESTAMP and v is not None else v
            for s, v in zip(features_of(entity), values, strict=True)
        )
        out.append((name, entity_id, stamp, fixed))
    return sorted(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_backfill_equals_oracle_online_and_offline(
    tmp_path: Path, settings: Settings, workers: int
) -> None:
    events = random_events(seed=workers, n=300)
    path = write_events(tmp_path / "events.jsonl", events)
    until = events[-1].event_time + 40 * 1440 * MINUTE  # long after: every window empties
    run_backfill(settings, path, until=until, workers=workers, shards=4)

    assert changelog(settings) == expected_changelog(events, until)
    client = online_layout_client(settings)
    for entity, entity_id in oracle.entity_ids(events):
        got = online_layout.read_entities(client, settings.feast_project, [(entity, entity_id)])[0]
        assert got == _floor(entity, oracle.vector(entity, events, entity_id, until))
        assert got == _floor(entity, empty_values(entity)) or any(
            s.agg.value == "last" for s in features_of(entity)
        )


def online_layout_client(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.redis_url)


def _floor(entity, values: tuple) -> tuple:
    return tuple(
        offline_layout.floor_seconds(v) if s.dtype is Dtype.TIMESTAMP and v is not None else v
        for s, v in zip(features_of(entity), values, strict=True)
    )


def test_backfill_twice_changes_nothing(tmp_path: Path, settings: Settings) -> None:
    events = random_events(seed=7, n=200)
    path = write_events(tmp_path / "events.jsonl", events, extra=[b"{oops", b'{"event_id": 1}'])
    run_backfill(settings, path, shards=3)
    first = changelog(settings)
    versions = [DeltaTable(offline_layout.changelog_uri(settings, e)).version() for e in ENTITIES]
    dead = DeltaTable(dead_letter_uri(settings)).to_pyarrow_table().num_rows
    run_backfill(settings, path, shards=3)
    assert changelog(settings) == first
    assert [
        DeltaTable(offline_layout.changelog_uri(settings, e)).version() for e in ENTITIES
    ] == versions
    assert DeltaTable(dead_letter_uri(settings)).to_pyarrow_table().num_rows == dead == 2


def test_dead_letters_keep_raw_text_and_reason(tmp_path: Path, settings: Settings) -> None:
    events = random_events(seed=3, n=20)
    late = dict(event_to_json(events[-1]), event_id="late-1", event_time="2000-01-01T00:00:00Z")
    bad = [
        b'{"event_id": "x", "event_type": "proposal_submitted"}',
        orjson.dumps(late),
        b"not json at all",
    ]
    path = write_events(tmp_path / "events.jsonl", events, extra=bad)
    run_backfill(settings, path, shards=2)
    letters = pl.from_arrow(DeltaTable(dead_letter_uri(settings)).to_pyarrow_table()).sort(
        "position"
    )
    assert letters["raw"].to_list() == [b.decode() for b in bad]
    reasons = letters["reason"].to_list()
    assert reasons[0].startswith("field event_time: missing") or "missing" in reasons[0]
    assert reasons[1] == "late"
    assert reasons[2].startswith("invalid JSON")
    assert letters["seen"].null_count() == 0
    # and nothing of them reached a feature: the change log is the clean stream's
    assert changelog(settings) == expected_changelog(events, events[-1].event_time)


def test_two_processes_equal_one(tmp_path: Path, settings: Settings) -> None:
    """A local cluster of two processes writes the same change log as one process."""
    events = random_events(seed=11, n=150)
    path = write_events(tmp_path / "events.jsonl", events)
    run_backfill(settings, path, processes=2, workers=1, shards=4)
    assert changelog(settings) == expected_changelog(events, events[-1].event_time)


def test_checkpoints_stay_on_a_local_disk_whatever_the_lake(tmp_path: Path) -> None:
    from flows.runner import checkpoint_dir

    local = Settings(lake=str(tmp_path / "lake"), _env_file=None)
    assert checkpoint_dir(local) == tmp_path / "lake" / "_checkpoints" / "features"
    remote = Settings(lake="s3://bucket/bestmatch", _env_file=None)
    assert checkpoint_dir(remote) == Path("bestmatch-checkpoints").resolve() / "features"
    chosen = Settings(lake="s3://bucket/bestmatch", checkpoints=str(tmp_path / "c"), _env_file=None)
    assert checkpoint_dir(chosen) == tmp_path / "c" / "features"
