"""`parse_lines` against `parse_event`, line by line: the same verdict, values and reason.

Every case of `tests/test_events.py` goes through both, then the places where a fast JSON decoder
and orjson could part (repeated keys, escapes, numbers at the edges of a double, bad bytes), then
random valid and broken lines from hypothesis, then the simulator's own stream.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bestmatch.simulator import simulate
from features import batch_events
from features.batch_events import EventBatch, measure, parse_lines
from features.events import (
    ACTIONS,
    BUDGET_TYPES,
    COUNTRY_CODES,
    EVENT_TYPES,
    EXPERIENCE_LEVELS,
    MAX_COVER_LETTER_CHARS,
    Event,
    Rejection,
    event_to_json,
    format_time,
    parse_event,
)
from tests.test_events import (
    ID_CASES,
    ID_FIELDS,
    NUMBER_FIELDS,
    STRING_FIELDS,
    VALID,
    events,
    json_values,
    time_texts,
    with_,
    without,
)

Raw = bytes | str


def dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def assert_same(lines: list[Raw]) -> EventBatch:
    """`parse_lines(lines)` holds, line for line, exactly what `parse_event` says of each."""
    batch, rejections = parse_lines(lines)
    verdicts = [parse_event(raw) for raw in lines]
    assert rejections == [(i, v) for i, v in enumerate(verdicts) if isinstance(v, Rejection)]
    valid: list[tuple[int, Event]] = [
        (i, v) for i, v in enumerate(verdicts) if not isinstance(v, Rejection)
    ]
    accepted = [event for _, event in valid]
    assert len(batch) == len(valid)
    assert batch.line.dtype == np.int64 and batch.line.tolist() == [i for i, _ in valid]
    assert batch.event_id == [e.event_id for e in accepted]
    assert batch.event_type.dtype == np.int8
    assert batch.event_type.tolist() == [EVENT_TYPES.index(e.event_type) for e in accepted]
    assert batch.event_time.dtype == np.int64
    assert batch.event_time.tolist() == [e.event_time for e in accepted]
    for field in ("freelancer_id", "job_id", "client_id"):
        assert getattr(batch, field) == [getattr(e, field, None) for e in accepted], field
    bids = np.array([getattr(e, "bid_amount", math.nan) for e in accepted], np.float64)
    assert batch.bid_amount.dtype == np.float64
    assert batch.bid_amount.tobytes() == bids.tobytes()  # bit for bit, NaN where no bid
    assert batch.action.dtype == np.int8
    actions = [ACTIONS.index(e.action) if hasattr(e, "action") else -1 for e in accepted]
    assert batch.action.tolist() == actions
    profiles = {
        row: event
        for row, event in enumerate(accepted)
        if event.event_type in ("job_posted", "freelancer_profile")
    }
    assert batch.profiles == profiles
    for row, event in profiles.items():  # the very same objects: types, field order, -0.0
        got = batch.profiles[row]
        assert type(got) is type(event) and repr(got) == repr(event)
        assert list(vars(got).items()) == list(vars(event).items())
        assert hash(got) == hash(event)
    return batch


def assert_same_each_and_all(lines: list[Raw]) -> None:
    """Alone, all together, and shuffled: a line's verdict does not depend on its neighbours."""
    for raw in lines:
        assert_same([raw])
    assert_same(lines)
    shuffled = list(lines)
    random.Random(len(lines)).shuffle(shuffled)
    assert_same(shuffled)


# --- every case of tests/test_events.py ---------------------------------------------------------


