"""`bestmatch consistency` against real things: a simulated market backfilled by the real flow
into Redis and Delta, a registered ranker, the real service (FastAPI app, lifespan, serving-log
writer) answering real proposals, and the check reading the Delta serving log back.

One market serves the module; each test serves its own requests and checks only those
(`since_us`), and puts back whatever it changed in Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import orjson
import polars as pl
import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from bestmatch.cli import app
from bestmatch.consistency import (
    SERVING_LOG_TABLE,
    SKIPPED_MODEL_INPUTS,
    ConsistencyReport,
    FeatureCheck,
    check_consistency,
    consistency_figure,
)
from bestmatch.simulator import simulate
from features.errors import StoreError
from features.online_layout import (
    EntityUpdate,
    layout,
    read_entities,
    record_key,
    redis_key,
    write_entities,
)
from features.ranking import MODEL_FEATURES, STORE_FEATURES
from features.settings import Settings
from features.specs import CLIENT, FEATURES_BY_NAME, FREELANCER, JOB, features_of
from flows.runner import run_backfill
from serving import ServingSettings, create_app
from serving.ranker import freelancer_values, job_values
from serving.schemas import RankRequest
from serving.serving_log import TABLE, ServedRequest, ServingLog, serving_log_uri
from serving.store import FeatureReader, RequestFeatures, connect
from tests.conftest import RedisServer
from training import registry
from training.proposals import read_market_events

DB = 12  # this module's Redis database (test_serving uses 13-15)
FREELANCER_FEATURES = [n for n in STORE_FEATURES if FEATURES_BY_NAME[n].entity == FREELANCER]
OTHER_FEATURES = [n for n in STORE_FEATURES if n not in FREELANCER_FEATURES]
runner = CliRunner()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class World:
    settings: Settings
    http: TestClient
    proposals: pl.DataFrame  # every proposal of the events
    jobs: list[str]  # jobs with at least 3 proposals, busiest first


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[World]:
    root = tmp_path_factory.mktemp("consistency")
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{DB}"
    redis.Redis.from_url(url).flushdb()
    settings = Settings(
        redis_url=url,
        lake=str(root / "lake"),
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        _env_file=None,
    )
    events = root / "events.jsonl"
    simulate(2, 5, events, jobs_per_day=25)
    run_backfill(settings, events, checkpoint=False)
    _register_champion(settings)
    proposals = read_market_events(events).proposals
    jobs = (
        proposals.group_by("job_id")
        .len()
        .filter(pl.col("len") >= 3)
        .sort(["len", "job_id"], descending=[True, False])["job_id"]
        .to_list()
    )
    assert len(jobs) >= 8
    config = ServingSettings(_env_file=None, log_rate=1.0, log_flush_s=0.1, model_poll_s=60)  # type: ignore[call-arg]
    with TestClient(create_app(settings, config)) as http:
        yield World(settings, http, proposals, jobs)


def _register_champion(settings: Settings) -> None:
    """A real lambdarank booster on the model's features, registered as the champion: these
    tests are about the features the service read, not about the model's quality."""
    features = list(MODEL_FEATURES)
    rng = np.random.default_rng(0)
    x = rng.random((200, len(features)))
    data = lgb.Dataset(x, label=(x[:, 0] * 3).astype(int), group=[20] * 10, feature_name=features)
    params = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "seed": 1}
    booster = lgb.train(params, data, num_boost_round=3)
    client = registry.tracking_client(settings)
    example = pl.DataFrame(x[:4], schema=features, orient="row")
    with mlflow.start_run(experiment_id=registry.experiment_id(client)):
        version = registry.log_ranker(booster, features, example, metadata={})
    client.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, version)


