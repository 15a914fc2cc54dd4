"""The ranking service against real things: uvicorn on a free port, Redis filled by the feature
flow's backfill, a LightGBM ranker trained on a small simulated market and registered in MLflow.

One market serves the module: its events are backfilled into a lake (for training) and, cut at a
moment T, into a second Redis database, which the service reads. So the service's features at T
can be compared with the training pipeline's point-in-time features at T for the same proposals.
The alias tests come last: they move the champion.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import lightgbm as lgb
import mlflow
import numpy as np
import orjson
import polars as pl
import pytest
import redis
import schemathesis
import uvicorn
from fastapi import FastAPI
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from bestmatch.services import child_env
from bestmatch.simulator import simulate
from features.errors import ModelError
from features.offline_layout import TIMESTAMP_COLUMN
from features.online_layout import EntityUpdate, read_entities, write_entities
from features.ranking import MODEL_FEATURES, STORE_FEATURES
from features.settings import Settings
from features.specs import CLIENT, FREELANCER, JOB, features_of
from flows.runner import run_backfill
from serving import ServingSettings, create_app
from serving.model import LoadedRanker
from serving.ranker import best_match_count
from serving.serving_log import serving_log_uri
from serving.state import open_state
from serving.store import FeatureReader, connect, read_stamped
from tests.conftest import RedisServer, free_port
from training import registry
from training.dataset import build_training_set
from training.pipeline import fit_models, model_inputs
from training.point_in_time import historical_features
from training.proposals import GROUP_COLUMN, read_market_events
from training.ranker import RankerParams

HOURS = 12  # the small market's label horizon and window (as in test_training)


# --- helpers shared with test_serving_faults -------------------------------------------------


class Service:
    """A real uvicorn server for `app` on a free loopback port, in a thread: its protocol and
    logging as `serving.run` has them (httptools, no access log)."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            http="httptools",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        deadline = time.monotonic() + 180
        while not self.server.started:
            if not self.thread.is_alive():
                msg = "the service did not start (see the log above)"
                raise RuntimeError(msg)
            assert time.monotonic() < deadline, "the service took over 3 minutes to start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def serving_settings(**overrides: Any) -> ServingSettings:
    """The service's settings for a test: a patient store timeout (a loaded 2-core box can stall a
    50 ms read), unless a test about timeouts sets its own."""
    values: dict[str, Any] = {"log_rate": 0.0, "model_poll_s": 0.2, "redis_timeout_s": 1.0}
    values |= overrides
    return ServingSettings(_env_file=None, **values)  # type: ignore[call-arg]


def register(settings: Settings, booster: lgb.Booster, features: list[str]) -> str:
    """Log a booster as a new version of `bestmatch-ranker` (the training code's own path)."""
    client = registry.tracking_client(settings)
    rng = np.random.default_rng(0)
    example = pl.DataFrame(rng.random((8, len(features))), schema=features, orient="row")
    with mlflow.start_run(experiment_id=registry.experiment_id(client)):
        return registry.log_ranker(booster, features, example, metadata={})


def make_champion(settings: Settings, version: str) -> None:
    client = registry.tracking_client(settings)
    client.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, version)


def tiny_booster(features: list[str], seed: int) -> lgb.Booster:
    """A real lambdarank booster on random data: for tests about the service, not the model."""
    rng = np.random.default_rng(seed)
    x = rng.random((400, len(features)))
    y = (x[:, 0] * 3 + rng.random(400)).astype(int).clip(0, 3)
    params = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "seed": seed}
    data = lgb.Dataset(x, label=y, group=[20] * 20, feature_name=features)
    return lgb.train(params, data, num_boost_round=10)


def proposal_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "proposal_id": row["proposal_id"],
        "freelancer_id": row["freelancer_id"],
        "bid_amount": row["bid_amount"],
        "cover_letter": row["cover_letter"],
    }


# --- the market --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Market:
    settings: Settings  # the full backfill's lake (training, MLflow) and Redis db
    serving: Settings  # Redis cut at `moment`, the same MLflow, a lake for the serving log
    proposals: pl.DataFrame  # every proposal of the events
    job_id: str
    client_id: str
    moment: int  # µs: T, the time of the job's last proposal
    at_moment: pl.DataFrame  # the job's proposals submitted up to T
    training_set: Any


