"""The feature flow: one dataflow, two sources (a file for backfill, the event bus for stream).

source ─ parse ─ sequence (one key) ─┬─ aggregate (N shards) ─┬─ Redis (update)
                                     │                        └─ Delta change log
                                     └─ dead letters ─ Delta dead-letter table

Every item is a batch of events as columns. Each source partition is parsed on the worker that
reads it; the sequencer is the one ordered step and does only what must be ordered (repeats,
lateness, the clock) with a few array operations a batch; the shards and the change-log writers
each run on the worker that owns them.
"""

from __future__ import annotations

import functools
from pathlib import Path

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from features.settings import Settings
from flows.items import SequencerOutput
from flows.kafka import KafkaSource
from flows.logic import SequencerLogic, ShardLogic, parse_batch
from flows.sinks import ChangelogSink, DeadLetterSink, OnlineSink
from flows.sources import JsonlSource

DEFAULT_SHARDS = 4  # the most workers a cluster can use; fixed for the life of a checkpoint


def build_flow(
    settings: Settings,
    source: Source,
    *,
    shards: int = DEFAULT_SHARDS,
    trigger_s: float = 0.0,
    recoverable: bool = False,
    fresh_online: bool = True,
    flow_id: str = "bestmatch_features",
    writers: int = 1,
) -> Dataflow:
    """The dataflow, with sinks writing to the stores `settings` names.

    `trigger_s` is the change log's trigger: 0 commits every batch (continuous); N commits at
    most every N seconds (fewer, larger files). Redis is always written every batch.
    """
    lateness_us = int(settings.allowed_lateness_s * 1_000_000)
    flow = Dataflow(flow_id)
    # Each source has its own step id, so a stream resumed from a backfill's checkpoint starts
    # its own source afresh while the sequencer and shards continue.
    raw = op.input(source_step_id(source), flow, source)
    # Parsed where read: spreading raw batches over the workers (`op.redistribute`) was measured
    # slower with two processes, the lines going out and the parsed columns coming back.
    parsed = op.map("parse_events", raw, functools.partial(parse_batch, shards=shards))
    keyed = op.key_on("order_events", parsed, lambda _: "sequence")
    # a Kafka topic's partitions are merged by stream time in the sequencer (docs/event-bus.md)
    merged, idle_ms = None, 0.0
    if isinstance(source, KafkaSource):
        merged, idle_ms = source.list_parts(), source.idle_ms
    sequenced = op.stateful_batch(
        "sequence_events",
        keyed,
        lambda state: SequencerLogic(shards, lateness_us, recoverable, state, merged, idle_ms),
    )
    outputs = op.key_rm("unkey_sequence", sequenced)
    dead = op.flat_map("take_dead_letters", outputs, _dead_letters)
    work = op.flat_map("take_shard_work", outputs, _shard_work)
    by_shard = op.key_on("shard_entities", work, lambda w: w.shard)
    state_dir = state_dir_of(settings) if recoverable else None
    aggregated = op.stateful_batch(
        "aggregate_features", by_shard, lambda state: ShardLogic(state_dir, fresh_online, state)
    )
    changes = op.key_rm("unkey_shards", aggregated)
    op.output("write_online", changes, OnlineSink(settings))
    op.output(
        "write_changelog",
        op.key_on("route_changelog", changes, lambda out: f"writer-{int(out.shard) % writers}"),
        ChangelogSink(settings, trigger_s=trigger_s, writers=writers),
    )
    op.output(
        "write_dead_letters",
        op.key_on("route_dead", dead, lambda _: "dead_letters"),
        DeadLetterSink(settings),
    )
    return flow


def checkpoint_dir(settings: Settings) -> Path:
    """The recovery folder: local, beside a local lake or where `BESTMATCH_CHECKPOINTS` says."""
    return settings.checkpoint_root / "features"


def state_dir_of(settings: Settings) -> Path:
    """Where the shards keep their journals (`flows.journal`), beside Bytewax's recovery."""
    return settings.checkpoint_root / "features-state"


def source_step_id(source: Source) -> str:
    if isinstance(source, KafkaSource):
        return "read_kafka"
    return "read_file" if isinstance(source, JsonlSource) else "read_bus"


def _dead_letters(out: SequencerOutput) -> list:
    return out.dead


def _shard_work(out: SequencerOutput) -> list:
    return out.work
