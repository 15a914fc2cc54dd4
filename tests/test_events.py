"""Every rule of docs/contract.md §1, shown by the rejection it causes, round trips, fuzzing.

A rejection's reason names the field and the value: `field bid_amount: must be > 0, got -5`.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.errors import InvalidEventError
from features.events import (
    ACTIONS,
    BUDGET_TYPES,
    COUNTRY_CODES,
    EVENT_TYPES,
    EXPERIENCE_LEVELS,
    MAX_COVER_LETTER_CHARS,
    MAX_ID_CHARS,
    MAX_JOB_SKILLS,
    Event,
    FreelancerProfile,
    JobPosted,
    ProposalAction,
    ProposalSubmitted,
    Rejection,
    event_to_json,
    format_time,
    parse_event,
    parse_time,
    to_datetime,
)

T0 = "2026-03-01T12:00:00.123Z"
T0_MICROS = 1_772_366_400_123_000  # 2026-03-01T12:00:00.123Z

VALID: dict[str, dict[str, Any]] = {
    "job_posted": {
        "event_id": "e-1",
        "event_type": "job_posted",
        "event_time": T0,
        "job_id": "j-1",
        "client_id": "c-1",
        "title": "Build a dashboard",
        "skills": ["react", "css"],
        "budget_type": "fixed",
        "budget_min": 500,
        "budget_max": 1500.5,
        "experience_level": "expert",
        "category": "web",
    },
    "freelancer_profile": {
        "event_id": "e-2",
        "event_type": "freelancer_profile",
        "event_time": T0,
        "freelancer_id": "f-1",
        "country": "DE",
        "hourly_rate": 45.0,
        "skills": ["python", "sql"],
        "job_success": 97.5,
        "total_earned": 12000,
        "top_rated": True,
    },
    "proposal_submitted": {
        "event_id": "e-3",
        "event_type": "proposal_submitted",
        "event_time": T0,
        "proposal_id": "p-1",
        "job_id": "j-1",
        "client_id": "c-1",
        "freelancer_id": "f-1",
        "bid_amount": 55.0,
        "cover_letter": "I have done this before.",
    },
    "proposal_action": {
        "event_id": "e-4",
        "event_type": "proposal_action",
        "event_time": T0,
        "proposal_id": "p-1",
        "job_id": "j-1",
        "client_id": "c-1",
        "freelancer_id": "f-1",
        "action": "shortlisted",
    },
}
ID_FIELDS = ("event_id", "job_id", "client_id", "freelancer_id", "proposal_id")
NUMBER_FIELDS = {
    "job_posted": ("budget_min", "budget_max"),
    "freelancer_profile": ("hourly_rate", "job_success", "total_earned"),
    "proposal_submitted": ("bid_amount",),
}
STRING_FIELDS = {
    "job_posted": ("title", "category", "budget_type", "experience_level"),
    "freelancer_profile": ("country",),
    "proposal_submitted": ("cover_letter",),
    "proposal_action": ("action",),
}


def with_(kind: str, /, **changes: Any) -> dict[str, Any]:
    """The valid event of this type with some fields changed."""
    return {**VALID[kind], **changes}


def without(kind: str, field: str) -> dict[str, Any]:
    return {k: v for k, v in VALID[kind].items() if k != field}


def accepted(obj: dict[str, Any] | str | bytes) -> Event:
    raw = obj if isinstance(obj, str | bytes) else orjson.dumps(obj)
    event = parse_event(raw)
    assert not isinstance(event, Rejection), event.reason
    return event


def reason_for(obj: dict[str, Any] | str | bytes) -> str:
    raw = obj if isinstance(obj, str | bytes) else orjson.dumps(obj)
    result = parse_event(raw)
    assert isinstance(result, Rejection), f"accepted {result!r}"
    assert result.raw == (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
    return result.reason


def micros(*args: int, tz: timezone = UTC) -> int:
    """Oracle: datetime arithmetic, independent of parse_time's own."""
    delta = datetime(*args, tzinfo=tz) - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(microseconds=1)


# --- valid events -------------------------------------------------------------------------------


