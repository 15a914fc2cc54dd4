"""`bestmatch publish` and `bestmatch stream` on a Kafka topic of a real Kafka-protocol broker
(librdkafka's mock cluster, tests/kafka_fixtures.py), 4 partitions.

- stream over the topic = backfill of the same events (1 process, and 2 processes reading
  different partitions), whatever the partition each event is in;
- results do not depend on how the partitions' messages interleave in time;
- SIGKILLed and resumed, it loses nothing and counts nothing twice;
- a broker that cannot be reached, or goes away, is one clear line; so is a malformed
  BESTMATCH_BUS.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from bestmatch.services import stream_env
from features.bus import event_key, publish_kafka
from features.errors import ConfigError
from features.events import Event
from features.settings import Settings
from flows.runner import run_backfill
from tests import oracle
from tests.conftest import free_port
from tests.kafka_fixtures import (
    IDLE_MS,
    PARTITIONS,
    MockKafka,
    new_mock_kafka,
    on_topic,
)
from tests.streaming import (
    How,
    Publisher,
    StreamProcess,
    Streams,
    changelog_rows,
    converge,
    dead_letters,
    new_stream,
    online_dump,
    online_values,
    wait_until,
)
from tests.test_flow import random_events
from tests.test_stream import (
    assert_no_repeated_stamps,
    dirty_lines,
    line_of,
    other_stores,
    tick,
    write_lines,
)

SECOND = 1_000_000
DAY = 86_400 * SECOND
START_TIMEOUT = 180.0  # a first start imports the whole stack: slow on a loaded 2-core box
CATCH_UP_TIMEOUT = 90.0

# --- events -----------------------------------------------------------------------------------


def in_order_dirty(events: list[Event], seed: int, late: float = 0.0) -> list[bytes]:
    """The events in time order, with invalid lines and at-once repeats (duplicates); with
    `late`, that share of events is repeated 1 to 40 events later (late by then, or not)."""
    return dirty_lines(events, seed, late=late, back=40, first=1)


def out_of_order_dirty(events: list[Event], seed: int) -> list[bytes]:
    return in_order_dirty(events, seed, late=0.05)


def by_hash(line: bytes) -> int:
    """Another assignment of lines to partitions than the key's: spread, ignoring entities."""
    return zlib.adler32(line) % PARTITIONS


def by_key_rotated(line: bytes) -> int:
    """The key's partitions, numbered the other way round (same groups, other tie order)."""
    return PARTITIONS - 1 - zlib.crc32(event_key(line)) % PARTITIONS


def sorted_letters(settings: Settings) -> list[tuple[str, str]]:
    return sorted((raw, reason) for _, _, raw, reason in dead_letters(settings))


def backfill_of(settings: Settings, tmp_path: Path, lines: list[bytes], db: int) -> Settings:
    stores = other_stores(settings, tmp_path, f"backfill-{db}", db=db)
    run_backfill(stores, write_lines(tmp_path / f"events-{db}.jsonl", lines))
    return stores


def assert_holds(got: Settings, want: Settings, *, letters: Callable[[Settings], object]) -> None:
    """`got` converges to what `want` holds: online store, change log, dead letters."""
    want_online, want_rows = online_dump(want), changelog_rows(want)
    assert converge(lambda: online_dump(got), want_online, CATCH_UP_TIMEOUT) == want_online
    assert converge(lambda: changelog_rows(got), want_rows, 30) == want_rows
    assert converge(lambda: letters(got), letters(want), 30) == letters(want)


# --- stream over a topic = backfill -----------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "options", "how"),
    [
        pytest.param(None, (), "fork", id="by-key"),
        # the installed command: its processes are children of its own
        pytest.param(by_key_rotated, ("--processes", "2"), "cli", id="rotated-2-processes"),
    ],
)
def test_stream_equals_backfill(
    tmp_path: Path,
    kafka_settings: Settings,
    streams: Streams,
    assignment: Callable[[bytes], int] | None,
    options: tuple[str, ...],
    how: How,
) -> None:
    events = random_events(seed=41, n=900)
    lines = in_order_dirty(events, seed=2)
    backfilled = backfill_of(kafka_settings, tmp_path, lines, db=1)
    assert len(sorted_letters(backfilled)) > 10
    assert kafka_settings.kafka is not None
    if assignment is None:  # by the key: what `bestmatch publish` does
        events_file = write_lines(tmp_path / "publish.jsonl", lines)
        code, output = run_command(
            ["publish", "--events", str(events_file)], stream_env(kafka_settings)
        )
        assert code == 0, output
        assert f"published {len(lines):,} events" in output
        sent = len(lines)
    else:
        sent = publish_kafka(kafka_settings.kafka, lines, partition=assignment)
        assert sent == len(lines)

    stream = new_stream(streams, kafka_settings, tmp_path, options=options, how=how)
    if not options:  # with 2 processes, each has its own metrics
        stream.wait_read(sent, START_TIMEOUT)
    # once every partition is idle the stream closes its newest instant, as a backfill's end
    # does: the change log then holds every row
    assert_holds(kafka_settings, backfilled, letters=sorted_letters)
    entities = oracle.entity_ids(events)
    assert online_values(kafka_settings, entities) == online_values(backfilled, entities)
    assert_no_repeated_stamps(changelog_rows(kafka_settings))
    read = {source for source, *_ in dead_letters(kafka_settings)}
    assert len(read) > 1, f"dead letters from one partition only: {read}"


