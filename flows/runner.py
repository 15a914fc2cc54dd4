"""Run the feature flow: backfill (available-now, then stop) or stream (until stopped).

Both keep Bytewax recovery in `<lake>/_checkpoints/features`. A backfill starts it afresh (history
is recomputed from scratch) and leaves its final state there, so a `stream` started afterwards
continues from where the backfill's clock stopped; a `stream` killed at any moment resumes from
its last epoch, and the idempotent sinks make the replay invisible.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig, init_db_dir

from features.errors import ConfigError
from features.settings import Settings
from flows.flow import DEFAULT_SHARDS, build_flow
from flows.sources import JsonlSource, RedisStreamSource

RECOVERY_PARTITIONS = 4


def checkpoint_dir(settings: Settings) -> Path:
    if not settings.lake_is_local:
        msg = "the flow keeps its checkpoints in a local BESTMATCH_LAKE"
        raise ConfigError(msg)
    return Path(settings.lake_path("_checkpoints", "features"))


def _recovery(directory: Path, fresh: bool) -> RecoveryConfig:
    if fresh and directory.exists():
        shutil.rmtree(directory)
    if not directory.exists():
        directory.mkdir(parents=True)
        init_db_dir(directory, RECOVERY_PARTITIONS)
    return RecoveryConfig(str(directory))


def run_backfill(
    settings: Settings,
    events: Path,
    *,
    until: int | None = None,
    workers: int = 1,
    shards: int = DEFAULT_SHARDS,
    batch_size: int = 2000,
    checkpoint: bool = True,
) -> None:
    """All events of a file, then the clock moves to `until` (default: the newest event time).

    With `checkpoint`, the final state is kept for a later `stream` (one snapshot at the end: the
    epoch spans the whole run, since a backfill is simply run again after a crash).
    """
    recovery = _recovery(checkpoint_dir(settings), fresh=True) if checkpoint else None
    flow = build_flow(
        settings,
        JsonlSource(events, batch_size, until),
        shards=shards,
        trigger_s=3600.0,
        recoverable=checkpoint,
    )
    cli_main(
        flow,
        workers_per_process=workers,
        epoch_interval=timedelta(days=365),
        recovery_config=recovery,
    )


def run_stream(
    settings: Settings,
    *,
    workers: int = 1,
    shards: int = DEFAULT_SHARDS,
    trigger_s: float = 0.0,
    epoch_s: float = 2.0,
    batch_size: int = 2000,
) -> None:
    """The event bus, until stopped; resumes after a crash with nothing lost or counted twice."""
    source = RedisStreamSource(settings.redis_url, [settings.stream_key], batch_size)
    flow = build_flow(settings, source, shards=shards, trigger_s=trigger_s, recoverable=True)
    cli_main(
        flow,
        workers_per_process=workers,
        epoch_interval=timedelta(seconds=epoch_s),
        recovery_config=_recovery(checkpoint_dir(settings), fresh=False),
    )