def contract_cases() -> list[Raw]:
    """The inputs that tests/test_events.py gives parse_event, with the same values."""
    cases: list[Raw] = []
    add = cases.append
    for kind, obj in VALID.items():
        text = dumps(obj)
        cases += [text, text.decode(), dumps(with_(kind, extra=[1, {"x": None}], note="hi"))]
        cases += [dumps(without(kind, field)) for field in obj]
        for field in obj:
            if field in ID_FIELDS or field in STRING_FIELDS.get(kind, ()):
                for value in (5, 1.5, None, True, ["a"], {"a": "b"}):
                    add(dumps(with_(kind, **{field: value})))
        for field in NUMBER_FIELDS.get(kind, ()):
            for value in ("55", True, False, [1], {"v": 1}, None, -5, 0, -0.0, 1e-9):
                add(dumps(with_(kind, **{field: value})))
    cases += ["", " ", "{", '{"event_id": "e-1",}', "{'event_id': 'e-1'}", "nul"]
    cases += [b"\xff\xfe{}", '{"a": 1} {"b": 2}', '{"event_id": "e-\ud800"}']
    cases += ["[]", "[{}]", "1", '"job_posted"', "null", "true"]
    for value in ("job_deleted", "", "Job_Posted", 5, None, ["job_posted"], True):
        add(dumps(with_("job_posted", event_type=value)))
    add(dumps(with_("proposal_action", job_id=list(range(100)))))
    for kind in ("job_posted", "freelancer_profile"):
        for value in (["a", 1], [None], [["a"]], "python", {"a": 1}, None, 3, []):
            add(dumps(with_(kind, skills=value)))
    for value in (1, 0, "true", None, [True], False):
        add(dumps(with_("freelancer_profile", top_rated=value)))
    for kind, field in ID_CASES:
        for value in ("", "x" * 129, "é" * 128, "é" * 129, "1", "😀" * 128, "😀" * 129):
            add(dumps(with_(kind, **{field: value})))
    budgets = [(100.5, 100), (1000000.4, 1000000.1), (0, 0), (70.0, 70), (-5, 10), (0, -0.01)]
    budgets += [(-0.0, 0), (0, -0.0), (-0.0, -0.0), (5, 5.000000000000001)]
    for low, high in budgets:
        add(dumps(with_("job_posted", budget_min=low, budget_max=high)))
    for count in (50, 51, 0):
        add(dumps(with_("job_posted", skills=[f"s{i}" for i in range(count)])))
    add(dumps(with_("freelancer_profile", skills=[f"s{i}" for i in range(200)])))
    for value in ("Fixed", "daily", "", *BUDGET_TYPES):
        add(dumps(with_("job_posted", budget_type=value)))
    for value in ("senior", "Expert", "", *EXPERIENCE_LEVELS):
        add(dumps(with_("job_posted", experience_level=value)))
    for value in (None, 0, 100, 55.5, 100.01, 101, -1, -0.5, -0.0, 1e-320):
        add(dumps(with_("freelancer_profile", job_success=value)))
    for field in ("hourly_rate", "total_earned"):
        add(dumps(with_("freelancer_profile", **{field: -5})))
        add(dumps(with_("freelancer_profile", **{field: 0})))
    countries = ["de", "De", "DEU", "D", "", "D1", "ÄB", "XX", "UK", " DE", *sorted(COUNTRY_CODES)]
    cases += [dumps(with_("freelancer_profile", country=code)) for code in countries]
    for value in (0, 0.0, -5, -0.0, -1e-9, 0.01, 1.7e308, 5e-324):
        add(dumps(with_("proposal_submitted", bid_amount=value)))
    letter = "é" * MAX_COVER_LETTER_CHARS
    for value in (letter, letter + "x", ""):
        add(dumps(with_("proposal_submitted", cover_letter=value)))
    for value in (*ACTIONS, "Hired", "rejected", ""):
        add(dumps(with_("proposal_action", action=value)))
    proposal = dumps(VALID["proposal_submitted"]).decode()
    for literal in ("NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "-1e400", "1E+999"):
        add(proposal.replace("55.0", literal))
    for literal in ("1" + "0" * 30, "1e-400", "-1e-400", "1" + "0" * 400):
        add(proposal.replace("55.0", literal))
    for value in EVENT_TIME_CASES:
        add(dumps(with_("proposal_action", event_time=value)))
        add(dumps(with_("freelancer_profile", event_time=value)))
    return cases


EVENT_TIME_CASES: list[object] = [
    # malformed or without an offset
    *("2026-03-01T12:00:00", "2026-03-01T12:00:00.123", "2026-03-01", "2026-03-01Z"),
    *("2026-03-01T12:00Z", "2026-03-01T12:00:00+0200", "2026-03-01T12:00:00+02"),
    *("2026-03-01T12:00:00.Z", "2026-03-01T12:00:00,5Z", "2026-3-1T12:00:00Z"),
    *("26-03-01T12:00:00Z", "2026-03-01T12:00:00Z ", " 2026-03-01T12:00:00Z"),
    *("2026-03-01T12:00:00Z\n", "2026-03-01T12:00:00 Z", "2026-03-01T12:00:00UTC"),
    *("2026-03-01T12:00:00+02:00:00", "2026-03-01X12:00:00Z", "２０２６-03-01T12:00:00Z"),
    *("2026-03-01T12:00:0٠Z", "2026-03-01T12:00:00.1٢Z", "+2026-03-01T12:00:00Z"),
    *("2026-03-01T1_:00:00Z", "2026-03-01T+1:00:00Z", "1772366400", ""),
    *("2026-03-01T12:00:00.12٣Z", "2026-03-01T12:00:00.000Z|", "2026-03-01T12:00:00.000|"),
    # not a string
    *(1772366400, None, ["2026-03-01T12:00:00Z"]),
    # not a real date or time
    *("2026-02-30T12:00:00Z", "2026-02-29T00:00:00Z", "2100-02-29T00:00:00Z"),
    *("1900-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z"),
    *("2026-00-10T00:00:00Z", "2026-01-00T00:00:00Z", "2026-01-32T00:00:00Z"),
    *("2026-03-01T24:00:00Z", "2026-03-01T12:60:00Z", "2026-03-01T12:00:60Z"),
    *("2026-03-01T12:00:99Z", "0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z"),
    *("2026-02-30T12:00:00.000Z", "2026-13-01T00:00:00.000000Z", "2026-99-99T99:99:99.999Z"),
    # out-of-range offsets
    *("2026-03-01T12:00:00+24:00", "2026-03-01T12:00:00-00:60", "2026-03-01T12:00:00+99:99"),
    # real edge dates, in every shape the fast path reads and some it does not
    *("2024-02-29T00:00:00Z", "2000-02-29T23:59:59Z", "1970-01-01T00:00:00Z"),
    *("1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
    *("2026-12-31T23:59:59Z", "2026-01-31T00:00:00Z", "2026-04-30T00:00:00Z"),
    *("0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999999Z", "2024-02-29T23:59:59.999Z"),
    *("1600-02-29T00:00:00.000Z", "2400-03-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z"),
    # offsets, fractions, lower case and spaces
    *("2026-03-01T14:00:00+02:00", "2026-03-01T06:30:00-05:30", "2026-03-01T12:00:00-00:00"),
    *("2026-03-01T12:00:00+23:59", "2026-03-01T12:00:00.5-23:59", "1970-01-01T00:00:00+01:00"),
    *("2026-03-01T12:00:00.1Z", "2026-03-01T12:00:00.12Z", "2026-03-01T12:00:00.1234Z"),
    *("2026-03-01T12:00:00.12345Z", "2026-03-01T12:00:00.1234567Z", "2026-03-01T12:00:00.0000Z"),
    *("2026-03-01T12:00:00.999999999Z", "2026-03-01T12:00:00.000000001Z"),
    *("2026-03-01T12:00:00.050+00:00", "2026-03-01T12:00:00.000001Z"),
    *("2026-03-01t12:00:00z", "2026-03-01 12:00:00Z", "2026-03-01T12:00:00z"),
    *("2026-03-01T12:00:00.000z", "2026-03-01t12:00:00.000Z", "2026-03-01 12:00:00.000Z"),
]


def test_every_case_of_the_event_contract_parses_as_parse_event_says() -> None:
    cases = contract_cases()
    assert len(cases) > 700
    verdicts = [parse_event(raw) for raw in cases]
    assert sum(isinstance(v, Rejection) for v in verdicts) > 300  # both kinds, in numbers
    assert sum(not isinstance(v, Rejection) for v in verdicts) > 300
    assert_same_each_and_all(cases)


def test_str_bytes_bytearray_and_memoryview_lines() -> None:
    text = dumps(VALID["freelancer_profile"]).decode()
    lines: list[Any] = [text, text.encode(), bytearray(text.encode()), memoryview(text.encode())]
    batch = assert_same(lines)
    assert len(batch) == 4 and len(set(batch.profiles.values())) == 1


# --- where a fast decoder and orjson could part -------------------------------------------------


def replaced(kind: str, field: str, literal: str) -> bytes:
    """The valid event of this type with one field's JSON text replaced by `literal`."""
    text = dumps(with_(kind, **{field: "@@"}))
    return text.replace(b'"@@"', literal.encode())


def test_repeated_keys_are_read_as_orjson_reads_them_the_last_one_wins() -> None:
    action = dumps(VALID["proposal_action"])[:-1]
    job = dumps(VALID["job_posted"])[:-1]
    lines = [
        action + b',"job_id":"j-2"}',
        action + b',"job_id":""}',
        action + b',"job_id":5}',
        b'{"job_id":5,' + action[1:] + b"}",
        action + b',"action":"hired"}',
        action + b',"action":"fired"}',
        action + b',"event_type":"proposal_action"}',
        action + b',"event_type":"job_posted"}',
        action + b',"event_type":"proposal_submitted","bid_amount":5,"cover_letter":""}',
        job + b',"event_type":"proposal_action","proposal_id":"p","freelancer_id":"f",'
        b'"action":"viewed"}',
        job + b',"budget_min":2000}',
        job + b',"budget_max":1}',
        job + b',"skills":["a"]}',
        job + b',"event_time":"2026-03-01T12:00:00+01:00"}',
        job + b',"event_time":"2026-02-30T12:00:00.000Z"}',
        job + b',"event_id":"e-2","event_id":"e-3"}',
        dumps(VALID["freelancer_profile"])[:-1] + b',"job_success":null}',
        dumps(VALID["freelancer_profile"])[:-1] + b',"job_success":101}',
    ]
    assert_same_each_and_all(lines)


def test_escaped_keys_and_values_and_bad_text() -> None:
    action = dumps(VALID["proposal_action"])
    lines = [
        action.replace(b'"event_id"', b'"event\\u005fid"'),
        action.replace(b'"event_type"', b'"\\u0065vent_type"'),
        action.replace(b'"proposal_action"', b'"proposal\\u005faction"'),
        action.replace(b'"shortlisted"', b'"short\\u006Cisted"'),
        action.replace(b'"j-1"', b'"\\u00e9\\ud83d\\ude00\\/\\"\\\\\\b\\f\\n\\r\\t\\u0000"'),
        action.replace(b'"j-1"', b'"\\ud83d"'),
        action.replace(b'"j-1"', b'"\\ude00"'),
        action.replace(b'"j-1"', b'"\\ud83d\\u0041"'),
        action.replace(b'"j-1"', b'"\\x41"'),
        action.replace(b'"j-1"', b'"\\u00"'),
        action.replace(b'"j-1"', b'"' + "é".encode() * 128 + b'"'),
        action.replace(b'"j-1"', b'"' + b"\\u00e9" * 128 + b'"'),
        action.replace(b'"j-1"', b'"' + b"\\u00e9" * 129 + b'"'),
        action.replace(b'"j-1"', b'"\xff"'),
        action.replace(b'"j-1"', b'"\xc3"'),
        action.replace(b'"j-1"', b'"\xc0\xaf"'),  # overlong
        action.replace(b'"j-1"', b'"\xed\xa0\x80"'),  # a surrogate, encoded
        action.replace(b'"j-1"', b'"\xf4\x90\x80\x80"'),  # past U+10FFFF
        action.replace(b'"j-1"', b'"\xf0\x9f\x98"'),  # cut short
        action.replace(b'"j-1"', b'"\x7f\xc2\x80\xef\xbf\xbf\xf4\x8f\xbf\xbf"'),
        action.replace(b'"j-1"', b'"a\x00b"'),
        action.replace(b'"j-1"', b'"a\x1fb"'),
        action.replace(b'"j-1"', b'"a\tb"'),
        action.replace(b'"job_id"', b'"job\xff"'),
        action.replace(b'"job_id"', b'"job_id\xc3\xa9"'),
        b"\xef\xbb\xbf" + action,
        b" \t\r\n" + action + b" \t\r\n",
        b"\x0c" + action,
        b"\xc2\xa0" + action,
        action + b"\x00",
        action + b"x",
        action + action,
        action[:-1],
        action.replace(b",", b" , ").replace(b":", b" : "),
        action.replace(b",", b",\x0b"),
        action.replace(b'"action"', b'"action\\u0000"'),
        action.replace(b"{", b'{"":1,'),
        action.replace(b"{", b'{"extra":{"deep":[[[[null]]]]},'),
        action.replace(b"{", b'{"extra":' + b"[" * 2000 + b"]" * 2000 + b","),
        action.replace(b"{", b'{"extra":"\xff",'),
        action.replace(b"{", b'{"extra":"\\ud800",'),
        action.replace(b"{", b'{"extra":1e400,'),
        action.replace(b"{", b'{"extra":NaN,'),
    ]
    assert_same_each_and_all(lines)


@pytest.mark.parametrize(
    ("kind", "field"),
    [(kind, field) for kind, fields in NUMBER_FIELDS.items() for field in fields],
)
def test_number_literals_at_the_edges_of_a_double(kind: str, field: str) -> None:
    literals = [
        *("0", "-0", "0.0", "-0.0", "0e0", "-0e-0", "1", "1.0", "1e0", "1E+0", "10e-1"),
        *("100", "100.0", "1e2", "100.00000000000001", "99.99999999999999", "100.0000000000001"),
        *("9007199254740993", "9007199254740992", "9007199254740995", "18446744073709551615"),
        *("18446744073709551616", "18446744073709551617", "-9223372036854775808"),
        *("-9223372036854775809", "1" + "0" * 30, "1" + "0" * 308, "1" + "0" * 309),
        *("1.7976931348623157e308", "1.7976931348623158e308", "1.7976931348623159e308"),
        *(
            "2.2250738585072014e-308",
            "2.2250738585072011e-308",
            "4.9e-324",
            "2.4703282292062328e-324",
        ),
        *("2.4703282292062327e-324", "1e-400", "0." + "0" * 400 + "1", "1e-99999999999999999999"),
        *("1e99999999999999999999", "0e99999999999999999999", "0.1", "0.30000000000000004"),
        *("0.1000000000000000055511151231257827021181583404541015625", "1" * 40 + ".5"),
        *("5e-1", "55.5", "-1", "-1e-9", "01", "1.", ".5", "+1", "1e", "1e+", "--1", "0x10"),
        *("true", "false", "null", '"1"', "[]", "{}", "1_000", "١"),
    ]
    lines = [replaced(kind, field, literal) for literal in literals]
    assert_same_each_and_all(lines)


def test_times_of_the_fast_shapes_that_do_not_line_up_when_joined() -> None:
    """Times are read joined with a separator: texts that hold the separator, or whose lengths
    make up for each other, must not be read as if each were one row."""
    good = "2026-03-01T12:00:00.000Z"
    texts = [
        good + "|" + good,
        "",
        good[:-1],
        good + "|",
        good[:-1] + "|",
        "|" + good[1:],
        good,
        "2026-03-01T12:00:00.000000Z",
        "2026-03-01T12:00:00Z",
    ]
    lines = [dumps(with_("proposal_action", event_time=text)) for text in texts]
    assert_same_each_and_all(lines)
    assert_same(lines[:3] + lines[:3])  # 24 characters a text on average, one row each


def test_lines_only_parse_event_takes_keep_their_place_and_profile_rows() -> None:
    """Rows that the fast path leaves to parse_event (an extra field, a time in another shape)
    or takes back from it (budgets the wrong way round) are merged in line order."""
    slow = dumps(with_("job_posted", extra=1))
    lowercase = dumps(with_("freelancer_profile", event_time="2026-03-01t12:00:00.000Z"))
    refused = dumps(with_("job_posted", budget_min=5, budget_max=1))
    lines = [dumps(VALID[kind]) for kind in EVENT_TYPES]
    mixed = [slow, *lines, refused, lowercase, *lines, b"{", slow, refused]
    batch = assert_same(mixed)
    assert len(batch) == 11 and sorted(batch.profiles) == [0, 1, 2, 5, 6, 7, 10]
    assert_same([])
    assert_same([refused, refused])
    assert_same([slow, slow])


# --- random lines, valid and broken -------------------------------------------------------------

number_texts = st.from_regex(
    r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
strings = st.text(max_size=12) | st.sampled_from(["", "x" * 128, "x" * 129, "é" * 128, "DE", "😀"])
field_values = (
    json_values
    | strings
    | st.sampled_from([*COUNTRY_CODES, *ACTIONS, *BUDGET_TYPES, *EXPERIENCE_LEVELS, *EVENT_TYPES])
    | time_texts
    | st.floats()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
)


@st.composite
def raw_lines(draw: st.DrawFn) -> bytes:
    event = draw(events)
    obj = event_to_json(event)
    fields = sorted(obj)
    how = draw(st.sampled_from(["as is", "drop", "replace", "extra", "again", "number", "bytes"]))
    if how == "drop":
        del obj[draw(st.sampled_from(fields))]
    elif how == "replace":
        obj[draw(st.sampled_from(fields))] = draw(field_values)
    elif how == "extra":
        obj[draw(st.text(max_size=8))] = draw(json_values)
    text = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    if how == "again":  # a key repeated, the later value to win
        field = draw(st.sampled_from(fields))
        text = (
            text[:-1] + b"," + orjson.dumps(field) + b":" + orjson.dumps(draw(field_values)) + b"}"
        )
    elif how == "number":
        field = draw(st.sampled_from(fields))
        text = text[:-1] + b"," + orjson.dumps(field) + b":" + draw(number_texts).encode() + b"}"
    elif how == "bytes":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            byte = bytes([draw(st.integers(0, 255))])
            cut = draw(st.integers(0, 1))
            text = text[:at] + byte + text[at + cut :]
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_lines(), min_size=1, max_size=12))
def test_random_lines_parse_as_parse_event_says(lines: list[bytes]) -> None:
    assert_same(lines)  # the whole batch
    assert_same(lines[::-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), max_size=8))