def test_a_replay_to_the_topics_end_equals_a_backfill(
    tmp_path: Path, kafka_settings: Settings
) -> None:
    """`run_stream(until_caught_up=True)`, the replay `bench kafka` times: the topic from its
    start to its end, in a backfill's mode, ends with every event merged in."""
    from flows.runner import run_stream

    events = random_events(seed=44, n=600)
    lines = in_order_dirty(events, seed=6)
    backfilled = backfill_of(kafka_settings, tmp_path, lines, db=1)
    assert kafka_settings.kafka is not None
    assert publish_kafka(kafka_settings.kafka, lines) == len(lines)
    run_stream(kafka_settings, until_caught_up=True)
    assert changelog_rows(kafka_settings) == changelog_rows(backfilled)
    assert online_dump(kafka_settings) == online_dump(backfilled)
    assert sorted_letters(kafka_settings) == sorted_letters(backfilled)


# --- the merge rule, alone ---------------------------------------------------------------------


def partition_batches(lines: list[bytes], assign: Callable[[bytes], int]) -> dict[str, list]:
    """Each partition's parsed lines, with offsets, as the source would read them."""
    from features.events import parse_event

    out: dict[str, list] = {f"t/{p}": [] for p in range(PARTITIONS)}
    for line in lines:
        lane = out[f"t/{assign(line)}"]
        lane.append((len(lane), line, parse_event(line)))
    return out


def stop_index(lane: list, t: int) -> int:
    """How many of a partition's messages come before a pause at event time t."""
    for i, (_, _, event) in enumerate(lane):
        if getattr(event, "event_time", -1) > t:
            return i
    return len(lane)


