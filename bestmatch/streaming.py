"""Run `bestmatch stream` as a child process and know when it has caught up (demo, benchmarks)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from bestmatch.services import child_env, free_port
from features.errors import FlowError
from features.settings import Settings

_EVENTS_IN = re.compile(rb"^bestmatch_flow_events_in_total ([0-9.e+]+)$", re.MULTILINE)


class StreamProcess:
    """`bestmatch stream` in a child process, with its metrics on a free port."""

    def __init__(
        self, settings: Settings, log: Path, *, workers: int = 1, trigger_s: float | None = None
    ) -> None:
        self.port = free_port()
        env = child_env(
            BESTMATCH_REDIS_URL=settings.redis_url,
            BESTMATCH_LAKE=settings.lake,
            BESTMATCH_STREAM_KEY=settings.stream_key,
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bestmatch",
                "stream",
                "--metrics-port",
                str(self.port),
                "--workers",
                str(workers),
                *(["--trigger", str(trigger_s)] if trigger_s else []),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events_in(self) -> float | None:
        """Raw events the flow has read, or None while its metrics are not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1) as r:
                match = _EVENTS_IN.search(r.read())
        except OSError:
            return None
        return float(match.group(1)) if match else 0.0

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        self._wait(lambda: self.events_in() is not None, timeout_s, "start")

    def wait_for(self, events: int, timeout_s: float = 300.0) -> None:
        """Until the flow has read `events` events (and given the sinks a moment)."""
        self._wait(lambda: (self.events_in() or 0) >= events, timeout_s, f"read {events} events")
        time.sleep(0.5)

    def _wait(self, done: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():  # type: ignore[operator]
            if self.process.poll() is not None:
                msg = f"bestmatch stream exited ({self.process.returncode}) before it could {what}"
                raise FlowError(msg)
            if time.monotonic() > deadline:
                msg = f"bestmatch stream did not {what} within {timeout_s:.0f} s"
                raise FlowError(msg)
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> StreamProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
