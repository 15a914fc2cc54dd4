"""The feature engine against docs/contract.md §2's worked example and the brute-force oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from features.engine import Change, ShardEngine, empty_values, updates_from_events
from features.events import Event, ProposalSubmitted, parse_time
from features.sequencer import Sequencer
from features.specs import ENTITIES, FEATURES_BY_NAME, FREELANCER, MINUTE_US, features_of
from tests import oracle
from tests.streams import ordered_streams, shuffled_streams

LATENESS = 5 * MINUTE_US


def step(engine: ShardEngine, sequencer: Sequencer, events: list[Event]) -> None:
    """One batch the way the flow works it: admitted by the sequencer, then one engine step
    whose clock ends at the sequencer's."""
    rows, clocks, _ = sequencer.admit_batch(
        [e.event_id for e in events], [e.event_time for e in events]
    )
    admitted = [events[r] for r in rows]
    engine.step(
        {k.name: updates_from_events(k, admitted, clocks) for k in ENTITIES}, sequencer.clock
    )


def run(
    events: list[Event], until: int | None = None, batch: int = 7
) -> tuple[list[Change], ShardEngine, list[list[Change]]]:
    """Drive one shard the way the flow does: a sequencer and an engine step per batch."""
    sequencer = Sequencer(LATENESS)
    engine = ShardEngine()
    online = []
    for start in range(0, len(events), batch):
        step(engine, sequencer, events[start : start + batch])
        online.append(engine.drain_online())
    engine.finish(until)
    online.append(engine.drain_online())
    return engine.drain_changes(), engine, online


def at(text: str) -> int:
    return parse_time(text)


def proposal(i: int, t: str) -> ProposalSubmitted:
    return ProposalSubmitted(f"e{i}", at(t), f"p{i}", "j-1", "c-1", "f-1", 10.0, "hi")


def test_contract_worked_example() -> None:
    times = [
        "2026-03-02T10:02:00Z",
        "2026-03-02T10:04:59.999Z",
        "2026-03-02T10:05:00Z",
        "2026-03-02T10:58:00Z",
    ]
    changes, _, _ = run(
        [proposal(i, t) for i, t in enumerate(times)], until=at("2026-03-03T00:00:00Z")
    )
    index = features_of(FREELANCER).index(FEATURES_BY_NAME["fl_proposals_1h"])
    series = []
    for change in changes:
        if change.entity == "freelancer":
            value = change.values[index]
            if not series or series[-1][1] != value:
                series.append((change.stamp, value))
    expected = [
        ("10:02:00", 1),
        ("10:04:59.999", 2),
        ("10:05:00", 3),
        ("10:58:00", 4),
        ("11:05:00", 2),
        ("11:10:00", 1),
        ("12:00:00", 0),
    ]
    assert series == [(at(f"2026-03-02T{t}Z"), v) for t, v in expected]


@settings(max_examples=150, deadline=None)
@given(ordered_streams(), st.integers(1, 12), st.sampled_from([0, 1, 3_600_000_000 * 24 * 40]))
def test_changelog_equals_oracle(events: list[Event], batch: int, extra: int) -> None:
    until = events[-1].event_time + extra
    changes, _, _ = run(events, until=until, batch=batch)
    got = sorted((c.entity, c.entity_id, c.stamp, c.values) for c in changes)
    assert got == sorted(oracle.changelog(events, until))


@settings(max_examples=100, deadline=None)
@given(shuffled_streams())
def test_online_value_equals_oracle_at_the_clock(events: list[Event]) -> None:
    """Late and repeated events: after the whole stream, the online values are the oracle's at
    the clock, over the events the contract admits."""
    changes, engine, online = run(events, batch=1)
    kept = oracle.admitted(events, LATENESS)
    for entity, entity_id in oracle.entity_ids(kept):
        expected = oracle.vector(entity, kept, entity_id, engine.clock)
        assert engine.value(entity, entity_id) in (expected, None)
        logged = [c.values for c in changes if (c.entity, c.entity_id) == (entity.name, entity_id)]
        pushed = [
            c.values
            for batch in online
            for c in batch
            if c.entity_id == entity_id and c.entity == entity.name
        ]
        # an entity whose events changed nothing (all too late for their window) has no rows
        assert (logged or [empty_values(entity)])[-1] == expected
        assert (pushed or [empty_values(entity)])[-1] == expected


@settings(max_examples=60, deadline=None)
@given(ordered_streams(), st.integers(1, 12), st.integers(1, 12))
def test_batch_boundaries_do_not_change_the_log(events: list[Event], a: int, b: int) -> None:
    assert run(events, batch=a)[0] == run(events, batch=b)[0]


def test_each_entity_and_stamp_has_one_row() -> None:
    same = "2026-03-02T10:05:00Z"
    events = [proposal(1, same), proposal(2, same), proposal(3, "2026-03-02T10:06:00Z")]
    for batch in (1, 2, 3):
        changes, _, _ = run(events, batch=batch)
        keys = [(c.entity, c.entity_id, c.stamp) for c in changes]
        assert len(keys) == len(set(keys))


def test_sequencer_drops_repeats_and_late_events() -> None:
    seq = Sequencer(LATENESS)
    first = proposal(1, "2026-03-02T10:10:00Z")
    assert seq.admit(first) is None
    assert seq.admit(first) == "duplicate"
    assert seq.admit(proposal(2, "2026-03-02T10:05:00Z")) is None  # exactly at the lateness
    assert seq.admit(proposal(3, "2026-03-02T10:04:59.999Z")) == "late"
    assert seq.admit(proposal(4, "2026-03-02T11:00:00Z")) is None
    assert "e1" not in seq.seen  # forgotten once a repeat would be late anyway
    assert seq.admit(first) == "late"


@settings(max_examples=100, deadline=None)
@given(ordered_streams(), st.integers(1, 5))
def test_online_values_after_every_batch_equal_oracle(events: list[Event], batch: int) -> None:
    """What Redis would hold after each batch is the oracle's value at the clock then."""
    sequencer = Sequencer(LATENESS)
    engine = ShardEngine()
    for start in range(0, len(events), batch):
        step(engine, sequencer, events[start : start + batch])
        so_far = events[: start + batch]
        for change in engine.drain_online():
            entity = next(e for e, _ in oracle.entity_ids(so_far) if e.name == change.entity)
            assert change.values == oracle.vector(entity, so_far, change.entity_id, engine.clock)


def test_an_instant_closed_by_finish_is_never_rewritten() -> None:
    """A backfill ends at its clock; a stream that continues its state with an event at that
    same instant stamps the change just after it, so the finished row stays as written."""
    at_end = "2026-03-02T10:05:00Z"
    engine = ShardEngine()
    sequencer = Sequencer(LATENESS)
    first, second = proposal(1, at_end), proposal(2, at_end)
    step(engine, sequencer, [first])
    engine.finish(None)
    written = engine.drain_changes()
    assert {c.stamp for c in written} == {at(at_end)}
    step(engine, sequencer, [second])
    assert sequencer.clock == at(at_end)
    engine.finish(None)
    later = engine.drain_changes()
    assert {c.stamp for c in later} == {at(at_end) + 1}
    index = features_of(FREELANCER).index(FEATURES_BY_NAME["fl_proposals_1h"])
    assert [c.values[index] for c in later if c.entity == "freelancer"] == [2]
