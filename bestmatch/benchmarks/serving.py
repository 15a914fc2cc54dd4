"""`bestmatch bench serve`: the ranking service against what a Feast user would write, side by side.

Both answer the same varied requests (a different job and 50 different freelancers each time,
drawn from the entities the lake's change logs know) from the same online store (Redis) with the
same champion model:

- the service: `serving.run` in its own process (uvicorn, one worker), driven over HTTP/1.1
  keep-alive by a lean client (pre-encoded requests on raw sockets) with 1 client, then with 16
  concurrent clients;
- the floor: the least a ranking endpoint does, in its own process (uvicorn on uvloop, one
  FastAPI route): read the body, one `MGET` of the proposals' freelancers (each one's model row as
  packed float64, written under a key of its own for the bench and deleted after), LightGBM's
  `Booster.predict` of those rows, a sorted JSON answer. No validation, no request-time features,
  no metrics, no log. What the machine allows a Python service at all, measured in the same run
  by the same client: on a VM whose speed drifts, the service's figures are read against it;
- the Feast path: `FeatureStore.get_online_features` for the request's rows (one per proposal, with
  the job, client and freelancer keys), then the same `request_matrix`, the same booster and a
  sorted JSON answer, called in this process by 1 and by 16 threads. It has no HTTP at all, so the
  ratio flatters Feast.

Each setting runs `rounds` times for `duration_s` (after a warm-up), the two sides taking turns so
a burst of load elsewhere on the (shared) machine hits both; the medians of p50, p99 and requests
per second are reported, with the goals, and the CPU each answer cost the answering process (robust
to that load). The service's own steps are timed in-process too (CPU: the Redis read,
the model's input, the predictor), so a reader sees where the time goes; and the two sides' scores
for one request are compared.

It reads what is there and writes nothing but the service's serving log and the floor's rows
(under `bestmatch:bench-floor:<run>:`, deleted at the end and expiring within the hour should the
bench be killed): it needs a backfilled store and a registered champion (`bestmatch backfill`,
`bestmatch train`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bestmatch.benchmarks.load import (
    Connection,
    Figures,
    Runs,
    drive_many,
    drive_one,
    http_request,
)
from bestmatch.services import child_env, free_port
from features.errors import ModelError
from features.settings import Settings

PROPOSALS = 50
CLIENTS = (1, 16)
GOAL_P50_MS = 1.5
GOAL_P99_MS = 3.0
GOAL_RPS = 900.0
GOAL_RATIO = 0.35
_WORDS = ("python", "sql", "react", "design", "seo", "aws", "data", "go", "writing", "excel")


@dataclass(frozen=True)
class ServeBench:
    requests: int
    proposals: int
    model_version: str
    workers: int
    service: dict[int, Runs]
    floor: dict[int, Runs]
    feast: dict[int, Runs]
    steps: dict[str, float]  # median ms of each step
    same_scores: bool
    log_rate: float = 0.1

    @property
    def ratio(self) -> float:
        """Service p50 / Feast-path p50, one client."""
        return self.service[1].p50_ms / self.feast[1].p50_ms

    def rows(self) -> list[tuple[str, str]]:
        one, many = self.service[min(self.service)], self.service[max(self.service)]
        saturated = max(f.rps for f in self.service.values())
        return [
            ("requests", f"{self.requests:,} distinct, {self.proposals} proposals each"),
            ("model", f"bestmatch-ranker v{self.model_version}"),
            ("service processes", f"{self.workers} worker{'s' if self.workers > 1 else ''}"),
            ("serving log rate", f"{self.log_rate:g} of requests"),
            *(
                (f"service, {n} client{'s' if n > 1 else ''}", f.line())
                for n, f in sorted(self.service.items())
            ),
            *(
                (f"floor (1 process), {n} client{'s' if n > 1 else ''}", f.line())
                for n, f in sorted(self.floor.items())
            ),
            *(
                (f"Feast path, {n} thread{'s' if n > 1 else ''}", f.line())
                for n, f in sorted(self.feast.items())
            ),
            (
                "goal: 1 client",
                f"p50 {one.p50_ms:.2f} ms (<= {GOAL_P50_MS:g}), "
                f"p99 {one.p99_ms:.2f} ms (<= {GOAL_P99_MS:g})",
            ),
            ("goal: saturated", f"{saturated:,.0f} req/s (>= {GOAL_RPS:,.0f})"),
            ("service / floor, 1 client", self.against_floor()),
            ("ratio p50 (service / Feast), 1 client", f"{self.ratio:.2f}x (<= {GOAL_RATIO:g}x)"),
            (
                "ratio p50, concurrent",
                f"{many.p50_ms / self.feast[max(self.feast)].p50_ms:.2f}x",
            ),
            *(
                (f"in-process CPU: {step}", f"{ms:.3f} ms (median)")
                for step, ms in self.steps.items()
            ),
            ("same scores on both paths", "yes" if self.same_scores else "NO"),
        ]

    def against_floor(self) -> str:
        one, floor = self.service[min(self.service)], self.floor[min(self.floor)]
        return (
            f"p50 {one.p50_ms / floor.p50_ms:.2f}x (+{one.p50_ms - floor.p50_ms:.2f} ms), "
            f"p99 {one.p99_ms / floor.p99_ms:.2f}x"
        )


# --- requests ------------------------------------------------------------------------------------


def entity_ids(settings: Settings, entity: Any) -> list[str]:
    """The ids the lake's change log knows for an entity (what the online store holds)."""
    import polars as pl

    from features.offline_layout import changelog_uri

    frame = pl.read_delta(
        changelog_uri(settings, entity),
        columns=[entity.join_key],
        storage_options=settings.storage_options,
    )
    return sorted(frame[entity.join_key].unique().to_list())


