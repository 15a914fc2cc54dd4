"""Local services the commands may need: a Redis server when none answers at the configured URL."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from features.errors import ServiceError, StoreError
from features.settings import Settings


def redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def ensure_redis(url: str, workdir: Path) -> str | None:
    """Start `redis-server` for a local URL that nothing answers; returns a note, or None."""
    if redis_reachable(url):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in {"127.0.0.1", "localhost", "::1"}:
        msg = f"Redis at {host}:{port} does not answer (BESTMATCH_REDIS_URL)"
        raise StoreError(msg)
    binary = shutil.which("redis-server")
    if binary is None:
        msg = "redis-server is not installed and no Redis answers: run ./scripts/demo.sh"
        raise StoreError(msg)
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            host,
            "--daemonize",
            "yes",
            "--dir",
            str(workdir.resolve()),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str((workdir / "redis.log").resolve()),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not redis_reachable(url):
        if time.monotonic() > deadline:
            msg = f"started redis-server on port {port}, but it does not answer"
            raise StoreError(msg)
        time.sleep(0.05)
    return f"started redis-server on {host}:{port} (stop it with: redis-cli -p {port} shutdown)"


def ensure_feast_registry(settings: Settings) -> bool:
    """`feast apply` for the derived objects, skipped (without importing Feast, which takes
    seconds) while the registry was applied from the same definitions."""
    import hashlib

    from features import specs
    from features.registry import REPO_PATH

    source = (REPO_PATH / "feast_repo.py").read_bytes() + repr(specs.FEATURES).encode()
    fingerprint = hashlib.sha256(source + settings.feast_project.encode()).hexdigest()
    marker = REPO_PATH / "data" / "registry.fingerprint"
    registry = REPO_PATH / "data" / "registry.db"
    if registry.exists() and marker.exists() and marker.read_text() == fingerprint:
        return False
    from features.registry import ensure_registry

    applied = ensure_registry(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    return applied


class ServiceProcess:
    """`bestmatch serve` in a child process on a free port (the demo's ranking service).

    `serving` holds `BESTMATCH_SERVE_*` overrides (e.g. `{"LOG_RATE": "1"}`). `stop` asks it to
    shut down with SIGINT, which runs the lifespan's shutdown: the serving log is flushed.
    """

    def __init__(self, settings: Settings, log: Path, serving: dict[str, str] | None = None):
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = child_env(
            BESTMATCH_REDIS_URL=settings.redis_url,
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


# Importing feast (its `feast.metrics`) points both at a temporary folder of its own, which puts
# every later prometheus_client importer in multiprocess mode writing there: a child we start
# must not inherit that (it would write into a folder the parent deletes at exit).
_FOREIGN_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def child_env(**variables: str) -> dict[str, str]:
    """The environment of a child process we start: ours, with `variables`, without Feast's
    Prometheus folder."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_VARIABLES}
    env.update(variables)
    return env


def free_port() -> int:
    """A free TCP port on the loopback interface (for the child processes the commands run)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
