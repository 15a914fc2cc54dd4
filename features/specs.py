"""Every feature of docs/contract.md §2, declared once as data.

Feast objects, the flow's state, the training columns and serving's feature list are all derived
from `FEATURES`; nobody types a feature name twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US


class Agg(StrEnum):
    """How a feature folds its events."""

    COUNT = "count"  # windowed count; 0 over no events
    MEAN = "mean"  # windowed mean of `value`; null over no events
    LAST = "last"  # `value` of the latest event with event_time <= t


class Dtype(StrEnum):
    """A feature's value type, as Feast and Arrow will see it."""

    INT = "int64"
    FLOAT = "float64"
    BOOL = "bool"
    STRING = "string"
    STRINGS = "list<string>"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True, slots=True)
class Entity:
    name: str
    join_key: str
    description: str


@dataclass(frozen=True, slots=True)
class Window:
    """A sawtooth window: `floor_hop(t) - length <= event_time <= t`."""

    name: str
    length_us: int
    hop_us: int


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    entity: Entity
    event_type: str
    agg: Agg
    dtype: Dtype
    description: str
    value: str | None = None  # event field folded (MEAN, LAST)
    where: tuple[tuple[str, str], ...] = ()  # event field == value filters
    window: Window | None = None  # windowed aggregations only
    categories: tuple[str, ...] = ()  # closed vocabulary of a STRING feature

    @property
    def windowed(self) -> bool:
        return self.window is not None

    def matches(self, event: object) -> bool:
        """Whether an event of the right type passes this feature's filter."""
        return all(getattr(event, field) == wanted for field, wanted in self.where)


FREELANCER = Entity("freelancer", "freelancer_id", "A freelancer who submits proposals.")
JOB = Entity("job", "job_id", "A job post that receives proposals.")
CLIENT = Entity("client", "client_id", "A client who posts jobs and acts on proposals.")
ENTITIES: tuple[Entity, ...] = (FREELANCER, JOB, CLIENT)

W_1H = Window("1h", HOUR_US, 5 * MINUTE_US)
W_24H = Window("24h", DAY_US, HOUR_US)
W_7D = Window("7d", 7 * DAY_US, HOUR_US)
W_30D = Window("30d", 30 * DAY_US, DAY_US)

_P, _A, _J, _F = "proposal_submitted", "proposal_action", "job_posted", "freelancer_profile"
_COUNT, _MEAN, _LAST = Agg.COUNT, Agg.MEAN, Agg.LAST
BUDGET_TYPES = ("hourly", "fixed")
EXPERIENCE_LEVELS = ("entry", "intermediate", "expert")


def _count(
    name: str,
    entity: Entity,
    event_type: str,
    window: Window,
    what: str,
    where: tuple[tuple[str, str], ...] = (),
) -> FeatureSpec:
    return FeatureSpec(
        name,
        entity,
        event_type,
        _COUNT,
        Dtype.INT,
        f"Count of {what} in the last {window.name}.",
        where=where,
        window=window,
    )


def _last(
    name: str,
    entity: Entity,
    event_type: str,
    value: str,
    dtype: Dtype,
    categories: tuple[str, ...] = (),
) -> FeatureSpec:
    return FeatureSpec(
        name,
        entity,
        event_type,
        _LAST,
        dtype,
        f"`{value}` of the latest {event_type}.",
        value=value,
        categories=categories,
    )


def _hired() -> tuple[tuple[str, str], ...]:
    return (("action", "hired"),)


FEATURES: tuple[FeatureSpec, ...] = (
    # freelancer: activity
    _count("fl_proposals_1h", FREELANCER, _P, W_1H, "proposals submitted"),
    _count("fl_proposals_24h", FREELANCER, _P, W_24H, "proposals submitted"),
    _count("fl_proposals_7d", FREELANCER, _P, W_7D, "proposals submitted"),
    FeatureSpec(
        "fl_bid_avg_7d",
        FREELANCER,
        _P,
        _MEAN,
        Dtype.FLOAT,
        "Mean bid_amount of proposals submitted in the last 7d.",
        value="bid_amount",
        window=W_7D,
    ),
    _count(
        "fl_shortlisted_30d",
        FREELANCER,
        _A,
        W_30D,
        "proposals shortlisted",
        (("action", "shortlisted"),),
    ),
    _count(
        "fl_messaged_30d", FREELANCER, _A, W_30D, "proposals messaged", (("action", "messaged"),)
    ),
    _count("fl_hired_30d", FREELANCER, _A, W_30D, "hires", _hired()),
    # freelancer: profile
    _last("fl_hourly_rate", FREELANCER, _F, "hourly_rate", Dtype.FLOAT),
    _last("fl_job_success", FREELANCER, _F, "job_success", Dtype.FLOAT),
    _last("fl_total_earned", FREELANCER, _F, "total_earned", Dtype.FLOAT),
    _last("fl_top_rated", FREELANCER, _F, "top_rated", Dtype.BOOL),
    _last("fl_country", FREELANCER, _F, "country", Dtype.STRING),
    _last("fl_skills", FREELANCER, _F, "skills", Dtype.STRINGS),
    # job: competition
    _count("job_proposals_1h", JOB, _P, W_1H, "proposals received"),
    _count("job_proposals_24h", JOB, _P, W_24H, "proposals received"),
    FeatureSpec(
        "job_bid_avg_24h",
        JOB,
        _P,
        _MEAN,
        Dtype.FLOAT,
        "Mean bid_amount of proposals received in the last 24h.",
        value="bid_amount",
        window=W_24H,
    ),
    # job: the post itself
    _last("job_budget_type", JOB, _J, "budget_type", Dtype.STRING, BUDGET_TYPES),
    _last("job_budget_min", JOB, _J, "budget_min", Dtype.FLOAT),
    _last("job_budget_max", JOB, _J, "budget_max", Dtype.FLOAT),
    _last("job_experience_level", JOB, _J, "experience_level", Dtype.STRING, EXPERIENCE_LEVELS),
    _last("job_category", JOB, _J, "category", Dtype.STRING),
    _last("job_skills", JOB, _J, "skills", Dtype.STRINGS),
    _last("job_posted_at", JOB, _J, "event_time", Dtype.TIMESTAMP),
    # client
    _count("client_jobs_30d", CLIENT, _J, W_30D, "jobs posted"),
    _count("client_hires_30d", CLIENT, _A, W_30D, "hires", _hired()),
)

FEATURES_BY_NAME: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}


def features_of(entity: Entity) -> tuple[FeatureSpec, ...]:
    """The features of one entity, in declaration order (the order of every row and vector)."""
    return tuple(f for f in FEATURES if f.entity == entity)


def view_name(entity: Entity) -> str:
    """The Feast feature view (and Delta change-log table) that holds an entity's features."""
    return f"{entity.name}_features"


def entities_of_event(event_type: str) -> tuple[Entity, ...]:
    """Which entities an event type can change, in a fixed order."""
    return tuple(
        e for e in ENTITIES if any(f.event_type == event_type and f.entity == e for f in FEATURES)
    )


def windows() -> tuple[Window, ...]:
    """The distinct windows in use."""
    return tuple(dict.fromkeys(f.window for f in FEATURES if f.window is not None))
