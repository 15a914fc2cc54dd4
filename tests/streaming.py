"""Running `bestmatch stream` in a child process, and reading back what it wrote. Tests only.

The stream runs through the product's own launcher (`bestmatch.services.StreamProcess`), started
two ways, both through the command's real entry point with the real environment variables:

- `cli`: the installed `bestmatch` script in a fresh interpreter, exactly what a user runs. Each
  start imports the whole stack (Feast, Bytewax, Delta): many seconds on a small machine.
- `fork`: `bestmatch.cli.app(["stream", ...])` in a process forked from a multiprocessing
  forkserver that imported the stack once. Same command, same code path from argument parsing
  on, but a restart takes a fraction of a second, so a test can crash and restart it often.
  The forkserver never touches Delta or Redis itself: its children get no runtime or connection
  that was made before the fork.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl
import redis
from deltalake import DeltaTable

from bestmatch.services import free_port, stream_env
from bestmatch.services import stream as launcher
from features import offline_layout, online_layout
from features.bus import EVENT_FIELD, publish_kafka
from features.bus import publish as publish_lines
from features.lake import dead_letter_uri
from features.settings import Settings
from features.specs import ENTITIES

How = Literal["cli", "fork"]
T = TypeVar("T")

# pandas and pyarrow.dataset: Delta's writer imports them on its first commit, which would
# otherwise add seconds to every restart's first commit
_PRELOAD = ["bestmatch.cli", "flows.runner", "pandas", "pyarrow.dataset", "tests.streaming"]


def _forkserver() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _run_command(env: dict[str, str], args: list[str], log: str) -> None:
    """The child's body in `fork` mode: the `bestmatch` command with these variables."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    from bestmatch.cli import app

    app(args, prog_name="bestmatch")


def _passed_on() -> dict[str, str]:
    """What a forked child gets of this process's environment as it is now (the forkserver's
    is as it was when it started): the object store's and MLflow's variables a test set."""
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_"))}


class _Forked:
    """A forked `multiprocessing` child, seen as the launcher sees a `subprocess.Popen`."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def poll(self) -> int | None:
        return None if self.process.is_alive() else self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.is_alive():
            raise subprocess.TimeoutExpired("bestmatch stream (forked)", timeout or 0.0)
        return int(self.process.exitcode)


class StreamProcess(launcher.StreamProcess):
    """The product's launcher (`bestmatch.services.StreamProcess`), started one of two ways."""

    def __init__(
        self,
        settings: Settings,
        log: Path,
        metrics_port: int,
        *,
        workers: int = 1,
        how: How,
        options: Sequence[str] = (),
    ) -> None:
        super().__init__(settings, log, workers=workers, options=options, metrics_port=metrics_port)
        self.how = how

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("bestmatch")
        return [str(script)] if script.exists() else super().command()

    def spawn(self) -> launcher.Child:
        if self.how == "cli":
            return super().spawn()
        child = _forkserver().Process(
            target=_run_command,
            args=({**_passed_on(), **stream_env(self.settings)}, self.args, str(self.log)),
            daemon=True,
        )
        child.start()
        return _Forked(child)

    def fail_if_dead(self) -> None:
        self.check()

    def __repr__(self) -> str:
        return f"bestmatch stream ({self.how}, {self.workers} worker(s), lake {self.settings.lake})"


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:.0f} s waiting for {what}"
            raise AssertionError(msg)
        time.sleep(every)


def converge(read: Callable[[], T], expected: T, timeout: float, every: float = 0.25) -> T:
    """Read until the value equals `expected` or time runs out; returns the last value read.

    The caller asserts equality on the result, so a timeout shows the difference.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(every)


Streams = list[StreamProcess]


def new_stream(
    streams: Streams,
    settings: Settings,
    tmp_path: Path,
    *,
    workers: int = 1,
    how: How = "fork",
    options: tuple[str, ...] = (),
) -> StreamProcess:
    process = StreamProcess(
        settings,
        tmp_path / f"stream-{len(streams)}.log",
        free_port(),
        workers=workers,
        how=how,
        options=options,
    )
    streams.append(process)
    process.start()
    return process


# --- the event bus ----------------------------------------------------------------------------


def publish(settings: Settings, lines: Iterable[bytes], rate: float | None = None) -> int:
    """`bestmatch publish`'s own function, onto the settings' stream."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return publish_lines(client, settings.stream_key, lines, rate=rate)
    finally:
        client.close()


class Publisher(threading.Thread):
    """Publishes in the background at `rate` events per second, onto the settings' bus: the
    Redis Stream, or the Kafka topic (into `partition(line)` where given, else by key)."""

    def __init__(
        self,
        settings: Settings,
        lines: Sequence[bytes],
        rate: float,
        partition: Callable[[bytes], int] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.settings, self.lines, self.rate = settings, lines, rate
        self.partition = partition
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.settings.kafka is None:
                publish(self.settings, self.lines, self.rate)
            else:
                publish_kafka(
                    self.settings.kafka, self.lines, rate=self.rate, partition=self.partition
                )
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), "publisher still running"
        if self.error is not None:
            raise self.error


def mirror_stream(source: Settings, target: Settings) -> int:
    """Copy the event bus entry for entry, ids included, so positions match in both."""
    src = redis.Redis.from_url(source.redis_url)
    dst = redis.Redis.from_url(target.redis_url)
    entries = src.xrange(source.stream_key)
    with dst.pipeline(transaction=False) as pipe:
        for entry_id, fields in entries:
            pipe.xadd(target.stream_key, {EVENT_FIELD: fields[EVENT_FIELD]}, id=entry_id)
        pipe.execute()
    src.close()
    dst.close()
    return len(entries)


# --- what the flow wrote ----------------------------------------------------------------------


def online_dump(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    """Every entity hash in the settings' Redis database, field for field (Feast's layout)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = sorted(k for k in client.scan_iter(count=1000) if client.type(k) == b"hash")
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return dict(zip(keys, pipe.execute(), strict=True))
    finally:
        client.close()


def online_values(
    settings: Settings, entities: Sequence[tuple[Any, str]]
) -> dict[tuple[str, str], Any]:
    """Each entity's values as serving reads them (`online_layout.read_entities`)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        got = online_layout.read_entities(client, settings.feast_project, list(entities))
    finally:
        client.close()
    return {(e.name, i): v for (e, i), v in zip(entities, got, strict=True)}


def dead_letters(settings: Settings) -> list[tuple[str, int, str, str]]:
    """(source, position, raw, reason) of every dead letter, in position order; `seen` is
    wall-clock time and differs between runs."""
    uri = dead_letter_uri(settings)
    if not DeltaTable.is_deltatable(uri):
        return []
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return sorted(
        (r["source"], r["position"], r["raw"], r["reason"]) for r in frame.iter_rows(named=True)
    )


def changelog_rows(settings: Settings) -> list[tuple[str, str, int, tuple]]:
    """`tests.test_flow.changelog`, or [] before the flow has created the tables."""
    from tests.test_flow import changelog

    uris = [offline_layout.changelog_uri(settings, e) for e in ENTITIES]
    if not all(DeltaTable.is_deltatable(u) for u in uris):
        return []
    return changelog(settings)