def test_random_bytes_parse_as_parse_event_says(lines: list[bytes]) -> None:
    assert_same(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999), max_size=30))
def test_times_anywhere_in_years_1_to_9999_read_as_parse_time_reads_them(
    moments: list[int],
) -> None:
    texts = [format_time(moment) for moment in moments]  # milli- or microseconds
    texts += [text[:19] + "Z" for text in texts]
    lines = [dumps(with_("proposal_action", event_time=text)) for text in texts]
    batch = assert_same(lines)
    assert len(batch) == len(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(time_texts, min_size=1, max_size=20))
def test_times_mutated_or_not_read_as_parse_time_reads_them(texts: list[str]) -> None:
    assert_same([dumps(with_("freelancer_profile", event_time=text)) for text in texts])


# --- the simulator's stream ---------------------------------------------------------------------


def test_the_simulators_stream_dirty_lines_included(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    report = simulate(days=1, seed=1, out=out, jobs_per_day=300, dirty=True)
    lines = out.read_bytes().splitlines()
    assert len(lines) == report.events and report.invalid > 0
    rejected = 0
    for start in range(0, len(lines), 10_000):
        rejected += len(parse_lines(lines[start : start + 10_000])[1])
        assert_same(lines[start : start + 10_000])
    assert rejected == report.invalid


def test_the_fast_paths_enums_are_the_contracts() -> None:
    schema = {
        name: set(get_args(field))
        for line in (batch_events._JobPostedLine, batch_events._ProposalActionLine)
        for name, field in get_type_hints(line).items()
        if get_origin(field) is Literal
    }
    assert schema == {
        "budget_type": set(BUDGET_TYPES),
        "experience_level": set(EXPERIENCE_LEVELS),
        "action": set(ACTIONS),
    }
    assert set(get_args(batch_events._Country)) == COUNTRY_CODES


def test_measure_reports_both_rates_from_one_run() -> None:
    lines = [dumps(VALID[kind]) for kind in EVENT_TYPES] * 10
    figures = measure(lines, batch=7, repeat=1)
    assert figures["lines"] == 40
    rates = ("parse_lines_per_s", "parse_event_per_s", "parse_event_dropped_per_s")
    assert all(figures[name] > 0 for name in rates)
    assert figures["ratio"] == pytest.approx(
        figures["parse_lines_per_s"] / figures["parse_event_per_s"]
    )
    assert figures["ratio_dropped"] == pytest.approx(
        figures["parse_lines_per_s"] / figures["parse_event_dropped_per_s"]
    )