def test_each_type_parses_to_its_dataclass() -> None:
    job = accepted(VALID["job_posted"])
    assert job == JobPosted(
        "e-1",
        T0_MICROS,
        "j-1",
        "c-1",
        "Build a dashboard",
        ("react", "css"),
        "fixed",
        500.0,
        1500.5,
        "expert",
        "web",
    )
    profile = accepted(VALID["freelancer_profile"])
    assert profile == FreelancerProfile(
        "e-2", T0_MICROS, "f-1", "DE", 45.0, ("python", "sql"), 97.5, 12000.0, True
    )
    proposal = accepted(VALID["proposal_submitted"])
    assert proposal == ProposalSubmitted(
        "e-3", T0_MICROS, "p-1", "j-1", "c-1", "f-1", 55.0, "I have done this before."
    )
    action = accepted(VALID["proposal_action"])
    assert action == ProposalAction("e-4", T0_MICROS, "p-1", "j-1", "c-1", "f-1", "shortlisted")
    assert [accepted(v).event_type for v in VALID.values()] == list(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_parsed_events_are_the_same_frozen_objects_as_constructed_ones(event_type: str) -> None:
    parsed = accepted(VALID[event_type])
    built = type(parsed)(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)})
    assert vars(parsed) == vars(built) and list(vars(parsed)) == list(vars(built))
    assert parsed == built and hash(parsed) == hash(built) and repr(parsed) == repr(built)
    assert pickle.loads(pickle.dumps(parsed)) == parsed
    assert dataclasses.replace(parsed, event_id="other").event_id == "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.event_id = "changed"


def test_numbers_are_floats_whether_json_int_or_float() -> None:
    job = accepted(VALID["job_posted"])
    assert isinstance(job, JobPosted)
    assert type(job.budget_min) is float and type(job.budget_max) is float


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_str_bytes_and_bytearray_input_all_accepted(event_type: str) -> None:
    text = orjson.dumps(VALID[event_type]).decode()
    assert parse_event(text) == parse_event(text.encode()) == parse_event(bytearray(text.encode()))
    assert not isinstance(parse_event(text), Rejection)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_unknown_extra_fields_are_ignored(event_type: str) -> None:
    extra = with_(event_type, extra=[1, {"x": None}], note="hi", bid_amount_2=-1)
    assert accepted(extra) == accepted(VALID[event_type])


def test_rejection_keeps_the_raw_text_of_bytes_input() -> None:
    raw = orjson.dumps(with_("proposal_submitted", bid_amount=-5))
    result = parse_event(raw)
    assert result == Rejection(raw.decode(), "field bid_amount: must be > 0, got -5")


# --- JSON itself --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "{",
        '{"event_id": "e-1",}',
        "{'event_id': 'e-1'}",
        "nul",
        b"\xff\xfe{}",
        '{"a": 1} {"b": 2}',
    ],
)
def test_bad_json_is_rejected(raw: str | bytes) -> None:
    assert reason_for(raw).startswith("invalid JSON: ")


def test_text_with_a_lone_surrogate_is_rejected_with_storable_raw_text() -> None:
    result = parse_event('{"event_id": "e-\ud800"}')
    assert isinstance(result, Rejection) and result.reason.startswith("invalid JSON: ")
    assert result.raw == '{"event_id": "e-?"}'  # fit for UTF-8 storage in the dead-letter table


@pytest.mark.parametrize("raw", ["[]", "[{}]", "1", '"job_posted"', "null", "true"])
def test_json_that_is_not_an_object_is_rejected(raw: str) -> None:
    assert reason_for(raw) == "invalid event: must be a JSON object"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("job_deleted", "'job_deleted'"),
        ("", "''"),
        ("Job_Posted", "'Job_Posted'"),
        (5, "5"),
        (None, "null"),
        (["job_posted"], '["job_posted"]'),
        (True, "true"),
    ],
)
def test_unknown_event_type_is_rejected(value: object, shown: str) -> None:
    reason = reason_for(with_("job_posted", event_type=value))
    assert reason == f"field event_type: must be one of {', '.join(EVENT_TYPES)}, got {shown}"


# --- presence and types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "field"), [(t, f) for t, fields in VALID.items() for f in fields]
)
def test_every_missing_field_is_rejected(event_type: str, field: str) -> None:
    assert reason_for(without(event_type, field)) == f"field {field}: missing"


