"""The lake on S3-compatible storage, against a real S3 server (moto's server mode, over HTTP):
`backfill`, Feast's historical read, `compact`, `snapshot`, the training set and `bestmatch
train`, the serving log, `consistency` and `stream`, each compared with the same work on a
local lake; concurrent commits; and a misconfigured store as one line.

One market, backfilled once into a bucket and once into a local lake, serves the module.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import redis
from deltalake import DeltaTable, write_deltalake
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from typer.testing import CliRunner

from bestmatch.cli import app
from bestmatch.services import LocalS3, child_env, free_port
from bestmatch.simulator import simulate
from features import offline_layout
from features.engine import empty_values
from features.events import event_to_json
from features.lake import latest_values, snapshot_uri
from features.settings import Settings
from features.specs import ENTITIES, FREELANCER
from flows import sinks
from flows.items import ShardOutput
from flows.runner import run_backfill
from flows.sinks import ChangelogSink
from serving import ServingSettings, create_app
from serving.serving_log import serving_log_uri
from tests.conftest import RedisServer
from tests.s3_fixtures import s3_lake
from tests.streaming import (
    StreamProcess,
    changelog_rows,
    converge,
    dead_letters,
    online_dump,
    publish,
)
from tests.streams import BASE
from tests.test_flow import changelog, random_events
from training import registry
from training.dataset import build_training_set
from training.feast_reference import feast_historical_features, feast_store
from training.proposals import read_market_events

S3_DB, LOCAL_DB, STREAM_DB = 9, 10, 8  # this module's Redis databases
SECOND = 1_000_000
runner = CliRunner()


@dataclass(frozen=True)
class Market:
    events: Path
    s3: Settings  # the lake in a bucket of the S3 server
    local: Settings  # the same backfill into a local lake
    bucket: str
    root: Path


def _db(server: RedisServer, db: int) -> str:
    url = f"{server.url.rsplit('/', 1)[0]}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def market(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, s3_server: LocalS3
) -> Iterator[Market]:
    root = tmp_path_factory.mktemp("s3")
    events = root / "events.jsonl"
    # 10 days: `train`'s default horizon and window; dirty: dead letters too
    simulate(10, 7, events, jobs_per_day=15, dirty=True)
    bucket = s3_server.create_bucket()
    base = Settings(
        redis_url=_db(redis_server, S3_DB),
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        _env_file=None,
    )
    on_s3 = s3_lake(base, bucket, root / "checkpoints")
    local = Settings(redis_url=_db(redis_server, LOCAL_DB), lake=str(root / "lake"), _env_file=None)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        patch.setenv("BESTMATCH_REDIS_URL", on_s3.redis_url)
        patch.setenv("BESTMATCH_LAKE", on_s3.lake)
        patch.setenv("BESTMATCH_CHECKPOINTS", str(on_s3.checkpoints))
        patch.setenv("MLFLOW_TRACKING_URI", str(on_s3.mlflow_tracking_uri))
        patch.chdir(root)  # nothing may land in a local `s3:` folder
        # two workers: two change-log writers, committing to each table side by side
        result = runner.invoke(app, ["backfill", "--events", str(events), "--workers", "2"])
        assert result.exit_code == 0, result.output
        run_backfill(local, events, checkpoint=False)
        yield Market(events, on_s3, local, bucket, root)


def _entity_rows(market: Market) -> pl.DataFrame:
    """Every proposal at three moments: before its job existed, when it came, a day later."""
    proposals = read_market_events(market.events).proposals
    sample = proposals.sort("proposal_id").head(300)
    at = pl.col(offline_layout.TIMESTAMP_COLUMN)
    rows = sample.select("job_id", "client_id", "freelancer_id", at.alias("t"))
    return pl.concat(
        [
            rows.with_columns((pl.col("t") + shift).alias(offline_layout.TIMESTAMP_COLUMN))
            for shift in (pl.duration(days=-3), pl.duration(), pl.duration(days=1))
        ]
    ).drop("t")


def _historical(settings: Settings, workdir: Path, rows: pl.DataFrame) -> pl.DataFrame:
    frame = feast_historical_features(feast_store(settings, workdir), rows)
    keys = [e.join_key for e in ENTITIES]
    return frame.sort([*keys, offline_layout.TIMESTAMP_COLUMN])


# --- backfill, Feast, compact, snapshot ------------------------------------------------------


def test_a_backfill_into_s3_equals_one_into_a_local_lake(
    market: Market, s3_server: LocalS3
) -> None:
    keys = s3_server.keys(market.bucket, "lake/changelog/")
    for entity in ENTITIES:
        table = offline_layout.changelog_table_path(entity)
        assert any(k.startswith(f"lake/{table}/_delta_log/") for k in keys), table
        assert any(k.endswith(".parquet") and k.startswith(f"lake/{table}/") for k in keys)
    assert not (market.root / "s3:").exists()
    rows = changelog(market.s3)
    assert len(rows) > 1000
    assert rows == changelog(market.local)
    assert online_dump(market.s3) == online_dump(market.local)
    letters = dead_letters(market.s3)
    assert letters and letters == dead_letters(market.local)  # a dirty market's bad lines


def test_feast_reads_s3_exactly_also_after_compact_and_snapshot(
    market: Market, s3_server: LocalS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BESTMATCH_LAKE", market.s3.lake)
    monkeypatch.setenv("BESTMATCH_REDIS_URL", market.s3.redis_url)
    rows = _entity_rows(market)
    want = _historical(market.local, tmp_path / "local", rows)
    assert want["fl_proposals_7d"].drop_nulls().sum() > 0  # real values, not nulls
    assert _historical(market.s3, tmp_path / "s3", rows).equals(want)

    files = [
        len(DeltaTable(offline_layout.changelog_uri(market.s3, e)).file_uris()) for e in ENTITIES
    ]
    result = runner.invoke(app, ["compact"])
    assert result.exit_code == 0, result.output
    compacted = [
        len(DeltaTable(offline_layout.changelog_uri(market.s3, e)).file_uris()) for e in ENTITIES
    ]
    assert all(c <= f for c, f in zip(compacted, files, strict=True)) and compacted != files
    assert _historical(market.s3, tmp_path / "s3-compacted", rows).equals(want)

    result = runner.invoke(app, ["snapshot"])
    assert result.exit_code == 0, result.output
    for entity in ENTITIES:
        got = pl.from_arrow(DeltaTable(snapshot_uri(market.s3, entity)).to_pyarrow_table())
        assert isinstance(got, pl.DataFrame)
        expected = pl.from_arrow(latest_values(market.local, entity))
        assert got.sort(entity.join_key).equals(expected), entity.name
    assert _historical(market.s3, tmp_path / "s3-snapshot", rows).equals(want)


# --- training, serving log, consistency -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(market: Market, s3_server: LocalS3) -> str:
    """`bestmatch train` on the S3 lake, MLflow on SQLite in tmp; its output."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        patch.setenv("BESTMATCH_LAKE", market.s3.lake)
        patch.setenv("BESTMATCH_REDIS_URL", market.s3.redis_url)
        patch.setenv("BESTMATCH_CHECKPOINTS", str(market.s3.checkpoints))
        patch.setenv("MLFLOW_TRACKING_URI", str(market.s3.mlflow_tracking_uri))
        # no --events: the backfill into the bucket recorded its file in the local state
        result = runner.invoke(app, ["train"])
    assert result.exit_code == 0, result.output
    return result.output