def _request(world: World, job_id: str, *extra: str) -> dict[str, Any]:
    """The job's real proposals, plus proposals from the `extra` freelancer ids."""
    rows = world.proposals.filter(pl.col("job_id") == job_id).to_dicts()
    proposals = [
        {k: r[k] for k in ("proposal_id", "freelancer_id", "bid_amount", "cover_letter")}
        for r in rows
    ]
    proposals += [
        {"proposal_id": f"p-extra-{i}", "freelancer_id": f, "bid_amount": 20.0 + i}
        for i, f in enumerate(extra)
    ]
    return {"job_id": job_id, "client_id": rows[0]["client_id"], "proposals": proposals}


def _now_us() -> int:
    return time.time_ns() // 1000


def _rfc3339(stamp_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=stamp_us)).isoformat()


def _serve(world: World, requests: list[dict[str, Any]]) -> int:
    """Serve the requests; wait until the serving log holds their rows. Returns when it began."""
    since = _now_us()
    for request in requests:
        answer = world.http.post("/v1/rank", json=request)
        assert answer.status_code == 200, answer.text
        assert answer.json()["degraded"] is False
    _wait_for_rows(world.settings, since, sum(len(r["proposals"]) for r in requests))
    return since


def _wait_for_rows(settings: Settings, since: int, rows: int) -> None:
    uri = serving_log_uri(settings)
    deadline = time.monotonic() + 30
    while True:
        try:
            logged = (
                pl.scan_delta(uri)
                .filter(pl.col("served_at") >= pl.lit(since).cast(pl.Datetime("us", "UTC")))
                .select(pl.len())
                .collect()
                .item()
            )
        except Exception:  # the table's first version is not written yet
            logged = 0
        if logged >= rows:
            return
        assert time.monotonic() < deadline, f"the serving log holds {logged} of {rows} rows"
        time.sleep(0.05)


def _read(world: World, job_id: str, request: RankRequest) -> RequestFeatures:
    """The service's read of a request's entities (on an event loop of its own)."""

    async def read() -> RequestFeatures:
        reader = FeatureReader(connect(world.settings.redis_url, 1.0), "bestmatch", retry_s=0.0)
        try:
            ids = [p.freelancer_id for p in request.proposals]
            return await reader.read(job_id, request.client_id, ids)
        finally:
            await reader.aclose()

    return asyncio.run(read())


def _log_tampered(
    world: World,
    job_id: str,
    tamper: Callable[[dict[str, Any], dict[str, dict[str, Any]]], None],
) -> tuple[int, int]:
    """Log one request as the service would (the real reader, the real writer), with its store
    values changed by `tamper(job_and_client_values, freelancer_values)` before logging.
    Returns when it was served and its number of proposals."""
    request = RankRequest.model_validate(_request(world, job_id))
    found = _read(world, job_id, request)
    job = job_values(found)
    freelancers = {k: dict(v) for k, v in freelancer_values(found).items()}
    assert len(freelancers) >= 3 and None not in job.values()
    tamper(job, freelancers)
    n = len(request.proposals)
    since = _now_us()
    served = ServedRequest(
        _now_us(), request, "1", False, job, freelancers, np.zeros(n), np.arange(1, n + 1)
    )
    log = ServingLog(serving_log_uri(world.settings), batch_rows=10, flush_s=0.1, max_queued=4)
    log.offer(served)
    log.close()
    return since, n


def _checks(report: ConsistencyReport) -> dict[str, FeatureCheck]:
    return {c.name: c for c in report.features}


def _freelancers_of(world: World, job_id: str) -> list[str]:
    return world.proposals.filter(pl.col("job_id") == job_id)["freelancer_id"].to_list()


@dataclass
class _Saved:
    """A Redis hash and its serving record (what the service reads) as they were, to put back."""

    key: bytes
    mapping: dict[bytes, bytes]
    record_key: bytes
    record: bytes | None


def _save(world: World, entity_id: str) -> _Saved:
    client = redis.Redis.from_url(world.settings.redis_url)
    key = redis_key(world.settings.feast_project, FREELANCER, entity_id)
    rkey = record_key(world.settings.feast_project, FREELANCER, entity_id)
    return _Saved(key, client.hgetall(key), rkey, client.get(rkey))