@pytest.mark.parametrize(
    ("event_type", "field"), [(t, f) for t, fields in NUMBER_FIELDS.items() for f in fields]
)
@pytest.mark.parametrize(
    ("value", "shown"),
    [("55", "'55'"), (True, "true"), (False, "false"), ([1], "[1]"), ({"v": 1}, '{"v":1}')],
)
def test_numbers_must_be_numbers(event_type: str, field: str, value: object, shown: str) -> None:
    reason = reason_for(with_(event_type, **{field: value}))
    assert reason == f"field {field}: must be a number, got {shown}"


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(t, f) for t, obj in VALID.items() for f in obj if f in ID_FIELDS]
    + [(t, f) for t, fields in STRING_FIELDS.items() for f in fields],
)
@pytest.mark.parametrize("value", [5, 1.5, None, True, ["a"], {"a": "b"}])
def test_strings_must_be_strings(event_type: str, field: str, value: object) -> None:
    reason = reason_for(with_(event_type, **{field: value}))
    assert reason.startswith(f"field {field}: must ")
    assert reason.endswith(f", got {orjson.dumps(value).decode()}")


def test_string_reason_text() -> None:
    reason = reason_for(with_("proposal_action", job_id=5))
    assert reason == "field job_id: must be a string, got 5"
    assert reason_for(with_("job_posted", title=None)) == "field title: must be a string, got null"


@pytest.mark.parametrize("event_type", ["job_posted", "freelancer_profile"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (["a", 1], '["a",1]'),
        ([None], "[null]"),
        ([["a"]], '[["a"]]'),
        ("python", "'python'"),
        ({"a": 1}, '{"a":1}'),
        (None, "null"),
        (3, "3"),
    ],
)
def test_skills_must_be_a_list_of_strings(event_type: str, value: object, shown: str) -> None:
    reason = reason_for(with_(event_type, skills=value))
    assert reason == f"field skills: must be a list of strings, got {shown}"


@pytest.mark.parametrize(
    ("value", "shown"), [(1, "1"), (0, "0"), ("true", "'true'"), (None, "null"), ([True], "[true]")]
)
def test_top_rated_must_be_a_bool(value: object, shown: str) -> None:
    reason = reason_for(with_("freelancer_profile", top_rated=value))
    assert reason == f"field top_rated: must be true or false, got {shown}"


def test_long_values_are_shortened_in_the_reason() -> None:
    reason = reason_for(with_("proposal_action", job_id=list(range(100))))
    assert reason.startswith("field job_id: must be a string, got [0,1,2,")
    assert reason.endswith("...") and len(reason) < 140


# --- ids ----------------------------------------------------------------------------------------


ID_CASES = [(t, f) for t, obj in VALID.items() for f in obj if f in ID_FIELDS]


@pytest.mark.parametrize(("event_type", "field"), ID_CASES)
def test_empty_id_is_rejected(event_type: str, field: str) -> None:
    reason = reason_for(with_(event_type, **{field: ""}))
    assert reason == f"field {field}: must be 1-{MAX_ID_CHARS} characters, got ''"


@pytest.mark.parametrize(("event_type", "field"), ID_CASES)
def test_id_of_129_chars_is_rejected_and_128_accepted(event_type: str, field: str) -> None:
    reason = reason_for(with_(event_type, **{field: "x" * 129}))
    assert reason.startswith(f"field {field}: must be 1-128 characters, got 'xxxx")
    event = accepted(with_(event_type, **{field: "é" * 128}))  # characters, not bytes
    assert getattr(event, field) == "é" * 128
    assert accepted(with_(event_type, **{field: "1"})) is not None


# --- job_posted ---------------------------------------------------------------------------------


def test_budget_min_above_budget_max_is_rejected() -> None:
    reason = reason_for(with_("job_posted", budget_min=100.5, budget_max=100))
    assert reason == "field budget_max: must be >= budget_min (100.5), got 100"
    # Close values are shown in full, not rounded to look equal.
    reason = reason_for(with_("job_posted", budget_min=1000000.4, budget_max=1000000.1))
    assert reason == "field budget_max: must be >= budget_min (1000000.4), got 1000000.1"


