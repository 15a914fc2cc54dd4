"""The `bestmatch` command line: user mistakes are one clear line; commands do what they say."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from bestmatch.cli import app
from features import offline_layout
from features.lake import snapshot_uri
from features.settings import Settings
from features.specs import ENTITIES
from tests.test_flow import changelog, random_events, write_events

runner = CliRunner()


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BESTMATCH_LAKE", settings.lake)
    return settings


def test_help_lists_the_contract_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "simulate",
        "backfill",
        "publish",
        "stream",
        "train",
        "serve",
        "compact",
        "demo",
        "snapshot",
        "consistency",
    ):
        assert command in result.output
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for command in ("flow", "training", "serve"):
        assert command in result.output


def test_the_package_runs_as_a_script() -> None:
    """`python -m bestmatch` (what the stream and service launchers start) runs the app."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bestmatch", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill", "--events", "/nonexistent.jsonl"], "--events: no such file"),
        (["backfill", "--events", "{events}", "--until", "tomorrow"], "--until: must be RFC 3339"),
        (["publish", "--events", "/nonexistent.jsonl"], "--events: no such file"),
    ],
)
def test_user_mistakes_are_one_line(
    env: Settings, tmp_path: Path, args: list[str], message: str
) -> None:
    events = write_events(tmp_path / "e.jsonl", random_events(1, 5))
    result = runner.invoke(app, [a.replace("{events}", str(events)) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_redis_url_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BESTMATCH_REDIS_URL", "http://nope")
    events = write_events(tmp_path / "e.jsonl", random_events(1, 5))
    result = runner.invoke(app, ["backfill", "--events", str(events)])
    assert result.exit_code == 2
    assert "BESTMATCH_REDIS_URL" in result.output
    assert "Traceback" not in result.output


def test_simulate_writes_parseable_events(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    result = runner.invoke(
        app, ["simulate", "--days", "1", "--seed", "3", "--out", str(out), "--jobs-per-day", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "25+ proposals" in result.output
    assert out.stat().st_size > 0


def test_backfill_snapshot_and_compact(env: Settings, tmp_path: Path) -> None:
    events = write_events(tmp_path / "e.jsonl", random_events(5, 120))
    assert runner.invoke(app, ["backfill", "--events", str(events)]).exit_code == 0
    before = changelog(env)

    result = runner.invoke(app, ["snapshot"])
    assert result.exit_code == 0, result.output
    for entity in ENTITIES:
        snap = pl.from_arrow(DeltaTable(snapshot_uri(env, entity)).to_pyarrow_table())
        latest = {}
        for name, entity_id, stamp, values in before:
            if name == entity.name:
                latest[entity_id] = (stamp, values)
        assert sorted(snap[entity.join_key].to_list()) == sorted(latest)
    again = runner.invoke(app, ["snapshot"])
    assert again.exit_code == 0
    assert DeltaTable(snapshot_uri(env, ENTITIES[0])).version() == 1  # a new version each time

    result = runner.invoke(app, ["compact"])
    assert result.exit_code == 0, result.output
    assert changelog(env) == before
    for entity in ENTITIES:
        table = DeltaTable(offline_layout.changelog_uri(env, entity))
        days = {f.split("day=")[1].split("/")[0] for f in table.file_uris()}
        assert len(table.file_uris()) == len(days)  # one file per partition after compaction