def feed(
    lanes: dict[str, list], seed: int, snapshot_every: int = 0, pauses: int = 0
) -> list[tuple[str, int]]:
    """Every partition's messages into the merge, in chunks of random sizes, interleaved at
    random, each partition idle once it is done; what comes out, as (partition, offset).
    `pauses`: the bus goes quiet that many times on the way (every partition idle, as when
    producers pause), then goes on."""
    import dataclasses
    import pickle

    from flows.items import End, RawBatch
    from flows.kafka import Merge
    from flows.logic import parse_batch

    rng = random.Random(seed)
    merge = Merge()
    merge.read_from(sorted(lanes), 0)
    cursor = dict.fromkeys(lanes, 0)
    out: list[tuple[str, int]] = []
    steps = 0  # the clock: a batch's parse time, and an idle partition's "as of"

    def give(name: str, chunk: list) -> None:
        nonlocal merge, steps
        raw = RawBatch(name, [o for o, _, _ in chunk], [b for _, b, _ in chunk])
        batch = parse_batch(raw, shards=4)
        assert not isinstance(batch, End)
        for item in merge.merged([dataclasses.replace(batch, seen_us=steps)]):
            if not isinstance(item, End):
                out.extend((item.partition_of(i), int(item.positions[i])) for i in range(len(item)))
        steps += 1
        if snapshot_every and steps % snapshot_every == 0:  # as a resumed stream would
            merge = pickle.loads(pickle.dumps(merge))  # the sequencer's snapshot holds it
            merge.read_from(sorted(lanes), 0)

    def all_idle() -> None:
        for name in lanes:
            give(name, [])

    # a pause at an event time: every partition read up to it, then every partition idle
    every = sorted(
        e.event_time for lane in lanes.values() for *_, e in lane if hasattr(e, "event_time")
    )
    stops = [{n: stop_index(lanes[n], t) for n in lanes} for t in sorted(rng.sample(every, pauses))]
    while True:
        if stops and all(cursor[n] >= stops[0][n] for n in lanes):
            stops.pop(0)
            all_idle()
        live = [name for name in lanes if cursor[name] <= len(lanes[name])]
        if stops:
            live = [name for name in live if cursor[name] < stops[0][name]]
        if not live:
            if stops:
                continue
            break
        name = rng.choice(live)
        start = cursor[name]
        if start == len(lanes[name]):
            give(name, [])  # caught up: idle
            cursor[name] += 1
            continue
        end = start + rng.randint(1, 40)
        chunk = lanes[name][start : min(end, stops[0][name]) if stops else end]
        cursor[name] += len(chunk)
        give(name, chunk)
    all_idle()  # idle partitions say so again every idle timeout
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_gathered_lines_are_those_lines_parsed(seed: int) -> None:
    """`gather_lines` (the merge's columnar take-and-concatenate) gives what parsing the picked
    lines in that order gives, and each line keeps its partition and position."""
    import numpy as np

    from flows.items import End, RawBatch, gather_lines
    from flows.logic import parse_batch

    rng = random.Random(seed)
    lines = out_of_order_dirty(random_events(seed=70 + seed, n=300), seed=seed)
    cuts = sorted(rng.sample(range(1, len(lines)), 2))
    chunks = [lines[: cuts[0]], lines[cuts[0] : cuts[1]], lines[cuts[1] :]]
    raws = [
        RawBatch(f"t/{k}", [1000 * k + i for i in range(len(c))], c) for k, c in enumerate(chunks)
    ]
    batches = [parse_batch(raw, shards=4) for raw in raws]
    where = [(raw, i) for raw in raws for i in range(len(raw.lines))]
    picks = rng.sample(range(len(where)), len(where) // 2)
    got = gather_lines(batches, np.array(picks))  # type: ignore[arg-type]
    want = parse_batch(
        RawBatch("x", [0] * len(picks), [where[p][0].lines[where[p][1]] for p in picks]), 4
    )
    assert not isinstance(want, End) and len(got) == len(picks)
    assert got.raw == want.raw and got.offsets.tolist() == want.offsets.tolist()
    assert [(n, str(r)) for n, r in got.rejected] == [(n, str(r)) for n, r in want.rejected]
    assert got.rejected and len(got.events) > 100
    for name in ("line", "event_type", "event_time", "action"):
        assert getattr(got.events, name).tolist() == getattr(want.events, name).tolist(), name
    assert np.array_equal(got.events.bid_amount, want.events.bid_amount, equal_nan=True)
    for name in ("event_id", "freelancer_id", "job_id", "client_id"):
        assert getattr(got.events, name) == getattr(want.events, name), name
    assert got.events.profiles == want.events.profiles and got.events.profiles
    assert {k: v.tolist() for k, v in got.shards.items()} == {
        k: v.tolist() for k, v in want.shards.items()
    }
    assert [(got.partition_of(i), int(got.positions[i])) for i in range(len(got))] == [
        (where[p][0].partition, where[p][0].positions[where[p][1]]) for p in picks
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merge_order_is_the_partitions_contents_not_their_timing(seed: int) -> None:
    events = random_events(seed=50 + seed, n=600)
    lines = out_of_order_dirty(events, seed=seed)
    lanes = partition_batches(lines, by_hash)
    first = feed(lanes, seed=100)
    assert sorted(first) == sorted((n, o) for n, lane in lanes.items() for o, *_ in lane)
    for other in range(101, 106):
        assert feed(lanes, seed=other) == first
    assert feed(lanes, seed=200, snapshot_every=3) == first


@pytest.mark.parametrize("pauses", [0, 3])
def test_merge_of_events_in_time_order_is_time_order(pauses: int) -> None:
    from features.events import Rejection

    events = random_events(seed=60, n=600)
    lanes = partition_batches(in_order_dirty(events, seed=4), by_hash)
    merged = feed(lanes, seed=7, pauses=pauses)
    assert len(merged) == sum(len(lane) for lane in lanes.values())
    read = {(name, o): e for name, lane in lanes.items() for o, _, e in lane}
    times = [read[k].event_time for k in merged if type(read[k]) is not Rejection]
    assert times == sorted(times)
    # and each partition's messages stay in offset order
    for name in lanes:
        offsets = [o for n, o in merged if n == name]
        assert offsets == sorted(offsets)


def test_after_every_partition_was_idle_the_first_to_resume_waits_for_the_others() -> None:
    """A pause of every partition, then traffic: a partition that was idle in the pause holds
    the first one back until it reads its own messages (or says again that it is idle)."""
    from flows.items import End, ParsedBatch, RawBatch
    from flows.kafka import Merge
    from flows.logic import parse_batch

    distinct = {e.event_time: e for e in random_events(seed=90, n=120)}  # no ties in time
    lines = [line_of(distinct[t]) for t in sorted(distinct)]
    assert len(lines) >= 60
    merge = Merge()
    merge.read_from(["t/0", "t/1"], 0)
    numbers = dict.fromkeys(["t/0", "t/1"], 0)

    def read(name: str, chunk: list[bytes]) -> list[tuple[str, int]]:
        start = numbers[name]
        numbers[name] += len(chunk)
        batch = parse_batch(RawBatch(name, list(range(start, start + len(chunk))), chunk), 4)
        assert isinstance(batch, ParsedBatch)
        out = merge.merged([batch])
        return [
            (b.partition_of(i), int(b.positions[i]))
            for b in out
            if not isinstance(b, End)
            for i in range(len(b))
        ]

    assert read("t/0", lines[0:20:2]) == []  # t/1 has read nothing: held
    assert len(read("t/1", lines[1:20:2])) == 18  # all but the newest line of each
    assert len(read("t/0", [])) + len(read("t/1", [])) == 2  # both idle: the rest
    # the pause ends: t/0's newer events wait for t/1's older ones
    assert read("t/0", lines[40:60:2]) == []
    merged = read("t/1", lines[21:40:2] + lines[41:60:2])
    assert merged[:10] == [("t/1", p) for p in range(10, 20)]  # older: first
    assert len(read("t/1", [])) + len(read("t/0", [])) == 30 - len(merged)


def test_a_kafka_checkpoint_resumed_on_another_bus_admits_what_the_merge_held() -> None:
    from flows.items import RawBatch
    from flows.logic import SequencerLogic, parse_batch

    events = random_events(seed=80, n=60)
    lines = [line_of(e) for e in events]
    lateness = 10**15  # nothing is late, no id forgotten: `seen` lists every admitted event
    kafka = SequencerLogic(4, lateness, True, None, ["t/0", "t/1"])
    kafka.on_batch([parse_batch(RawBatch("t/0", list(range(40)), lines[:40]), 4)])
    assert not kafka.state.sequencer.seen  # t/1 has read nothing yet: every line is held
    redis = SequencerLogic(4, lateness, True, kafka.snapshot(), None)
    redis.on_batch([parse_batch(RawBatch("bus", list(range(20)), lines[40:]), 4)])
    assert set(redis.state.sequencer.seen) == {e.event_id for e in events}
    assert redis.state.merge is None


# --- results do not depend on how partitions interleave -----------------------------------------


def stores_of(settings: Settings) -> tuple:
    """Everything a stream wrote, dead letters named by partition number (not topic)."""
    letters = [(s.rpartition("/")[2], p, raw, r) for s, p, raw, r in dead_letters(settings)]
    return online_dump(settings), changelog_rows(settings), sorted(letters)


def settle(stream: StreamProcess, count: int) -> None:
    """Read `count` events, then every partition idle, so the last instant is closed."""
    stream.wait_read(count, START_TIMEOUT)
    time.sleep(IDLE_MS / 1000 + 3)


def test_results_do_not_depend_on_how_partitions_interleave(
    tmp_path: Path, kafka_settings: Settings, kafka_cluster: MockKafka, streams: Streams
) -> None:
    events = random_events(seed=43, n=900)
    lines = out_of_order_dirty(events, seed=3)
    # live: the stream reads while events arrive, partitions interleaved as published
    live = new_stream(streams, kafka_settings, tmp_path)
    live.wait_read(0, START_TIMEOUT)
    publisher = Publisher(kafka_settings, lines, len(lines) / 5, by_hash)
    publisher.start()
    # replayed: the same partitions' contents, written one partition after another (the last
    # first), then read by two workers
    later = on_topic(other_stores(kafka_settings, tmp_path, "later", db=1), kafka_cluster)
    assert later.kafka is not None
    for p in reversed(range(PARTITIONS)):
        publish_kafka(later.kafka, [x for x in lines if by_hash(x) == p], partition=by_hash)
    replay = new_stream(streams, later, tmp_path, workers=2)
    publisher.finish(60)
    settle(replay, len(lines))
    want = stores_of(later)
    assert len(want[2]) > 10 and any(r == "late" for *_, r in want[2])
    settle(live, len(lines))
    assert converge(lambda: stores_of(kafka_settings), want, 30) == want


# --- exactly once through SIGKILLs ---------------------------------------------------------------


def test_sigkill_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, kafka_settings: Settings, streams: Streams
) -> None:
    rng = random.Random(9)
    events = random_events(seed=47, n=1500)
    lines = out_of_order_dirty(events, seed=5)
    lines.append(tick(events[-1].event_time + 40 * DAY))  # every window empties by then

    crashed = new_stream(streams, kafka_settings, tmp_path, workers=2)
    crashed.wait_read(0, START_TIMEOUT)
    publisher = Publisher(kafka_settings, lines, len(lines) / 6, by_hash)
    publisher.start()
    read = []
    for _ in range(3):
        crashed.wait_read(1, START_TIMEOUT)
        time.sleep(rng.uniform(0.0, 2.0))
        read.append(crashed.events_in() or 0)
        crashed.kill()
        crashed.start()
    publisher.finish(60)

    # the run never killed: the same topic, read into other stores
    calm_stores = other_stores(kafka_settings, tmp_path, "calm", db=1)
    calm = new_stream(streams, calm_stores.model_copy(update={"bus": kafka_settings.bus}), tmp_path)
    settle(calm, len(lines))
    want = stores_of(calm.settings)
    assert any(row[2] == events[-1].event_time + 40 * DAY for row in want[1])
    assert len(want[2]) > 20
    assert converge(lambda: stores_of(kafka_settings), want, CATCH_UP_TIMEOUT) == want
    assert_no_repeated_stamps(want[1])
    time.sleep(1.0)  # and it stays so: nothing replayed arrives late
    assert stores_of(kafka_settings) == want
    # each restart resumed from its last epoch and read some events again
    assert sum(read) + (crashed.events_in() or 0) > len(lines), read


# --- faults: one clear line ----------------------------------------------------------------------


def run_command(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "bestmatch", *args],
        env={**os.environ, **env},
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr.decode(errors="replace") + done.stdout.decode()


def assert_one_line(output: str, *needles: str) -> None:
    """One error, no stack; the terminal's width may wrap it, so its lines are joined."""
    assert "Traceback" not in output and "panicked" not in output, output
    assert output.count("error:") == 1, output
    error = " ".join(output.partition("error:")[2].split())
    for needle in needles:
        assert needle in error, output


def test_bus_setting() -> None:
    assert Settings(_env_file=None).kafka is None  # the default: the Redis Stream
    bus = Settings(bus="kafka://a.example:9092,10.0.0.2:9093/market.events-1", _env_file=None)
    assert bus.kafka is not None
    assert bus.kafka.brokers == ("a.example:9092", "10.0.0.2:9093")
    assert bus.kafka.topic == "market.events-1"
    assert bus.kafka.bootstrap == "a.example:9092,10.0.0.2:9093"


@pytest.mark.parametrize(
    "value", ["kafka://broker/events", "kafka://b:9092/", "kafka:/b:9092/t", "kafka://b:x/t", "x"]
)
def test_malformed_bus_is_one_line_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="BESTMATCH_BUS"):
        Settings(bus=value, _env_file=None)
    events = write_lines(tmp_path / "e.jsonl", [b"{}"])
    code, output = run_command(
        ["publish", "--events", str(events)],
        {"BESTMATCH_BUS": value, "BESTMATCH_LAKE": str(tmp_path / "lake")},
    )
    assert code == 2
    assert_one_line(output, "BESTMATCH_BUS", value)