def test_equal_and_zero_budgets_are_accepted() -> None:
    job = accepted(with_("job_posted", budget_min=0, budget_max=0))
    assert isinstance(job, JobPosted) and job.budget_min == job.budget_max == 0.0
    accepted(with_("job_posted", budget_min=70.0, budget_max=70))


@pytest.mark.parametrize("field", ["budget_min", "budget_max"])
@pytest.mark.parametrize(("value", "shown"), [(-5, "-5"), (-0.01, "-0.01")])
def test_negative_budget_is_rejected(field: str, value: float, shown: str) -> None:
    obj = with_("job_posted", budget_min=0, budget_max=10) | {field: value}
    assert reason_for(obj) == f"field {field}: must be >= 0, got {shown}"


def test_fifty_skills_accepted_fifty_one_rejected() -> None:
    job = accepted(with_("job_posted", skills=[f"s{i}" for i in range(50)]))
    assert isinstance(job, JobPosted) and len(job.skills) == MAX_JOB_SKILLS
    reason = reason_for(with_("job_posted", skills=[f"s{i}" for i in range(51)]))
    assert reason == "field skills: must hold at most 50 items, got 51"
    accepted(with_("job_posted", skills=[]))


def test_freelancer_skills_have_no_limit() -> None:
    profile = accepted(with_("freelancer_profile", skills=[f"s{i}" for i in range(200)]))
    assert isinstance(profile, FreelancerProfile) and len(profile.skills) == 200


@pytest.mark.parametrize("value", ["Fixed", "daily", ""])
def test_bad_budget_type(value: str) -> None:
    reason = reason_for(with_("job_posted", budget_type=value))
    assert reason == f"field budget_type: must be one of hourly, fixed, got {value!r}"


@pytest.mark.parametrize("value", ["senior", "Expert", ""])
def test_bad_experience_level(value: str) -> None:
    reason = reason_for(with_("job_posted", experience_level=value))
    assert reason == (
        f"field experience_level: must be one of entry, intermediate, expert, got {value!r}"
    )


@pytest.mark.parametrize(
    ("field", "values"), [("budget_type", BUDGET_TYPES), ("experience_level", EXPERIENCE_LEVELS)]
)
def test_every_job_enum_value_is_accepted(field: str, values: tuple[str, ...]) -> None:
    for value in values:
        assert getattr(accepted(with_("job_posted", **{field: value})), field) == value


# --- freelancer_profile -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (0, 0.0), (100, 100.0), (55.5, 55.5)]
)
def test_job_success_accepts_0_to_100_and_null(value: float | None, expected: float | None) -> None:
    profile = accepted(with_("freelancer_profile", job_success=value))
    assert isinstance(profile, FreelancerProfile) and profile.job_success == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (100.01, "must be <= 100, got 100.01"),
        (101, "must be <= 100, got 101"),
        (-1, "must be >= 0, got -1"),
        (-0.5, "must be >= 0, got -0.5"),
    ],
)
def test_job_success_outside_0_to_100_is_rejected(value: float, reason: str) -> None:
    assert (
        reason_for(with_("freelancer_profile", job_success=value)) == f"field job_success: {reason}"
    )


@pytest.mark.parametrize("field", ["hourly_rate", "total_earned"])
def test_negative_rate_and_earnings_are_rejected(field: str) -> None:
    assert (
        reason_for(with_("freelancer_profile", **{field: -5}))
        == f"field {field}: must be >= 0, got -5"
    )
    assert getattr(accepted(with_("freelancer_profile", **{field: 0})), field) == 0.0


@pytest.mark.parametrize("field", ["hourly_rate", "total_earned", "job_success"])
def test_null_is_a_number_only_for_job_success(field: str) -> None:
    obj = with_("freelancer_profile", **{field: None})
    if field == "job_success":
        accepted(obj)
    else:
        assert reason_for(obj) == f"field {field}: must be a number, got null"


@pytest.mark.parametrize("value", ["de", "De", "DEU", "D", "", "D1", "ÄB", "XX", "UK", " DE"])
def test_country_must_be_an_iso_3166_alpha_2_code(value: str) -> None:
    reason = reason_for(with_("freelancer_profile", country=value))
    assert reason == f"field country: must be an ISO 3166 alpha-2 code, got {value!r}"


