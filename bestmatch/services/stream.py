"""`bestmatch stream` as a child process: start it on a set of stores, watch what it has read,
stop it as a user would (Ctrl-C) or kill it as a crash would, and start it again.

The demo, the flow benchmark and the tests all run the stream through this one launcher.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from bestmatch.services.children import child_env, free_port
from features.errors import FlowError
from features.settings import Settings

_EVENTS_IN = re.compile(rb"^bestmatch_flow_events_in_total (\S+)$", re.MULTILINE)


class Child(Protocol):
    """What the launcher needs of a child: `subprocess.Popen` has it."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def stream_env(settings: Settings) -> dict[str, str]:
    """The variables that make `bestmatch` use these settings' stores and event bus."""
    return {
        "BESTMATCH_REDIS_URL": settings.redis_url,
        "BESTMATCH_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "BESTMATCH_LAKE": settings.lake,
        "BESTMATCH_STREAM_KEY": settings.stream_key,
        "BESTMATCH_FEAST_PROJECT": settings.feast_project,
        "BESTMATCH_BUS": settings.bus,
        "BESTMATCH_KAFKA_IDLE_MS": str(settings.kafka_idle_ms),
        "BESTMATCH_KAFKA_RETRY_S": str(settings.kafka_retry_s),
        "BESTMATCH_CHECKPOINTS": str(settings.checkpoint_root),
    }


class StreamProcess:
    """One `bestmatch stream` at a time on `settings`' stores, its output appended to `log` and
    its metrics on `metrics_port` (default: a free port).

    The child runs in a session of its own, as a `bestmatch stream` started in its own terminal
    would (Linux schedules each session as a group): a terminal's Ctrl-C reaches only the command
    that started it, which stops it itself (`stop`, or leaving a `with` block).
    """

    def __init__(
        self,
        settings: Settings,
        log: Path,
        *,
        workers: int = 1,
        trigger_s: float | None = None,
        options: Sequence[str] = (),
        metrics_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.port = metrics_port or free_port()
        self.workers = workers
        self.options = [*(["--trigger", str(trigger_s)] if trigger_s is not None else []), *options]
        self.starts = 0
        self.child: Child | None = None

    @property
    def args(self) -> list[str]:
        """The command's arguments after `bestmatch`."""
        return ["stream", "--metrics-port", str(self.port), "--workers", str(self.workers)] + (
            self.options
        )

    def command(self) -> list[str]:
        """The program that runs `bestmatch`: this interpreter, so the same environment."""
        return [sys.executable, "-m", "bestmatch"]

    def spawn(self) -> Child:
        """Start the child (a subclass may start it another way: the tests fork it)."""
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [*self.command(), *self.args],
                env=child_env(**stream_env(self.settings)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> StreamProcess:
        if self.alive():
            msg = f"{self} is already running"
            raise FlowError(msg)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.note(f"start {self.starts}")
        self.child = self.spawn()
        return self

    def note(self, what: str) -> None:
        """A line in the log, with the wall-clock time (to line it up with Delta's commits)."""
        with self.log.open("a") as out:
            out.write(f"--- {time.time():.3f} {what}\n")

    def alive(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def check(self) -> None:
        """Raise, with the end of its log, if the stream has exited on its own."""
        if self.child is not None and self.child.poll() is not None:
            tail = self.log.read_text(errors="replace")[-4000:]
            msg = f"{self} exited with {self.child.poll()}:\n{tail}"
            raise FlowError(msg)

    def events_in(self) -> int | None:
        """Raw events the stream has read (its metrics), or None while they do not answer."""
        self.check()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                found = _EVENTS_IN.search(r.read())
        except OSError:
            return None
        return 0 if found is None else int(float(found.group(1)))

    def wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Until `done()`, failing if the stream exits or `timeout_s` passes; returns the
        seconds waited."""
        started = time.monotonic()
        while not done():
            self.check()
            if time.monotonic() - started > timeout_s:
                msg = f"{self} did not {what} within {timeout_s:.0f} s (log: {self.log})"
                raise FlowError(msg)
            time.sleep(0.05)
        return time.monotonic() - started

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Until its metrics answer."""
        return self.wait_until(lambda: self.events_in() is not None, timeout_s, "start")

    def wait_read(self, events: int, timeout_s: float = 300.0) -> float:
        """Until it has read at least `events` events."""
        return self.wait_until(
            lambda: (self.events_in() or 0) >= events, timeout_s, f"read {events} events"
        )

    def interrupt(self, timeout_s: float = 20.0) -> None:
        """Ctrl-C (SIGINT), as a user stops it; it must be gone within `timeout_s`."""
        if self.child is None or not self.alive():
            msg = f"{self} is not running"
            raise FlowError(msg)
        os.kill(self.child.pid, signal.SIGINT)
        self.note("SIGINT")
        try:
            self.child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            msg = f"{self} did not stop within {timeout_s:.0f} s of Ctrl-C (log: {self.log})"
            raise FlowError(msg) from None
        self.child = None

    def kill(self) -> None:
        """SIGKILL, as a crash: no chance to flush, close or snapshot anything."""
        if self.child is None:
            return
        if self.alive():
            os.kill(self.child.pid, signal.SIGKILL)
            self.note("SIGKILL")
        self.child.wait(timeout=30)
        self.child = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ctrl-C, then SIGKILL if it has not stopped within `timeout_s`; always leaves it gone."""
        if self.alive():
            with contextlib.suppress(FlowError):
                self.interrupt(timeout_s)
        self.kill()

    def __enter__(self) -> StreamProcess:
        return self if self.alive() else self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"bestmatch stream ({self.workers} worker(s), lake {self.settings.lake})"
