"""A shard's state saved as a base and a journal of deltas, and restored from any epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.engine import Change, ShardEngine
from features.sequencer import Sequencer
from features.specs import MINUTE_US
from flows import journal as journal_module
from flows.journal import Journal
from tests.test_engine import step
from tests.test_flow import random_events

LATENESS = 5 * MINUTE_US


def run_on(engine: ShardEngine, sequencer: Sequencer, events: list) -> list[Change]:
    for start in range(0, len(events), 9):
        step(engine, sequencer, events[start : start + 9])
    return engine.drain_changes() + engine.drain_online()


def test_every_saved_epoch_resumes_to_the_same_results(tmp_path: Path) -> None:
    events = random_events(seed=7, n=400)
    epochs = [events[i : i + 50] for i in range(0, len(events), 50)]
    engine, sequencer = ShardEngine(), Sequencer(LATENESS)
    journal = Journal(tmp_path / "shard")
    saved = []
    for epoch in epochs:
        run_on(engine, sequencer, epoch)
        saved.append((journal.save(engine), len(saved) + 1))
    # resume from each epoch (newest first, so each resume also cuts what came after it)
    for reference, done in reversed(saved):
        resumed = Journal(tmp_path / "shard").load(reference)
        fresh, fresh_seq = ShardEngine(), Sequencer(LATENESS)
        for epoch in epochs[:done]:
            run_on(fresh, fresh_seq, epoch)
        rest = [e for epoch in epochs[done:] for e in epoch]
        seq_copy = Sequencer(LATENESS)
        for epoch in epochs[:done]:
            run_on(ShardEngine(), seq_copy, epoch)  # the sequencer as it was at that epoch
        assert resumed.clock == fresh.clock
        got = run_on(resumed, seq_copy, rest)
        resumed.finish()
        want = run_on(fresh, fresh_seq, rest)
        fresh.finish()
        assert got == want
        assert resumed.drain_changes() == fresh.drain_changes()


def test_an_epoch_that_touched_few_entities_writes_little(tmp_path: Path) -> None:
    events = random_events(seed=3, n=300)
    many = [
        type(e)(**{**e.__dict__, "event_id": f"x{i}-{e.event_id}", "freelancer_id": f"f-{i}"})
        for i, e in enumerate(events)
        if e.event_type == "freelancer_profile" or hasattr(e, "bid_amount")
    ]
    engine, sequencer = ShardEngine(), Sequencer(LATENESS)
    run_on(engine, sequencer, many)
    journal = Journal(tmp_path / "shard")
    journal.save(engine)  # the first save is a whole base
    base = journal.last_bytes
    run_on(engine, sequencer, many[-2:])  # repeats: rejected, nothing changes
    journal.save(engine)
    assert journal.last_bytes < base / 10
    last = many[-1]
    touch = [type(last)(**{**last.__dict__, "event_id": "new-1"})]
    run_on(engine, sequencer, touch)
    _, offset = journal.save(engine)
    assert journal.last_bytes < base / 10
    assert offset > 0


def test_a_journal_larger_than_its_base_starts_a_new_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "_MIN_JOURNAL", 0)
    events = random_events(seed=5, n=600)
    engine, sequencer = ShardEngine(), Sequencer(LATENESS)
    journal = Journal(tmp_path / "shard")
    generations = set()
    for start in range(0, len(events), 20):
        run_on(engine, sequencer, events[start : start + 20])
        generation, _ = journal.save(engine)
        generations.add(generation)
    assert len(generations) > 2
    kept = sorted(p.name for p in (tmp_path / "shard").iterdir() if p.name.startswith("base-"))
    assert len(kept) <= journal_module.KEEP_GENERATIONS
    resumed = Journal(tmp_path / "shard").load(journal.save(engine))
    assert resumed.drain_online() == []
    for entity_state in resumed.kinds.values():
        for key in entity_state.ids:
            name = entity_state.plan.entity
            assert resumed.value(name, key) == engine.value(name, key)


def test_a_checkpoint_of_an_older_release_is_refused_with_what_to_do() -> None:
    import pickle

    from features.errors import FlowError
    from flows.logic import SequencerLogic, ShardLogic

    with pytest.raises(FlowError, match="bestmatch backfill"):
        ShardLogic(None, True, pickle.dumps(ShardEngine()))  # an older shard snapshot: its pickle
    with pytest.raises(FlowError, match="bestmatch backfill"):
        SequencerLogic(4, LATENESS, True, pickle.dumps(Sequencer(LATENESS)))