def make_requests(
    settings: Settings, count: int, proposals: int, seed: int
) -> list[dict[str, Any]]:
    from features.specs import CLIENT, FREELANCER, JOB

    rng = random.Random(seed)
    jobs, clients = entity_ids(settings, JOB), entity_ids(settings, CLIENT)
    freelancers = entity_ids(settings, FREELANCER)
    if not jobs or len(freelancers) < proposals:
        msg = (
            f"the lake knows {len(jobs)} jobs and {len(freelancers)} freelancers: "
            f"backfill a market with at least {proposals} freelancers first"
        )
        raise ModelError(msg)
    out = []
    for n in range(count):
        chosen = rng.sample(freelancers, proposals)
        out.append(
            {
                "job_id": rng.choice(jobs),
                "client_id": rng.choice(clients) if clients else None,
                "proposals": [
                    {
                        "proposal_id": f"bench-{n}-{i}",
                        "freelancer_id": f,
                        "bid_amount": round(rng.lognormvariate(3.8, 0.6), 2),
                        "cover_letter": " ".join(rng.choices(_WORDS, k=rng.randint(5, 60))),
                    }
                    for i, f in enumerate(chosen)
                ],
            }
        )
    return out


def serve_child() -> None:
    """The service's process: settings, port and log rate come as JSON on stdin."""
    from serving import ServingSettings, run

    given = orjson.loads(sys.stdin.buffer.read())
    settings = Settings(**given["settings"], _env_file=None)  # type: ignore[call-arg]
    config = ServingSettings(log_rate=given["log_rate"], workers=given["workers"])
    run(settings, "127.0.0.1", given["port"], serving=config, log_level="warning")


