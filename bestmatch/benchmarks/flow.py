"""The flow benchmark (`bestmatch bench flow`): the feature flow on this machine, in one run:

- Backfill throughput, end to end: the same events through (a) `parse_event` alone, the ceiling
  of reading; (b) parse, `Sequencer` and one `ShardEngine` in a plain loop, the engine's cost;
  (c) the real backfill flow with its Redis and Delta sinks; and optionally the flow with two
  workers and with two processes. Each rate is shown with its ratio to (c), so a reader sees where
  the time goes.
- Freshness: a `bestmatch stream` subprocess, events published at a steady rate, and for a sample
  of them the time from the publish (right after XADD returns) to the moment their effect is
  visible in Redis (the entity's `_us:<view>` stamp reaches the event's time).

It never touches the user's stores: tables go to `<lake>/bench/lake` and values to one Redis
database (`--redis-db`), which it refuses when it holds anything but an earlier bench's keys.
The machine is small and shared, so cheap stages are repeated and medians reported.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from rich.table import Table

from bestmatch.console import console, progress
from bestmatch.services import StreamProcess, ensure_redis
from features.errors import ConfigError, FlowError
from features.settings import Settings

GOAL_EVENTS_PER_S = 100_000
GOAL_P50_MS = 20.0  # at 5,000 events/s
GOAL_P99_MS = 100.0
EVENTS_PER_JOB_DAY = 80  # what the simulator writes, per job posted per day (measured)
SAMPLE_EVERY = 20  # every 20th proposal_submitted is timed for freshness
MARKER = b"bestmatch:bench"  # set in the bench's Redis database, so a rerun knows it is its own
START_TIMEOUT_S = 180.0  # a stream's first start imports the whole stack: slow on a busy box
DRAIN_TIMEOUT_S = 60.0
POLL_S = 0.0005
REPEAT_BUDGET_S = 120.0  # a stage is run again only while its total stays within this


# --- stores -----------------------------------------------------------------------------------


def _with_db(url: str, db: int) -> str:
    """The same Redis server, database `db`."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
    if parts.scheme == "unix":  # urlunsplit would drop the empty host of `unix:///path`
        return f"{url.partition('?')[0]}?{urlencode([*query, ('db', str(db))])}"
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))


