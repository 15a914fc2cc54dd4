"""A batch of raw lines parsed into columns: what the flow works on.

Each line goes through `parse_event`, so every rule and rejection reason is exactly its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.events import ACTIONS, EVENT_TYPES, Event, Rejection, parse_event

_TYPE = {name: code for code, name in enumerate(EVENT_TYPES)}
_ACTION = {name: code for code, name in enumerate(ACTIONS)}
_PROFILES = ("job_posted", "freelancer_profile")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The valid events of a batch of raw lines, as columns, in input order."""

    line: np.ndarray  # int64: index into the input lines of each valid event
    event_id: list[str]
    event_type: np.ndarray  # int8: EVENT_TYPES.index
    event_time: np.ndarray  # int64 µs UTC
    freelancer_id: list[str | None]  # None where the event type has no such field
    job_id: list[str | None]
    client_id: list[str | None]
    bid_amount: np.ndarray  # float64; NaN for other types
    action: np.ndarray  # int8: ACTIONS.index; -1 for other types
    profiles: dict[int, Event]  # row -> the typed event, job_posted and freelancer_profile

    def __len__(self) -> int:
        return len(self.event_id)


def parse_lines(lines: Sequence[bytes]) -> tuple[EventBatch, list[tuple[int, Rejection]]]:
    """Every line parsed; rejections as (line index, Rejection)."""
    events: list[Event] = []
    rows: list[int] = []
    rejected: list[tuple[int, Rejection]] = []
    for i, line in enumerate(lines):
        parsed = parse_event(line)
        if type(parsed) is Rejection:
            rejected.append((i, parsed))
        else:
            events.append(parsed)  # type: ignore[arg-type]
            rows.append(i)
    batch = EventBatch(
        np.array(rows, np.int64),
        [e.event_id for e in events],
        np.array([_TYPE[e.event_type] for e in events], np.int8),
        np.array([e.event_time for e in events], np.int64),
        [getattr(e, "freelancer_id", None) for e in events],
        [getattr(e, "job_id", None) for e in events],
        [getattr(e, "client_id", None) for e in events],
        np.array([getattr(e, "bid_amount", np.nan) for e in events], np.float64),
        np.array([_ACTION.get(getattr(e, "action", ""), -1) for e in events], np.int8),
        {r: e for r, e in enumerate(events) if e.event_type in _PROFILES},
    )
    return batch, rejected