def _settings(root: Path, server: RedisServer, db: int, **more: Any) -> Settings:
    url = f"{server.url.rsplit('/', 1)[0]}/{db}"
    redis.Redis.from_url(url).flushdb()
    # Explicit: `mlflow.set_tracking_uri` (called by any earlier test) exports MLFLOW_TRACKING_URI.
    more.setdefault("mlflow_tracking_uri", f"sqlite:///{root / 'lake' / 'mlflow.db'}")
    return Settings(redis_url=url, lake=str(root / "lake"), _env_file=None, **more)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Market:
    root = tmp_path_factory.mktemp("serving_market")
    events = root / "events.jsonl"
    simulate(4, 7, events, jobs_per_day=40)
    full = _settings(root / "full", redis_server, db=13)
    run_backfill(full, events, checkpoint=False)

    from datetime import timedelta

    training_set = build_training_set(
        full, events, horizon=timedelta(hours=HOURS), window=timedelta(hours=HOURS)
    )
    ranker, _ = fit_models(training_set, RankerParams(seed=1, max_rounds=80))
    version = register(full, ranker.booster, list(ranker.features))
    make_champion(full, version)

    # T: the last proposal of the busiest job on the last day; Redis holds the market at T.
    proposals = read_market_events(events).proposals
    last_day = proposals[TIMESTAMP_COLUMN].dt.date().max()
    busiest = (
        proposals.filter(pl.col(TIMESTAMP_COLUMN).dt.date() == last_day)
        .group_by("job_id")
        .len()
        .sort(["len", "job_id"], descending=[True, False])
        .row(0, named=True)
    )
    job = proposals.filter(pl.col("job_id") == busiest["job_id"])
    moment = int(job[TIMESTAMP_COLUMN].dt.epoch("us").max())  # type: ignore[arg-type]
    cut = root / "cut.jsonl"
    with events.open("rb") as source, cut.open("wb") as sink:
        for line in source:
            if _event_us(line) <= moment:
                sink.write(line)
    serving = _settings(root / "cut", redis_server, db=14, mlflow_tracking_uri=full.tracking_uri)
    run_backfill(serving, cut, until=moment, checkpoint=False)
    return Market(
        settings=full,
        serving=serving,
        proposals=proposals,
        job_id=busiest["job_id"],
        client_id=job["client_id"][0],
        moment=moment,
        at_moment=job,
        training_set=training_set,
    )


def _event_us(line: bytes) -> int:
    from features.events import parse_time

    return parse_time(orjson.loads(line)["event_time"])


@pytest.fixture(scope="module")
def service(market: Market) -> Iterator[Service]:
    config = serving_settings(log_rate=1.0, log_flush_s=0.3, log_batch_rows=10_000)
    with Service(create_app(market.serving, config)) as running:
        yield running


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


def champion_booster(settings: Settings, version: str) -> lgb.Booster:
    registry.tracking_client(settings)
    booster = mlflow.lightgbm.load_model(f"models:/{registry.MODEL_NAME}/{version}")
    assert isinstance(booster, lgb.Booster)
    return booster


def _request(market: Market, **more: Any) -> dict[str, Any]:
    rows = market.at_moment.iter_rows(named=True)
    return {
        "job_id": market.job_id,
        "client_id": market.client_id,
        "proposals": [proposal_json(r) for r in rows],
        **more,
    }


# --- ranking -----------------------------------------------------------------------------------


