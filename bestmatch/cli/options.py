"""What the commands share: option types, the settings (read once per command), checked paths
and times, the record of the last backfill, and keeping Feast's registry in step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bestmatch.console import console, progress
from features.errors import ConfigError, InvalidEventError
from features.settings import Settings

EventsFile = Annotated[
    Path, typer.Option("--events", help="JSON Lines file (.jsonl or .jsonl.gz).")
]
Workers = Annotated[
    int, typer.Option("--workers", "-w", min=1, help="Bytewax worker threads per process.")
]
Processes = Annotated[
    int, typer.Option("--processes", "-p", min=1, help="Local processes (a Bytewax cluster).")
]


def read_settings() -> Settings:
    """The platform's settings from the environment, or one clear configuration error."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        msg = f"bad configuration: {first[-1].strip() if first else exc}"
        raise ConfigError(msg) from None


def lake_settings() -> Settings:
    """`read_settings`, for a command that uses the lake: an object store that cannot be
    reached is one clear line now, not a traceback later."""
    from features.lake import check_lake

    settings = read_settings()
    check_lake(settings)
    return settings


def time_option(text: str | None, option: str) -> int | None:
    """An RFC 3339 option value as µs since the epoch, or one clear error."""
    if text is None:
        return None
    from features.events import parse_time

    try:
        return parse_time(text)
    except Exception:  # the parser's own rule error; the message below says what is expected
        msg = f"{option}: must be RFC 3339 with an offset (like 2026-03-01T12:00:00Z), got {text!r}"
        raise InvalidEventError(msg, option) from None


def need_file(path: Path, option: str) -> None:
    if not path.is_file():
        msg = f"{option}: no such file: {path}"
        raise ConfigError(msg)


def register_feast(settings: Settings) -> None:
    """Keep Feast's registry in step, so `FeatureStore(repo_path="features")` reads the stores."""
    from bestmatch.services import ensure_feast_registry

    with progress("registering the Feast objects (feast apply)"):
        applied = ensure_feast_registry(settings)
    if applied:
        console.print("Feast registry updated: FeatureStore(repo_path='features') is ready")


def remember_backfill(settings: Settings, events: Path) -> None:
    meta = settings.local_root / "_meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "last_backfill.txt").write_text(str(events.resolve()))


def last_backfill(settings: Settings) -> Path:
    record = settings.local_root / "_meta" / "last_backfill.txt"
    if not record.exists():
        msg = "--events: no events file given and no `bestmatch backfill` has run on this lake"
        raise ConfigError(msg)
    return Path(record.read_text().strip())
