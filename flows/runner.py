"""Run the feature flow: backfill (available-now, then stop) or stream (until stopped).

Both keep Bytewax recovery in `<checkpoints>/features` (`Settings.checkpoint_root`, a local folder:
`<lake>/_checkpoints` by default). A backfill starts it afresh (history is recomputed from
scratch) and leaves its final state there, so a `stream` started afterwards continues from where
the backfill's clock stopped; a `stream` killed at any moment resumes from
its last epoch, and the idempotent sinks make the replay invisible.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import shutil
import signal
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig, init_db_dir

from features.bus import kafka_partitions
from features.errors import ConfigError, FlowError
from features.offline_layout import create_changelog_tables
from features.settings import Settings
from flows.flow import DEFAULT_SHARDS, build_flow, checkpoint_dir, state_dir_of
from flows.kafka import KafkaSource
from flows.sources import JsonlSource, RedisStreamSource

RECOVERY_PARTITIONS = 4


def _recovery(directory: Path, fresh: bool, state: Path) -> RecoveryConfig:
    if fresh:
        shutil.rmtree(state, ignore_errors=True)
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
    processes: int = 1,
    shards: int = DEFAULT_SHARDS,
    batch_size: int = 20_000,
    checkpoint: bool = True,
) -> None:
    """All events of a file, then the clock moves to `until` (default: the newest event time).

    With `checkpoint`, the final state is kept for a later `stream` (one snapshot at the end: the
    epoch spans the whole run, since a backfill is simply run again after a crash).
    """
    if checkpoint:
        _recovery(checkpoint_dir(settings), fresh=True, state=state_dir_of(settings))
    options = {
        "events": events,
        "until": until,
        "shards": shards,
        "batch_size": batch_size,
        "checkpoint": checkpoint,
    }
    _launch(settings, "backfill", options, workers, processes)


def run_stream(
    settings: Settings,
    *,
    workers: int = 1,
    processes: int = 1,
    shards: int = DEFAULT_SHARDS,
    trigger_s: float = 1.0,
    epoch_s: float = 2.0,
    batch_size: int = 2000,
    until_caught_up: bool = False,
) -> None:
    """The event bus, until stopped; resumes after a crash with nothing lost or counted twice.

    `until_caught_up` (Kafka only): a replay of the topic in available-now mode, as a backfill
    runs (one epoch, online values written at the end): it stops once every partition is read
    to its end.
    """
    options: dict[str, Any] = {
        "shards": shards,
        "trigger_s": trigger_s,
        "epoch_s": epoch_s,
        "batch_size": batch_size,
        "until_caught_up": until_caught_up,
    }
    if settings.kafka is not None:  # one clear line now if the cluster cannot be reached
        options["partitions"] = kafka_partitions(settings.kafka, settings.kafka_retry_s)
    elif until_caught_up:
        msg = "until_caught_up needs BESTMATCH_BUS=kafka://..."
        raise ConfigError(msg)
    _recovery(checkpoint_dir(settings), fresh=False, state=state_dir_of(settings))
    _launch(settings, "stream", options, workers, processes)


def _launch(
    settings: Settings, mode: str, options: dict[str, Any], workers: int, processes: int
) -> None:
    """Run the flow in this process, or as a cluster of `processes` local processes."""
    create_changelog_tables(settings)  # once, before writers in several processes start
    if processes <= 1:
        _execute(settings, mode, options, workers, None, None)
        return
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(processes)]
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_execute,
            args=(settings, mode, options, workers, i, addresses),
            name=f"bestmatch-{mode}-{i}",
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join()
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
    failed = [c.name for c in children if c.exitcode]
    if failed:
        msg = f"flow process(es) failed: {', '.join(failed)} (their errors are above)"
        raise FlowError(msg)


def _execute(
    settings: Settings,
    mode: str,
    options: dict[str, Any],
    workers: int,
    process_id: int | None,
    addresses: list[str] | None,
) -> None:
    if process_id is not None:
        _die_with_parent()
    recovery = RecoveryConfig(str(checkpoint_dir(settings)))
    if mode == "backfill":
        source = JsonlSource(options["events"], options["batch_size"], options["until"])
        flow = build_flow(
            settings,
            source,
            shards=options["shards"],
            trigger_s=3600.0,
            recoverable=options["checkpoint"],
            fresh_online=False,
            writers=workers * len(addresses or [None]),
        )
        epoch = timedelta(days=365)
        if not options["checkpoint"]:
            recovery = None
    else:
        replay = options["until_caught_up"]
        flow = build_flow(
            settings,
            _bus_source(settings, options),
            shards=options["shards"],
            trigger_s=3600.0 if replay else options["trigger_s"],
            recoverable=True,
            fresh_online=not replay,
            writers=workers * len(addresses or [None]),
        )
        epoch = timedelta(seconds=options["epoch_s"])
        if replay:  # a replay runs as a backfill does: one epoch
            epoch = timedelta(days=365)
    # Everything imported and built so far lives as long as the process: leave it out of the
    # cyclic collector's scans, which otherwise walk it all on every full collection.
    gc.freeze()
    cli_main(
        flow,
        workers_per_process=workers,
        process_id=process_id,
        addresses=addresses,
        epoch_interval=epoch,
        recovery_config=recovery,
    )


def _bus_source(settings: Settings, options: dict[str, Any]) -> KafkaSource | RedisStreamSource:
    if settings.kafka is None:
        return RedisStreamSource(
            settings.redis_url,
            [settings.stream_key],
            options["batch_size"],
            cluster=settings.redis_cluster,
        )
    return KafkaSource(
        settings.kafka,
        options["partitions"],
        options["batch_size"],
        idle_ms=settings.kafka_idle_ms,
        retry_s=settings.kafka_retry_s,
        stop_at_end=options["until_caught_up"],
    )


def _die_with_parent() -> None:
    """A cluster process ends with the command that started it, even one that was SIGKILLed,
    so a restart never runs two clusters against the same checkpoint (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (all held open while choosing, so none is picked twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