def test_every_iso_3166_code_is_accepted() -> None:
    assert len(COUNTRY_CODES) == 249
    for code in ("US", "GB", "IN", "UA", "PH", "BR", "AX", "ZW"):
        assert code in COUNTRY_CODES
    for code in sorted(COUNTRY_CODES):
        assert accepted(with_("freelancer_profile", country=code)).country == code


def test_top_rated_false_is_accepted() -> None:
    assert accepted(with_("freelancer_profile", top_rated=False)).top_rated is False


# --- proposal_submitted -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"), [(0, "0"), (0.0, "0.0"), (-5, "-5"), (-0.0, "-0.0"), (-1e-9, "-1e-9")]
)
def test_bid_amount_must_be_positive(value: float, shown: str) -> None:
    reason = reason_for(with_("proposal_submitted", bid_amount=value))
    assert reason == f"field bid_amount: must be > 0, got {shown}"


def test_tiny_positive_bid_is_accepted() -> None:
    assert accepted(with_("proposal_submitted", bid_amount=0.01)).bid_amount == 0.01


def test_cover_letter_of_10000_chars_accepted_10001_rejected() -> None:
    letter = "é" * MAX_COVER_LETTER_CHARS
    assert accepted(with_("proposal_submitted", cover_letter=letter)).cover_letter == letter
    reason = reason_for(with_("proposal_submitted", cover_letter=letter + "x"))
    assert reason == "field cover_letter: must be at most 10000 characters, got 10001"
    accepted(with_("proposal_submitted", cover_letter=""))


# --- proposal_action ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ACTIONS)
def test_every_action_is_accepted(value: str) -> None:
    assert accepted(with_("proposal_action", action=value)).action == value


@pytest.mark.parametrize("value", ["Hired", "rejected", ""])
def test_bad_action_is_rejected(value: str) -> None:
    reason = reason_for(with_("proposal_action", action=value))
    expected = "viewed, shortlisted, messaged, archived, hired"
    assert reason == f"field action: must be one of {expected}, got {value!r}"


# --- non-finite and huge numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "literal", ["NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "-1e400", "1E+999"]
)
def test_non_finite_numbers_are_rejected_as_invalid_json(literal: str) -> None:
    # orjson refuses NaN and Infinity (they are not JSON) and refuses a number that overflows a
    # double (1e400) rather than reading it as inf: so these never reach a field check, and the
    # rejection is "invalid JSON" with orjson's explanation.
    raw = orjson.dumps(VALID["proposal_submitted"]).decode().replace("55.0", literal)
    reason = reason_for(raw)
    assert reason.startswith("invalid JSON: ")
    if "e" in literal.lower() and literal[-1].isdigit():
        assert "infinity" in reason


def test_huge_but_finite_numbers_are_accepted() -> None:
    raw = orjson.dumps(VALID["proposal_submitted"]).decode().replace("55.0", "1" + "0" * 30)
    assert accepted(raw).bid_amount == 1e30
    assert accepted(with_("proposal_submitted", bid_amount=1.7e308)).bid_amount == 1.7e308


def test_underflow_to_zero_is_not_a_positive_bid() -> None:
    raw = orjson.dumps(VALID["proposal_submitted"]).decode().replace("55.0", "1e-400")
    assert reason_for(raw) == "field bid_amount: must be > 0, got 0.0"


# --- event_time ---------------------------------------------------------------------------------


