"""`run(..., workers=2)`: two uvicorn worker processes on one port, against real things.

A real `redis-server` (the session's), a small real LightGBM booster registered in MLflow on
SQLite, and `serving.run` in a child process given explicit settings while its environment points
elsewhere (so a worker that read the environment again would be seen). Which worker answered is
read from prometheus_client's own per-process files in the folder `run` makes for them (under the
child's TMPDIR). The same requests go to a one-process service; the answers must be equal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import redis
from deltalake import DeltaTable
from prometheus_client.multiprocess import MultiProcessCollector

from bestmatch.services import free_port
from features.ranking import MODEL_FEATURES
from features.settings import Settings
from serving import ServingSettings, create_app
from serving.app import METRICS_ENV, SINGLE_ACCEPT_ENV, WORKER_ENV, _worker_environment
from serving.metrics import ServingMetrics, forget_dead_workers
from serving.serving_log import serving_log_uri
from tests.conftest import RedisServer
from tests.test_serving import Service, make_champion, register, serving_settings, tiny_booster
from tests.test_serving_faults import FREELANCERS, REQUEST, fill

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
MAX_REQUESTS = 480
ROUND = 24  # requests sent at once, each on its own connection, 8 at a time
PATIENT_S = 5.0

# The child: `run` with the settings given as JSON, as a benchmark or a caller would pass them.
MAIN = """
import json, sys
from features.settings import Settings
from serving import ServingSettings, run

given = json.loads(sys.argv[1])
run(
    Settings.model_validate(given["settings"]),
    "127.0.0.1",
    int(sys.argv[2]),
    serving=ServingSettings.model_validate(given["serving"]),
    workers=int(sys.argv[3]),
    log_level="info",
)
"""


@pytest.fixture(scope="module")
def settings_(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Settings:
    lake = tmp_path_factory.mktemp("workers") / "lake"
    url = f"{redis_server.url.rsplit('/', 1)[0]}/12"
    settings = Settings(
        redis_url=url,
        lake=str(lake),
        mlflow_tracking_uri=f"sqlite:///{lake / 'mlflow.db'}",  # explicit: see test_serving
        _env_file=None,
    )
    redis.Redis.from_url(url).flushdb()
    fill(settings.redis_url, settings.feast_project)
    booster = tiny_booster(list(MODEL_FEATURES), seed=11)
    make_champion(settings, register(settings, booster, list(MODEL_FEATURES)))
    return settings


class Workers:
    """`serving.run(..., workers=N)` in a child process on a free port."""

    def __init__(
        self,
        settings: Settings,
        config: ServingSettings,
        workdir: Path,
        processes: int = WORKERS,
        own_group: bool = False,
    ) -> None:
        """`own_group`: in a process group of its own, as a command started at a terminal is
        (a Ctrl-C there reaches every process of the group)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = workdir / "tmp"
        self.tmp.mkdir(parents=True)
        self.log = workdir / "workers.log"
        given = {
            "settings": settings.model_dump(mode="json"),
            "serving": config.model_dump(mode="json"),
        }
        env = dict(
            os.environ,
            TMPDIR=str(self.tmp),  # where `run` makes the workers' metrics folder
            # Wrong on purpose: the workers must use the settings `run` was given.
            BESTMATCH_REDIS_URL="redis://127.0.0.1:1/0",
            BESTMATCH_LAKE=str(workdir / "not-this-lake"),
            MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'not-this.db'}",
            BESTMATCH_SERVE_LOG_RATE="0",
        )
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", MAIN, json.dumps(given), str(self.port), str(processes)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0 if own_group else None,
            )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def metrics_dir(self) -> Path:
        (found,) = self.tmp.glob("bestmatch-metrics-*")
        return found

    def answered_by_pid(self) -> dict[int, float]:
        """Ranking requests each worker has answered, from its own metrics file."""
        counts = {}
        for path in self.metrics_dir().glob("histogram_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            samples = [
                s
                for m in MultiProcessCollector.merge([str(path)])
                for s in m.samples
                if s.name == "bestmatch_rank_seconds_count"
            ]
            counts[pid] = sum(s.value for s in samples)
        return counts

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


