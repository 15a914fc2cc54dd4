"""What an epoch's checkpoint costs once the state is large and little of it changed.

A shard engine is filled with `entities` freelancers (one proposal each, as columns: the engine's
own input type, no parsing), saved once (the journal's base). Then each epoch, `changed` of them
get a proposal, and the epoch is checkpointed as the flow does (`Journal.save`: the delta of what
changed). Beside it, in the same run, the cost of the design it replaced: pickling the whole
engine every epoch. The figures are per epoch, against the stream's default epoch (2 s).
"""

from __future__ import annotations

import pickle
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from features.specs import FREELANCER, HOUR_US

EPOCH_S = 2.0  # `bestmatch stream`'s default epoch
GOAL_SHARE = 0.10
BATCH = 100_000
START = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _proposals(ids: list[str], clock: int) -> Any:
    from features.engine import TYPE_CODE, KindUpdates

    n = len(ids)
    times = np.full(n, clock, np.int64)
    return KindUpdates(
        ids,
        times,
        times.copy(),
        np.full(n, TYPE_CODE["proposal_submitted"], np.int8),
        np.full(n, -1, np.int8),
        np.full(n, 25.5),
    )


def measure_recovery(
    root: Path, entities: int, changed_share: float, epochs: int
) -> dict[str, Any]:
    from features.engine import ShardEngine
    from flows.journal import Journal

    shutil.rmtree(root, ignore_errors=True)
    engine = ShardEngine()
    ids = [f"bench-f-{i}" for i in range(entities)]
    clock = START
    for start in range(0, entities, BATCH):
        clock += 1_000_000
        engine.step({FREELANCER.name: _proposals(ids[start : start + BATCH], clock)}, clock)
        engine.drain_rows()
    journal = Journal(root / "shard-0")
    started = time.perf_counter()
    journal.save(engine)
    base_s, base_bytes = time.perf_counter() - started, journal.last_bytes
    rng = np.random.default_rng(1)
    changed = max(1, int(entities * changed_share))
    saves, sizes, whole, whole_sizes, steps = [], [], [], [], []
    for _ in range(epochs):
        clock += HOUR_US // 60
        picked = [ids[i] for i in rng.choice(entities, changed, replace=False)]
        started = time.perf_counter()
        engine.step({FREELANCER.name: _proposals(picked, clock)}, clock)
        engine.drain_rows()
        steps.append(time.perf_counter() - started)
        started = time.perf_counter()
        journal.save(engine)
        saves.append(time.perf_counter() - started)
        sizes.append(journal.last_bytes)
        started = time.perf_counter()
        whole_sizes.append(len(pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)))
        whole.append(time.perf_counter() - started)
    started = time.perf_counter()
    Journal(root / "shard-0").load((journal.generation, journal.offset))
    load_s = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    save_s = statistics.median(saves)
    return {
        "entities": entities,
        "changed_per_epoch": changed,
        "epochs": epochs,
        "epoch_s": EPOCH_S,
        "base_bytes": base_bytes,
        "base_s": base_s,
        "checkpoint_s": save_s,
        "checkpoint_bytes": statistics.median(sizes),
        "checkpoint_share_of_epoch": save_s / EPOCH_S,
        "goal_share": GOAL_SHARE,
        "meets_goal": save_s / EPOCH_S <= GOAL_SHARE,
        "step_s": statistics.median(steps),
        "whole_pickle_s": statistics.median(whole),
        "whole_pickle_bytes": statistics.median(whole_sizes),
        "resume_s": load_s,
    }