NO_OFFSET = "must be RFC 3339 with an offset (like 2026-03-01T12:00:00Z)"


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-01T12:00:00",
        "2026-03-01T12:00:00.123",
        "2026-03-01",
        "2026-03-01Z",
        "2026-03-01T12:00Z",
        "2026-03-01T12:00:00+0200",
        "2026-03-01T12:00:00+02",
        "2026-03-01T12:00:00.Z",
        "2026-03-01T12:00:00,5Z",
        "2026-3-1T12:00:00Z",
        "26-03-01T12:00:00Z",
        "2026-03-01T12:00:00Z ",
        " 2026-03-01T12:00:00Z",
        "2026-03-01T12:00:00Z\n",
        "2026-03-01T12:00:00 Z",
        "2026-03-01T12:00:00UTC",
        "2026-03-01T12:00:00+02:00:00",
        "2026-03-01X12:00:00Z",
        "２０２６-03-01T12:00:00Z",
        "2026-03-01T12:00:0٠Z",
        "2026-03-01T12:00:00.1٢Z",
        "+2026-03-01T12:00:00Z",
        "2026-03-01T1_:00:00Z",
        "2026-03-01T+1:00:00Z",
        "1772366400",
        "",
    ],
)
def test_event_time_without_offset_or_malformed_is_rejected(value: str) -> None:
    reason = reason_for(with_("proposal_action", event_time=value))
    assert reason == f"field event_time: {NO_OFFSET}, got {value!r}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1772366400, "1772366400"),
        (None, "null"),
        (["2026-03-01T12:00:00Z"], '["2026-03-01T12:00:00Z"]'),
    ],
)
def test_event_time_must_be_a_string(value: object, shown: str) -> None:
    reason = reason_for(with_("proposal_action", event_time=value))
    assert reason == f"field event_time: must be an RFC 3339 string, got {shown}"


@pytest.mark.parametrize(
    "value",
    [
        "2026-02-30T12:00:00Z",
        "2026-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "2026-01-32T00:00:00Z",
        "2026-03-01T24:00:00Z",
        "2026-03-01T12:60:00Z",
        "2026-03-01T12:00:60Z",
        "2026-03-01T12:00:99Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_impossible_dates_and_times_are_rejected(value: str) -> None:
    reason = reason_for(with_("proposal_action", event_time=value))
    assert reason == f"field event_time: is not a real date and time, got {value!r}"


@pytest.mark.parametrize(
    "value", ["2026-03-01T12:00:00+24:00", "2026-03-01T12:00:00-00:60", "2026-03-01T12:00:00+99:99"]
)
def test_out_of_range_offsets_are_rejected(value: str) -> None:
    reason = reason_for(with_("proposal_action", event_time=value))
    assert reason == f"field event_time: has an out-of-range offset, got {value!r}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-02-29T00:00:00Z", micros(2024, 2, 29)),
        ("2000-02-29T23:59:59Z", micros(2000, 2, 29, 23, 59, 59)),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59Z", -1_000_000),
        ("0001-01-01T00:00:00Z", micros(1, 1, 1)),
        ("9999-12-31T23:59:59Z", micros(9999, 12, 31, 23, 59, 59)),
        ("2026-12-31T23:59:59Z", micros(2026, 12, 31, 23, 59, 59)),
        ("2026-01-31T00:00:00Z", micros(2026, 1, 31)),
        ("2026-04-30T00:00:00Z", micros(2026, 4, 30)),
    ],
)
def test_real_edge_dates_are_accepted(value: str, expected: int) -> None:
    assert parse_time(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-01T14:00:00+02:00", micros(2026, 3, 1, 12)),
        ("2026-03-01T06:30:00-05:30", micros(2026, 3, 1, 12)),
        ("2026-03-01T12:00:00+00:00", micros(2026, 3, 1, 12)),
        ("2026-03-01T12:00:00-00:00", micros(2026, 3, 1, 12)),
        ("2026-01-01T01:00:00+02:00", micros(2025, 12, 31, 23)),
        ("2025-12-31T23:00:00-02:00", micros(2026, 1, 1, 1)),
        ("2024-03-01T00:30:00+01:00", micros(2024, 2, 29, 23, 30)),
        (
            "2026-03-01T12:00:00+23:59",
            micros(2026, 3, 1, 12, tz=timezone(timedelta(hours=23, minutes=59))),
        ),
        (
            "2026-03-01T12:00:00.5-23:59",
            micros(2026, 3, 1, 12, 0, 0, 500_000, tz=timezone(-timedelta(hours=23, minutes=59))),
        ),
        ("1970-01-01T00:00:00+01:00", -3_600_000_000),
    ],
)
def test_offsets_are_converted_to_utc(value: str, expected: int) -> None:
    assert parse_time(value) == expected
    event = accepted(with_("proposal_action", event_time=value))
    assert event.event_time == expected