def test_ranking_follows_the_scores_and_marks_the_best(http: httpx.Client, market: Market) -> None:
    answer = http.post("/v1/rank", json=_request(market, explain=True))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    ranked = body["ranked"]
    n = market.at_moment.height
    assert n >= 5 and len(ranked) == n
    assert body["job_id"] == market.job_id and body["degraded"] is False
    assert body["model"] == {"name": "bestmatch-ranker", "version": "1"}
    assert body["missing"] == {"job": False, "client": False, "freelancers": []}
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in ranked] == list(range(1, n + 1))
    assert {r["proposal_id"] for r in ranked} == set(market.at_moment["proposal_id"])
    best = best_match_count(n, 0.1, 10)
    assert [r["best_match"] for r in ranked] == [True] * best + [False] * (n - best)
    for r in ranked:
        reasons = r["explanation"]
        assert len(reasons) == 3
        sizes = [abs(x["contribution"]) for x in reasons]
        assert sizes == sorted(sizes, reverse=True)
        assert all(x["feature"] in MODEL_FEATURES for x in reasons)
    plain = http.post("/v1/rank", json=_request(market)).json()
    assert all(r["explanation"] is None for r in plain["ranked"])
    assert [r["score"] for r in plain["ranked"]] == scores


def test_best_match_rule() -> None:
    assert [best_match_count(n, 0.1, 10) for n in (1, 4, 5, 14, 15, 25, 99, 100, 500)] == [
        1,
        1,
        1,
        1,
        2,
        3,
        10,
        10,
        10,
    ]


def test_scores_equal_the_training_pipeline_at_the_same_moment(
    http: httpx.Client, market: Market
) -> None:
    """No skew: the service (Redis at T, request-time features, the registered booster) scores
    exactly as the training path does (point-in-time features at T from the Delta change logs,
    `model_frame`, the same booster) for the same proposals."""
    rows = market.at_moment.with_columns(
        pl.lit(market.moment).cast(pl.Datetime("us", "UTC")).alias(TIMESTAMP_COLUMN)
    )
    offline = historical_features(market.settings, rows)
    inputs = model_inputs(offline.with_columns(pl.col("job_id").alias(GROUP_COLUMN)))
    booster = champion_booster(market.settings, "1")
    expected = dict(zip(offline["proposal_id"], booster.predict(inputs.to_numpy()), strict=True))
    assert inputs["job_budget_max"].null_count() == 0  # the job was known at T
    assert inputs["client_jobs_30d"].null_count() == 0

    answer = http.post("/v1/rank", json=_request(market)).json()
    served = {r["proposal_id"]: r["score"] for r in answer["ranked"]}
    assert served.keys() == expected.keys()
    for proposal_id, score in served.items():
        assert score == pytest.approx(expected[proposal_id], rel=0, abs=1e-12), proposal_id


def test_the_online_read_equals_the_layouts_reader_on_the_model_features(market: Market) -> None:
    ids = market.at_moment["freelancer_id"].to_list() + ["f-nobody"]
    asked = [(JOB, market.job_id), (CLIENT, market.client_id), (JOB, "j-nobody")]
    asked += [(FREELANCER, f) for f in ids]

    async def read() -> list[Any]:
        client = connect(market.serving.redis_url, 1.0)
        try:
            return await read_stamped(client, market.serving.feast_project, asked)
        finally:
            await client.aclose()

    stamped = asyncio.run(read())
    plain = read_entities(
        redis.Redis.from_url(market.serving.redis_url), market.serving.feast_project, asked
    )
    assert plain[2] is None and plain[-1] is None
    for (entity, _), mine, theirs in zip(asked, stamped, plain, strict=True):
        if theirs is None:
            assert mine is None
            continue
        assert mine is not None and mine.stamp_us is not None and mine.stamp_us <= market.moment
        every = dict(zip((spec.name for spec in features_of(entity)), theirs, strict=True))
        assert mine.values == {n: v for n, v in every.items() if n in STORE_FEATURES}


