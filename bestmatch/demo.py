"""`bestmatch demo`: the whole platform end to end on this machine, ending in an HTML report.

1. simulate a marketplace (`--days`, `--jobs-per-day`, `--seed`);
2. backfill every day but the last into Redis and Delta (the flow in available-now mode);
3. start the ranking service, then stream the last day through the event bus (the same flow,
   continuous) at `--rate` events/s, timing how long sampled events take to reach Redis;
4. register the Feast objects, train the ranker on the point-in-time training set, register it
   in MLflow; the running service sees the `champion` alias move and loads it;
5. rank the open jobs of the last day through `POST /v1/rank` (a handful with explanations, then
   a timed loop over all of them), with every answer's feature vectors logged;
6. stop the service (the serving log is flushed) and run the consistency check on that log;
7. write the report (`<lake>/demo/report/index.html`, its figures as PNG, and `report.json`).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from bestmatch.console import console, print_table, progress
from bestmatch.services import ServiceProcess, ensure_redis
from features.errors import ServiceError
from features.events import parse_time
from features.settings import Settings

DAY_US = 86_400 * 1_000_000
FRESHNESS_EVERY = 5  # every 5th proposal of the streamed day is timed publish → Redis
WARM_UP_EVENTS = 500  # published first, before the timed part of the stream
STREAM_TRIGGER_S = 1.0  # the stream commits the change log at most once a second
MAX_PROPOSALS = 500  # CONTRACT §4


def split_last_day(events: Path, history: Path, live: Path) -> tuple[int, int]:
    """Split a time-ordered events file: everything before its last day, and the last day."""
    lines = events.read_bytes().splitlines(keepends=True)
    last = parse_time(orjson.loads(lines[-1])["event_time"])
    cut = last - last % DAY_US
    index = len(lines)
    while index > 0 and parse_time(orjson.loads(lines[index - 1])["event_time"]) >= cut:
        index -= 1
    history.write_bytes(b"".join(lines[:index]))
    live.write_bytes(b"".join(lines[index:]))
    return index, len(lines) - index


def reset_online(client: redis.Redis, settings: Settings) -> int:
    """Delete the project's entities (Feast's hashes and the serving records) and the event bus
    from Redis (and nothing else there): the demo's own stores start empty, so an earlier run's
    newer values cannot mask this one's. Returns how many entities were deleted."""
    from features.online_layout import RECORD_PREFIX, layout
    from features.specs import ENTITIES

    hashes = [layout(entity).key_prefix for entity in ENTITIES]
    prefixes = (*hashes, *(RECORD_PREFIX + prefix for prefix in hashes))  # and serving records
    project = settings.feast_project.encode()
    pattern = b"*" + project  # Feast project names are letters, digits and underscores
    keys = [
        key
        for key in client.scan_iter(match=pattern, count=1000)
        if key.startswith(prefixes) and key.endswith(project)
    ]
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    client.delete(settings.stream_key)
    return sum(not key.startswith(RECORD_PREFIX) for key in keys)


# --- the open jobs of the streamed day -------------------------------------------------------


@dataclass
class OpenJob:
    """A job posted on the streamed day and not hired by its end, with its proposals so far."""

    job_id: str
    client_id: str
    title: str
    posted_at: str
    proposals: list[dict[str, Any]] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)  # proposal id → the client's furthest

    def request(self, explain: bool) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "client_id": self.client_id,
            "proposals": self.proposals[:MAX_PROPOSALS],
            "explain": explain,
        }


_ACTION_ORDER = ("viewed", "archived", "shortlisted", "messaged", "hired")


