"""Run the feature flow: backfill (available-now, then stop) or stream (until stopped)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig

from features.settings import Settings
from flows.flow import DEFAULT_SHARDS, build_flow
from flows.sources import JsonlSource, RedisStreamSource


def run_backfill(settings: Settings, events: Path, *, until: int | None = None,
                 workers: int = 1, shards: int = DEFAULT_SHARDS, batch_size: int = 2000,
                 epoch_s: float = 10.0) -> None:
    """All events of a file, then the clock moves to `until` (default: the newest event time)."""
    flow = build_flow(settings, JsonlSource(events, batch_size, until), shards=shards,
                      trigger_s=3600.0)
    cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=epoch_s))


def run_stream(settings: Settings, *, workers: int = 1, shards: int = DEFAULT_SHARDS,
               recovery_dir: Path | None = None, trigger_s: float = 0.0,
               epoch_s: float = 1.0, batch_size: int = 2000) -> None:
    """The event bus, until stopped; with `recovery_dir`, resumes after a crash."""
    source = RedisStreamSource(settings.redis_url, [settings.stream_key], batch_size)
    flow = build_flow(settings, source, shards=shards, trigger_s=trigger_s,
                      recoverable=recovery_dir is not None)
    recovery = RecoveryConfig(str(recovery_dir)) if recovery_dir is not None else None
    cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=epoch_s),
             recovery_config=recovery)