def _db_of(url: str) -> int:
    return int(redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db") or 0)


@dataclass
class BenchStores:
    """The bench's own lake directory and Redis database."""

    settings: Settings  # pointing at the bench's stores
    root: Path  # <lake>/bench
    client: redis.Redis

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    def reset(self) -> None:
        """Empty the bench's stores (and only those): a fresh lake and a flushed database."""
        shutil.rmtree(self.lake, ignore_errors=True)
        self.lake.mkdir(parents=True)
        self.client.flushdb()
        self.client.set(MARKER, b"1")

    def close(self) -> None:
        self.client.flushdb()
        self.client.close()


def _open_stores(settings: Settings, db: int, force: bool) -> BenchStores:
    if not settings.lake_is_local:
        msg = f"bestmatch bench keeps its files in a local BESTMATCH_LAKE, got {settings.lake!r}"
        raise ConfigError(msg)
    url = _with_db(settings.redis_url, db)
    if _db_of(url) == _db_of(settings.redis_url) and not force:
        msg = f"--redis-db {db} is the platform's own database (BESTMATCH_REDIS_URL); pick another"
        raise ConfigError(msg)
    root = Path(settings.lake_path("bench"))
    note = ensure_redis(url, Path(settings.lake_path("redis")))
    if note:
        console.print(note)
    client = redis.Redis.from_url(url)
    if client.dbsize() and not client.exists(MARKER) and not force:
        msg = (
            f"Redis database {db} holds {client.dbsize():,} keys that are not the bench's: "
            "pick another with --redis-db, or pass --force to flush it"
        )
        raise ConfigError(msg)
    bench = settings.model_copy(update={"redis_url": url, "lake": str(root / "lake")})
    return BenchStores(bench, root, client)


# --- events -----------------------------------------------------------------------------------


def cached_events(root: Path, events: int, seed: int) -> Path:
    """Exactly `events` simulated events, written once under the bench directory."""
    path = root / f"events-{events}-seed{seed}.jsonl"
    if path.is_file():
        return path
    from bestmatch.simulator import simulate

    root.mkdir(parents=True, exist_ok=True)
    jobs_per_day = max(1, min(1000, math.ceil(events * 1.25 / EVENTS_PER_JOB_DAY)))
    days = max(1, math.ceil(events * 1.1 / (EVENTS_PER_JOB_DAY * jobs_per_day)))
    draft = path.with_suffix(".draft")
    while True:
        with progress(f"simulating {days} days x {jobs_per_day} jobs", total=None) as advance:
            report = simulate(days, seed, draft, jobs_per_day=jobs_per_day, progress=advance)
        if report.events >= events:
            break
        days = math.ceil(days * 1.3) + 1
    partial = path.with_suffix(".partial")
    with open(draft, "rb") as source, open(partial, "wb") as sink:  # a prefix: still in time order
        for _, line in zip(range(events), source, strict=False):
            sink.write(line)
    draft.unlink()
    partial.rename(path)
    return path


def _line_batches(path: Path) -> Iterator[list[bytes]]:
    from features.bus import open_events

    with open_events(path) as handle:
        while lines := handle.readlines(1 << 20):
            yield lines


# --- backfill ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """One way of running the same events, timed once or more."""

    name: str
    runs: list[float]  # seconds per run
    events: int
    changes: int | None = None  # change-log rows produced

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def changes_per_s(self) -> float | None:
        return None if self.changes is None else self.changes / self.seconds


def changelog_rows(settings: Settings) -> int:
    """Rows in the change-log tables, from the Delta logs' file statistics."""
    import pyarrow as pa
    from deltalake import DeltaTable

    from features.offline_layout import changelog_uri
    from features.specs import ENTITIES

    total = 0
    for entity in ENTITIES:
        uri = changelog_uri(settings, entity)
        if DeltaTable.is_deltatable(uri):
            actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
            total += int(actions.column("num_records").to_numpy().sum())
    return total


def _timed(
    label: str, repeat: int, run: Callable[[], Any], before: Callable[[], None] | None = None
) -> tuple[list[float], Any]:
    """Up to `repeat` runs, while the stage's total stays within REPEAT_BUDGET_S."""
    runs: list[float] = []
    result = None
    while len(runs) < repeat and sum(runs) + max(runs, default=0) <= REPEAT_BUDGET_S:
        if before is not None:
            before()
        started = time.perf_counter()
        result = run()
        runs.append(time.perf_counter() - started)
        console.print(f"  {label} run {len(runs)}: {runs[-1]:.2f} s", highlight=False)
    return runs, result


STAGE_NOTES = {
    "orjson": ("(a)", "orjson.loads of each line alone: the ceiling of reading"),
    "parse": ("(b)", "the flow's parse step (batch parser, shards)"),
    "sequence": ("(c)", "the sequencer step (repeats, lateness, clock, routing)"),
    "shard": ("(d)", "one shard: the engine and its change-log tables"),
    "engine": ("(e)", "(b) + (c) + (d) in a plain loop: no Bytewax, no sinks"),
    "delta_alone": ("(f)", "Delta append of the same change rows alone"),
    "redis_alone": ("(g)", "Redis writes of the same entities alone"),
    "flow": ("(h)", "bestmatch backfill: Bytewax + Redis + Delta"),
    "flow_workers_2": ("(i)", "(h) with --workers 2"),
    "flow_processes_2": ("(j)", "(h) with --processes 2"),
}
STEP_STAGES = ("orjson", "parse", "sequence", "shard", "engine", "delta_alone", "redis_alone")


def _flow_child(settings: Settings, path: Path, workers: int, processes: int, out: Any) -> None:
    import resource

    from flows.runner import run_backfill

    started = time.perf_counter()
    run_backfill(settings, path, workers=workers, processes=processes)
    elapsed = time.perf_counter() - started
    peak_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    out.put((elapsed, peak_kb * 1024))


def run_flow(settings: Settings, path: Path, workers: int, processes: int) -> tuple[float, int]:
    """`bestmatch backfill` in a fresh process: its seconds (imports excluded) and peak RSS
    (the largest of its processes)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_flow_child, args=(settings, path, workers, processes, results))
    child.start()
    child.join()
    if child.exitcode:
        msg = f"the backfill process failed (exit {child.exitcode}); its errors are above"
        raise FlowError(msg)
    elapsed, peak = results.get(timeout=10)
    return float(elapsed), int(peak)


def measure_backfill(
    stores: BenchStores, path: Path, events: int, repeat: int, scaling: bool
) -> tuple[list[Stage], dict[str, Any]]:
    """Every stage's runs, and what the steps pass found (state per entity, shares)."""
    from bestmatch.benchmarks.flow_steps import measure_steps

    steps: list[dict[str, Any]] = []
    _timed(  # each run appends its figures to `steps`
        "(a)-(g) steps and ceilings",
        repeat,
        lambda: steps.append(measure_steps(stores.settings, path, stores.root / "scratch")),
        before=stores.reset,
    )
    first = steps[0]
    if first["events"] != events:
        msg = f"{path}: {first['events']:,} events where {events:,} were written"
        raise FlowError(msg)
    stages = []
    for name in STEP_STAGES:
        stage_runs = [s["seconds"][name] for s in steps if name in s["seconds"]]
        changes = first["changes"] if name in ("engine", "shard", "delta_alone") else None
        stages.append(Stage(name, stage_runs, events, changes))
    variants = [("flow", 1, 1)]
    if scaling:
        variants += [("flow_workers_2", 2, 1), ("flow_processes_2", 1, 2)]
    peaks: dict[str, int] = {}
    for name, workers, processes in variants:
        label = f"{STAGE_NOTES[name][0]} {name}"
        flow_runs: list[float] = []
        while len(flow_runs) < repeat and sum(flow_runs) + max(flow_runs, default=0) <= (
            REPEAT_BUDGET_S
        ):
            stores.reset()
            seconds, peak = run_flow(stores.settings, path, workers, processes)
            flow_runs.append(seconds)
            peaks[name] = max(peaks.get(name, 0), peak)
            console.print(f"  {label} run {len(flow_runs)}: {seconds:.2f} s", highlight=False)
        stages.append(Stage(name, flow_runs, events, changelog_rows(stores.settings)))
    state = {
        "entities": first["entities"],
        "online_writes": first["online_writes"],
        "state_bytes_per_entity": first["state_bytes_per_entity"],
        "saved_bytes_per_entity": first["saved_bytes_per_entity"],
        "share_of_engine": first["share_of_engine"],
        "peak_rss_bytes": peaks,
    }
    return stages, state


def backfill_figures(stages: list[Stage], state: dict[str, Any]) -> dict[str, Any]:
    flow = next(s for s in stages if s.name == "flow")
    return {
        "events": flow.events,
        "goal_events_per_s": GOAL_EVENTS_PER_S,
        "meets_goal": flow.events_per_s >= GOAL_EVENTS_PER_S,
        "stages": {
            s.name: {
                "events_per_s": s.events_per_s,
                "ratio_to_flow": s.events_per_s / flow.events_per_s,
                "seconds": s.seconds,
                "runs_s": s.runs,
                "changes": s.changes,
                "changes_per_s": s.changes_per_s,
            }
            for s in stages
        },
        **state,
    }


def print_backfill(figures: dict[str, Any]) -> None:
    table = Table(title=f"backfill: {figures['events']:,} events (medians)", title_justify="left")
    table.add_column("")
    table.add_column("what runs")
    for column in ("events/s", "× (h)", "change rows/s", "runs"):
        table.add_column(column, justify="right")
    for name, s in figures["stages"].items():
        label, what = STAGE_NOTES[name]
        rows_s = s["changes_per_s"]
        table.add_row(
            label,
            what,
            f"{s['events_per_s']:,.0f}",
            f"{s['ratio_to_flow']:.2f}",
            "" if rows_s is None else f"{rows_s:,.0f}",
            str(len(s["runs_s"])),
        )
    console.print(table)
    flow = figures["stages"]["flow"]["events_per_s"]
    verdict = "[green]met[/]" if figures["meets_goal"] else "[red]not met[/]"
    console.print(
        f"goal ≥ {GOAL_EVENTS_PER_S:,} events/s end to end: measured {flow:,.0f} "
        f"({flow / GOAL_EVENTS_PER_S:.0%} of the goal) — {verdict}"
    )
    shares = ", ".join(f"{k} {v:.0%}" for k, v in figures["share_of_engine"].items())
    peaks = ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in figures["peak_rss_bytes"].items())
    console.print(
        f"{figures['entities']:,} entities: {figures['state_bytes_per_entity']:,.0f} bytes each in "
        f"memory (columns), {figures['saved_bytes_per_entity']:,.0f} saved; the engine's time: "
        f"{shares}; peak RSS: {peaks}"
    )