def open_jobs(live: Path, min_proposals: int = 5) -> list[OpenJob]:
    """Jobs posted on the streamed day, not hired, with at least `min_proposals` proposals, most
    proposals first; each with its proposals in arrival order and what the client did so far."""
    jobs: dict[str, OpenJob] = {}
    hired: set[str] = set()
    for line in live.read_bytes().splitlines():
        try:
            event = orjson.loads(line)
            kind = event["event_type"]
            if kind == "job_posted":
                jobs[event["job_id"]] = OpenJob(
                    event["job_id"], event["client_id"], event["title"], event["event_time"]
                )
            elif kind == "proposal_submitted" and event["job_id"] in jobs:
                jobs[event["job_id"]].proposals.append(
                    {
                        "proposal_id": event["proposal_id"],
                        "freelancer_id": event["freelancer_id"],
                        "bid_amount": float(event["bid_amount"]),
                        "cover_letter": event["cover_letter"],
                    }
                )
            elif kind == "proposal_action" and event["job_id"] in jobs:
                job, action = jobs[event["job_id"]], event["action"]
                if action == "hired":
                    hired.add(job.job_id)
                before = job.actions.get(event["proposal_id"])
                if action in _ACTION_ORDER and (
                    before is None or _ACTION_ORDER.index(action) > _ACTION_ORDER.index(before)
                ):
                    job.actions[event["proposal_id"]] = action
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a dirty line: the flow sent it to the dead letters
    for job in jobs.values():  # a repeated proposal event is one proposal
        job.proposals = list({p["proposal_id"]: p for p in job.proposals}.values())
    found = [
        j for j in jobs.values() if j.job_id not in hired and len(j.proposals) >= min_proposals
    ]
    return sorted(found, key=lambda j: (-len(j.proposals), j.job_id))


# --- talking to the service -------------------------------------------------------------------


class RankClient:
    """One keep-alive HTTP connection to `POST /v1/rank`."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def rank(self, body: bytes) -> tuple[float, dict[str, Any]]:
        """(milliseconds, answer) of one request, timed on the client."""
        started = time.perf_counter()
        self.connection.request(
            "POST", "/v1/rank", body, headers={"Content-Type": "application/json"}
        )
        reply = self.connection.getresponse()
        data = reply.read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if reply.status != 200:
            msg = f"POST /v1/rank answered {reply.status}: {data[:300].decode(errors='replace')}"
            raise ServiceError(msg)
        return elapsed_ms, orjson.loads(data)

    def close(self) -> None:
        self.connection.close()


def percentile(values: list[float], p: float) -> float | None:
    return float(np.percentile(values, p)) if values else None


# --- the demo ---------------------------------------------------------------------------------


@dataclass
class Steps:
    """Wall time of each step, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started