def test_unreachable_broker_is_one_line(tmp_path: Path, settings: Settings) -> None:
    events = write_lines(tmp_path / "e.jsonl", [line_of(e) for e in random_events(1, 5)])
    bus = f"kafka://127.0.0.1:{free_port()}/events"
    env = {
        **stream_env(settings.model_copy(update={"bus": bus, "kafka_retry_s": 2.0})),
        "BESTMATCH_KAFKA_RETRY_S": "2",
    }
    for args in (["publish", "--events", str(events)], ["stream", "--metrics-port", "0"]):
        started = time.monotonic()
        code, output = run_command(args, env)
        assert code == 2, output
        assert_one_line(output, bus, "no broker reachable")
        assert time.monotonic() - started < 120


def test_broker_lost_while_streaming_is_one_line_after_a_bounded_retry(
    tmp_path: Path, settings: Settings, streams: Streams
) -> None:
    cluster = new_mock_kafka()
    bus = on_topic(settings, cluster).model_copy(update={"kafka_retry_s": 2.0})
    assert bus.kafka is not None
    lines = [line_of(e) for e in random_events(seed=3, n=200)]
    publish_kafka(bus.kafka, lines)
    stream = new_stream(streams, bus, tmp_path)
    stream.wait_read(len(lines), START_TIMEOUT)
    cluster.stop()
    lost = time.monotonic()
    wait_until(lambda: not stream.alive(), 60, "the stream to give up")
    assert time.monotonic() - lost >= 2.0
    output = stream.log.read_text()
    assert_one_line(output, "no broker reachable for 2 s", str(bus.kafka))