def print_recovery(f: dict[str, Any]) -> None:
    verdict = "[green]met[/]" if f["meets_goal"] else "[red]not met[/]"
    console.print(
        f"recovery: {f['entities']:,} entities, {f['changed_per_epoch']:,} changed per epoch: "
        f"checkpoint {f['checkpoint_s'] * 1000:,.1f} ms and {f['checkpoint_bytes'] / 2**20:,.1f} "
        f"MiB per epoch = {f['checkpoint_share_of_epoch']:.1%} of a {f['epoch_s']:.0f} s epoch "
        f"(goal ≤ {f['goal_share']:.0%}) — {verdict}; the whole state pickled instead: "
        f"{f['whole_pickle_s'] * 1000:,.0f} ms, {f['whole_pickle_bytes'] / 2**20:,.0f} MiB; "
        f"resume {f['resume_s']:.1f} s"
    )


# --- freshness --------------------------------------------------------------------------------


@dataclass
class Sample:
    """A published event whose effect is watched for in Redis."""

    index: int  # its position among the published lines
    key: bytes
    field: bytes
    event_time: int
    published: float | None = None  # perf_counter right after its XADD returned
    seen: float | None = None  # perf_counter when its stamp was first seen in Redis

    def freshness_ms(self, ended: float) -> float:
        """Publish to visible; for one never seen, its age at `ended` (a lower bound)."""
        assert self.published is not None
        seen = ended if self.seen is None else self.seen
        return max(0.0, seen - self.published) * 1000


