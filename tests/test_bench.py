"""`bestmatch bench flow` on tiny sizes, against the test Redis and a lake in tmp_path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from bestmatch.benchmarks.flow import MARKER, _with_db, pick_samples
from bestmatch.cli import app
from features.events import parse_event

TINY = [
    "--events",
    "3000",
    "--duration",
    "3",
    "--rate",
    "200",
    "--repeat",
    "1",
    "--no-scaling",
    "--recovery-entities",
    "20000",
]


def invoke(args: list[str], redis_url: str, lake: Path) -> tuple[int, str]:
    env = {"BESTMATCH_REDIS_URL": redis_url, "BESTMATCH_LAKE": str(lake)}
    result = CliRunner().invoke(app, ["bench", "flow", *args], env=env)
    return result.exit_code, result.output


@pytest.mark.timeout(120)
def test_bench_flow_reports_consistent_figures(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code, output = invoke([*TINY, "--json", str(out)], redis_url, tmp_path / "lake")
    assert code == 0, output
    figures = json.loads(out.read_text())

    backfill = figures["backfill"]
    stages = backfill["stages"]
    assert set(stages) == {
        "orjson",
        "parse",
        "sequence",
        "shard",
        "engine",
        "delta_alone",
        "redis_alone",
        "flow",
    }
    flow_rate = stages["flow"]["events_per_s"]
    for stage in stages.values():
        assert stage["events_per_s"] > 0
        assert stage["ratio_to_flow"] == pytest.approx(stage["events_per_s"] / flow_rate)
    assert stages["flow"]["ratio_to_flow"] == pytest.approx(1.0)
    # The engine and the flow write the same change log; reading alone is the ceiling.
    assert stages["engine"]["changes"] == stages["flow"]["changes"] > 0
    assert stages["flow"]["changes_per_s"] > 0
    assert stages["parse"]["events_per_s"] > stages["engine"]["events_per_s"]
    assert stages["delta_alone"]["changes"] == stages["engine"]["changes"]
    assert backfill["goal_events_per_s"] == 100_000
    # the engine's own steps add up to it; its state is measured per entity; the flow's memory
    steps = ("parse", "sequence", "shard")
    assert sum(stages[s]["seconds"] for s in steps) == pytest.approx(stages["engine"]["seconds"])
    assert sum(backfill["share_of_engine"].values()) == pytest.approx(1.0)
    assert backfill["entities"] > 0 and backfill["online_writes"] == backfill["entities"]
    assert 0 < backfill["state_bytes_per_entity"] and 0 < backfill["saved_bytes_per_entity"]
    assert backfill["peak_rss_bytes"]["flow"] > 50 * 2**20

    recovery = figures["recovery"]
    assert recovery["entities"] == 20000 and recovery["changed_per_epoch"] == 200
    assert 0 < recovery["checkpoint_bytes"] < recovery["whole_pickle_bytes"] / 10
    assert recovery["checkpoint_share_of_epoch"] == pytest.approx(recovery["checkpoint_s"] / 2.0)

    (fresh,) = figures["freshness"]
    assert fresh["sampled"] > 0
    assert fresh["observed"] == fresh["sampled"] and fresh["lost"] == 0
    assert 0 <= fresh["p50_ms"] <= fresh["p90_ms"] <= fresh["p99_ms"] <= fresh["max_ms"]
    assert not any(fresh[f"{name}_is_lower_bound"] for name in ("p50", "p90", "p99", "max"))
    assert fresh["published"] == 600
    assert fresh["published_per_s"] > 0 and fresh["sustained_events_per_s"] > 0
    assert fresh["stream_events_in"] in (None, 600)

    # The bench leaves its database empty and the platform's own untouched.
    client = redis.Redis.from_url(_with_db(redis_url, 15))
    assert client.dbsize() == 0
    assert (tmp_path / "lake" / "bench" / "events-3000-seed1.jsonl").is_file()


def test_bench_refuses_a_database_it_does_not_own(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(_with_db(redis_url, 15))
    client.set("someone-else", "1")
    code, output = invoke([*TINY, "--skip-freshness"], redis_url, tmp_path / "lake")
    assert code == 2
    assert "--redis-db" in output
    assert client.get("someone-else") == b"1"
    assert not client.exists(MARKER)

    code, output = invoke(["--redis-db", "0", *TINY], redis_url, tmp_path / "lake")
    assert code == 2
    assert "platform's own database" in output


def test_with_db_keeps_the_server() -> None:
    assert _with_db("redis://127.0.0.1:6379/0", 15) == "redis://127.0.0.1:6379/15"
    assert _with_db("redis://:pw@host:7000?db=3", 15) == "redis://:pw@host:7000/15"
    assert _with_db("unix:///tmp/redis.sock?db=2", 15) == "unix:///tmp/redis.sock?db=15"


def test_samples_are_newer_than_everything_before_them() -> None:
    lines = [
        b'{"event_id":"e1","event_type":"freelancer_profile","event_time":"2026-01-05T00:00:00Z",'
        b'"freelancer_id":"f-1","country":"US","hourly_rate":10,"skills":[],"job_success":null,'
        b'"total_earned":0,"top_rated":false}',
    ]
    for i, second in enumerate([1, 1, 2, 2, 3, 4]):
        lines.append(
            b'{"event_id":"p%d","event_type":"proposal_submitted",' % i
            + b'"event_time":"2026-01-05T00:00:0%dZ","proposal_id":"p%d","job_id":"j-1",'
            % (second, i)
            + b'"client_id":"c-1","freelancer_id":"f-1","bid_amount":5,"cover_letter":""}'
        )
    samples = pick_samples(lines, 1, "bestmatch", every=2)
    times = [parse_event(line).event_time for line in lines]  # type: ignore[union-attr]
    assert [s.index for s in samples] == [3, 5, 6]  # the second at 00:00:01 is not newer
    for s in samples:
        assert s.event_time == times[s.index] > max(times[: s.index])


# --- bench lake ---------------------------------------------------------------------------------

TINY_LAKE = ["--days", "10", "--jobs-per-day", "8", "--repeat", "1"]


@pytest.mark.timeout(240)
def test_bench_lake_times_train_on_both_lakes(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "lake.json"
    env = {"BESTMATCH_REDIS_URL": redis_url, "BESTMATCH_LAKE": str(tmp_path / "lake")}
    result = CliRunner().invoke(app, ["bench", "lake", *TINY_LAKE, "--json", str(out)], env=env)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    train = figures["train"]
    assert len(train["local_s"]) == len(train["s3_s"]) == 1
    assert train["ratio"] == pytest.approx(train["s3_median_s"] / train["local_median_s"])
    assert 0 < figures["training_set"]["local_s"][0] < train["local_s"][0]
    assert 0 < figures["training_set"]["s3_s"][0] < train["s3_s"][0]
    assert figures["same_result"] is True  # both lakes gave the same set and evaluation
    assert figures["events"] > 1000 and figures["changelog_rows"] > figures["events"] / 2
    assert "ratio (S3 / local)" in result.output
    assert redis.Redis.from_url(_with_db(redis_url, 15)).dbsize() == 0


def test_bench_lake_without_moto_is_one_line(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)  # as if the dev group were not installed
    env = {"BESTMATCH_REDIS_URL": redis_url, "BESTMATCH_LAKE": str(tmp_path / "lake")}
    result = CliRunner().invoke(app, ["bench", "lake", *TINY_LAKE], env=env)
    assert result.exit_code == 2
    assert "dev group" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2
