"""The feature flow: one dataflow, two sources (a file for backfill, the event bus for stream).

source ─ parse ─ sequence (one key) ─┬─ aggregate (N shards) ─┬─ Redis (update)
                                     │                        └─ Delta change log (append)
                                     └─ dead letters ─ Delta dead-letter table
"""

from __future__ import annotations

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from features.settings import Settings
from flows.items import SequencerOutput
from flows.kafka import KafkaSource, merge_partitions
from flows.logic import SequencerLogic, ShardLogic, parse_batch
from flows.sinks import ChangelogSink, DeadLetterSink, OnlineSink
from flows.sources import JsonlSource

DEFAULT_SHARDS = 16


def build_flow(
    settings: Settings,
    source: Source,
    *,
    shards: int = DEFAULT_SHARDS,
    trigger_s: float = 0.0,
    recoverable: bool = False,
    fresh_online: bool = True,
    flow_id: str = "bestmatch_features",
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
    parsed = op.map("parse_events", raw, parse_batch)
    if isinstance(source, KafkaSource):  # partitions merged by stream time (docs/event-bus.md)
        keyed = merge_partitions(parsed, source.list_parts(), source.idle_ms)  # keyed as below
    else:
        keyed = op.key_on("order_events", parsed, lambda _: "sequence")
    sequenced = op.stateful_batch(
        "sequence_events",
        keyed,
        lambda state: SequencerLogic(shards, lateness_us, recoverable, state),
    )
    outputs = op.key_rm("unkey_sequence", sequenced)
    dead = op.flat_map("take_dead_letters", outputs, _dead_letters)
    work = op.flat_map("take_shard_work", outputs, _shard_work)
    by_shard = op.key_on("shard_entities", work, lambda w: w.shard)
    aggregated = op.stateful_batch(
        "aggregate_features", by_shard, lambda state: ShardLogic(recoverable, fresh_online, state)
    )
    changes = op.key_rm("unkey_shards", aggregated)
    op.output("write_online", changes, OnlineSink(settings))
    op.output(
        "write_changelog",
        op.key_on("route_changelog", changes, lambda _: "changelog"),
        ChangelogSink(settings, trigger_s=trigger_s),
    )
    op.output(
        "write_dead_letters",
        op.key_on("route_dead", dead, lambda _: "dead_letters"),
        DeadLetterSink(settings),
    )
    return flow


def source_step_id(source: Source) -> str:
    if isinstance(source, KafkaSource):
        return "read_kafka"
    return "read_file" if isinstance(source, JsonlSource) else "read_bus"


def _dead_letters(out: SequencerOutput) -> list:
    return out.dead


def _shard_work(out: SequencerOutput) -> list:
    return [w for w in out.work if w.items]