def _restore(world: World, saved: _Saved) -> None:
    client = redis.Redis.from_url(world.settings.redis_url)
    client.delete(saved.key, saved.record_key)
    if saved.mapping:
        client.hset(saved.key, mapping=saved.mapping)  # type: ignore[arg-type]
    if saved.record is not None:
        client.set(saved.record_key, saved.record)


def _freelancer_values(world: World, freelancer_id: str) -> tuple[Any, ...]:
    client = redis.Redis.from_url(world.settings.redis_url)
    (values,) = read_entities(client, world.settings.feast_project, [(FREELANCER, freelancer_id)])
    assert values is not None
    return values


def _stamp(world: World, freelancer_id: str) -> int:
    saved = _save(world, freelancer_id)
    return int(saved.mapping[layout(FREELANCER).stamp_field])


# --- healthy ---------------------------------------------------------------------------------


def test_a_healthy_run_has_no_difference(world: World) -> None:
    requests = [_request(world, job_id) for job_id in world.jobs[:6]]
    since = _serve(world, requests)
    report = check_consistency(world.settings, since_us=since)

    proposals = sum(len(r["proposals"]) for r in requests)
    # Each request read each of its freelancers once: one row per (freelancer, request).
    freelancers = sum(len({p["freelancer_id"] for p in r["proposals"]}) for r in requests)
    assert report.verdict == "healthy" and report.healthy
    assert report.logged_rows == proposals and report.degraded_rows == 0
    assert report.requests == 6
    assert report.entity_rows == {"freelancer": freelancers, "job": 6, "client": 6}
    assert [c.name for c in report.features] == list(STORE_FEATURES)
    for check in report.features:
        assert check.problems == 0, check
        assert check.rows == report.entity_rows[check.entity]
        if check.name != "fl_job_success":  # null for new freelancers, in both stores
            assert check.both_missing == 0, check  # real values were compared, not nulls
        if FEATURES_BY_NAME[check.name].dtype.value in ("int64", "float64", "bool"):
            assert check.mean_relative_error == 0.0
    assert report.examples == ()
    assert {c.name for c in report.model_inputs} == set(MODEL_FEATURES) - set(SKIPPED_MODEL_INPUTS)
    assert all(c.problems == 0 and c.rows == proposals for c in report.model_inputs)

    data = orjson.loads(orjson.dumps(report.to_dict()))  # JSON-able
    assert data["verdict"] == "healthy"
    assert data["totals"] == {
        "rows": freelancers + 12,
        "mismatches": 0,
        "served_missing": 0,
        "offline_missing": 0,
        "model_input_differences": 0,
        "stale": 0,
    }
    assert len(data["features"]) == len(STORE_FEATURES)


# --- what it catches -------------------------------------------------------------------------


