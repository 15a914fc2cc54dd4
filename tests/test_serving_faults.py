"""The service when things around it fail: no model yet, Redis stopped, Redis frozen.

A dedicated `redis-server` (stopped and started again on the same port, or frozen with SIGSTOP),
a real MLflow registry in tmp_path that starts empty, a small real LightGBM booster registered in
it, and the service on uvicorn. The service is never restarted: it recovers by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pytest
import redis

from features.online_layout import EntityUpdate, write_entities
from features.ranking import MODEL_FEATURES, RequestProposal, request_matrix
from features.settings import Settings
from features.specs import CLIENT, FREELANCER, JOB, Dtype, Entity, features_of
from serving import create_app
from tests.conftest import free_port
from tests.test_serving import Service, make_champion, register, serving_settings, tiny_booster

TIMEOUT_S = 0.05
RETRY_S = 0.2
BOUND_S = 1.0  # no answer may take longer, whatever Redis does (generous: a loaded test box)
STAMP_US = 1_767_600_000_000_000


class OwnRedis:
    """A `redis-server` this module may stop, start again on the same port, freeze and thaw."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [binary, *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)


def _values(entity: Entity, n: int) -> list[Any]:
    out: list[Any] = []
    for spec in features_of(entity):
        if spec.dtype is Dtype.INT:
            out.append(n % 7)
        elif spec.dtype is Dtype.FLOAT:
            out.append(10.0 + 3 * n)
        elif spec.dtype is Dtype.BOOL:
            out.append(n % 2 == 0)
        elif spec.dtype is Dtype.STRING:
            out.append(spec.categories[n % len(spec.categories)] if spec.categories else "US")
        elif spec.dtype is Dtype.STRINGS:
            out.append(("python", "sql")[: 1 + n % 2])
        else:
            out.append(STAMP_US)
    return out


FREELANCERS = [f"f-{i}" for i in range(20)]
REQUEST = {
    "job_id": "j-1",
    "client_id": "c-1",
    "proposals": [
        {
            "proposal_id": f"p-{i}",
            "freelancer_id": f,
            "bid_amount": 20.0 + 7 * i,
            "cover_letter": "sql",
        }
        for i, f in enumerate(FREELANCERS)
    ],
}


def fill(url: str, project: str) -> None:
    updates = [EntityUpdate(JOB, "j-1", _values(JOB, 1), STAMP_US)]
    updates.append(EntityUpdate(CLIENT, "c-1", _values(CLIENT, 2), STAMP_US))
    updates += [
        EntityUpdate(FREELANCER, f, _values(FREELANCER, i), STAMP_US)
        for i, f in enumerate(FREELANCERS)
    ]
    write_entities(redis.Redis.from_url(url), project, updates)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("own_redis"))
    yield server
    if server.process is not None:
        server.signal(signal.SIGCONT)
        server.stop()


@pytest.fixture(scope="module")
def settings_(tmp_path_factory: pytest.TempPathFactory, own_redis: OwnRedis) -> Settings:
    lake = tmp_path_factory.mktemp("faults") / "lake"
    tracking = f"sqlite:///{lake / 'mlflow.db'}"  # explicit: earlier tests export another
    settings = Settings(
        redis_url=own_redis.url, lake=str(lake), mlflow_tracking_uri=tracking, _env_file=None
    )
    fill(settings.redis_url, settings.feast_project)
    return settings


@pytest.fixture(scope="module")
def service(settings_: Settings) -> Iterator[Service]:
    config = serving_settings(redis_timeout_s=TIMEOUT_S, redis_retry_s=RETRY_S)
    with Service(create_app(settings_, config)) as running:
        yield running


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


@pytest.fixture(scope="module")
def champion(settings_: Settings, http: httpx.Client) -> lgb.Booster:
    """A registered champion, loaded by the running service (which started without one)."""
    booster = tiny_booster(list(MODEL_FEATURES), seed=7)
    make_champion(settings_, register(settings_, booster, list(MODEL_FEATURES)))
    deadline = time.monotonic() + 60
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, http.get("/readyz").text
        time.sleep(0.1)
    return booster


def test_without_a_model_the_service_lives_but_is_not_ready(
    http: httpx.Client, request: pytest.FixtureRequest
) -> None:
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["model"] is None and "no model" in ready.json()["reasons"][0]
    answer = http.post("/v1/rank", json=REQUEST)
    assert answer.status_code == 503 and "no model" in answer.json()["detail"]
    request.getfixturevalue("champion")  # a champion appears: served without a restart
    assert http.get("/readyz").json()["model"] == {"name": "bestmatch-ranker", "version": "1"}
    assert http.post("/v1/rank", json=REQUEST).status_code == 200


def _timed(http: httpx.Client) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    answer = http.post("/v1/rank", json=REQUEST)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return answer.json(), elapsed


