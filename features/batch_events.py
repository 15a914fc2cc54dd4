"""Parsing a batch of raw lines at once, into columns: the same verdicts as `parse_event`, faster.

`parse_lines(lines)` gives, for every line, exactly what `features.events.parse_event` gives: the
line is valid here iff `parse_event` accepts it, a valid line's columns hold `parse_event`'s values,
and a rejected line carries `parse_event`'s own `Rejection` (the same raw text and reason).

How: a fast path that only ever *accepts*, and `parse_event` itself for everything else.
- msgspec decodes each line into a typed Struct, one per event type, tagged by `event_type`, with
  the contract's rules as constraints (ids of 1-128 characters, amounts >= 0, bid > 0, the enums,
  the country codes, at most 50 job skills, cover letters of at most 10,000 characters). Unknown
  fields are refused, so a line with an extra field (anything msgspec would have to skip unread)
  takes the slow path, as does every line that does not decode, whatever the reason.
- Where msgspec and orjson could read a line differently the fast path refuses: numbers that
  overflow a double are "out of range" to msgspec and invalid JSON to orjson; a repeated
  `event_type` with another value is an error to msgspec, and any other repeated key is read last
  one wins by both; lone surrogates, bad UTF-8, NaN and a byte-order mark fail both.
  `tests/test_batch_events.py` holds these cases and a differential test on random lines.
- Times in the simulator's shape (`YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]Z`) are read with array
  arithmetic, the same arithmetic as `parse_time`; any other time string goes through `parse_time`,
  and a line whose time it refuses, or whose budget_min exceeds its budget_max, to `parse_event`.

`python -m features.batch_events FILE.jsonl` times `parse_lines` beside `parse_event` (`measure`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import numpy as np

from features.errors import InvalidEventError
from features.events import (
    ACTIONS,
    COUNTRY_CODES,
    EVENT_TYPES,
    MAX_COVER_LETTER_CHARS,
    MAX_ID_CHARS,
    MAX_JOB_SKILLS,
    Event,
    FreelancerProfile,
    JobPosted,
    Rejection,
    parse_event,
    parse_time,
)

_JOB, _PROFILE, _SUBMITTED, _ACTION = (EVENT_TYPES.index(t) for t in EVENT_TYPES)
_ACTION_CODE = {action: code for code, action in enumerate(ACTIONS)} | {"": -1}

# --- the fast path's schema: docs/contract.md §1 as msgspec constraints ------------------

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Amount = Annotated[float, msgspec.Meta(ge=0)]  # msgspec refuses what overflows to inf
_Country = Literal[tuple(sorted(COUNTRY_CODES))]  # type: ignore[valid-type]


class _Line(msgspec.Struct, tag_field="event_type", forbid_unknown_fields=True, gc=False):
    """A line of one event type. Each answers every column's attribute (class constants where
    its type has no such field), so a column is one attribute read across all rows."""


class _JobPostedLine(_Line, tag="job_posted"):
    event_id: _Id
    event_time: str
    job_id: _Id
    client_id: _Id
    title: str
    skills: Annotated[tuple[str, ...], msgspec.Meta(max_length=MAX_JOB_SKILLS)]
    budget_type: Literal["hourly", "fixed"]
    budget_min: _Amount
    budget_max: _Amount
    experience_level: Literal["entry", "intermediate", "expert"]
    category: str
    type_code: ClassVar[int] = _JOB
    freelancer_id: ClassVar[None] = None
    bid_amount: ClassVar[float] = math.nan
    action: ClassVar[str] = ""


class _FreelancerProfileLine(_Line, tag="freelancer_profile"):
    event_id: _Id
    event_time: str
    freelancer_id: _Id
    country: _Country  # type: ignore[valid-type]
    hourly_rate: _Amount
    skills: tuple[str, ...]
    job_success: Annotated[float, msgspec.Meta(ge=0, le=100)] | None
    total_earned: _Amount
    top_rated: bool
    type_code: ClassVar[int] = _PROFILE
    job_id: ClassVar[None] = None
    client_id: ClassVar[None] = None
    bid_amount: ClassVar[float] = math.nan
    action: ClassVar[str] = ""


class _ProposalSubmittedLine(_Line, tag="proposal_submitted"):
    event_id: _Id
    event_time: str
    proposal_id: _Id
    job_id: _Id
    client_id: _Id
    freelancer_id: _Id
    bid_amount: Annotated[float, msgspec.Meta(gt=0)]
    cover_letter: Annotated[str, msgspec.Meta(max_length=MAX_COVER_LETTER_CHARS)]
    type_code: ClassVar[int] = _SUBMITTED
    action: ClassVar[str] = ""


class _ProposalActionLine(_Line, tag="proposal_action"):
    event_id: _Id
    event_time: str
    proposal_id: _Id
    job_id: _Id
    client_id: _Id
    freelancer_id: _Id
    action: Literal["viewed", "shortlisted", "messaged", "archived", "hired"]  # ACTIONS
    type_code: ClassVar[int] = _ACTION
    bid_amount: ClassVar[float] = math.nan


_DECODE = msgspec.json.Decoder(
    _JobPostedLine | _FreelancerProfileLine | _ProposalSubmittedLine | _ProposalActionLine
).decode


# --- times --------------------------------------------------------------------------------------

# `YYYY-MM-DDTHH:MM:SS`, then `.` and 3 or 6 digits or nothing, then `Z`, as `format_time` writes
# them: text length -> digits after the point.
_SHAPES = {24: 3, 20: 0, 27: 6}
_SEPARATOR = "|"  # between the texts when they are joined; in no time of these shapes
_FIXED = {4: "-", 7: "-", 10: "T", 13: ":", 16: ":"}
_DATE_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
# Days from the epoch to 1 January of each year 0-9999 (year 0 is refused), and the proleptic
# Gregorian calendar's months, indexed by any two digits (0 days in a month past 12).
_YEAR_START = (
    np.arange("0000", "10000", dtype="datetime64[Y]").astype("datetime64[D]").astype(np.int64)
)
_LEAP = np.diff(_YEAR_START, append=_YEAR_START[-1] + 365) == 366
_MONTH_DAYS = np.zeros(100, np.int64)
_MONTH_DAYS[1:13] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
_MONTH_START = np.concatenate([[0], np.cumsum(_MONTH_DAYS[:-1])])


def _shaped_times(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a time's UTF-8 bytes and the separator, all of one length in `_SHAPES` → (their
    microseconds, valid). A row is valid iff it is that shape and a real date and time: then its
    value is `parse_time`'s (the tests compare them); others are left to `parse_time` itself."""
    width = chars.shape[1] - 1
    places = _SHAPES[width]
    fixed = _FIXED | {width - 1: "Z", width: _SEPARATOR} | ({19: "."} if places else {})
    expected = np.frombuffer("".join(fixed.values()).encode(), np.uint8)
    ok = (chars[:, list(fixed)] == expected).all(axis=1)
    digits = chars[:, _DATE_DIGITS + list(range(20, 20 + places))] - np.uint8(ord("0"))
    ok &= (digits <= 9).all(axis=1)  # a byte below "0" wrapped round to above 9
    d = np.minimum(digits, 9).astype(np.int64)  # tables are indexed by any digits, valid or not
    pairs = d[:, 0:14:2] * 10 + d[:, 1:14:2]  # YY YY MM DD hh mm ss
    year = pairs[:, 0] * 100 + pairs[:, 1]
    month, day, hour, minute, second = pairs[:, 2:].T
    leap = _LEAP[year]
    month_days = _MONTH_DAYS[month] + (leap & (month == 2))
    ok &= (year >= 1) & (month >= 1) & (day >= 1) & (day <= month_days)  # month_days: 0 past 12
    ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
    days = _YEAR_START[year] + _MONTH_START[month] + (leap & (month > 2)) + day - 1
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second
    fraction = np.zeros(len(chars), np.int64)
    for column in range(14, 14 + places):
        fraction = fraction * 10 + d[:, column]
    return seconds * 1_000_000 + fraction * 10 ** (6 - places), ok


