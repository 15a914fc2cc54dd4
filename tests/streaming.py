"""Running `bestmatch stream` in a child process, and reading back what it wrote. Tests only.

Two ways to start the command, both through its real entry point with the real environment
variables:

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
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl
import redis
from deltalake import DeltaTable

from features import offline_layout, online_layout
from features.bus import EVENT_FIELD
from features.bus import publish as publish_lines
from features.lake import dead_letter_uri
from features.settings import Settings
from features.specs import ENTITIES

How = Literal["cli", "fork"]
T = TypeVar("T")

# pandas and pyarrow.dataset: Delta's writer imports them on its first commit, which would
# otherwise add seconds to every restart's first commit
_PRELOAD = ["bestmatch.cli", "flows.runner", "pandas", "pyarrow.dataset", "tests.streaming"]
_EVENTS_IN = re.compile(rb"^bestmatch_flow_events_in_total (\S+)$", re.MULTILINE)


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


def stream_env(settings: Settings) -> dict[str, str]:
    """The variables that make `bestmatch` use these settings' stores."""
    return {
        "BESTMATCH_REDIS_URL": settings.redis_url,
        "BESTMATCH_LAKE": settings.lake,
        "BESTMATCH_STREAM_KEY": settings.stream_key,
        "BESTMATCH_FEAST_PROJECT": settings.feast_project,
    }


class StreamProcess:
    """One `bestmatch stream` at a time for one set of stores: start, watch, kill, restart."""

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
        self.settings = settings
        self.options = list(options)  # more `bestmatch stream` options
        self.log = log
        self.port = metrics_port
        self.workers = workers
        self.how = how
        self.starts = 0
        self._child: Any = None

    @property
    def args(self) -> list[str]:
        return [
            "stream",
            "--metrics-port",
            str(self.port),
            "--workers",
            str(self.workers),
            *self.options,
        ]

    def start(self) -> None:
        assert not self.alive(), "already running"
        self.starts += 1
        self._note(f"start {self.starts} ({self.how})")
        if self.how == "cli":
            script = Path(sys.executable).with_name("bestmatch")
            command = [str(script)] if script.exists() else [sys.executable, "-m", "bestmatch.cli"]
            with self.log.open("ab") as out:
                self._child = subprocess.Popen(
                    [*command, *self.args],
                    env={**os.environ, **stream_env(self.settings)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        else:
            self._child = _forkserver().Process(
                target=_run_command,
                args=(stream_env(self.settings), self.args, str(self.log)),
                daemon=True,
            )
            self._child.start()

    def _note(self, what: str) -> None:
        # wall-clock times, to line the log up with the Delta commits' times
        with self.log.open("a") as out:
            out.write(f"--- {time.time():.3f} {what}\n")

    def alive(self) -> bool:
        if self._child is None:
            return False
        if self.how == "cli":
            return self._child.poll() is None
        return bool(self._child.is_alive())

    def kill(self) -> None:
        """SIGKILL: no chance to flush, close or snapshot anything."""
        if self._child is None:
            return
        if self.alive():
            os.kill(self._child.pid, signal.SIGKILL)
            self._note("SIGKILL")
        if self.how == "cli":
            self._child.wait(timeout=30)
        else:
            self._child.join(timeout=30)
        assert not self.alive(), f"{self} survived SIGKILL"
        self._child = None

    def interrupt(self, timeout: float = 20.0) -> None:
        """Ctrl-C (SIGINT), as a user stops it; it must be gone within `timeout` seconds."""
        assert self._child is not None and self.alive(), "not running"
        os.kill(self._child.pid, signal.SIGINT)
        self._note("SIGINT")
        wait_until(lambda: not self.alive(), timeout, f"{self} to stop on Ctrl-C", every=0.05)
        self._child = None

    def events_in(self) -> int | None:
        """Raw events this process has read (its metrics endpoint), None until it answers."""
        if not self.alive():
            self.fail_if_dead()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                body = r.read()
        except OSError:
            return None
        found = _EVENTS_IN.search(body)
        return None if found is None else int(float(found.group(1)))

    def wait_read(self, n: int, timeout: float) -> float:
        """Wait until this process has read at least n events; returns the seconds waited."""
        started = time.monotonic()
        wait_until(lambda: (self.events_in() or 0) >= n, timeout, f"{self} to read {n} events")
        return time.monotonic() - started

    def fail_if_dead(self) -> None:
        if self._child is not None and not self.alive():
            msg = f"{self} exited early; its log:\n{self.log.read_text()[-4000:]}"
            raise AssertionError(msg)

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


# --- the event bus ----------------------------------------------------------------------------


def publish(settings: Settings, lines: Iterable[bytes], rate: float | None = None) -> int:
    """`bestmatch publish`'s own function, onto the settings' stream."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return publish_lines(client, settings.stream_key, lines, rate=rate)
    finally:
        client.close()


class Publisher(threading.Thread):
    """Publishes in the background at `rate` events per second."""

    def __init__(self, settings: Settings, lines: Sequence[bytes], rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.lines, self.rate = settings, lines, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            publish(self.settings, self.lines, self.rate)
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
