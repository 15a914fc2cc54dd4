"""The four event types of docs/contract.md §1 and the one parser that accepts or rejects them.

`parse_event` never raises on bad data: it returns an event or a `Rejection` whose reason names the
field and the value (`field bid_amount: must be > 0, got -5`). Times are stored as integer
microseconds since the Unix epoch, UTC: exact, cheap to compare, and what Arrow and Delta store.

Decisions where the contract is terse:
- NaN, Infinity and numbers that overflow a double (`1e400`) are not JSON to orjson: they are
  rejected as `invalid JSON: ...` with orjson's explanation and never reach a field check.
- `event_time` is RFC 3339: `T` or a space between date and time (either case), `Z` or `±HH:MM`,
  any number of fraction digits, truncated (not rounded) to microseconds. No leap second (`:60`).
- `country` must be an officially assigned ISO 3166-1 alpha-2 code (`COUNTRY_CODES`), upper case.

Parsing is on the hot path of the feature flow, so each field check is one dict lookup and one
test; working out *why* a value failed happens only on the way to a rejection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, TypeVar

import orjson

from features.errors import InvalidEventError

MAX_ID_CHARS = 128
MAX_JOB_SKILLS = 50
MAX_COVER_LETTER_CHARS = 10_000
EVENT_TYPES = ("job_posted", "freelancer_profile", "proposal_submitted", "proposal_action")
BUDGET_TYPES = ("hourly", "fixed")
EXPERIENCE_LEVELS = ("entry", "intermediate", "expert")
ACTIONS = ("viewed", "shortlisted", "messaged", "archived", "hired")
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# RFC 3339 is fixed-width up to the seconds, so a time splits at fixed places into three parts that
# each repeat a lot across events: `YYYY-MM-DDTHH`, `:MM:SS`, and the fraction and offset. Each part
# is parsed once and cached; together the three patterns are exactly `_RFC3339`.
_DATE_HOUR = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2})")
_MINUTE_SECOND = re.compile(r":([0-9]{2}):([0-9]{2})")
_SECONDS_INTO_HOUR = {f":{m:02d}:{s:02d}": m * 60 + s for m in range(60) for s in range(60)}
_FRACTION_OFFSET = re.compile(r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))")
_RFC3339 = re.compile(_DATE_HOUR.pattern + _MINUTE_SECOND.pattern + _FRACTION_OFFSET.pattern)
_MISSING = object()
_NUMBER_TYPES = (int, float)  # not bool, although bool is an int subclass
_INF = math.inf
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


# The events are frozen but not slotted: the parser builds them by handing over a whole `__dict__`.
@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


# --- reasons: only on the way to a rejection ----------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, str):
        shown = repr(value)
    elif isinstance(value, float) and not math.isfinite(value):
        shown = repr(value)  # JSON has no spelling for it
    else:
        shown = orjson.dumps(value).decode()
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _fail(field: str, rule: str, value: object) -> InvalidEventError:
    return InvalidEventError(f"field {field}: {rule}, got {_show(value)}", field)


def _absent_or(obj: dict[str, Any], field: str, rule: str) -> InvalidEventError:
    """The reason a field failed its fast check: it is missing, or it breaks `rule`."""
    if field not in obj:
        return InvalidEventError(f"field {field}: missing", field)
    return _fail(field, rule, obj[field])


def _number_failure(
    obj: dict[str, Any], field: str, *, positive: bool = False, maximum: float | None = None
) -> InvalidEventError:
    value: Any = obj.get(field)
    if type(value) not in _NUMBER_TYPES:
        return _absent_or(obj, field, "must be a number")
    if not math.isfinite(value):
        return _fail(field, "must be finite", value)
    if positive and value <= 0:
        return _fail(field, "must be > 0", value)
    if value < 0:
        return _fail(field, "must be >= 0", value)
    return _fail(field, f"must be <= {maximum:g}", value)


# --- fields: one lookup and one test each -------------------------------------------------------


def _id(obj: dict[str, Any], field: str) -> str:
    value: Any = obj.get(field)
    if type(value) is str and 0 < len(value) <= MAX_ID_CHARS:
        return value
    rule = f"must be 1-{MAX_ID_CHARS} characters" if type(value) is str else "must be a string"
    raise _absent_or(obj, field, rule)


def _str(obj: dict[str, Any], field: str, max_chars: int | None = None) -> str:
    value: Any = obj.get(field)
    if type(value) is not str:
        raise _absent_or(obj, field, "must be a string")
    if max_chars is not None and len(value) > max_chars:
        msg = f"field {field}: must be at most {max_chars} characters, got {len(value)}"
        raise InvalidEventError(msg, field)
    return value


def _choice(obj: dict[str, Any], field: str, choices: tuple[str, ...]) -> str:
    value: Any = obj.get(field)
    if type(value) is str and value in choices:
        return value
    raise _absent_or(obj, field, f"must be one of {', '.join(choices)}")


def _amount(obj: dict[str, Any], field: str) -> float:
    """A finite number >= 0."""
    value: Any = obj.get(field)
    if type(value) in _NUMBER_TYPES and 0 <= value < _INF:
        return float(value)
    raise _number_failure(obj, field)


def _bid_amount(obj: dict[str, Any]) -> float:
    value: Any = obj.get("bid_amount")
    if type(value) in _NUMBER_TYPES and 0 < value < _INF:
        return float(value)
    raise _number_failure(obj, "bid_amount", positive=True)


def _job_success(obj: dict[str, Any]) -> float | None:
    value: Any = obj.get("job_success", _MISSING)
    if value is None:
        return None
    if type(value) in _NUMBER_TYPES and 0 <= value <= 100:
        return float(value)
    raise _number_failure(obj, "job_success", maximum=100)


def _bool(obj: dict[str, Any], field: str) -> bool:
    value: Any = obj.get(field)
    if type(value) is bool:
        return value
    raise _absent_or(obj, field, "must be true or false")


def _skills(obj: dict[str, Any], max_items: int | None = None) -> tuple[str, ...]:
    value: Any = obj.get("skills")
    if type(value) is not list or not all(type(item) is str for item in value):
        raise _absent_or(obj, "skills", "must be a list of strings")
    if max_items is not None and len(value) > max_items:
        msg = f"field skills: must hold at most {max_items} items, got {len(value)}"
        raise InvalidEventError(msg, "skills")
    return tuple(value)


def _country(obj: dict[str, Any]) -> str:
    value: Any = obj.get("country")
    if type(value) is str and value in COUNTRY_CODES:
        return value
    raise _absent_or(obj, "country", "must be an ISO 3166 alpha-2 code")


# --- time ---------------------------------------------------------------------------------------


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


@lru_cache(maxsize=4096)
def _hour_start(text: str) -> int | None:
    """`YYYY-MM-DDTHH` → seconds since the epoch; None if malformed or there is no such hour."""
    match = _DATE_HOUR.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour = (int(part) for part in match.groups())
    if not (year >= 1 and 1 <= month <= 12 and day >= 1 and hour <= 23):
        return None
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + leap:
        return None
    return (_days_from_civil(year, month, day) * 24 + hour) * 3600


@lru_cache(maxsize=16384)  # room for every millisecond in a few offsets
def _fraction_less_offset(text: str) -> int | None:
    """`[.digits](Z|±HH:MM)` → microseconds to add: the fraction, truncated, less the offset;
    None if malformed or the offset is out of range."""
    match = _FRACTION_OFFSET.fullmatch(text)
    if match is None:
        return None
    fraction, sign, hours, minutes = match.groups()
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    if sign is None:
        return micros
    if int(hours) > 23 or int(minutes) > 59:
        return None
    offset = (int(hours) * 60 + int(minutes)) * 60_000_000
    return micros - offset if sign == "+" else micros + offset


def _time_failure(value: str, field: str) -> InvalidEventError:
    if _RFC3339.fullmatch(value) is None:
        return _fail(field, "must be RFC 3339 with an offset (like 2026-03-01T12:00:00Z)", value)
    if _hour_start(value[:13]) is None or value[13:19] not in _SECONDS_INTO_HOUR:
        return _fail(field, "is not a real date and time", value)
    return _fail(field, "has an out-of-range offset", value)


def parse_time(value: object, field: str = "event_time") -> int:
    """RFC 3339 with an offset → integer microseconds since the epoch, UTC.

    Raises `InvalidEventError` naming `field` and the value."""
    if type(value) is not str:
        raise _fail(field, "must be an RFC 3339 string", value)
    hour_start = _hour_start(value[:13])
    seconds_into_hour = _SECONDS_INTO_HOUR.get(value[13:19])  # no leap second
    fraction_less_offset = _fraction_less_offset(value[19:])
    if hour_start is None or seconds_into_hour is None or fraction_less_offset is None:
        raise _time_failure(value, field)
    return (hour_start + seconds_into_hour) * 1_000_000 + fraction_less_offset


def format_time(micros: int) -> str:
    """Integer microseconds since the epoch → RFC 3339 in UTC, millisecond precision or finer."""
    moment = _EPOCH + timedelta(microseconds=micros)
    text = moment.isoformat(timespec="microseconds" if micros % 1000 else "milliseconds")
    return text.replace("+00:00", "Z")


def to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


# --- events -------------------------------------------------------------------------------------


_E = TypeVar("_E", JobPosted, FreelancerProfile, ProposalSubmitted, ProposalAction)
_new = object.__new__
_set = object.__setattr__


def _frozen(cls: type[_E], fields: dict[str, Any]) -> _E:
    """An event from all its fields, without its `__init__`.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`, which cost as much
    as all the checks of an event together; handing the instance its `__dict__` is one call. The
    result is the same frozen, hashable, comparable object (the tests check it against `cls(...)`).
    """
    event = _new(cls)
    _set(event, "__dict__", fields)
    return event


def _job_posted(obj: dict[str, Any], event_id: str, ts: int) -> JobPosted:
    budget_min = _amount(obj, "budget_min")
    budget_max = _amount(obj, "budget_max")
    if budget_min > budget_max:
        rule = f"must be >= budget_min ({_show(obj['budget_min'])})"
        error = _fail("budget_max", rule, obj["budget_max"])
        raise error
    return _frozen(
        JobPosted,
        {
            "event_id": event_id,
            "event_time": ts,
            "job_id": _id(obj, "job_id"),
            "client_id": _id(obj, "client_id"),
            "title": _str(obj, "title"),
            "skills": _skills(obj, MAX_JOB_SKILLS),
            "budget_type": _choice(obj, "budget_type", BUDGET_TYPES),
            "budget_min": budget_min,
            "budget_max": budget_max,
            "experience_level": _choice(obj, "experience_level", EXPERIENCE_LEVELS),
            "category": _str(obj, "category"),
            "event_type": "job_posted",
        },
    )


def _freelancer_profile(obj: dict[str, Any], event_id: str, ts: int) -> FreelancerProfile:
    return _frozen(
        FreelancerProfile,
        {
            "event_id": event_id,
            "event_time": ts,
            "freelancer_id": _id(obj, "freelancer_id"),
            "country": _country(obj),
            "hourly_rate": _amount(obj, "hourly_rate"),
            "skills": _skills(obj),
            "job_success": _job_success(obj),
            "total_earned": _amount(obj, "total_earned"),
            "top_rated": _bool(obj, "top_rated"),
            "event_type": "freelancer_profile",
        },
    )


def _proposal_submitted(obj: dict[str, Any], event_id: str, ts: int) -> ProposalSubmitted:
    return _frozen(
        ProposalSubmitted,
        {
            "event_id": event_id,
            "event_time": ts,
            "proposal_id": _id(obj, "proposal_id"),
            "job_id": _id(obj, "job_id"),
            "client_id": _id(obj, "client_id"),
            "freelancer_id": _id(obj, "freelancer_id"),
            "bid_amount": _bid_amount(obj),
            "cover_letter": _str(obj, "cover_letter", MAX_COVER_LETTER_CHARS),
            "event_type": "proposal_submitted",
        },
    )


def _proposal_action(obj: dict[str, Any], event_id: str, ts: int) -> ProposalAction:
    return _frozen(
        ProposalAction,
        {
            "event_id": event_id,
            "event_time": ts,
            "proposal_id": _id(obj, "proposal_id"),
            "job_id": _id(obj, "job_id"),
            "client_id": _id(obj, "client_id"),
            "freelancer_id": _id(obj, "freelancer_id"),
            "action": _choice(obj, "action", ACTIONS),
            "event_type": "proposal_action",
        },
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], str, int], Event]] = {
    "job_posted": _job_posted,
    "freelancer_profile": _freelancer_profile,
    "proposal_submitted": _proposal_submitted,
    "proposal_action": _proposal_action,
}


def _raw_text(raw: str | bytes) -> str:
    """The raw input as text fit for the dead-letter table (valid UTF-8 whatever came in)."""
    if isinstance(raw, str):
        return raw.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    return bytes(raw).decode("utf-8", "replace")


def parse_event(raw: str | bytes) -> Event | Rejection:
    """One JSON text → a typed event, or a rejection that says which rule it broke."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(_raw_text(raw), f"invalid JSON: {exc}")
    if type(obj) is not dict:
        return Rejection(_raw_text(raw), "invalid event: must be a JSON object")
    try:
        event_id = _id(obj, "event_id")
        event_type = obj.get("event_type")
        builder = _BUILDERS.get(event_type) if type(event_type) is str else None
        if builder is None:
            raise _absent_or(obj, "event_type", f"must be one of {', '.join(EVENT_TYPES)}")
        event_time = obj.get("event_time", _MISSING)
        if event_time is _MISSING:
            raise _absent_or(obj, "event_time", "")
        return builder(obj, event_id, parse_time(event_time))
    except InvalidEventError as bad:
        return Rejection(_raw_text(raw), bad.reason)


def event_to_json(event: Event) -> dict[str, Any]:
    """The contract's JSON form of a typed event (used by the simulator and tests)."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_time": format_time(event.event_time),
    }
    for field in event.__dataclass_fields__:
        if field not in out:
            value = getattr(event, field)
            out[field] = list(value) if isinstance(value, tuple) else value
    return out