@pytest.mark.parametrize(
    ("value", "expected_micros"),
    [
        ("2026-03-01T12:00:00Z", 0),
        ("2026-03-01T12:00:00.1Z", 100_000),
        ("2026-03-01T12:00:00.12Z", 120_000),
        ("2026-03-01T12:00:00.123Z", 123_000),
        ("2026-03-01T12:00:00.1234Z", 123_400),
        ("2026-03-01T12:00:00.12345Z", 123_450),
        ("2026-03-01T12:00:00.123456Z", 123_456),
        ("2026-03-01T12:00:00.1234567Z", 123_456),
        ("2026-03-01T12:00:00.12345678Z", 123_456),
        ("2026-03-01T12:00:00.999999999Z", 999_999),
        ("2026-03-01T12:00:00.000000001Z", 0),
        ("2026-03-01T12:00:00.050+00:00", 50_000),
        ("2026-03-01T12:00:00.000001Z", 1),
    ],
)
def test_fractional_seconds_are_truncated_to_microseconds(value: str, expected_micros: int) -> None:
    assert parse_time(value) == micros(2026, 3, 1, 12) + expected_micros


@pytest.mark.parametrize(
    "value", ["2026-03-01t12:00:00z", "2026-03-01 12:00:00Z", "2026-03-01T12:00:00z"]
)
def test_rfc_3339_lowercase_and_space_separator_are_accepted(value: str) -> None:
    assert parse_time(value) == micros(2026, 3, 1, 12)


def test_parse_time_raises_the_public_error_naming_the_field() -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_time("2026-03-01T12:00:00", field="until")
    assert caught.value.field == "until"
    assert caught.value.reason == f"field until: {NO_OFFSET}, got '2026-03-01T12:00:00'"


def test_format_time() -> None:
    assert format_time(T0_MICROS) == "2026-03-01T12:00:00.123Z"
    assert format_time(micros(2026, 3, 1, 12)) == "2026-03-01T12:00:00.000Z"
    assert format_time(micros(2026, 3, 1, 12) + 1) == "2026-03-01T12:00:00.000001Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(-1) == "1969-12-31T23:59:59.999999Z"


def test_to_datetime_is_aware_utc() -> None:
    moment = to_datetime(T0_MICROS)
    assert moment == datetime(2026, 3, 1, 12, 0, 0, 123_000, tzinfo=UTC)
    assert moment.utcoffset() == timedelta(0)


# --- properties ---------------------------------------------------------------------------------

MICROS_1970_2100 = st.integers(min_value=0, max_value=micros(2100, 12, 31, 23, 59, 59, 999_999))
ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
amounts = st.floats(min_value=0.0, max_value=1e15, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0.0, max_value=1e15, exclude_min=True)
skill_lists = st.lists(st.text(max_size=20), max_size=MAX_JOB_SKILLS).map(tuple)


@st.composite
def job_posted(draw: st.DrawFn) -> JobPosted:
    low, high = sorted((draw(amounts), draw(amounts)))
    return JobPosted(
        draw(ids),
        draw(MICROS_1970_2100),
        draw(ids),
        draw(ids),
        draw(st.text()),
        draw(skill_lists),
        draw(st.sampled_from(BUDGET_TYPES)),
        low,
        high,
        draw(st.sampled_from(EXPERIENCE_LEVELS)),
        draw(st.text()),
    )


freelancer_profiles = st.builds(
    FreelancerProfile,
    ids,
    MICROS_1970_2100,
    ids,
    st.sampled_from(sorted(COUNTRY_CODES)),
    amounts,
    st.lists(st.text(max_size=20), max_size=80).map(tuple),
    st.none() | st.floats(min_value=0.0, max_value=100.0),
    amounts,
    st.booleans(),
)
proposals = st.builds(
    ProposalSubmitted,
    ids,
    MICROS_1970_2100,
    ids,
    ids,
    ids,
    ids,
    positive,
    st.text(max_size=MAX_COVER_LETTER_CHARS),
)
actions = st.builds(
    ProposalAction, ids, MICROS_1970_2100, ids, ids, ids, ids, st.sampled_from(ACTIONS)
)
events = job_posted() | freelancer_profiles | proposals | actions