def pick_samples(lines: list[bytes], first: int, project: str, every: int) -> list[Sample]:
    """Every `every`-th proposal_submitted from line `first` on, and the last line's time.

    Only an event newer than every event before it is sampled: the stamp of its freelancer can
    reach its time only once the flow has processed it, whatever came earlier.
    """
    from features.engine import route
    from features.events import ProposalSubmitted, Rejection, parse_event
    from features.online_layout import layout, redis_key
    from features.specs import ENTITIES

    entities = {e.name: e for e in ENTITIES}
    samples: list[Sample] = []
    newest, proposals, wanted, last = -(2**62), 0, False, None
    for index, line in enumerate(lines):
        event = parse_event(line)
        if type(event) is Rejection:
            continue
        is_new = event.event_time > newest  # type: ignore[union-attr]
        newest = max(newest, event.event_time)  # type: ignore[union-attr]
        if index < first:
            continue
        if type(event) is ProposalSubmitted:
            proposals += 1
            wanted = wanted or proposals % every == 0
        name, entity_id = route(event)[0]  # type: ignore[arg-type]
        entity = entities[name]
        here = Sample(
            index, redis_key(project, entity, entity_id), layout(entity).stamp_field, newest
        )
        if is_new:
            last = here
            if wanted and type(event) is ProposalSubmitted:
                samples.append(here)
                wanted = False
    if last is not None and (not samples or samples[-1] is not last):
        samples.append(last)  # the tail: when it is visible, the flow has caught up
    return samples