@pytest.fixture(scope="module")
def workers(settings_: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    # Every request logged; nothing written before shutdown, when both workers flush at once.
    # A patient store: on a loaded machine the 50 ms default would give degraded answers.
    config = serving_settings(
        log_rate=1.0, log_flush_s=600.0, model_poll_s=1.0, redis_timeout_s=PATIENT_S
    )
    running = Workers(settings_, config, tmp_path_factory.mktemp("workers_run"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _request(k: int) -> dict[str, Any]:
    """A request of its own: its proposal ids name it in the serving log."""
    proposals = [
        p | {"proposal_id": f"r{k}-{p['proposal_id']}", "bid_amount": p["bid_amount"] + k}
        for p in REQUEST["proposals"]
    ]
    return REQUEST | {"proposals": proposals}


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request on a connection of its own (a kept-alive one stays with one worker)."""
    answer = httpx.post(url + "/v1/rank", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(line_start)


def test_two_workers_answer_as_one_process_sum_metrics_and_log_every_request_once(
    workers: Workers, settings_: Settings
) -> None:
    sent: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    answered: dict[int, float] = {}
    with ThreadPoolExecutor(8) as pool:
        while len(sent) < MAX_REQUESTS:
            batch = [_request(k) for k in range(len(sent), len(sent) + ROUND)]
            answers += pool.map(lambda body: _post(workers.url, body), batch)
            sent += batch
            answered = workers.answered_by_pid()
            if len(answered) == WORKERS and all(answered.values()):
                break
    assert len(answered) == WORKERS and all(answered.values()), answered
    assert workers.process.pid not in answered
    assert sum(answered.values()) == len(sent)

    # Equal to one process's answers for the same requests (the same model, the same Redis).
    assert not any(answer["degraded"] for answer in answers)
    one_process = create_app(settings_, serving_settings(redis_timeout_s=PATIENT_S))
    with Service(one_process) as single, single.client() as http:
        for body, answer in zip(sent, answers, strict=True):
            alone = http.post("/v1/rank", json=body).json()
            assert answer == alone

    # /metrics sums over the workers, whichever answers the scrape.
    for _ in range(6):
        text = httpx.get(workers.url + "/metrics", timeout=10).text
        assert _metric(text, "bestmatch_rank_seconds_count") == len(sent)
        assert _metric(text, "bestmatch_rank_proposals_sum") == len(sent) * len(FREELANCERS)
        assert _metric(text, 'bestmatch_model_info{name="bestmatch-ranker",version="1"}') == 1
        assert _metric(text, "bestmatch_online_store_up") == 1
        assert _metric(text, "bestmatch_model_loads_total") == WORKERS
        assert _metric(text, "bestmatch_serving_log_rows_total") == 0  # all still queued
    metrics_dir = workers.metrics_dir()

    # SIGTERM to the parent: every worker stops and flushes its log; the metrics folder goes.
    assert workers.stop(signal.SIGTERM) == 0, workers.log.read_text()
    assert not metrics_dir.exists()
    uri = serving_log_uri(settings_)
    logged = pl.read_delta(uri)
    expected = [p["proposal_id"] for body in sent for p in body["proposals"]]
    assert logged.height == len(expected)
    assert sorted(logged["proposal_id"].to_list()) == sorted(expected)
    assert set(logged["model_version"]) == {"1"} and not logged["degraded"].any()
    # One append per worker, made at the same moment by two processes: neither lost.
    appends = [c for c in DeltaTable(uri).history() if c.get("operation") == "WRITE"]
    assert len(appends) == WORKERS


@pytest.mark.parametrize("processes", [1, WORKERS])
def test_a_ctrl_c_at_the_terminal_stops_the_service_with_every_sampled_request_written(
    settings_: Settings, tmp_path: Path, processes: int
) -> None:
    """A terminal's Ctrl-C sends SIGINT to every process of the command's group: the service
    (each worker, and the parent that supervises them) closes its serving log, and the log's
    writer process, in a process group of its own, writes what it holds rather than dying with
    it."""
    settings = settings_.model_copy(update={"lake": str(tmp_path / "lake")})
    config = serving_settings(log_rate=1.0, log_flush_s=600.0, redis_timeout_s=PATIENT_S)
    running = Workers(settings, config, tmp_path / "run", processes, own_group=True)
    try:
        running.wait_ready()
        sent = [_request(10_000 + k) for k in range(12)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda body: _post(running.url, body), sent))
        assert not any(answer["degraded"] for answer in answers)
        os.killpg(running.process.pid, signal.SIGINT)
        running.process.wait(timeout=60)
    finally:
        running.stop(signal.SIGKILL)
    logged = pl.read_delta(serving_log_uri(settings))
    expected = [p["proposal_id"] for body in sent for p in body["proposals"]]
    assert sorted(logged["proposal_id"].to_list()) == sorted(expected), running.log.read_text()
    # and no writer is left behind (its command line names the log)
    processes_now = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
    assert serving_log_uri(settings) not in processes_now.stdout


def test_the_worker_environment_is_put_back_and_its_folder_removed(settings_: Settings) -> None:
    before = {name: os.environ.get(name) for name in (WORKER_ENV, METRICS_ENV)}
    config = ServingSettings(_env_file=None, log_rate=0.5, workers=3)  # type: ignore[call-arg]
    with _worker_environment(settings_, config):
        given = json.loads(os.environ[WORKER_ENV])
        folder = Path(os.environ[METRICS_ENV])
        assert folder.is_dir() and given["metrics_dir"] == str(folder)
        assert Settings.model_validate(given["settings"]) == settings_
        assert ServingSettings.model_validate(given["serving"]) == config
    assert not folder.exists()
    assert {name: os.environ.get(name) for name in (WORKER_ENV, METRICS_ENV)} == before


def test_workers_accept_one_connection_at_a_time_unless_told_otherwise(
    settings_: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServingSettings(_env_file=None, workers=2)  # type: ignore[call-arg]
    monkeypatch.delenv(SINGLE_ACCEPT_ENV, raising=False)
    with _worker_environment(settings_, config):
        assert os.environ[SINGLE_ACCEPT_ENV] == "1"
    assert SINGLE_ACCEPT_ENV not in os.environ
    monkeypatch.setenv(SINGLE_ACCEPT_ENV, "0")  # the operator's choice stands
    with _worker_environment(settings_, config):
        assert os.environ[SINGLE_ACCEPT_ENV] == "0"
    assert os.environ[SINGLE_ACCEPT_ENV] == "0"


def test_a_new_model_puts_the_previous_one_at_zero() -> None:
    metrics = ServingMetrics()
    metrics.serving_model("bestmatch-ranker", "1")
    metrics.serving_model("bestmatch-ranker", "2")
    text = metrics.exposition().decode()
    assert _metric(text, 'bestmatch_model_info{name="bestmatch-ranker",version="1"}') == 0
    assert _metric(text, 'bestmatch_model_info{name="bestmatch-ranker",version="2"}') == 1


def test_the_live_gauges_of_a_gone_worker_are_dropped(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    for pid in (gone.pid, os.getpid()):
        for kind in ("gauge_livemax", "gauge_livemostrecent", "counter"):
            (tmp_path / f"{kind}_{pid}.db").touch()
    forget_dead_workers(str(tmp_path))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [f"counter_{gone.pid}.db"]
        + [
            f"{kind}_{os.getpid()}.db"
            for kind in ("counter", "gauge_livemax", "gauge_livemostrecent")
        ]
    )