@given(events)
def test_valid_events_round_trip_through_json(event: Event) -> None:
    raw = orjson.dumps(event_to_json(event))
    assert parse_event(raw) == event
    assert parse_event(raw.decode()) == event


@given(events)
def test_event_json_has_exactly_the_contract_fields(event: Event) -> None:
    obj = event_to_json(event)
    assert set(obj) == set(VALID[event.event_type])
    assert obj["event_type"] == event.event_type


@given(MICROS_1970_2100)
def test_format_time_round_trips(value: int) -> None:
    text = format_time(value)
    assert text.endswith("Z")
    assert parse_time(text) == value
    assert to_datetime(value) == datetime.fromisoformat(text)


NAIVE_MIN = datetime(1, 1, 2, tzinfo=UTC).replace(tzinfo=None)  # hypothesis wants naive bounds
NAIVE_MAX = datetime(9999, 12, 30, tzinfo=UTC).replace(tzinfo=None)


@given(
    st.datetimes(min_value=NAIVE_MIN, max_value=NAIVE_MAX),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
def test_parse_time_agrees_with_datetime(moment: datetime, offset_minutes: int) -> None:
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = f"{moment.isoformat(timespec='microseconds')}{sign}{hours:02d}:{minutes:02d}"
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert parse_time(text) == (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )


@given(st.text())
def test_parse_event_never_raises_on_text(raw: str) -> None:
    assert isinstance(
        parse_event(raw),
        Rejection | JobPosted | FreelancerProfile | ProposalSubmitted | ProposalAction,
    )


@given(st.binary())
def test_parse_event_never_raises_on_bytes(raw: bytes) -> None:
    assert isinstance(
        parse_event(raw),
        Rejection | JobPosted | FreelancerProfile | ProposalSubmitted | ProposalAction,
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(st.sampled_from(EVENT_TYPES), st.data())
def test_parse_event_never_raises_when_fields_are_replaced(
    event_type: str, data: st.DataObject
) -> None:
    obj = dict(VALID[event_type])
    for field in data.draw(st.lists(st.sampled_from(sorted(obj)), min_size=1, max_size=3)):
        obj[field] = data.draw(json_values | st.sampled_from(["", "2026-03-01T12:00:00Z", "DE"]))
    result = parse_event(orjson.dumps(obj))
    if isinstance(result, Rejection):
        assert result.reason.startswith("field ")
    else:
        assert result.event_type == event_type


REFERENCE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def reference_time(text: str) -> int | None:
    """The whole of RFC 3339 in one regex and `datetime`: what the cached parts must add up to."""
    match = REFERENCE.fullmatch(text)
    if match is None:
        return None
    y, mo, d, h, mi, s, fraction, sign, oh, om = match.groups()
    if sign and (int(oh) > 23 or int(om) > 59):
        return None
    try:
        moment = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    except ValueError:
        return None
    offset = timedelta(hours=int(oh), minutes=int(om)) if sign else timedelta(0)
    if sign == "-":
        offset = -offset
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    return (moment - datetime(1970, 1, 1, tzinfo=UTC) - offset) // timedelta(
        microseconds=1
    ) + micros


time_texts = st.builds(
    lambda moment, fraction, zone: moment.isoformat(timespec="seconds") + fraction + zone,
    st.datetimes(min_value=NAIVE_MIN, max_value=NAIVE_MAX),
    st.sampled_from(["", ".5", ".123", ".123456", ".123456789", "."]),
    st.sampled_from(["Z", "z", "+02:00", "-05:30", "+23:59", "+24:00", "-00:60", ""]),
)


@settings(max_examples=500)
@given(
    time_texts,
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from("0159:-.+ TZz٣x")), max_size=3),
    st.booleans(),
)
def test_cached_time_parts_accept_exactly_what_the_whole_grammar_accepts(
    text: str, edits: list[tuple[int, str]], delete: bool
) -> None:
    for position, char in edits:  # mutate: replace or delete a character
        position %= len(text) + 1
        text = text[:position] + ("" if delete else char) + text[position + 1 :]
    expected = reference_time(text)
    try:
        got: int | None = parse_time(text)
    except InvalidEventError:
        got = None
    hypothesis.event("accepted" if expected is not None else "rejected")
    assert got == expected, text