class Watcher(threading.Thread):
    """Polls Redis for the published samples' stamps, in one pipeline per round."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(name="bench-watcher", daemon=True)
        self.client = client
        self.inbox: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self.pending: list[Sample] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._poll()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _poll(self) -> None:
        while not self.stop.is_set():
            while not self.inbox.empty():
                self.pending.append(self.inbox.get())
            if not self.pending:
                time.sleep(POLL_S)
                continue
            with self.client.pipeline(transaction=False) as pipe:
                for sample in self.pending:
                    pipe.hget(sample.key, sample.field)
                stamps = pipe.execute()
            now = time.perf_counter()
            still = []
            for sample, stamp in zip(self.pending, stamps, strict=True):
                if stamp is not None and int(stamp) >= sample.event_time:
                    sample.seen = now
                else:
                    still.append(sample)
            self.pending = still
            time.sleep(POLL_S)


def _wait(what: str, done: Callable[[], bool], stream: StreamProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        stream.check()
        if time.monotonic() > deadline:
            msg = f"{what}: not within {timeout:.0f} s (log: {stream.log})"
            raise FlowError(msg)
        time.sleep(0.01)


def _percentile(sorted_values: list[Any], p: float) -> Any:
    """Nearest rank."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def _publish_and_wait(
    stores: BenchStores,
    stream: StreamProcess,
    watcher: Watcher,
    lines: list[bytes],
    first: int,
    rate: float | None,
) -> Sample:
    """Publish `lines[first:]` and wait until the newest of them is visible in Redis."""
    from features.bus import publish

    tail = pick_samples(lines, first, stores.settings.feast_project, 10**9)[-1]
    publish(stores.client, stores.settings.stream_key, lines[first:], rate=rate)
    tail.published = time.perf_counter()
    watcher.inbox.put(tail)
    _wait("the stream's warm-up", lambda: tail.seen is not None, stream, START_TIMEOUT_S)
    return tail


def _marketplace_traffic(path: Path, count: int) -> list[bytes]:
    """Up to `count` lines from the first proposal on: the simulator opens with a burst of
    freelancer profiles (the population signing up), not the traffic a stream sees."""
    lines: list[bytes] = []
    for batch in _line_batches(path):
        for line in batch:
            if lines or b'"proposal_submitted"' in line:
                lines.append(line.strip())
        if len(lines) >= count:
            break
    return lines[:count]


