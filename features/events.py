"""The four event types of CONTRACT §1 and the one parser that accepts or rejects them.

`parse_event` never raises on bad data: it returns an event or a `Rejection` whose reason names the
field and the value (`field bid_amount: must be > 0, got -5`). Times are stored as integer
microseconds since the Unix epoch, UTC: exact, cheap to compare, and what Arrow and Delta store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

MAX_ID_CHARS = 128
MAX_JOB_SKILLS = 50
MAX_COVER_LETTER_CHARS = 10_000
EVENT_TYPES = ("job_posted", "freelancer_profile", "proposal_submitted", "proposal_action")
BUDGET_TYPES = ("hourly", "fixed")
EXPERIENCE_LEVELS = ("entry", "intermediate", "expert")
# ISO 3166-1 alpha-2, the officially assigned codes (as in tzdata's iso3166.tab, 2024-02-29).
COUNTRY_CODES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
    BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
    DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
    GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
    KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
    MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
    PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
    SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
    US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)
ACTIONS = ("viewed", "shortlisted", "messaged", "archived", "hired")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


@dataclass(frozen=True, slots=True)
class JobPosted:
    event_id: str
    event_time: int
    job_id: str
    client_id: str
    title: str
    skills: tuple[str, ...]
    budget_type: str
    budget_min: float
    budget_max: float
    experience_level: str
    category: str
    event_type: str = "job_posted"


@dataclass(frozen=True, slots=True)
class FreelancerProfile:
    event_id: str
    event_time: int
    freelancer_id: str
    country: str
    hourly_rate: float
    skills: tuple[str, ...]
    job_success: float | None
    total_earned: float
    top_rated: bool
    event_type: str = "freelancer_profile"


@dataclass(frozen=True, slots=True)
class ProposalSubmitted:
    event_id: str
    event_time: int
    proposal_id: str
    job_id: str
    client_id: str
    freelancer_id: str
    bid_amount: float
    cover_letter: str
    event_type: str = "proposal_submitted"


@dataclass(frozen=True, slots=True)
class ProposalAction:
    event_id: str
    event_time: int
    proposal_id: str
    job_id: str
    client_id: str
    freelancer_id: str
    action: str
    event_type: str = "proposal_action"


Event = JobPosted | FreelancerProfile | ProposalSubmitted | ProposalAction


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that breaks the contract: the reason, and the raw text to keep."""

    raw: str
    reason: str


class _Bad(Exception):
    """Internal: one broken rule. Never leaves this module."""


def _fail(field: str, rule: str, value: object) -> _Bad:
    shown = repr(value) if isinstance(value, str) else orjson.dumps(value).decode()
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return _Bad(f"field {field}: {rule}, got {shown}")


def _get(obj: dict[str, Any], field: str) -> Any:
    try:
        return obj[field]
    except KeyError:
        raise _Bad(f"field {field}: missing") from None


def _id(obj: dict[str, Any], field: str) -> str:
    value = _get(obj, field)
    if type(value) is not str:
        raise _fail(field, "must be a string", value)
    if not 0 < len(value) <= MAX_ID_CHARS:
        raise _fail(field, f"must be 1-{MAX_ID_CHARS} characters", value)
    return value


def _str(obj: dict[str, Any], field: str, max_chars: int | None = None) -> str:
    value = _get(obj, field)
    if type(value) is not str:
        raise _fail(field, "must be a string", value)
    if max_chars is not None and len(value) > max_chars:
        raise _Bad(f"field {field}: must be at most {max_chars} characters, got {len(value)}")
    return value


def _choice(obj: dict[str, Any], field: str, choices: tuple[str, ...]) -> str:
    value = _get(obj, field)
    if value not in choices or type(value) is not str:
        raise _fail(field, f"must be one of {', '.join(choices)}", value)
    return value


def _number(obj: dict[str, Any], field: str, *, minimum: float = 0.0, strict: bool = False,
            maximum: float | None = None, nullable: bool = False) -> float | None:
    value = _get(obj, field)
    if value is None and nullable:
        return None
    if type(value) not in (int, float):  # bool is an int subclass, and not a number here
        raise _fail(field, "must be a number", value)
    number = float(value)
    if not math.isfinite(number):
        raise _fail(field, "must be finite", str(value))
    if number < minimum or (strict and number == minimum):
        raise _fail(field, f"must be {'>' if strict else '>='} {minimum:g}", value)
    if maximum is not None and number > maximum:
        raise _fail(field, f"must be <= {maximum:g}", value)
    return number


def _bool(obj: dict[str, Any], field: str) -> bool:
    value = _get(obj, field)
    if type(value) is not bool:
        raise _fail(field, "must be true or false", value)
    return value


def _skills(obj: dict[str, Any], field: str, max_items: int | None = None) -> tuple[str, ...]:
    value = _get(obj, field)
    if type(value) is not list or any(type(item) is not str for item in value):
        raise _fail(field, "must be a list of strings", value)
    if max_items is not None and len(value) > max_items:
        raise _Bad(f"field {field}: must hold at most {max_items} items, got {len(value)}")
    return tuple(value)