def _joined_times(texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """`_shaped_times` of texts all of one length in `_SHAPES`, or None if they are not."""
    codes = np.frombuffer((_SEPARATOR.join(texts) + _SEPARATOR).encode(), np.uint8)
    width, rest = divmod(len(codes), len(texts))
    if rest or width - 1 not in _SHAPES:
        return None
    return _shaped_times(codes.reshape(len(texts), width))


def _event_times(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`parse_time` of each text → (microseconds, refused): refused where `parse_time` raises."""
    count = len(texts)
    micros = np.zeros(count, np.int64)
    done = np.zeros(count, np.bool_)
    whole = _joined_times(texts) if count else None
    # Joined, every row in place proves that every text is the length of a row: each separator is
    # where a row puts it and none is left over for a text to hold. One row out of place, and the
    # others may be out of step, so then the texts are taken a length at a time.
    if whole is not None and whole[1].all():
        micros, done = whole
    elif count:
        lengths = np.fromiter(map(len, texts), np.int64, count)
        for width in _SHAPES:
            rows = [
                row for row in np.flatnonzero(lengths == width).tolist() if texts[row].isascii()
            ]
            if rows:
                part = _joined_times([texts[row] for row in rows])
                assert part is not None  # one length, one byte a character
                micros[rows], done[rows] = part
    refused = np.zeros(count, np.bool_)
    for row in np.flatnonzero(~done).tolist():
        try:
            micros[row] = parse_time(texts[row])
        except InvalidEventError:
            refused[row] = True
    return micros, refused


# --- the batch ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The valid events of a batch of raw lines, as columns, in input order."""

    line: np.ndarray  # int64: index into the input `lines` of each valid event
    event_id: list[str]
    event_type: np.ndarray  # int8: EVENT_TYPES.index(event_type)
    event_time: np.ndarray  # int64: µs since the epoch, UTC (exactly parse_time's value)
    freelancer_id: list[str | None]  # None where the event type has no such field
    job_id: list[str | None]
    client_id: list[str | None]
    bid_amount: np.ndarray  # float64: proposal_submitted's bid_amount; NaN for other types
    action: np.ndarray  # int8: ACTIONS.index(action); -1 for other types
    profiles: dict[int, Event]  # row -> the typed event, for job_posted and freelancer_profile

    def __len__(self) -> int:
        return len(self.line)


_CHUNK = 256  # lines decoded at a time: their Structs are freed while still in the cache
# Whatever stops the fast decoder (a rule, bad JSON, a str it cannot encode, nesting too deep for
# it: a RecursionError), parse_event has the last word.
_UNDECODED = Exception


# What is read from every decoded line, straight into a column.
_READ: tuple[str, ...] = ("event_id", "event_time", "freelancer_id", "job_id", "client_id")
_READ += ("bid_amount", "type_code")
_READ_ACTION = attrgetter("action")
_IS_PROFILE = (True, True, False, False)  # by type code


def parse_lines(lines: Sequence[bytes | str]) -> tuple[EventBatch, list[tuple[int, Rejection]]]:
    """Every line parsed; rejections as (line index, Rejection) with exactly parse_event's raw
    and reason, in line order. A line is what `parse_event` takes: bytes-like or str."""
    columns: dict[str, Any] = {name: [] for name in _READ}
    reads = [(columns[name].extend, attrgetter(name)) for name in _READ]
    type_code: list[int] = columns["type_code"]
    action: list[int] = []
    profile_lines: list[_JobPostedLine | _FreelancerProfileLine] = []
    slow_lines: list[int] = []
    decode = _DECODE
    for start in range(0, len(lines), _CHUNK):
        decoded: list[Any] = []
        keep = decoded.append
        for index, raw in enumerate(lines[start : start + _CHUNK], start):
            try:
                keep(decode(raw))
            except _UNDECODED:
                slow_lines.append(index)
        for extend, read in reads:  # C loops, no Python frame a row
            extend(map(read, decoded))
        codes = type_code[-len(decoded) :] if decoded else []
        action += map(_ACTION_CODE.__getitem__, map(_READ_ACTION, decoded))
        profile_lines += compress(decoded, map(_IS_PROFILE.__getitem__, codes))

    line = np.delete(np.arange(len(lines), dtype=np.int64), slow_lines)
    event_type = np.array(columns.pop("type_code"), np.int8)
    micros, refused = _event_times(columns["event_time"])
    profiles = _profiles(profile_lines, np.flatnonzero(event_type <= _PROFILE), micros, refused)
    columns["event_type"] = event_type
    columns["event_time"] = micros
    columns["bid_amount"] = np.array(columns["bid_amount"], np.float64)
    columns["action"] = np.array(action, np.int8)
    if refused.any():  # to parse_event, for its own reason
        slow_lines += line[refused].tolist()
        line, columns = _drop(refused, line, columns)
        profiles = _renumbered(profiles, refused)

    rejections: list[tuple[int, Rejection]] = []
    slow_events: list[tuple[int, Event]] = []
    for index in sorted(slow_lines):
        result = parse_event(lines[index])
        if isinstance(result, Rejection):
            rejections.append((index, result))
        else:
            slow_events.append((index, result))
    if slow_events:
        line, columns, profiles = _merge(line, columns, profiles, slow_events)
    return EventBatch(line=line, profiles=profiles, **columns), rejections


def _profiles(
    items: list[_JobPostedLine | _FreelancerProfileLine],
    rows: np.ndarray,
    micros: np.ndarray,
    refused: np.ndarray,
) -> dict[int, Event]:
    """The events `parse_event` builds for these rows: their fields in its order (each Struct
    declares them in its dataclass's order), handed over as the whole `__dict__` as
    `features.events` does it. A job whose budgets are the wrong way round, a rule msgspec cannot
    state, is marked refused."""
    profiles: dict[int, Event] = {}
    asdict, new, set_dict = msgspec.structs.asdict, object.__new__, object.__setattr__
    for row, item, event_time, bad in zip(
        rows.tolist(), items, micros[rows].tolist(), refused[rows].tolist(), strict=True
    ):
        if bad:
            continue
        fields = asdict(item)
        fields["event_time"] = event_time
        event: Event
        if item.type_code == _PROFILE:
            fields["event_type"] = "freelancer_profile"
            event = new(FreelancerProfile)
        elif fields["budget_min"] <= fields["budget_max"]:
            fields["event_type"] = "job_posted"
            event = new(JobPosted)
        else:
            refused[row] = True
            continue
        set_dict(event, "__dict__", fields)
        profiles[row] = event
    return profiles


def _drop(
    refused: np.ndarray, line: np.ndarray, columns: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    kept = ~refused
    flags = kept.tolist()
    return line[kept], {
        name: column[kept]
        if isinstance(column, np.ndarray)
        else [value for value, ok in zip(column, flags, strict=True) if ok]
        for name, column in columns.items()
    }


def _renumbered(profiles: dict[int, Event], refused: np.ndarray) -> dict[int, Event]:
    """Rows renumbered after the refused rows are taken out."""
    before = np.cumsum(refused)  # refused rows at or before each row
    return {row - int(before[row]): event for row, event in profiles.items()}


def _merge(
    line: np.ndarray,
    columns: dict[str, Any],
    profiles: dict[int, Event],
    events: list[tuple[int, Event]],
) -> tuple[np.ndarray, dict[str, Any], dict[int, Event]]:
    """The fast path's rows and the events only `parse_event` accepted, together in line order."""
    fast = len(line)
    line = np.concatenate([line, np.array([index for index, _ in events], np.int64)])
    order = np.argsort(line, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))  # where each row of the concatenation goes
    extra: dict[str, list[Any]] = {
        name: [getattr(event, name, None) for _, event in events]
        for name in ("event_id", "freelancer_id", "job_id", "client_id")
    }
    extra["event_type"] = [EVENT_TYPES.index(event.event_type) for _, event in events]
    extra["event_time"] = [event.event_time for _, event in events]
    extra["bid_amount"] = [getattr(event, "bid_amount", math.nan) for _, event in events]
    extra["action"] = [_ACTION_CODE[getattr(event, "action", "")] for _, event in events]
    merged: dict[str, Any] = {}
    for name, column in columns.items():
        if isinstance(column, np.ndarray):
            merged[name] = np.concatenate([column, np.array(extra[name], column.dtype)])[order]
        else:
            both = column + extra[name]
            merged[name] = [both[k] for k in order.tolist()]
    moved = {int(position[row]): event for row, event in profiles.items()}
    for offset, (_, event) in enumerate(events):
        if event.event_type in ("job_posted", "freelancer_profile"):
            moved[int(position[fast + offset])] = event
    return line[order], merged, dict(sorted(moved.items()))


# --- timing -------------------------------------------------------------------------------------


def measure(lines: Sequence[bytes], batch: int = 10_000, repeat: int = 5) -> dict[str, float]:
    """Events/s of `parse_lines` and of `parse_event` over the same lines, a batch at a time, in
    turns in one process (a busy machine slows all three alike): the median of `repeat` passes.

    `parse_event` is timed twice: collecting a batch's results in a list, as a batch consumer
    does, and dropping each result at once (no batch kept in memory)."""
    batches = [lines[start : start + batch] for start in range(0, len(lines), batch)]
    seconds: dict[str, list[float]] = {"parse_lines": [], "collected": [], "dropped": []}
    for _ in range(repeat):
        passes = dict.fromkeys(seconds, 0.0)
        for chunk in batches:
            started = time.perf_counter()
            parse_lines(chunk)
            middle = time.perf_counter()
            results = [parse_event(raw) for raw in chunk]
            del results
            dropped = time.perf_counter()
            for raw in chunk:
                parse_event(raw)
            ended = time.perf_counter()
            passes["parse_lines"] += middle - started
            passes["collected"] += dropped - middle
            passes["dropped"] += ended - dropped
        for name, spent in passes.items():
            seconds[name].append(spent)
    rate = {name: len(lines) / float(np.median(spent)) for name, spent in seconds.items()}
    return {
        "lines": len(lines),
        "parse_lines_per_s": rate["parse_lines"],
        "parse_event_per_s": rate["collected"],
        "parse_event_dropped_per_s": rate["dropped"],
        "ratio": rate["parse_lines"] / rate["collected"],
        "ratio_dropped": rate["parse_lines"] / rate["dropped"],
    }


if __name__ == "__main__":  # python -m features.batch_events FILE.jsonl
    with open(sys.argv[1], "rb") as file:
        figures = measure(file.read().splitlines())
    print("  ".join(f"{name} {value:,.2f}" for name, value in figures.items()))