def test_a_corrupted_online_value_is_caught_exactly(world: World) -> None:
    """One freelancer's hourly rate changed in Redis (through the layout's own writer, at the
    stamp Redis holds): exactly the rows served with it mismatch, on that feature only."""
    jobs = world.jobs[6:8]
    shared = set(_freelancers_of(world, jobs[0])) - set(_freelancers_of(world, jobs[1]))
    victim = sorted(shared)[0]
    names = [spec.name for spec in features_of(FREELANCER)]
    rate = names.index("fl_hourly_rate")
    values = list(_freelancer_values(world, victim))
    assert values[rate] and values[rate] > 0
    true_rate = values[rate]
    values[rate] = true_rate * 1.5
    saved = _save(world, victim)
    client = redis.Redis.from_url(world.settings.redis_url)
    update = EntityUpdate(FREELANCER, victim, values, _stamp(world, victim))
    assert write_entities(client, world.settings.feast_project, [update]) == 1
    try:
        # The victim is served in three requests (the first job's, three times), plus one clean.
        requests = [_request(world, jobs[0])] * 3 + [_request(world, jobs[1])]
        since = _serve(world, requests)
    finally:
        _restore(world, saved)
    report = check_consistency(world.settings, since_us=since)

    assert report.verdict == "inconsistent"
    checks = _checks(report)
    bad = checks["fl_hourly_rate"]
    assert (bad.mismatches, bad.served_missing, bad.offline_missing) == (3, 0, 0)
    assert bad.max_relative_error == pytest.approx(1 / 3)
    assert bad.mean_relative_error == pytest.approx(3 * (1 / 3) / bad.rows)
    assert all(c.problems == 0 for name, c in checks.items() if name != "fl_hourly_rate")
    assert report.mismatches == 3
    assert [(e.entity_id, e.kind) for e in report.examples] == [(victim, "mismatch")] * 3
    example = report.examples[0]
    assert (example.served, example.offline) == (true_rate * 1.5, true_rate)
    assert example.feature == "fl_hourly_rate" and example.served_at.endswith("Z")
    inputs = {c.name: c for c in report.model_inputs}
    # The model's input differs where it reads the rate, once per request (one proposal each).
    differing = {n: c.mismatches for n, c in inputs.items() if c.problems}
    assert differing == {"fl_hourly_rate": 3, "bid_to_hourly_rate": 3}

    after = _serve(world, [_request(world, jobs[0])])  # restored: consistent again
    assert check_consistency(world.settings, since_us=after).healthy


def test_missing_values_on_either_side_are_counted(world: World) -> None:
    """A freelancer deleted from Redis (served missing), one Redis has but the flow never saw
    (offline missing), one neither store knows (both missing: consistent)."""
    job = world.jobs[8]
    present = _freelancers_of(world, job)
    gone = next(f for f in present if None not in _freelancer_values(world, f))
    ghost_values = _freelancer_values(world, gone)
    saved = _save(world, gone)
    ghost = _save(world, "f-ghost")
    client = redis.Redis.from_url(world.settings.redis_url)
    client.delete(saved.key, saved.record_key)
    update = EntityUpdate(FREELANCER, "f-ghost", ghost_values, 1_000_000)
    write_entities(client, world.settings.feast_project, [update])
    try:
        since = _serve(world, [_request(world, job, "f-ghost", "f-nobody")])
    finally:
        _restore(world, saved)
        _restore(world, ghost)
    report = check_consistency(world.settings, since_us=since)

    assert report.verdict == "inconsistent"
    checks = _checks(report)
    for name in FREELANCER_FEATURES:
        check = checks[name]
        assert (check.mismatches, check.served_missing, check.offline_missing) == (0, 1, 1), name
        assert check.both_missing >= 1  # f-nobody
    assert all(checks[name].problems == 0 for name in OTHER_FEATURES)
    assert report.served_missing == report.offline_missing == len(FREELANCER_FEATURES)
    kinds = {(e.entity_id, e.kind) for e in report.examples}
    assert kinds == {(gone, "served missing"), ("f-ghost", "offline missing")}


def test_degraded_answers_are_counted_not_compared(world: World) -> None:
    """Rows of a degraded answer (no store values) through the real serving-log writer."""
    since = _now_us()
    request = RankRequest.model_validate(_request(world, world.jobs[9]))
    n = len(request.proposals)
    served = ServedRequest(
        _now_us(),
        request,
        "1",
        True,
        {},
        {p.freelancer_id: {} for p in request.proposals},
        np.zeros(n),
        np.arange(1, n + 1),
    )
    log = ServingLog(serving_log_uri(world.settings), batch_rows=10, flush_s=0.1, max_queued=4)
    log.offer(served)
    log.close()
    report = check_consistency(world.settings, since_us=since)
    assert (report.logged_rows, report.degraded_rows, report.rows_compared) == (n, n, 0)
    assert report.verdict == "no rows" and report.healthy