def _country(obj: dict[str, Any]) -> str:
    value = _get(obj, "country")
    if type(value) is not str or len(value) != 2 or not ("A" <= value[0] <= "Z"
                                                          and "A" <= value[1] <= "Z"):
        raise _fail("country", "must be an ISO 3166 alpha-2 code", value)
    return value


def parse_time(value: object, field: str = "event_time") -> int:
    """RFC 3339 with an offset → integer microseconds since the epoch, UTC."""
    if type(value) is not str:
        raise _fail(field, "must be an RFC 3339 string", value)
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise _fail(field, "must be RFC 3339 with an offset (like 2026-03-01T12:00:00Z)", value)
    y, mo, d, h, mi, s, frac, zulu, sign, oh, om = match.groups()
    try:
        moment = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    except ValueError:
        raise _fail(field, "is not a real date and time", value) from None
    micros = int((frac or "0")[:6].ljust(6, "0"))
    offset = 0 if zulu else (int(oh) * 60 + int(om)) * (1 if sign == "+" else -1)
    if not zulu and (int(oh) > 23 or int(om) > 59):
        raise _fail(field, "has an out-of-range offset", value)
    delta = moment - _EPOCH - timedelta(minutes=offset)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + micros


def format_time(micros: int) -> str:
    """Integer microseconds since the epoch → RFC 3339 in UTC, millisecond precision or finer."""
    moment = _EPOCH + timedelta(microseconds=micros)
    text = moment.isoformat(timespec="microseconds" if micros % 1000 else "milliseconds")
    return text.replace("+00:00", "Z")


def to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _job_posted(obj: dict[str, Any], event_id: str, ts: int) -> JobPosted:
    budget_min = _number(obj, "budget_min")
    budget_max = _number(obj, "budget_max")
    assert budget_min is not None and budget_max is not None
    if budget_min > budget_max:
        raise _Bad(f"field budget_max: must be >= budget_min ({budget_min:g}), got {budget_max:g}")
    return JobPosted(event_id, ts, _id(obj, "job_id"), _id(obj, "client_id"), _str(obj, "title"),
                     _skills(obj, "skills", MAX_JOB_SKILLS), _choice(obj, "budget_type", BUDGET_TYPES),
                     budget_min, budget_max, _choice(obj, "experience_level", EXPERIENCE_LEVELS),
                     _str(obj, "category"))


def _freelancer_profile(obj: dict[str, Any], event_id: str, ts: int) -> FreelancerProfile:
    rate = _number(obj, "hourly_rate")
    earned = _number(obj, "total_earned")
    assert rate is not None and earned is not None
    return FreelancerProfile(event_id, ts, _id(obj, "freelancer_id"), _country(obj), rate,
                             _skills(obj, "skills"),
                             _number(obj, "job_success", maximum=100.0, nullable=True),
                             earned, _bool(obj, "top_rated"))


def _proposal_submitted(obj: dict[str, Any], event_id: str, ts: int) -> ProposalSubmitted:
    bid = _number(obj, "bid_amount", strict=True)
    assert bid is not None
    return ProposalSubmitted(event_id, ts, _id(obj, "proposal_id"), _id(obj, "job_id"),
                             _id(obj, "client_id"), _id(obj, "freelancer_id"), bid,
                             _str(obj, "cover_letter", MAX_COVER_LETTER_CHARS))


def _proposal_action(obj: dict[str, Any], event_id: str, ts: int) -> ProposalAction:
    return ProposalAction(event_id, ts, _id(obj, "proposal_id"), _id(obj, "job_id"),
                          _id(obj, "client_id"), _id(obj, "freelancer_id"),
                          _choice(obj, "action", ACTIONS))


_BUILDERS: dict[str, Callable[[dict[str, Any], str, int], Event]] = {
    "job_posted": _job_posted,
    "freelancer_profile": _freelancer_profile,
    "proposal_submitted": _proposal_submitted,
    "proposal_action": _proposal_action,
}


def parse_event(raw: str | bytes) -> Event | Rejection:
    """One JSON text → a typed event, or a rejection that says which rule it broke."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(text, f"invalid JSON: {exc}")
    if type(obj) is not dict:
        return Rejection(text, "invalid event: must be a JSON object")
    try:
        event_id = _id(obj, "event_id")
        event_type = _get(obj, "event_type")
        builder = _BUILDERS.get(event_type) if type(event_type) is str else None
        if builder is None:
            raise _fail("event_type", f"must be one of {', '.join(EVENT_TYPES)}", event_type)
        return builder(obj, event_id, parse_time(_get(obj, "event_time")))
    except _Bad as bad:
        return Rejection(text, str(bad))


def event_to_json(event: Event) -> dict[str, Any]:
    """The contract's JSON form of a typed event (used by the simulator and tests)."""
    out: dict[str, Any] = {"event_id": event.event_id, "event_type": event.event_type,
                           "event_time": format_time(event.event_time)}
    for field in event.__dataclass_fields__:
        if field not in out:
            value = getattr(event, field)
            out[field] = list(value) if isinstance(value, tuple) else value
    return out