def test_a_changed_entity_is_read_anew(redis_server: RedisServer) -> None:
    """Decoded entities are remembered by their raw reply: a change (new bytes) is a new read."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/15"
    raw = redis.Redis.from_url(url)
    raw.flushdb()
    names = [spec.name for spec in features_of(CLIENT)]

    async def main() -> None:
        reader = FeatureReader(connect(url, 1.0), "p", retry_s=0.0)
        for stamp, values in ((1_000_000, [1, 0]), (2_000_000, [2, 1]), (2_000_000, [3, 1])):
            write_entities(raw, "p", [EntityUpdate(CLIENT, "c-1", values, stamp)])
            found = (await reader.read("j-none", "c-1", ["f-none"])).client
            assert found is not None
            assert dict(found.values) == dict(zip(names, values, strict=True))
            assert found.stamp_us == stamp
        await reader.aclose()

    asyncio.run(main())


def test_unknown_entities_are_scored_with_missing_values_and_named(
    http: httpx.Client, market: Market
) -> None:
    known = market.at_moment.row(0, named=True)
    request = {
        "job_id": "j-nobody",
        "client_id": "c-nobody",
        "proposals": [
            proposal_json(known),
            {"proposal_id": "p-x", "freelancer_id": "f-nobody", "bid_amount": 30.0},
            {"proposal_id": "p-y", "freelancer_id": "f-nobody", "bid_amount": 60.0},
        ],
    }
    body = http.post("/v1/rank", json=request).json()
    assert body["degraded"] is False
    assert body["missing"] == {"job": True, "client": True, "freelancers": ["f-nobody"]}
    assert all(math.isfinite(r["score"]) for r in body["ranked"])
    no_client = http.post("/v1/rank", json={**request, "client_id": None}).json()
    assert no_client["missing"]["client"] is None  # not asked: nothing to look up


# --- bad input -----------------------------------------------------------------------------------

_GOOD = {"proposal_id": "p-1", "freelancer_id": "f-1", "bid_amount": 10.0, "cover_letter": "hi"}


def _with(**fields: Any) -> dict[str, Any]:
    return {"job_id": "j-1", "proposals": [_GOOD], **fields}


def _proposal(**fields: Any) -> dict[str, Any]:
    return _with(proposals=[{**_GOOD, **fields}])


BAD_REQUESTS = {
    "no proposals": (_with(proposals=[]), "proposals"),
    "501 proposals": (
        _with(proposals=[{**_GOOD, "proposal_id": f"p-{i}"} for i in range(501)]),
        "proposals",
    ),
    "duplicate ids": (
        _with(proposals=[_GOOD, {**_GOOD, "freelancer_id": "f-2"}]),
        "proposals",
    ),
    "proposals not a list": (_with(proposals={"a": 1}), "proposals"),
    "no job_id": ({"proposals": [_GOOD]}, "job_id"),
    "job_id a number": (_with(job_id=7), "job_id"),
    "empty job_id": (_with(job_id=""), "job_id"),
    "job_id of 129 chars": (_with(job_id="j" * 129), "job_id"),
    "empty proposal_id": (_proposal(proposal_id=""), "proposals[0].proposal_id"),
    "freelancer_id of 129 chars": (
        _proposal(freelancer_id="f" * 129),
        "proposals[0].freelancer_id",
    ),
    "no freelancer_id": (
        _with(proposals=[{"proposal_id": "p", "bid_amount": 1.0}]),
        "proposals[0].freelancer_id",
    ),
    "bid a string": (_proposal(bid_amount="45"), "proposals[0].bid_amount"),
    "bid a bool": (_proposal(bid_amount=True), "proposals[0].bid_amount"),
    "bid zero": (_proposal(bid_amount=0), "proposals[0].bid_amount"),
    "bid negative": (_proposal(bid_amount=-3.5), "proposals[0].bid_amount"),
    "explain a string": (_with(explain="yes"), "explain"),
    "cover letter too long": (_proposal(cover_letter="x" * 10_001), "proposals[0].cover_letter"),
    "client_id a list": (_with(client_id=["c"]), "client_id"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_that_names_the_field(http: httpx.Client, case: str) -> None:
    request, field = BAD_REQUESTS[case]
    answer = http.post("/v1/rank", json=request)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["detail"].startswith(f"{field}:"), body
    assert body["errors"][0]["field"] == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (
            b'{"job_id":"j","proposals":[{"proposal_id":"p","freelancer_id":"f","bid_amount":NaN}]}',
            "proposals[0].bid_amount",
        ),
        (
            b'{"job_id":"j","proposals":[{"proposal_id":"p","freelancer_id":"f",'
            b'"bid_amount":Infinity}]}',
            "proposals[0].bid_amount",
        ),
        (
            b'{"job_id":"j","proposals":[{"proposal_id":"p","freelancer_id":"f","bid_amount":1e999}]}',
            "proposals[0].bid_amount",
        ),
        (b'{"job_id": "j", "proposals": [', "body"),
        (b"[1, 2]", "body"),
        (b"", "body"),
    ],
)
def test_non_numbers_and_broken_json_get_422(http: httpx.Client, raw: bytes, field: str) -> None:
    answer = http.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(field), answer.text


def test_a_body_that_is_not_utf8_gets_400_naming_the_body(http: httpx.Client) -> None:
    answer = http.post(
        "/v1/rank", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("body:")


def test_an_integer_bid_is_a_number(http: httpx.Client) -> None:
    answer = http.post("/v1/rank", json=_proposal(bid_amount=45))
    assert answer.status_code == 200, answer.text


def test_an_oversized_body_gets_413_with_or_without_a_length(http: httpx.Client) -> None:
    big = b'{"job_id": "' + b"j" * (7 * 1024 * 1024) + b'"}'
    answer = http.post("/v1/rank", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("body:")

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * (1024 * 1024)

    chunked = http.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    json_type = {"content-type": "application/json"}
    small = http.post("/v1/rank", content=iter([orjson.dumps(_with())]), headers=json_type)
    assert small.status_code == 200, small.text


def test_the_largest_valid_request_is_served(http: httpx.Client) -> None:
    proposals = [
        {**_GOOD, "proposal_id": f"p-{i}", "freelancer_id": f"f-{i}", "cover_letter": "x" * 10_000}
        for i in range(500)
    ]
    answer = http.post("/v1/rank", json=_with(proposals=proposals))
    assert answer.status_code == 200
    assert len(answer.json()["ranked"]) == 500


# --- the other routes ----------------------------------------------------------------------------


def test_health_ready_and_metrics(http: httpx.Client, market: Market) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model"] == {"name": "bestmatch-ranker", "version": "1"}
    http.post("/v1/rank", json=_request(market))
    text = http.get("/metrics").text
    for name in (
        "bestmatch_rank_seconds_bucket",
        "bestmatch_feature_fetch_seconds_bucket",
        "bestmatch_degraded_answers_total 0.0",
        'bestmatch_model_info{name="bestmatch-ranker",version="1"} 1.0',
        "bestmatch_model_compiled 1.0",  # its scores come from the compiled trees
        'bestmatch_feature_age_seconds_count{entity="freelancer"}',
        'bestmatch_http_errors_total{status="422"}',
    ):
        assert name in text, name
    ages = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('bestmatch_feature_age_seconds_sum{entity="job"}')
    ]
    assert ages and ages[0] > 0


def test_served_feature_vectors_are_logged_to_delta(http: httpx.Client, market: Market) -> None:
    http.post("/v1/rank", json=_request(market, job_id=market.job_id))
    uri = serving_log_uri(market.serving)
    deadline = time.monotonic() + 30
    frame = pl.DataFrame()
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            frame = pl.read_delta(uri).filter(pl.col("job_id") == market.job_id)
            if frame.height >= market.at_moment.height:
                break
        time.sleep(0.2)
    assert frame.height >= market.at_moment.height
    logged = frame.sort("served_at").tail(market.at_moment.height).sort("proposal_id")
    rows = market.at_moment.with_columns(
        pl.lit(market.moment).cast(pl.Datetime("us", "UTC")).alias(TIMESTAMP_COLUMN)
    )
    offline = historical_features(market.settings, rows).sort("proposal_id")
    assert logged["proposal_id"].to_list() == offline["proposal_id"].to_list()
    for name in STORE_FEATURES:
        assert logged[name].to_list() == offline[name].to_list(), name
    assert set(logged["model_version"]) == {"1"}
    assert logged["score"].is_not_null().all()
    # when each entity last changed, as served: known for every entity here, never after the
    # moment the stores were built up to
    for kind in ("job", "client", "freelancer"):
        stamps = logged[f"{kind}_stamp"].dt.epoch("us")
        assert stamps.is_not_null().all(), kind
        assert (stamps <= market.moment).all(), kind


def test_an_api_key_is_needed_once_configured(market: Market) -> None:
    locked = market.serving.model_copy(update={"api_key": "s3cret-key"})
    with Service(create_app(locked, serving_settings())) as running, running.client() as http:
        request = _request(market)
        assert http.post("/v1/rank", json=request).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        denied = http.post("/v1/rank", json=request, headers=wrong)
        assert denied.status_code == 401
        assert "s3cret" not in denied.text and denied.json()["detail"].startswith("Authorization")
        good = {"Authorization": "Bearer s3cret-key"}
        assert http.post("/v1/rank", json=request, headers=good).status_code == 200
        assert http.get("/healthz").status_code == 200


def test_middleware_added_by_a_user_applies_to_the_ranking_route(market: Market) -> None:
    """/v1/rank is an ordinary route of the app: what a user adds around it (their own
    middleware, CORS) sees and shapes its answers, good and bad, as it does every other route's."""
    from fastapi.middleware.cors import CORSMiddleware

    app = create_app(market.serving, serving_settings())
    seen: list[tuple[str, str]] = []

    @app.middleware("http")
    async def trace(request: Any, call_next: Any) -> Any:
        seen.append((request.method, request.url.path))
        response = await call_next(request)
        response.headers["x-traced"] = "yes"
        return response

    app.add_middleware(CORSMiddleware, allow_origins=["https://board.example"])
    origin = {"Origin": "https://board.example"}
    with Service(app) as running, running.client(headers=origin) as http:
        good = http.post("/v1/rank", json=_request(market))
        bad = http.post("/v1/rank", json=_with(proposals=[]))
        health = http.get("/healthz")
    assert good.status_code == 200 and bad.status_code == 422 and health.status_code == 200
    for answer in (good, bad, health):
        assert answer.headers["x-traced"] == "yes"
        assert answer.headers["access-control-allow-origin"] == "https://board.example"
    assert seen == [("POST", "/v1/rank"), ("POST", "/v1/rank"), ("GET", "/healthz")]


