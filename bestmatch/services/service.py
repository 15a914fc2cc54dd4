"""`bestmatch serve` as a child process (the demo's ranking service)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bestmatch.services.children import child_env, free_port
from features.errors import ServiceError
from features.settings import Settings


class ServiceProcess:
    """`bestmatch serve` in a child process on a free port (the demo's ranking service).

    `serving` holds `BESTMATCH_SERVE_*` overrides (e.g. `{"LOG_RATE": "1"}`). `stop` asks it to
    shut down with SIGINT, which runs the lifespan's shutdown: the serving log is flushed.
    """

    def __init__(self, settings: Settings, log: Path, serving: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = child_env(
            BESTMATCH_REDIS_URL=settings.redis_url,
            BESTMATCH_REDIS_CLUSTER="true" if settings.redis_cluster else "false",
            BESTMATCH_LAKE=settings.lake,
            **{f"BESTMATCH_SERVE_{k}": v for k, v in (serving or {}).items()},
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bestmatch", "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the demo, which stops it itself
            )

    def get(self, path: str, timeout_s: float = 2.0) -> tuple[int, dict[str, object]]:
        """(status, JSON body) of a GET; (0, {}) while nothing answers."""
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except OSError:
            return 0, {}

    def wait_ready(self, version: str | None = None, timeout_s: float = 120.0) -> None:
        """Until `/readyz` says ready, serving `version` when one is given."""

        def ready() -> bool:
            status, body = self.get("/readyz")
            model = body.get("model") if status == 200 else None
            return isinstance(model, dict) and (version is None or model["version"] == version)

        self._wait(ready, timeout_s, "get ready" if version is None else f"serve v{version}")

    def wait_alive(self, timeout_s: float = 120.0) -> None:
        self._wait(lambda: self.get("/healthz")[0] == 200, timeout_s, "start")

    def _wait(self, done: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():  # type: ignore[operator]
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                msg = (
                    f"bestmatch serve exited ({self.process.returncode}) before it could {what}"
                    f"{': ' + tail[0] if tail else ''} (log: {self.log})"
                )
                raise ServiceError(msg)
            if time.monotonic() > deadline:
                msg = f"bestmatch serve did not {what} within {timeout_s:.0f} s (log: {self.log})"
                raise ServiceError(msg)
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
