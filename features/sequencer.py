"""The stream's order: repeated event ids, lateness and the clock. Pure; no I/O.

The flow's one ordered step holds a `Sequencer`; the shards (`features.engine`) take the clock it
gives each admitted event.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from features.events import Event

NEVER = -(2**62)
_I64 = np.int64


@dataclass
class Sequencer:
    """The stream's order: drops repeated event ids, rejects late events, keeps the clock.

    An event id is remembered while a repeat could still be admitted (its time within the
    allowed lateness of the clock); a repeat older than that is rejected as late anyway.
    """

    lateness_us: int
    clock: int = NEVER
    seen: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    # ids admitted, per batch, sorted by event time: what to forget as the clock moves
    _expiry: list[tuple[list[int], list[str]]] = field(default_factory=list)

    def admit(self, event: Event) -> str | None:
        """None if the event is admitted (and the clock moved), else why not."""
        _, _, rejected = self.admit_batch([event.event_id], [event.event_time])
        return rejected[0][1] if rejected else None

    def admit_batch(
        self, ids: Sequence[str], times: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Admitted rows, the clock after each (int64 arrays), and the rows rejected with why.

        A batch whose ids are all new (the usual case) is worked with array operations: a late
        event never moves the clock (its time is below it), so the clock before each event is
        the running maximum of the times before it, whichever are late. Any other batch takes
        the loop, event by event.
        """
        when = np.asarray(times, dtype=_I64)
        lateness = self.lateness_us
        if not len(when):
            return np.zeros(0, _I64), np.zeros(0, _I64), []
        if not self.seen.keys().isdisjoint(ids) or len(set(ids)) != len(ids):
            return self._admit_each(ids, when.tolist())
        running = np.maximum.accumulate(np.maximum(when, self.clock))
        before = np.empty_like(running)
        before[0] = self.clock
        before[1:] = running[:-1]
        late = when < before - lateness
        rows = np.flatnonzero(~late)
        rejected = [(row, "late") for row in np.flatnonzero(late).tolist()]
        self.clock = int(running[-1])
        kept = when[rows]
        self.seen.update(zip([ids[r] for r in rows.tolist()], kept.tolist(), strict=True))
        self._remember(kept, [ids[r] for r in rows.tolist()])
        self._forget(self.clock - lateness)
        return rows, running[rows], rejected

    def _admit_each(
        self, ids: Sequence[str], times: list[int]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        clock = self.clock
        lateness = self.lateness_us
        seen = self.seen
        rows: list[int] = []
        clocks: list[int] = []
        rejected: list[tuple[int, str]] = []
        duplicates = 0
        for row, (event_id, t) in enumerate(zip(ids, times, strict=True)):
            prior = seen.get(event_id)
            if prior is not None and prior >= clock - lateness:
                rejected.append((row, "duplicate"))
                duplicates += 1
                continue
            if t < clock - lateness:
                rejected.append((row, "late"))
                continue
            if t > clock:
                clock = t
            seen[event_id] = t
            rows.append(row)
            clocks.append(clock)
        self.duplicates += duplicates
        self.clock = clock
        admitted = np.array(rows, dtype=_I64)
        if rows:
            self._remember(np.array(times, dtype=_I64)[admitted], [ids[r] for r in rows])
        self._forget(clock - lateness)
        return admitted, np.array(clocks, dtype=_I64), rejected

    def _remember(self, times: np.ndarray, ids: list[str]) -> None:
        """Keep a batch's admitted ids sorted by time, to forget them in order."""
        order = np.argsort(times, kind="stable")
        self._expiry.append((times[order].tolist(), [ids[i] for i in order.tolist()]))

    def _forget(self, horizon: int) -> None:
        """Forget the ids whose time is before `horizon`: a repeat of one is late."""
        seen = self.seen
        expiry = self._expiry
        done = 0  # batches arrive in clock order: forget from the oldest, stop at a live one
        for times, ids in expiry:
            gone = bisect.bisect_left(times, horizon)
            for t, event_id in zip(times[:gone], ids[:gone], strict=True):
                if seen.get(event_id) == t:
                    del seen[event_id]
            if gone < len(times):
                expiry[done] = (times[gone:], ids[gone:])
                break
            done += 1
        del expiry[:done]