def measure_freshness(
    stores: BenchStores, path: Path, rate: float, duration: float, trigger_s: float
) -> dict[str, Any]:
    """Warm the stream up (a burst, then a second at the rate, so its first change-log commit is
    behind it), then publish at `rate` for `duration` and time the samples."""
    from features.bus import publish

    settings = stores.settings
    burst, settle = max(500, int(rate)), max(100, int(rate))
    first = burst + settle
    lines = _marketplace_traffic(path, first + int(rate * duration))
    if len(lines) <= first:
        msg = f"{path} has {len(lines):,} events, too few for a warm-up of {first:,}"
        raise ConfigError(msg)
    samples = pick_samples(lines, first, settings.feast_project, SAMPLE_EVERY)
    timed = lines[first:]
    stores.reset()
    stream = StreamProcess(settings, stores.root / "stream.log", trigger_s=trigger_s).start()
    watcher = Watcher(redis.Redis.from_url(settings.redis_url))
    try:
        watcher.start()
        console.print(f"  warming up: {first:,} events, waiting for the stream to apply them")
        _publish_and_wait(stores, stream, watcher, lines[:burst], 0, None)
        _publish_and_wait(stores, stream, watcher, lines[:first], burst, rate)
        before = stream.events_in()
        queued = 0

        def sent_up_to(sent: int) -> None:  # called right after each pipeline of XADDs returns
            nonlocal queued
            now = time.perf_counter()
            while queued < len(samples) and samples[queued].index - first < sent:
                samples[queued].published = now
                watcher.inbox.put(samples[queued])
                queued += 1

        console.print(f"  publishing {len(timed):,} events at {rate:,.0f}/s")
        started = time.perf_counter()
        publish(stores.client, settings.stream_key, timed, rate=rate, progress=sent_up_to)
        published_s = time.perf_counter() - started
        tail = samples[-1]
        drained = time.monotonic() + DRAIN_TIMEOUT_S
        while tail.seen is None and time.monotonic() < drained and watcher.error is None:
            stream.check()
            time.sleep(0.01)
        time.sleep(0.2)  # a last round for samples still in flight
        ended = time.perf_counter()
        after = stream.events_in()
    finally:
        watcher.stop.set()
        stream.stop()
    watcher.join(timeout=5)
    if watcher.error is not None:
        raise watcher.error
    caught_up_s = (tail.seen - started) if tail.seen is not None else None
    figures: dict[str, Any] = {
        "rate": rate,
        "duration_s": duration,
        "trigger_s": trigger_s,
        "warmup_events": first,
        "published": len(timed),
        "published_s": published_s,
        "published_per_s": len(timed) / published_s,
        "sustained_events_per_s": None if caught_up_s is None else len(timed) / caught_up_s,
        "stream_events_in": None if before is None or after is None else after - before,
        "stream_events_per_s": None
        if before is None or after is None
        else (after - before) / (ended - started),
    }
    return figures | freshness_percentiles(samples, ended)


def freshness_percentiles(samples: list[Sample], ended: float) -> dict[str, Any]:
    """Percentiles over every sample; one never seen counts with its age at `ended`, so a
    percentile that falls on such a sample is a lower bound (`<name>_is_lower_bound`)."""
    timed = sorted((s.freshness_ms(ended), s.seen is None) for s in samples)
    unseen = sum(1 for _, censored in timed if censored)
    figures: dict[str, Any] = {
        "sampled": len(samples),
        "observed": len(samples) - unseen,
        "lost": unseen,  # not visible when the bench stopped waiting: behind, or lost
        "waited_s_after_publishing": DRAIN_TIMEOUT_S,
        "goal_p50_ms": GOAL_P50_MS,
        "goal_p99_ms": GOAL_P99_MS,
    }
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        value, censored = _percentile(timed, p) if timed else (None, False)
        figures[f"{name}_ms"] = value
        figures[f"{name}_is_lower_bound"] = censored
    figures["meets_goal"] = bool(
        timed
        and not unseen
        and figures["p50_ms"] <= GOAL_P50_MS
        and figures["p99_ms"] <= GOAL_P99_MS
    )
    return figures


def print_freshness(f: dict[str, Any]) -> None:
    table = Table(
        title=f"freshness: publish → visible in Redis, {f['sampled']:,} sampled events, "
        f"{f['rate']:,.0f} events/s for {f['published_s']:.1f} s",
        title_justify="left",
    )
    for column in ("", "measured", "goal", ""):
        table.add_column(column, justify="left" if not column else "right")

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]not met[/]"

    def count(value: float | None) -> str:
        return "—" if value is None else f"{value:,.0f}"

    for name in ("p50", "p90", "p99", "max"):
        value, goal = f[f"{name}_ms"], f.get(f"goal_{name}_ms")
        shown = "—" if value is None else f"{value:,.1f} ms"
        if f[f"{name}_is_lower_bound"]:
            shown = f"≥ {shown}"
        table.add_row(
            name,
            shown,
            "" if goal is None else f"≤ {goal:,.0f} ms",
            "" if goal is None else verdict(value is not None and value <= goal),
        )
    table.add_row(
        f"not visible {f['waited_s_after_publishing']:.0f} s after publishing",
        f"{f['lost']:,} of {f['sampled']:,}",
        "0",
        verdict(f["lost"] == 0),
    )
    table.add_row("published/s", count(f["published_per_s"]), count(f["rate"]), "")
    table.add_row("stream read/s (its metrics)", count(f["stream_events_per_s"]), "", "")
    table.add_row(
        "sustained/s (published ÷ time to the last visible)",
        count(f["sustained_events_per_s"]),
        "",
        "",
    )
    console.print(table)
    if f["lost"]:
        console.print(
            "the stream fell behind: percentiles count the unseen samples at their age when the "
            "bench stopped waiting (≥: a lower bound); try a lower --rate"
        )