def test_float_tolerance_and_exact_types_on_a_tampered_log(world: World) -> None:
    """Rows the real writer logs from real store reads, with values changed before logging: a
    float within the relative tolerance is equal, beyond it a mismatch; ints, bools, strings
    and skill lists must be equal exactly."""

    def tamper(job: dict[str, Any], freelancers: dict[str, dict[str, Any]]) -> None:
        first, second, third = list(freelancers)[:3]
        freelancers[first]["fl_bid_avg_7d"] *= 1 + 1e-12  # within 1e-9
        freelancers[second]["fl_bid_avg_7d"] *= 1 + 1e-6  # beyond
        freelancers[third]["fl_proposals_7d"] += 1
        freelancers[third]["fl_top_rated"] = not freelancers[third]["fl_top_rated"]
        freelancers[third]["fl_skills"] = (*freelancers[third]["fl_skills"], "cobol")
        job["job_budget_type"] = "fixed" if job["job_budget_type"] == "hourly" else "hourly"

    since, n = _log_tampered(world, world.jobs[10], tamper)

    report = check_consistency(world.settings, since_us=since)
    checks = _checks(report)
    expected = {
        "fl_bid_avg_7d": 1,
        "fl_proposals_7d": 1,
        "fl_top_rated": 1,
        "fl_skills": 1,
        "job_budget_type": 1,
    }
    assert {n: c.mismatches for n, c in checks.items() if c.problems} == expected
    assert checks["fl_bid_avg_7d"].max_relative_error == pytest.approx(1e-6, rel=1e-3)
    assert checks["job_skills"].mean_relative_error is None  # not a number
    loose = _checks(check_consistency(world.settings, since_us=since, tolerance=1e-5))
    assert loose["fl_bid_avg_7d"].mismatches == 0 and loose["fl_proposals_7d"].mismatches == 1
    codes = {c.name: c.mismatches for c in report.model_inputs}
    assert codes["job_budget_type_code"] == n  # every proposal of the request saw it