# --- the OpenAPI schema, fuzzed ------------------------------------------------------------------


_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_input_makes_the_service_answer_5xx(
    service: Service, mode: schemathesis.GenerationMode
) -> None:
    """Schemathesis on /openapi.json: valid and invalid requests to every route; every answer is
    documented, of the documented type and shape, and none is a 5xx."""
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/rank", "/healthz", "/readyz", "/metrics"}
    if mode is schemathesis.GenerationMode.NEGATIVE:  # GET routes take no input to break
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(base_url=service.url, checks=_CHECKS)

        fuzz()


_GARBAGE_PROBE = """
import asyncio, gc, sys
import orjson
from features.settings import Settings
from serving import ServingSettings, create_app

given = orjson.loads(sys.stdin.buffer.read())
settings = Settings(**given["settings"], _env_file=None)
# every request sampled; the background threads quiet (no registry poll, no write)
quiet = ServingSettings(_env_file=None, log_rate=1.0, log_flush_s=3600, model_poll_s=3600)
app = create_app(settings, quiet)
bodies = [orjson.dumps(body) for body in given["bodies"]]
statuses = []

async def send(message):
    if message["type"] == "http.response.start":
        statuses.append(message["status"])

def scope(body):  # what uvicorn hands the app for a request
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/rank", "raw_path": b"/v1/rank", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }

async def answers():
    for _ in range(20):
        for body in bodies:
            async def receive(body=body):
                return {"type": "http.request", "body": body, "more_body": False}
            await app(scope(body), receive, send)

async def main():
    lifespan_in, lifespan_out = asyncio.Queue(), asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_in.get, lifespan_out.put)
    )
    await lifespan_in.put({"type": "lifespan.startup"})
    assert (await lifespan_out.get())["type"] == "lifespan.startup.complete"
    await answers()  # warm: what is built once (tables, memo, connections) is built
    gc.collect()
    # counted twice: the first count also takes what start-up left for the collector (MLflow's
    # SQLAlchemy registry objects, seen once whatever the number of requests), the second only
    # what answering makes
    for _ in range(2):
        gc.disable()
        await answers()
        found = gc.collect()
    gc.enable()
    await lifespan_in.put({"type": "lifespan.shutdown"})
    assert (await lifespan_out.get())["type"] == "lifespan.shutdown.complete"
    await lifespan
    return found

found = asyncio.run(main())
print(orjson.dumps({"statuses": statuses, "found": found}).decode())
"""