# --- the command ------------------------------------------------------------------------------


def bench_flow(
    settings: Settings,
    *,
    events: int,
    rates: list[float],
    duration: float,
    trigger: float,
    seed: int,
    redis_db: int,
    repeat: int,
    scaling: bool,
    skip_backfill: bool,
    skip_freshness: bool,
    force: bool,
    json_out: Path | None,
    large_events: int = 0,
    recovery_entities: int = 1_000_000,
) -> None:
    """Backfill throughput (with its steps and ceilings), recovery cost and stream freshness."""
    started = time.perf_counter()
    stores = _open_stores(settings, redis_db, force)
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_avg_1m_start": os.getloadavg()[0],
        },
        "seed": seed,
    }
    try:
        path = cached_events(stores.root, events, seed)
        figures["events_file"] = str(path)
        if not skip_backfill:
            console.print(f"[bold]backfill[/] of {path.name}")
            figures["backfill"] = backfill_figures(
                *measure_backfill(stores, path, events, repeat, scaling)
            )
            if large_events:
                large = cached_events(stores.root, large_events, seed)
                console.print(f"[bold]backfill[/] of {large.name}")
                figures["backfill_large"] = backfill_figures(
                    *measure_backfill(stores, large, large_events, 1, False)
                )
                large_rate = figures["backfill_large"]["stages"]["flow"]["events_per_s"]
                rate_1 = figures["backfill"]["stages"]["flow"]["events_per_s"]
                figures["backfill_large"]["slowdown_vs_small"] = rate_1 / large_rate
        if recovery_entities:
            from bestmatch.benchmarks.flow_recovery import measure_recovery

            console.print(f"[bold]recovery[/]: {recovery_entities:,} entities")
            figures["recovery"] = measure_recovery(
                stores.root / "recovery", recovery_entities, 0.01, 5
            )
        if not skip_freshness:
            figures["freshness"] = []
            for rate in rates:
                console.print(f"[bold]freshness[/] through bestmatch stream at {rate:,.0f}/s")
                figures["freshness"].append(
                    measure_freshness(stores, path, rate, duration, trigger)
                )
    finally:
        stores.close()
    figures["elapsed_s"] = time.perf_counter() - started
    if "backfill" in figures:
        print_backfill(figures["backfill"])
    if "backfill_large" in figures:
        print_backfill(figures["backfill_large"])
        console.print(
            f"{figures['backfill']['events']:,} → {figures['backfill_large']['events']:,} events: "
            f"{figures['backfill_large']['slowdown_vs_small']:.2f}× slower per event (goal ≤ 1.25)"
        )
    if "recovery" in figures:
        print_recovery(figures["recovery"])
    for fresh in figures.get("freshness", []):
        print_freshness(fresh)
    figures["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    machine = figures["machine"]
    console.print(
        f"bench took {figures['elapsed_s']:.0f} s on {machine['cpus']} CPUs; load average "
        f"{machine['load_avg_1m_start']:.1f} at the start, {machine['load_avg_1m_end']:.1f} at "
        "the end (other work on the machine slows every figure; the ratios suffer less)"
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures written to {json_out}")