def test_a_value_served_before_a_newer_change_is_stale_not_a_mismatch(world: World) -> None:
    """A freelancer served as it was one change before its newest (what a store a little behind
    the flow serves): with the stamp of what was read it is consistent and counted stale; a log
    without stamps can only compare as of served_at, and calls it a mismatch."""
    from deltalake import DeltaTable

    from features.offline_layout import changelog_uri, record_values
    from serving.serving_log import EntityStamps, entity_stamps

    job = world.jobs[11]
    request = RankRequest.model_validate(_request(world, job))
    found = _read(world, job, request)
    job_vals = job_values(found)
    freelancers = {k: dict(v) for k, v in freelancer_values(found).items()}
    names = [spec.name for spec in features_of(FREELANCER)]
    changes = (
        pl.from_arrow(DeltaTable(changelog_uri(world.settings, FREELANCER)).to_pyarrow_table())
        .filter(pl.col("freelancer_id").is_in(list(freelancers)))
        .sort("freelancer_id", "event_timestamp", "created")
    )
    victim, before, differing = None, None, []
    for (freelancer,), rows in changes.group_by("freelancer_id", maintain_order=True):
        if rows.height < 2:
            continue
        old = dict(zip(names, record_values(FREELANCER, rows.row(-2, named=True)), strict=True))
        new = dict(zip(names, record_values(FREELANCER, rows.row(-1, named=True)), strict=True))
        differing = [n for n in FREELANCER_FEATURES if old[n] != new[n]]
        if differing:
            victim, before = str(freelancer), rows.row(-2, named=True)
            freelancers[victim] = {n: old[n] for n in FREELANCER_FEATURES}
            break
    assert victim is not None and before is not None, "no freelancer changed twice"
    stamp = int(before["event_timestamp"].timestamp() * 1_000_000)
    read = entity_stamps(found)
    stamps = EntityStamps(read.job, read.client, {**read.freelancers, victim: stamp})
    n = len(request.proposals)

    def log_once(kept: EntityStamps | None) -> int:
        since = _now_us()
        served = ServedRequest(
            _now_us(), request, "1", False, job_vals, freelancers, np.zeros(n), np.arange(1, n + 1)
        )
        log = ServingLog(serving_log_uri(world.settings), batch_rows=10, flush_s=0.1, max_queued=4)
        log.offer(served if kept is None else dataclasses.replace(served, stamps=kept))
        log.close()
        return since

    report = check_consistency(world.settings, since_us=log_once(stamps))
    checks = _checks(report)
    assert report.verdict == "healthy"
    assert {name: c.stale for name, c in checks.items() if c.stale} == dict.fromkeys(differing, 1)
    assert report.stale == len(differing) and report.to_dict()["totals"]["stale"] == len(differing)

    unstamped = check_consistency(world.settings, since_us=log_once(None))
    mismatched = {name: c.mismatches for name, c in _checks(unstamped).items() if c.problems}
    assert mismatched == dict.fromkeys(differing, 1)
    assert unstamped.stale == 0


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def env(world: World, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BESTMATCH_REDIS_URL", world.settings.redis_url)
    monkeypatch.setenv("BESTMATCH_LAKE", world.settings.lake)
    return world.settings


def test_the_command_prints_the_verdict_and_writes_json(
    env: Settings, world: World, tmp_path: Path
) -> None:
    since = _serve(world, [_request(world, world.jobs[11])])
    stamp = _rfc3339(since)
    out = tmp_path / "report.json"
    result = runner.invoke(
        app, ["consistency", "--since", stamp, "--json", str(out), "--fail-on-mismatch"]
    )
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output and "served vs offline, per feature" in result.output
    data = orjson.loads(out.read_bytes())
    assert data["verdict"] == "healthy" and data["totals"]["rows"] > 0


def test_the_command_fails_on_a_mismatch_only_when_asked(env: Settings, world: World) -> None:
    def tamper(job: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
        job["job_budget_min"] = -1.0

    since, _ = _log_tampered(world, world.jobs[12], tamper)
    stamp = _rfc3339(since)
    plain = runner.invoke(app, ["consistency", "--since", stamp])
    assert plain.exit_code == 0, plain.output
    assert "inconsistent" in plain.output and "mismatch: job_budget_min" in plain.output
    strict = runner.invoke(app, ["consistency", "--since", stamp, "--fail-on-mismatch"])
    assert strict.exit_code == 1


def test_no_serving_log_is_one_clear_line(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESTMATCH_REDIS_URL", redis_server.url)
    monkeypatch.setenv("BESTMATCH_LAKE", str(tmp_path / "empty-lake"))
    result = runner.invoke(app, ["consistency"])
    assert result.exit_code == 2
    assert "error: no serving log at" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    settings = Settings(redis_url=redis_server.url, lake=str(tmp_path), _env_file=None)
    with pytest.raises(StoreError, match="no serving log"):
        check_consistency(settings)
    bad = runner.invoke(app, ["consistency", "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since: must be RFC 3339" in bad.output


# --- the rest --------------------------------------------------------------------------------


def test_the_figure_and_the_tables(world: World) -> None:
    report = check_consistency(world.settings)
    figure = consistency_figure(report)
    assert len(figure.axes) == 2
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == list(STORE_FEATURES)[::-1]
    png = io.BytesIO()
    figure.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")
    header, rows = report.feature_table()
    assert len(rows) == len(STORE_FEATURES) and all(len(r) == len(header) for r in rows)
    labels = [label for label, _ in report.rows()]
    assert labels[0] == "verdict" and "mismatches" in labels


def test_the_table_name_is_servings(world: World) -> None:
    assert SERVING_LOG_TABLE == TABLE
    assert serving_log_uri(world.settings) == world.settings.lake_path(SERVING_LOG_TABLE)


def test_jobs_and_clients_are_checked_once_per_request(world: World) -> None:
    """A job with many proposals is one job row per request, not one per proposal."""
    since = _serve(world, [_request(world, world.jobs[13])] * 2)
    report = check_consistency(world.settings, since_us=since)
    assert report.entity_rows["job"] == report.entity_rows["client"] == 2
    assert {c.entity for c in report.features} == {FREELANCER.name, JOB.name, CLIENT.name}