def test_answering_leaves_no_garbage_for_the_cyclic_collector(market: Market) -> None:
    """A request's objects are freed when it ends, not by the cyclic GC: nothing of `POST
    /v1/rank` (the app's middleware and routing, FastAPI's validation and dependencies, the
    read, features, predict, explain, the log's sample) builds a reference cycle. (numpy's
    `ctypes.data_as` did, twice a request: it kept each matrix alive until a collection, which
    then paused the service for 11-18 ms.) Counted in a process of its own:
    in this one, the module's running services poll the registry, whose garbage would count."""
    request = _request(market)
    given = {
        "settings": market.serving.model_dump(),
        "bodies": [request, {**request, "explain": True}],
    }
    done = subprocess.run(
        [sys.executable, "-c", _GARBAGE_PROBE],
        input=orjson.dumps(given),
        capture_output=True,
        timeout=300,
        check=False,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    answer = orjson.loads(done.stdout.splitlines()[-1])
    assert answer["statuses"] == [200] * 120
    assert answer["found"] == 0, f"{answer['found']} objects left for the cyclic GC"


# --- the benchmark ---------------------------------------------------------------------------


def test_bench_serve_times_both_paths_on_the_same_requests(market: Market) -> None:
    from bestmatch.benchmarks.serving import FLOOR_PREFIX, bench_serve

    bench = bench_serve(
        market.serving,
        proposals=5,
        requests=10,
        duration_s=0.3,
        rounds=1,
        warmup_s=0.1,
        log_rate=0.5,
    )
    assert bench.same_scores and bench.model_version == "1"
    assert set(bench.service) == set(bench.floor) == set(bench.feast) == {1, 16}
    for runs in (*bench.service.values(), *bench.floor.values()):
        assert runs.runs[0].errors == 0 and runs.rps > 0
    labels = [label for label, _ in bench.rows()]
    assert "service, 1 client" in labels and "Feast path, 16 threads" in labels
    assert "floor (1 process), 16 clients" in labels and "service / floor, 1 client" in labels
    assert "ratio p50 (service / Feast), 1 client" in labels
    assert dict(bench.rows())["serving log rate"] == "0.5 of requests"
    # the floor's rows are gone with it
    client = redis.Redis.from_url(market.serving.redis_url)
    assert not list(client.scan_iter(match=f"{FLOOR_PREFIX}:*"))
    client.close()


def test_bench_cluster_serves_alike_from_a_cluster_and_one_redis(market: Market) -> None:
    from bestmatch.benchmarks.cluster import bench_cluster

    bench = bench_cluster(
        market.serving, proposals=5, requests=10, duration_s=0.3, rounds=1, warmup_s=0.1
    )
    assert bench.same_ranking and bench.masters == 3
    held = redis.Redis.from_url(market.serving.redis_url).dbsize()
    assert 0 < bench.copied <= held
    for runs in (*bench.single.values(), *bench.cluster.values()):
        assert runs.runs[0].errors == 0 and runs.rps > 0
    rows = dict(bench.rows())
    assert rows["goal: p50, 1 client"].startswith(f"{bench.ratio(1):.2f}x")
    assert "cluster / one Redis, 16 clients" in rows


# --- the champion alias (last: these move it) ----------------------------------------------------


def test_an_alias_move_swaps_the_model_under_load_without_a_failed_request(
    service: Service, market: Market
) -> None:
    request = _request(market)
    first = champion_booster(market.settings, "1")
    seen: list[list[tuple[int, str, float]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def hammer(out: list[tuple[int, str, float]]) -> None:
        with service.client() as http:
            while not stop.is_set():
                started = time.perf_counter()
                answer = http.post("/v1/rank", json=request)
                elapsed = time.perf_counter() - started
                version = answer.json()["model"]["version"] if answer.status_code == 200 else ""
                out.append((answer.status_code, version, elapsed))

    threads = [threading.Thread(target=hammer, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    booster = tiny_booster(list(MODEL_FEATURES), seed=2)
    version = register(market.settings, booster, list(MODEL_FEATURES))
    make_champion(market.settings, version)
    deadline = time.monotonic() + 60
    while not any(v == version for out in seen for _, v, _ in out[-3:]):
        assert time.monotonic() < deadline, "the new champion was not swapped in"
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()

    answers = [a for out in seen for a in out]
    assert {status for status, _, _ in answers} == {200}
    for out in seen:  # each client sees the old model, then the new one, never back
        versions = [v for _, v, _ in out]
        switch = versions.index(version)
        assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {version}
    after = service.client().post("/v1/rank", json=request).json()
    assert after["model"]["version"] == version
    rows = market.at_moment.with_columns(
        pl.lit(market.moment).cast(pl.Datetime("us", "UTC")).alias(TIMESTAMP_COLUMN)
    )
    offline = historical_features(market.settings, rows)
    inputs = model_inputs(offline.with_columns(pl.col("job_id").alias(GROUP_COLUMN))).to_numpy()
    new_scores = dict(zip(offline["proposal_id"], booster.predict(inputs), strict=True))
    for r in after["ranked"]:
        assert r["score"] == pytest.approx(new_scores[r["proposal_id"]], abs=1e-12)
    assert not np.allclose(first.predict(inputs), booster.predict(inputs))
    slowest = max(elapsed for _, _, elapsed in answers)
    print(f"{len(answers)} answers during the swap, slowest {slowest * 1000:.1f} ms")


def test_a_champion_with_other_features_is_refused(service: Service, market: Market) -> None:
    with service.client() as http:
        serving_now = http.get("/readyz").json()["model"]["version"]
        other = [*MODEL_FEATURES[:-1], "shoe_size"]
        bad = register(market.settings, tiny_booster(other, seed=3), other)
        make_champion(market.settings, bad)
        deadline = time.monotonic() + 30
        while "bestmatch_model_load_failures_total 1.0" not in http.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model"]["version"] == serving_now
        assert http.post("/v1/rank", json=_request(market)).json()["model"]["version"] == (
            serving_now
        )
    # A fresh service refuses to start on it, and says why.
    with pytest.raises(ModelError, match=r"shoe_size.*cover_letter_job_skills"):
        open_state(market.serving, serving_settings())


def test_loaded_ranker_predicts_as_booster_predict_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The predictor kept per model (one C call) scores exactly as `Booster.predict` does, and
    the ranker falls back to `Booster.predict` where that predictor cannot be built."""
    booster = tiny_booster(list(MODEL_FEATURES), seed=3)
    ranker = LoadedRanker("m", "1", booster, tuple(MODEL_FEATURES))
    assert ranker.predictor is not None, "LightGBM's C API is no longer where MatrixPredictor looks"
    rng = np.random.default_rng(7)
    for rows in (1, 2, 50, 500):
        matrix = rng.normal(0.0, 50.0, size=(rows, len(MODEL_FEATURES)))
        matrix[rng.random(matrix.shape) < 0.3] = np.nan
        expected = booster.predict(matrix, num_threads=1)
        assert (ranker.predict(matrix).view(np.uint64) == expected.view(np.uint64)).all()
        strided = np.asfortranarray(matrix)  # not row-major: copied, same scores
        assert (ranker.predict(strided).view(np.uint64) == expected.view(np.uint64)).all()
        shares = booster.predict(matrix, pred_contrib=True, num_threads=1)
        assert shares.shape == (rows, len(MODEL_FEATURES) + 1)
        assert (ranker.contributions(matrix).view(np.uint64) == shares.view(np.uint64)).all()
    assert ranker.predict(np.empty((0, len(MODEL_FEATURES)))).shape == (0,)
    with pytest.raises(ValueError, match="columns"):
        ranker.predict(np.zeros((2, 3)))
    with monkeypatch.context() as patched:  # a LightGBM that keeps its library elsewhere
        patched.delattr("lightgbm.basic._LIB")
        fallback = LoadedRanker("m", "1", booster, tuple(MODEL_FEATURES))
    assert fallback.predictor is None
    assert (fallback.predict(matrix).view(np.uint64) == expected.view(np.uint64)).all()