def _scores(body: dict[str, Any]) -> dict[str, float]:
    return {r["proposal_id"]: r["score"] for r in body["ranked"]}


def _scores_without_store(booster: lgb.Booster) -> dict[str, float]:
    proposals = [
        RequestProposal(p["bid_amount"], p["cover_letter"], {}) for p in REQUEST["proposals"]
    ]
    scores = booster.predict(request_matrix({}, proposals))
    return dict(
        zip([p["proposal_id"] for p in REQUEST["proposals"]], np.asarray(scores), strict=True)
    )


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(name)


def _wait_ready(http: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready again"
        time.sleep(0.05)


def test_a_stopped_redis_gives_degraded_answers_then_recovers(
    http: httpx.Client, champion: lgb.Booster, own_redis: OwnRedis, settings_: Settings
) -> None:
    healthy, _ = _timed(http)
    assert healthy["degraded"] is False and healthy["missing"]["freelancers"] == []
    before = _metric(http, "bestmatch_degraded_answers_total")

    own_redis.stop()
    answers = [_timed(http) for _ in range(15)]
    assert all(body["degraded"] for body, _ in answers)
    assert max(elapsed for _, elapsed in answers) < BOUND_S
    body = answers[0][0]
    assert body["missing"] == {"job": True, "client": True, "freelancers": FREELANCERS}
    expected = _scores_without_store(champion)
    for proposal_id, score in _scores(body).items():  # scored with every store value missing
        assert score == pytest.approx(expected[proposal_id], abs=1e-12)
    ready = http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["online_store"] is False
    assert http.get("/healthz").status_code == 200
    assert _metric(http, "bestmatch_degraded_answers_total") >= before + 15
    assert _metric(http, "bestmatch_online_store_up") == 0

    own_redis.start()  # same port, empty: the flow would refill it; here the test does
    fill(settings_.redis_url, settings_.feast_project)
    _wait_ready(http)
    recovered, _ = _timed(http)
    assert recovered["degraded"] is False
    assert _scores(recovered) == _scores(healthy)


def test_a_frozen_redis_costs_at_most_the_timeout(
    http: httpx.Client, champion: lgb.Booster, own_redis: OwnRedis
) -> None:
    healthy, _ = _timed(http)
    own_redis.signal(signal.SIGSTOP)
    try:
        answers = [_timed(http) for _ in range(15)]
        assert all(body["degraded"] for body, _ in answers)
        slowest = max(elapsed for _, elapsed in answers)
        assert slowest < BOUND_S
        started = time.perf_counter()
        assert http.get("/readyz").status_code == 503
        assert time.perf_counter() - started < BOUND_S
    finally:
        own_redis.signal(signal.SIGCONT)
    _wait_ready(http)
    recovered, _ = _timed(http)
    assert recovered["degraded"] is False and _scores(recovered) == _scores(healthy)
    print(f"frozen Redis: slowest degraded answer {slowest * 1000:.1f} ms")


def test_a_frozen_redis_holds_only_the_requests_that_wait_on_it(
    settings_: Settings, champion: lgb.Booster, own_redis: OwnRedis
) -> None:
    """The store is read on the event loop (redis.asyncio), never by a blocking call: while a
    ranking request waits for a stalled Redis (here up to 2 s), the same process answers
    `/healthz` at once, and the ranking request is answered degraded within its timeout."""
    stall_s = 2.0
    config = serving_settings(redis_timeout_s=stall_s, redis_retry_s=RETRY_S)
    with Service(create_app(settings_, config)) as running, running.client() as http:
        _wait_ready(http)
        healthy, _ = _timed(http)  # connected before the store stalls
        assert healthy["degraded"] is False
        answered: list[tuple[dict[str, Any], float]] = []

        def rank() -> None:
            with running.client() as own:
                answered.append(_timed(own))

        own_redis.signal(signal.SIGSTOP)
        try:
            waiting = threading.Thread(target=rank)
            waiting.start()
            time.sleep(0.3)  # the ranking request is waiting for Redis now
            started = time.perf_counter()
            health = http.get("/healthz")
            health_s = time.perf_counter() - started
            still_waiting = waiting.is_alive()
            waiting.join(timeout=30)
        finally:
            own_redis.signal(signal.SIGCONT)
        assert health.status_code == 200 and health_s < stall_s / 2, health_s
        assert still_waiting  # healthz did not wait for it
        [(body, elapsed)] = answered
        assert body["degraded"] is True and elapsed < stall_s + BOUND_S
        _wait_ready(http)
        recovered, _ = _timed(http)
        assert recovered["degraded"] is False and _scores(recovered) == _scores(healthy)
    print(
        f"healthz during the stall: {health_s * 1000:.1f} ms; the stalled ranking {elapsed:.2f} s"
    )
