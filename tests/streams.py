"""Hypothesis strategies and helpers for random event streams. Tests only."""

from __future__ import annotations

from hypothesis import strategies as st

from features.events import (
    Event,
    FreelancerProfile,
    JobPosted,
    ProposalAction,
    ProposalSubmitted,
)
from features.specs import HOUR_US, MINUTE_US

BASE = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, a multiple of every hop
# gaps that land on and next to hop boundaries, repeat instants, and cross whole windows
GAPS = st.sampled_from(
    [
        0,
        0,
        1,
        999,
        MINUTE_US,
        4 * MINUTE_US + 59_999_999,
        5 * MINUTE_US,
        17 * MINUTE_US,
        HOUR_US,
        3 * HOUR_US,
        24 * HOUR_US,
        7 * 24 * HOUR_US,
        30 * 24 * HOUR_US,
    ]
)
FREELANCERS = st.sampled_from(["f-1", "f-2", "f-3"])
JOBS = st.sampled_from(["j-1", "j-2"])
CLIENTS = st.sampled_from(["c-1", "c-2"])
ACTIONS = st.sampled_from(["viewed", "shortlisted", "messaged", "archived", "hired"])
BIDS = st.sampled_from([0.1, 10.0, 33.3, 45.0, 1e6, 0.3, 7.77])


@st.composite
def event_at(draw: st.DrawFn, event_id: str, t: int) -> Event:
    kind = draw(st.sampled_from(["p", "p", "p", "a", "a", "j", "f"]))
    if kind == "p":
        return ProposalSubmitted(
            event_id,
            t,
            f"p-{event_id}",
            draw(JOBS),
            draw(CLIENTS),
            draw(FREELANCERS),
            draw(BIDS),
            "hello",
        )
    if kind == "a":
        return ProposalAction(
            event_id, t, "p-x", draw(JOBS), draw(CLIENTS), draw(FREELANCERS), draw(ACTIONS)
        )
    if kind == "j":
        low = draw(st.sampled_from([0.0, 10.0, 50.0]))
        return JobPosted(
            event_id,
            t,
            draw(JOBS),
            draw(CLIENTS),
            "a job",
            ("python", "sql"),
            draw(st.sampled_from(["hourly", "fixed"])),
            low,
            low + 20,
            draw(st.sampled_from(["entry", "expert"])),
            "data",
        )
    return FreelancerProfile(
        event_id,
        t,
        draw(FREELANCERS),
        draw(st.sampled_from(["US", "DE"])),
        draw(st.sampled_from([20.0, 45.5])),
        ("python",),
        draw(st.sampled_from([None, 90.0])),
        100.0,
        draw(st.booleans()),
    )


@st.composite
def ordered_streams(draw: st.DrawFn, max_events: int = 40) -> list[Event]:
    """Events in time order, with repeats of instants and hop-boundary times."""
    n = draw(st.integers(1, max_events))
    t = BASE + draw(st.sampled_from([0, 1, 5 * MINUTE_US - 1]))
    out = []
    for i in range(n):
        t += draw(GAPS)
        out.append(draw(event_at(f"e{i}", t)))
    return out


@st.composite
def shuffled_streams(draw: st.DrawFn, max_events: int = 40) -> list[Event]:
    """Events mostly in order, some up to a few minutes late, some well beyond the lateness,
    and some delivered twice (an at-least-once producer)."""
    events = draw(ordered_streams(max_events))
    out = []
    for event in events:
        jitter = draw(st.sampled_from([0, 0, 0, 2 * MINUTE_US, 5 * MINUTE_US, 6 * MINUTE_US]))
        moved = type(event)(
            **{
                **{f: getattr(event, f) for f in event.__dataclass_fields__},
                "event_time": event.event_time - jitter,
            }
        )
        out.append(moved)
        if draw(st.integers(0, 9)) == 0:
            out.append(moved)
    return out