def test_training_sets_and_train_on_s3(
    market: Market, trained: str, monkeypatch: pytest.MonkeyPatch, s3_server: LocalS3
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    on_s3 = build_training_set(market.s3, market.events).frame
    assert on_s3.height > 100
    assert on_s3.equals(build_training_set(market.local, market.events).frame)

    client = MlflowClient(tracking_uri=market.s3.tracking_uri, registry_uri=market.s3.tracking_uri)
    champion = client.get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    assert str(champion.version) == "1" and "champion" in trained
    artifacts = market.root / "mlflow" / registry.ARTIFACT_DIR
    assert any(artifacts.rglob("MLmodel"))  # beside the SQLite store, on a local disk


def test_the_serving_log_and_consistency_on_s3(
    market: Market, trained: str, s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    proposals = read_market_events(market.events).proposals
    jobs = proposals.group_by("job_id").len().filter(pl.col("len") >= 3).sort("job_id")["job_id"]
    config = ServingSettings(_env_file=None, log_rate=1.0, log_flush_s=0.1, model_poll_s=60)  # type: ignore[call-arg]
    since = time.time_ns() // 1000
    served = 0
    with TestClient(create_app(market.s3, config)) as http:
        for job_id in jobs.head(5):
            rows = proposals.filter(pl.col("job_id") == job_id).to_dicts()
            request = {
                "job_id": job_id,
                "client_id": rows[0]["client_id"],
                "proposals": [
                    {k: r[k] for k in ("proposal_id", "freelancer_id", "bid_amount")} for r in rows
                ],
            }
            answer = http.post("/v1/rank", json=request)
            assert answer.status_code == 200, answer.text
            served += len(rows)
    # closing the service wrote the rest of the log, into the bucket
    log = pl.from_arrow(DeltaTable(serving_log_uri(market.s3)).to_pyarrow_table())
    assert isinstance(log, pl.DataFrame)
    since_t = pl.lit(since).cast(pl.Datetime("us", "UTC"))
    assert log.filter(pl.col("served_at") >= since_t).height == served > 0
    assert any(k.startswith("lake/serving_log/") for k in s3_server.keys(market.bucket, "lake/"))

    monkeypatch.setenv("BESTMATCH_LAKE", market.s3.lake)
    monkeypatch.setenv("BESTMATCH_REDIS_URL", market.s3.redis_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(market.s3.mlflow_tracking_uri))
    result = runner.invoke(app, ["consistency"])
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output and "inconsistent" not in result.output


# --- the stream ------------------------------------------------------------------------------


def test_stream_on_s3_equals_a_backfill_and_resumes_after_a_kill(
    redis_server: RedisServer, s3_server: LocalS3, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    lines = [orjson.dumps(event_to_json(e)) for e in random_events(seed=41, n=400)]
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    backfilled = Settings(
        redis_url=_db(redis_server, LOCAL_DB), lake=str(tmp_path / "b"), _env_file=None
    )
    run_backfill(backfilled, path, checkpoint=False)
    want_rows = changelog_rows(backfilled)
    want_online = online_dump(backfilled)

    base = Settings(redis_url=_db(redis_server, STREAM_DB), _env_file=None)
    settings = s3_lake(base, s3_server.create_bucket(), tmp_path / "checkpoints")
    half = len(lines) // 2
    log = tmp_path / "stream.log"
    stream = StreamProcess(settings, log, free_port(), how="fork")
    try:
        publish(settings, lines[:half])
        stream.start()
        stream.wait_read(half, 120.0)
        stream.kill()  # SIGKILL: the next start resumes from its local checkpoint
        publish(settings, lines[half:])
        stream.start()
        assert converge(lambda: online_dump(settings), want_online, 60) == want_online
        assert converge(lambda: changelog_rows(settings), want_rows, 30) == want_rows
    finally:
        stream.kill()
    assert any(settings.checkpoint_root.rglob("*"))  # checkpoints on the local disk


# --- faults ----------------------------------------------------------------------------------

WRITERS = 3
BATCHES = 5


def _output(shard: int, batch: int) -> ShardOutput:
    """One shard's change rows of one batch: 4 freelancers, stamps unique to shard and batch."""
    stamp = BASE + (batch * WRITERS + shard) * SECOND
    rows = [(f"f-{shard}-{i}", stamp, empty_values(FREELANCER)) for i in range(4)]
    table = offline_layout.changelog_table(FREELANCER, rows)
    return ShardOutput(str(shard), {FREELANCER.name: table}, [], stamp)


def _write_concurrently(settings: Settings, batches: range) -> None:
    """Each writer (a sink partition, as each Bytewax worker holds one) commits its own shard's
    batches, all writers at once, each batch its own commit."""
    sink = ChangelogSink(settings, writers=WRITERS)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        part = sink.build_part("changelog", f"writer-{writer}", None)
        try:
            for batch in batches:
                part.write_batch([_output(writer, batch)])
                part.snapshot()  # an epoch ends: the batch is committed
        except BaseException as exc:
            errors.append(exc)
        finally:
            part.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


@pytest.mark.parametrize("delta_retries", [sinks.DELTA_COMMIT_RETRIES, 0])
def test_concurrent_commits_on_s3_land_once_each(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch, delta_retries: int
) -> None:
    """Writers race for the same log versions (conditional put: one wins, the others retry).
    With no retries left to delta-rs, the sink's own retry does it. A replay after a crash
    (fresh partitions, the same batches again, then new ones) adds only the new rows."""
    monkeypatch.setattr(sinks, "DELTA_COMMIT_RETRIES", delta_retries)
    monkeypatch.setattr(sinks, "COMMIT_BACKOFF_S", 0.05)
    if delta_retries == 0:  # each lost race costs one of the sink's attempts, not delta-rs's
        monkeypatch.setattr(sinks, "COMMIT_ATTEMPTS", 12)
    writes: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> None:
        writes.append(1)
        write_deltalake(*args, **kwargs)

    monkeypatch.setattr(sinks, "write_deltalake", counted)
    _write_concurrently(s3_settings, range(BATCHES))
    _write_concurrently(s3_settings, range(BATCHES + 2))  # replayed, then two more batches

    table = DeltaTable(offline_layout.changelog_uri(s3_settings, FREELANCER))
    rows = pl.from_arrow(table.to_pyarrow_table(columns=["freelancer_id", "event_timestamp"]))
    assert isinstance(rows, pl.DataFrame)
    assert rows.height == WRITERS * 4 * (BATCHES + 2)  # every row once: none lost, none twice
    assert rows.unique().height == rows.height
    commits = [
        c
        for c in table.history()
        if c.get("operation") == "WRITE" and c["operationMetrics"]["num_added_rows"] > 0
    ]
    assert len(commits) == WRITERS * (BATCHES + 2)  # the replayed batches were not committed
    for writer in range(WRITERS):
        stamp = BASE + ((BATCHES + 1) * WRITERS + writer) * SECOND
        assert table.transaction_version(f"shard-{writer}") == stamp
    if delta_retries == 0:  # the writers did race, and the sink wrote again what lost
        assert len(writes) > len(commits)


# --- configuration ---------------------------------------------------------------------------


def test_commits_on_s3_use_conditional_put_unless_the_user_chose() -> None:
    on_s3 = Settings(lake="s3://bucket/lake", _env_file=None)
    assert on_s3.storage_options == {"conditional_put": "etag"}
    chosen = Settings(lake="s3a://bucket/lake", aws_conditional_put="dynamo:locks", _env_file=None)
    assert chosen.storage_options == {"conditional_put": "dynamo:locks"}
    assert Settings(lake="/tmp/lake", _env_file=None).storage_options is None
    assert Settings(lake="gs://bucket/lake", _env_file=None).storage_options is None


def test_a_users_aws_conditional_put_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "etag-not-really")
    assert Settings(lake="s3://b/l", _env_file=None).storage_options == {
        "conditional_put": "etag-not-really"
    }


@pytest.mark.parametrize(
    ("lake", "message"),
    [
        ("ftp://x/lake", "BESTMATCH_LAKE: unsupported store ftp://"),
        ("s3://", "names no bucket"),
        ("s3:///lake", "names no bucket"),
    ],
)
def test_a_misconfigured_lake_is_one_line(
    lake: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESTMATCH_LAKE", lake)
    result = runner.invoke(app, ["compact"])
    assert result.exit_code == 2
    assert message in result.output and "BESTMATCH_LAKE" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line, wrapped at most once


def test_an_unreachable_or_missing_store_is_one_line(
    s3_server: LocalS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint nothing answers, and a bucket that does not exist: the real command, in a
    process of its own, says one line naming the variables; no traceback."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BESTMATCH_LAKE", f"s3://no-such-bucket-{free_port()}/lake")
    missing = subprocess.run(
        [sys.executable, "-m", "bestmatch", "compact"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=child_env(COLUMNS="300"),
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    result = runner.invoke(app, ["snapshot"], env={"COLUMNS": "300"})
    for code, output in ((missing.returncode, missing.stderr), (result.exit_code, result.output)):
        assert code == 2, output
        assert "Traceback" not in output
        lines = output.strip().splitlines()
        assert len(lines) == 1, output
        assert "BESTMATCH_LAKE" in lines[0] and "AWS_ENDPOINT_URL" in lines[0]
    assert "bucket" in missing.stderr.lower()
    assert "connect" in result.output.lower() or "refused" in result.output.lower()