def run_demo(
    settings: Settings,
    *,
    days: int,
    jobs_per_day: int,
    seed: int,
    rate: float | None = 1000.0,
    showcase_jobs: int = 5,
    latency_requests: int = 300,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """The demo; returns the report's figures (also written to `report.json`)."""
    from bestmatch.marketplace import simulate
    from features.lake import summarize_lake
    from flows.runner import run_backfill

    started = time.perf_counter()
    steps = Steps()
    figures: dict[str, Any] = {
        "config": {
            "days": days,
            "jobs_per_day": jobs_per_day,
            "seed": seed,
            "rate": rate,
            "redis": settings.redis_url.split("@")[-1],
            "lake": settings.lake,
        }
    }
    # The demo's own files (events, logs, the report) stay on this machine, whatever the lake.
    work = Path(settings.lake_path("demo") if settings.lake_is_local else "bestmatch-demo")
    work.mkdir(parents=True, exist_ok=True)
    note = ensure_redis(
        settings.redis_url, work.parent / "redis" if settings.lake_is_local else work / "redis"
    )
    if note:
        console.print(note)
    client = redis.Redis.from_url(settings.redis_url)
    cleared = reset_online(client, settings)
    if cleared:
        console.print(f"cleared {cleared:,} entities of an earlier run from Redis")
    report_dir = report_dir or work / "report"

    # 1. simulate
    events = work / f"events-{days}d-{jobs_per_day}jpd-s{seed}.jsonl"
    with steps.step("simulate"), progress(f"1/7 simulating {days} days") as advance:
        simulated = simulate(days, seed, events, jobs_per_day=jobs_per_day, progress=advance)
    print_table(f"simulated → {events}", simulated.rows())
    history, live = work / "history.jsonl", work / "live.jsonl"
    n_history, n_live = split_last_day(events, history, live)
    figures["simulated"] = {
        "events": simulated.events,
        "jobs": simulated.jobs,
        "freelancers": simulated.freelancers,
        "clients": simulated.clients,
        "share_25_in_24h": simulated.share_25_in_24h,
        "history_events": n_history,
        "live_events": n_live,
    }

    # 2. backfill the history
    with (
        steps.step("backfill"),
        progress(f"2/7 backfilling {n_history:,} events of history into Redis and Delta"),
    ):
        run_backfill(settings, history)
    backfill_s = steps.seconds["backfill"]
    figures["backfill"] = {
        "events": n_history,
        "seconds": backfill_s,
        "events_per_s": n_history / backfill_s,
    }
    console.print(f"backfill: {n_history / backfill_s:,.0f} events/s")

    served_since = time.time_ns() // 1000  # this run's answers, not an earlier demo's
    service = ServiceProcess(
        settings,
        work / "serve.log",
        {"LOG_RATE": "1", "LOG_FLUSH_S": "1", "MODEL_POLL_S": "0.5"},
    )
    try:
        # 3. stream the last day while the service is up
        with steps.step("stream"):
            figures["stream"] = _stream_live_day(settings, client, live, rate, work)
            service.wait_alive()
        print_table("feature stores", summarize_lake(settings))

        # 4. train and register
        from bestmatch.services import ensure_feast_registry
        from training.pipeline import train

        with steps.step("train"):
            with progress("registering the Feast objects (feast apply)"):
                ensure_feast_registry(settings)
            with progress("4/7 training the ranker and registering it in MLflow", total=4) as adv:
                trained = train(settings, events=events, seed=seed, progress=adv)
        header, rows = trained.evaluation_rows()
        print_table(
            "ranker vs baselines (test days): " + " / ".join(header[1:]),
            [(row[0], " / ".join(row[1:])) for row in rows],
        )
        console.print(
            f"registered {trained.model_name} v{trained.version} → @{trained.alias}: "
            f"{trained.reason}"
        )
        figures["training"] = {
            "version": trained.version,
            "promoted": trained.promoted,
            "reason": trained.reason,
            "run_id": trained.run_id,
            "evaluation": trained.evaluation.to_dicts(),
            "summary": trained.summary,
        }

        # 5. serve and rank the open jobs
        with steps.step("serve"):
            champion = _champion(settings)
            with progress(f"5/7 waiting for the service to load v{champion}"):
                service.wait_ready(champion)
            figures["serving"] = _rank_open_jobs(
                service.port, live, showcase_jobs, latency_requests, champion
            )
    finally:
        with steps.step("stop service"):
            service.stop()

    # 6. consistency
    from bestmatch.consistency import check_consistency

    with steps.step("consistency"), progress("6/7 checking serving against offline features"):
        consistency = check_consistency(settings, since_us=served_since)
    print_table(f"consistency: {consistency.verdict}", consistency.rows())
    figures["consistency"] = consistency.to_dict()

    # 7. the report
    figures["steps_s"] = steps.seconds
    figures["wall_s"] = time.perf_counter() - started
    from bestmatch.report import write_report

    with progress("7/7 writing the report"):
        index = write_report(figures, report_dir, consistency=consistency)
    print_table("demo summary", summary_rows(figures))
    console.print(
        f"[bold green]demo done[/] in {figures['wall_s']:.0f} s. Report: {index}\n"
        f"Features: Redis {figures['config']['redis']}, lake {settings.lake}"
    )
    return figures


def _stream_live_day(
    settings: Settings,
    client: redis.Redis,
    live: Path,
    rate: float | None,
    work: Path,
) -> dict[str, Any]:
    """Publish the last day to the bus with `bestmatch stream` running; time sampled events."""
    from bestmatch.benchmarks.flow import Watcher, pick_samples
    from bestmatch.streaming import StreamProcess
    from features.bus import publish

    lines = [line.strip() for line in live.read_bytes().splitlines() if line.strip()]
    warm = min(WARM_UP_EVENTS, len(lines) // 10)
    samples = pick_samples(lines, warm, settings.feast_project, FRESHNESS_EVERY)
    watcher = Watcher(redis.Redis.from_url(settings.redis_url))
    shown = f"{rate:,.0f} events/s" if rate else "full speed"
    with StreamProcess(settings, work / "stream.log", trigger_s=STREAM_TRIGGER_S) as stream:
        stream.wait_ready()
        watcher.start()
        try:
            # The first events wait for the flow to load its state and make its first commits:
            # a start-up cost, timed apart from the steady state's freshness.
            begun = time.perf_counter()
            tail = pick_samples(lines[:warm], 0, settings.feast_project, 10**9)[-1]
            publish(client, settings.stream_key, lines[:warm])
            tail.published = time.perf_counter()
            watcher.inbox.put(tail)
            deadline = time.monotonic() + 180
            while tail.seen is None and time.monotonic() < deadline:
                time.sleep(0.02)
            warm_up_s = time.perf_counter() - begun
            with progress(
                f"3/7 streaming the last day ({len(lines):,} events, {shown}) through the bus",
                total=len(lines),
            ) as advance:
                queued = 0

                def sent_up_to(sent: int) -> None:
                    nonlocal queued
                    now = time.perf_counter()
                    while queued < len(samples) and samples[queued].index < warm + sent:
                        samples[queued].published = now
                        watcher.inbox.put(samples[queued])
                        queued += 1
                    advance(warm + sent)

                begun = time.perf_counter()
                publish(client, settings.stream_key, lines[warm:], rate=rate, progress=sent_up_to)
                published_s = time.perf_counter() - begun
                stream.wait_for(len(lines))
                deadline = time.monotonic() + 60
                while samples and samples[-1].seen is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(0.2)
                ended = time.perf_counter()
            with progress("waiting for the quiet bus to close the last instant in Delta"):
                wait_offline_complete(settings, lines, stream)
        finally:
            watcher.stop.set()
            watcher.join(timeout=5)
    seen = [s.freshness_ms(ended) for s in samples if s.seen is not None]
    return {
        "events": len(lines),
        "rate": rate,
        "warm_up_events": warm,
        "warm_up_s": warm_up_s,
        "published_s": published_s,
        "sampled": len(samples),
        "unseen": sum(1 for s in samples if s.seen is None),
        "freshness_ms": seen,
        "freshness_p50_ms": percentile(seen, 50),
        "freshness_p99_ms": percentile(seen, 99),
    }


def wait_offline_complete(
    settings: Settings, lines: list[bytes], stream: Any, timeout_s: float = 120.0
) -> None:
    """Until the change log's newest row of every entity an event of the newest instant touched
    holds what Redis holds: the stream closes an instant once the bus is quiet, and its sink then
    commits that instant's rows (an entity whose values did not change gets no row)."""
    import polars as pl

    from features.engine import route
    from features.events import Rejection, parse_event
    from features.offline_layout import (
        CREATED_COLUMN,
        TIMESTAMP_COLUMN,
        changelog_uri,
        record_values,
    )
    from features.online_layout import read_entities
    from features.specs import ENTITIES

    newest, touched = None, set()
    for line in reversed(lines):  # time-ordered: the newest instant is at the end
        event = parse_event(line)
        if type(event) is Rejection:
            continue
        if newest is not None and event.event_time < newest:  # type: ignore[union-attr]
            break
        newest = event.event_time  # type: ignore[union-attr]
        touched.update(route(event))  # type: ignore[arg-type]
    if not touched:
        return
    entities = {e.name: e for e in ENTITIES}
    wanted = sorted(touched)
    client = redis.Redis.from_url(settings.redis_url)

    def offline_latest() -> dict[tuple[str, str], tuple[Any, ...]]:
        """Each touched entity's newest change-log row (ties: the latest written), as values."""
        latest = {}
        for name in {n for n, _ in wanted}:
            entity = entities[name]
            rows = (
                pl.scan_delta(changelog_uri(settings, entity))
                .filter(pl.col(entity.join_key).is_in([i for n, i in wanted if n == name]))
                .sort(TIMESTAMP_COLUMN, CREATED_COLUMN)
                .collect()
            )
            for record in rows.iter_rows(named=True):  # in time order: the newest stays
                latest[(name, record[entity.join_key])] = record_values(entity, record)
        return latest

    def complete() -> bool:
        asked = [(entities[name], entity_id) for name, entity_id in wanted]
        online = read_entities(client, settings.feast_project, asked)
        offline = offline_latest()
        return all(
            offline.get(key) == values
            for key, values in zip(wanted, online, strict=True)
            if values is not None
        )

    stream._wait(complete, timeout_s, "close its last instant in the change log")


def _champion(settings: Settings) -> str:
    from serving.model import champion_version, registry_client

    version = champion_version(registry_client(settings))
    if version is None:
        msg = "training registered no champion: nothing to serve"
        raise ServiceError(msg)
    return str(version)


def _rank_open_jobs(
    port: int, live: Path, showcase: int, requests: int, version: str
) -> dict[str, Any]:
    jobs = open_jobs(live)
    if not jobs:
        msg = f"the streamed day ({live}) has no open job with proposals to rank"
        raise ServiceError(msg)
    ranker = RankClient(port)
    try:
        shown = []
        for job in jobs[:showcase]:
            _, answer = ranker.rank(orjson.dumps(job.request(explain=True)))
            shown.append(
                {
                    "job_id": job.job_id,
                    "client_id": job.client_id,
                    "title": job.title,
                    "posted_at": job.posted_at,
                    "proposals": len(job.proposals),
                    "answer": answer,
                    "bids": {p["proposal_id"]: p["bid_amount"] for p in job.proposals},
                    "letters": {p["proposal_id"]: p["cover_letter"] for p in job.proposals},
                    "actions": job.actions,
                }
            )
        bodies = [orjson.dumps(job.request(explain=False)) for job in jobs]
        latencies, sizes = [], []
        with progress(f"5/7 ranking {requests} requests over {len(jobs)} open jobs") as advance:
            begun = time.perf_counter()
            for i in range(requests):
                body = bodies[i % len(bodies)]
                ms, answer = ranker.rank(body)
                latencies.append(ms)
                sizes.append(len(answer["ranked"]))
                advance(i + 1)
            elapsed = time.perf_counter() - begun
    finally:
        ranker.close()
    return {
        "model_version": version,
        "open_jobs": len(jobs),
        "showcase": shown,
        "requests": requests,
        "proposals_per_request_mean": float(np.mean(sizes)),
        "latency_ms": latencies,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "requests_per_s": requests / elapsed,
        "degraded_answers": sum(1 for s in shown if s["answer"]["degraded"]),
    }


def _ndcg(figures: dict[str, Any], model: str) -> float | None:
    """The model's NDCG@10 on the test days, from the figures' evaluation table."""
    for row in figures["training"]["evaluation"]:
        if row["model"] == model:
            return float(row["ndcg@10"])
    return None


def summary_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures, as the terminal and the report show them."""
    from training.pipeline import ABLATION, RANKER

    s, b, st, sv = figures["simulated"], figures["backfill"], figures["stream"], figures["serving"]
    c = figures["consistency"]
    baselines = [
        (row["model"], float(row["ndcg@10"]))
        for row in figures["training"]["evaluation"]
        if row["model"] not in (RANKER, ABLATION)
    ]
    best = max(baselines, key=lambda item: item[1]) if baselines else ("-", float("nan"))

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} ms"

    return [
        ("events simulated", f"{s['events']:,} ({s['jobs']:,} jobs)"),
        ("backfill", f"{b['events']:,} events, {b['events_per_s']:,.0f} events/s"),
        (
            "stream freshness (publish → Redis)",
            f"p50 {ms(st['freshness_p50_ms'])}, p99 {ms(st['freshness_p99_ms'])} "
            f"({st['sampled'] - st['unseen']} of {st['sampled']} samples)",
        ),
        ("NDCG@10 ranker", f"{_ndcg(figures, RANKER):.4f}"),
        ("NDCG@10 without streaming features", f"{_ndcg(figures, ABLATION):.4f}"),
        (f"NDCG@10 best baseline ({best[0]})", f"{best[1]:.4f}"),
        (
            "ranking latency (client side)",
            f"p50 {ms(sv['latency_p50_ms'])}, p99 {ms(sv['latency_p99_ms'])}, "
            f"{sv['requests_per_s']:,.0f} requests/s, "
            f"{sv['proposals_per_request_mean']:.0f} proposals/request",
        ),
        (
            "consistency (served vs offline)",
            f"{c['verdict']}: {c['totals']['mismatches']:,} mismatches, "
            f"{c['totals']['served_missing'] + c['totals']['offline_missing']:,} one-sided missing "
            f"in {c['totals']['rows']:,} entity rows ({c['totals']['stale']:,} stale)",
        ),
        ("wall time", f"{figures['wall_s']:.0f} s"),
    ]