def _start_child(module: str, function: str, given: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A Python process running `module.function()`, which reads `given` as JSON on stdin."""
    code = f"from {module} import {function}; {function}()"
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=child_env())
    assert process.stdin is not None
    process.stdin.write(orjson.dumps(given))
    process.stdin.close()
    return process


def start_service(
    settings: Settings, port: int, log_rate: float, workers: int = 1
) -> subprocess.Popen[bytes]:
    given = {
        "settings": settings.model_dump(),
        "port": port,
        "log_rate": log_rate,
        "workers": workers,
    }
    return _start_child("bestmatch.benchmarks.serving", "serve_child", given)


def wait_ready(
    port: int, process: subprocess.Popen[bytes], timeout_s: float = 300.0
) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            msg = "the service stopped while starting (see its log above)"
            raise ModelError(msg)
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            body: dict[str, Any] = answer.json()
            if answer.status_code == 200:
                return body
            if body.get("model") is None and "no model" in " ".join(body.get("reasons", [])):
                msg = f"the service has no model: {body['reasons']} (run `bestmatch train`)"
                raise ModelError(msg)
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            msg = f"the service was not ready after {timeout_s:.0f} s"
            raise ModelError(msg)
        time.sleep(0.2)


# --- the floor -----------------------------------------------------------------------------------

FLOOR_PREFIX = "bestmatch:bench-floor"
FLOOR_EXPIRY_S = 3600


def write_floor_rows(settings: Settings, bodies: Sequence[dict[str, Any]], prefix: str) -> None:
    """The floor's rows, under `prefix` (expiring after `FLOOR_EXPIRY_S`): each freelancer the
    requests name, as its model row (its store columns as serving computes them; NaN elsewhere,
    and for an unknown freelancer)."""
    import redis

    from serving.store import FeatureReader, connect

    async def read_rows() -> dict[bytes, bytes]:
        reader = FeatureReader(connect(settings.redis_url, 5.0), settings.feast_project, 0.0)
        rows: dict[bytes, bytes] = {}
        try:
            for body in bodies:
                ids = [p["freelancer_id"] for p in body["proposals"]]
                found = await reader.read(body["job_id"], body.get("client_id"), ids)
                for fid, stamped in found.freelancers.items():
                    if stamped is not None and stamped.columns is not None:
                        rows[f"{prefix}{fid}".encode()] = stamped.columns.row.tobytes()
        finally:
            await reader.aclose()
        return rows

    rows = asyncio.run(read_rows())
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5.0)
    try:
        with client.pipeline(transaction=False) as pipe:
            for key, row in rows.items():
                pipe.set(key, row, ex=FLOOR_EXPIRY_S)
            pipe.execute()
    finally:
        client.close()


def start_floor(
    settings: Settings, port: int, booster: Any, bodies: Sequence[dict[str, Any]], prefix: str
) -> subprocess.Popen[bytes]:
    """Write the floor's rows under `prefix` and start its process."""
    write_floor_rows(settings, bodies, prefix)
    given = {
        "model": booster.model_to_string(),
        "redis_url": settings.redis_url,
        "prefix": prefix,
        "port": port,
    }
    return _start_child("bestmatch.benchmarks.serving_floor", "floor_child", given)


def drop_floor(settings: Settings, prefix: str) -> None:
    """Delete the floor's rows."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def _wait_answers(port: int, process: subprocess.Popen[bytes], raw: bytes) -> None:
    """Wait until the floor answers a request."""
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            msg = "the floor's process stopped while starting (see its log above)"
            raise ModelError(msg)
        try:
            conn = Connection(port)
        except OSError:
            if time.monotonic() > deadline:
                msg = "the floor's process did not answer within 120 s"
                raise ModelError(msg) from None
            time.sleep(0.2)
            continue
        try:
            status, answer = conn.ask(raw)
        finally:
            conn.close()
        if status != 200:
            msg = f"the floor answered {status}: {answer[:300]!r}"
            raise ModelError(msg)
        return


# --- the Feast path ------------------------------------------------------------------------------


class FeastRanker:
    """What a Feast user writes: `get_online_features`, the shared request features, the model."""

    def __init__(self, store: Any, booster: Any) -> None:
        from features.feast_repo import feature_refs
        from features.ranking import STORE_FEATURES

        self.store = store
        self.booster = booster
        wanted = set(STORE_FEATURES)
        self.refs = [ref for ref in feature_refs() if ref.split(":", 1)[1] in wanted]

    def rank(self, request: dict[str, Any]) -> bytes:
        from features.ranking import RequestProposal, request_matrix
        from features.specs import FEATURES_BY_NAME, FREELANCER

        proposals = request["proposals"]
        rows = [
            {
                "job_id": request["job_id"],
                "client_id": request.get("client_id") or "",
                "freelancer_id": p["freelancer_id"],
            }
            for p in proposals
        ]
        online = self.store.get_online_features(features=self.refs, entity_rows=rows).to_dict()
        names = [ref.split(":", 1)[1] for ref in self.refs]
        fl = [n for n in names if FEATURES_BY_NAME[n].entity == FREELANCER]
        job = {n: online[n][0] for n in names if n not in fl}
        inputs = [
            RequestProposal(p["bid_amount"], p["cover_letter"], {n: online[n][i] for n in fl})
            for i, p in enumerate(proposals)
        ]
        scores = self.booster.predict(request_matrix(job, inputs), num_threads=1)
        order = np.argsort(-scores, kind="stable")
        ranked = [
            {
                "proposal_id": proposals[i]["proposal_id"],
                "freelancer_id": proposals[i]["freelancer_id"],
                "rank": r + 1,
                "score": float(scores[i]),
            }
            for r, i in enumerate(order.tolist())
        ]
        return orjson.dumps({"job_id": request["job_id"], "ranked": ranked})


def time_calls(
    call: Callable[[dict[str, Any]], Any],
    requests: Sequence[dict[str, Any]],
    seconds: float,
    threads: int,
) -> Figures:
    """`threads` threads calling `call` on the requests in turn for `seconds`."""
    lock = threading.Lock()
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds

    def worker(k: int) -> None:
        mine = []
        i = k * 7919
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            call(requests[i % len(requests)])
            mine.append(time.perf_counter() - t)
            i += 1
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return Figures(latencies, time.perf_counter() - started)


# --- the service's own steps, in-process ---------------------------------------------------------


def step_costs(
    settings: Settings, model: Any, requests: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Median CPU ms of each step of `POST /v1/rank`, over the requests (no HTTP). CPU time of
    this thread, where every step runs (the model predicts with one thread, as the service does),
    so neither another process taking the core nor this process's other threads (the MLflow
    download's monitor, Arrow's pools) count. Timed on a second pass over the requests, as a
    running service meets them: its memo has decoded each entity before (the first pass only
    warms it up)."""
    from serving.inputs import UNKNOWN, request_input
    from serving.ranker import job_values, rank_proposals
    from serving.schemas import RankRequest
    from serving.store import FeatureReader, connect

    loop = asyncio.new_event_loop()  # the reader's client connects on it, and stays there
    reader = FeatureReader(connect(settings.redis_url, 1.0), settings.feast_project, 0.0)
    costs: dict[str, list[float]] = {
        "parse + validate": [],
        "Redis read (one round trip)": [],
        "model input (features.ranking.input_matrix; freelancers' columns cached)": [],
        "predict (compiled trees)" if model.compiled else "predict (LightGBM)": [],
        "whole step (read, features, score, JSON)": [],
        "predict (LightGBM's C API, for comparison)": [],
    }
    raws = [orjson.dumps(request) for request in requests]
    for raw in [*raws, *raws]:
        t0 = time.thread_time()
        body = RankRequest.model_validate(json.loads(raw))  # as FastAPI reads a JSON body
        t1 = time.thread_time()
        ids = [p.freelancer_id for p in body.proposals]
        found = loop.run_until_complete(reader.read(body.job_id, body.client_id, ids))
        t2 = time.thread_time()
        columns = {f: s.columns for f, s in found.freelancers.items() if s is not None}
        matrix = request_input(
            job_values(found),
            [columns.get(p.freelancer_id) or UNKNOWN for p in body.proposals],
            [p.bid_amount for p in body.proposals],
            [p.cover_letter for p in body.proposals],
        )
        t3 = time.thread_time()
        model.predict(matrix)
        t4 = time.thread_time()
        found = loop.run_until_complete(reader.read(body.job_id, body.client_id, ids))
        rank_proposals(model, body, found)
        t5 = time.thread_time()
        model.lightgbm_predict(matrix)
        t6 = time.thread_time()
        for values, cost in zip(
            costs.values(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True
        ):
            values.append(cost)
    loop.run_until_complete(reader.aclose())
    loop.close()
    timed = len(raws)  # the second pass
    return {name: statistics.median(values[-timed:]) * 1000 for name, values in costs.items()}


def _scores(answer: bytes) -> dict[str, float]:
    return {r["proposal_id"]: r["score"] for r in orjson.loads(answer)["ranked"]}


# --- the whole bench -----------------------------------------------------------------------------


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds so far of a process and its children, e.g. uvicorn's workers
    (Linux `/proc`; None elsewhere)."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, clock ticks)
    try:
        entries = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        stats[entry] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    if pid not in stats:
        return None
    tree, grown = {pid}, True
    while grown:
        grown = False
        for entry, (parent, _) in stats.items():
            if parent in tree and entry not in tree:
                tree.add(entry)
                grown = True
    ticks = sum(stats[entry][1] for entry in tree)
    return ticks / os.sysconf("SC_CLK_TCK")


def drive(port: int, pid: int, raws: Sequence[bytes], seconds: float, clients: int) -> Figures:
    before = _process_cpu_s(pid)
    if clients == 1:
        figures = drive_one(port, raws, seconds)
    else:
        figures = drive_many(port, raws, seconds, clients)
    after = _process_cpu_s(pid)
    cpu = after - before if after is not None and before is not None else None
    return dataclasses.replace(figures, cpu_s=cpu)


def _call(
    call: Callable[[dict[str, Any]], Any],
    bodies: Sequence[dict[str, Any]],
    seconds: float,
    threads: int,
) -> Figures:
    before = time.process_time()
    figures = time_calls(call, bodies, seconds, threads)
    return dataclasses.replace(figures, cpu_s=time.process_time() - before)


def bench_serve(
    settings: Settings,
    *,
    proposals: int = PROPOSALS,
    requests: int = 500,
    clients: Sequence[int] = CLIENTS,
    duration_s: float = 5.0,
    rounds: int = 3,
    warmup_s: float = 2.0,
    log_rate: float = 0.1,
    seed: int = 1,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> ServeBench:
    """Time the service, the floor and the Feast path on the same requests; check the service
    and Feast score alike.

    Each setting (side, number of clients) runs `rounds` times for `duration_s`, the sides taking
    turns, so a burst of load elsewhere on the machine hits both; medians are reported.
    """
    say = progress or (lambda _message: None)
    say("building requests from the lake's entities")
    bodies = make_requests(settings, requests, proposals, seed)
    port = free_port()
    say(f"starting the service on port {port} ({workers} worker{'s' if workers > 1 else ''})")
    process = start_service(settings, port, log_rate, workers)
    floor_process: subprocess.Popen[bytes] | None = None
    prefix = f"{FLOOR_PREFIX}:{uuid.uuid4().hex[:12]}:"
    service: dict[int, list[Figures]] = {n: [] for n in clients}
    floor: dict[int, list[Figures]] = {n: [] for n in clients}
    feast: dict[int, list[Figures]] = {n: [] for n in clients}
    try:
        ready = wait_ready(port, process)
        version = str(ready["model"]["version"])
        raws = [http_request(port, orjson.dumps(b), settings.api_key) for b in bodies]
        conn = Connection(port)
        status, served = conn.ask(raws[0])
        conn.close()
        if status != 200:
            msg = f"the service answered {status}: {served[:300]!r}"
            raise ModelError(msg)

        say("loading the model; timing the service's steps in-process")
        from serving.config import ServingSettings
        from serving.model import load_version

        # the service's compiled model, from the same cache
        model = load_version(settings, version, compiled_cache=ServingSettings().compiled_models)
        steps = step_costs(settings, model, bodies[: min(len(bodies), 300)])

        floor_port = free_port()
        say(f"starting the floor on port {floor_port} (1 process)")
        floor_process = start_floor(settings, floor_port, model.booster, bodies, prefix)
        floor_raws = [http_request(floor_port, orjson.dumps(b), None) for b in bodies]
        _wait_answers(floor_port, floor_process, floor_raws[0])

        say("loading Feast (a slow import)")
        from training.feast_reference import feast_store

        with tempfile.TemporaryDirectory(prefix="bestmatch-feast-") as workdir:
            ranker = FeastRanker(feast_store(settings, Path(workdir)), model.booster)
            feast_scores, served_scores = _scores(ranker.rank(bodies[0])), _scores(served)
            same = feast_scores.keys() == served_scores.keys() and all(
                abs(feast_scores[k] - served_scores[k]) <= 1e-9 for k in feast_scores
            )
            for n in clients:  # warm-ups, not counted
                drive(port, process.pid, raws, warmup_s, n)
                drive(floor_port, floor_process.pid, floor_raws, warmup_s, n)
                _call(ranker.rank, bodies, warmup_s, n)
            for round_ in range(1, rounds + 1):
                for n in clients:
                    say(f"round {round_}/{rounds}: {n} client(s), {duration_s:g} s each side")
                    service[n].append(drive(port, process.pid, raws, duration_s, n))
                    floor[n].append(drive(floor_port, floor_process.pid, floor_raws, duration_s, n))
                    feast[n].append(_call(ranker.rank, bodies, duration_s, n))
    finally:
        process.terminate()  # uvicorn shuts down cleanly: the serving log is flushed
        if floor_process is not None:
            floor_process.terminate()
        process.wait(timeout=60)
        if floor_process is not None:
            floor_process.wait(timeout=60)
        drop_floor(settings, prefix)
    return ServeBench(
        requests,
        proposals,
        version,
        workers,
        {n: Runs(runs) for n, runs in service.items()},
        {n: Runs(runs) for n, runs in floor.items()},
        {n: Runs(runs) for n, runs in feast.items()},
        steps,
        same,
        log_rate,
    )
