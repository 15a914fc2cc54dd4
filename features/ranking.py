"""What the ranker reads: its ordered feature list, and the one function that builds its input.

Training and serving both call `model_frame` (or `request_matrix`, its one-request form), so the
two can never compute a feature differently. The function is pure: the values of the store
features (as `get_historical_features` or `get_online_features` return them) plus what the request
itself carries (each proposal's bid and cover letter, and which request it belongs to) in, a
float64 matrix in `MODEL_FEATURES` order out. Missing values stay missing (NaN): LightGBM learns a
direction for them, which is what a new freelancer or an unseen job needs.

The list is derived from `specs.FEATURES`:

- every INT, FLOAT and BOOL feature, as a number (BOOL as 0/1);
- every STRING feature with a closed vocabulary (`categories`), as its index in that vocabulary
  (`job_budget_type_code`: hourly 0, fixed 1; `job_experience_level_code`: entry 0 ... expert 2);
- then the request-time features below, which combine store values with the request.

Left out on purpose: `fl_country` and `job_category` (open vocabularies: a stable hash would give
codes whose order means nothing, and a client's decision does not hinge on them here),
`job_posted_at` (the job's age is the same for every proposal of a serving request, so it cannot
rank them; in training it would only stand in for arrival order). The skill lists are used through
the overlap features.

Request-time features (`REQUEST_FEATURES`): the bid against the job's budget, the freelancer's
rate and recent bids and the job's recent bids; the bid against the other proposals of the same
request (its share of lower bids, ties half, and its ratio to the request's median); skill overlap
between freelancer and job; the cover letter's length and how many of the job's skills it names.
A ratio over a missing or non-positive denominator is missing.

`request_matrix`, what serving calls per request, is the one-request form of `model_frame` written
in plain numpy and Python (a polars frame costs about 10 ms to build for 50 rows; this, a few
tenths of one). `model_frame` stays the definition: the property test
`test_request_matrix_is_model_frame_bit_for_bit` checks the two agree bit for bit (NaN where
missing) on random jobs and proposals, polars' rules included (a comparison with NaN, nulls in
`bid_within_budget`, the median of an even count, Unicode lower case).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from features.offline_layout import ARROW_TYPES
from features.specs import FEATURES, FEATURES_BY_NAME, FREELANCER, Dtype, FeatureSpec

REQUEST_COLUMN = "request_id"  # which request (in training: which job) a proposal belongs to
BID_COLUMN = "bid_amount"
LETTER_COLUMN = "cover_letter"


@dataclass(frozen=True, slots=True)
class ModelFeature:
    """One column of the model's input: its name, the store features it reads, what it means."""

    name: str
    sources: tuple[str, ...]
    description: str

    @property
    def streaming(self) -> bool:
        """Whether it reads a windowed (streaming) feature: the ablation leaves these out."""
        return any(FEATURES_BY_NAME[s].windowed for s in self.sources)


def _store_feature(spec: FeatureSpec) -> ModelFeature | None:
    if spec.dtype in (Dtype.INT, Dtype.FLOAT, Dtype.BOOL):
        return ModelFeature(spec.name, (spec.name,), spec.description)
    if spec.dtype is Dtype.STRING and spec.categories:
        order = ", ".join(f"{c} {i}" for i, c in enumerate(spec.categories))
        return ModelFeature(f"{spec.name}_code", (spec.name,), f"{spec.description} ({order})")
    return None


STORE_MODEL_FEATURES: tuple[ModelFeature, ...] = tuple(
    f for f in map(_store_feature, FEATURES) if f is not None
)
REQUEST_FEATURES: tuple[ModelFeature, ...] = (
    ModelFeature("bid_to_budget_max", ("job_budget_max",), "Bid / the job's budget_max."),
    ModelFeature(
        "bid_within_budget",
        ("job_budget_min", "job_budget_max"),
        "1 if budget_min <= bid <= budget_max, else 0.",
    ),
    ModelFeature("bid_to_hourly_rate", ("fl_hourly_rate",), "Bid / the freelancer's hourly rate."),
    ModelFeature(
        "bid_to_fl_bid_avg_7d", ("fl_bid_avg_7d",), "Bid / the freelancer's mean bid over 7d."
    ),
    ModelFeature(
        "bid_to_job_bid_avg_24h", ("job_bid_avg_24h",), "Bid / the job's mean bid over 24h."
    ),
    ModelFeature(
        "bid_share_lower_in_request",
        (),
        "Share of the request's other proposals that bid less (ties count half).",
    ),
    ModelFeature("bid_to_request_median", (), "Bid / the median bid of the request."),
    ModelFeature("skill_matches", ("fl_skills", "job_skills"), "Job skills the freelancer lists."),
    ModelFeature(
        "skill_overlap",
        ("fl_skills", "job_skills"),
        "Share of the job's skills the freelancer lists.",
    ),
    ModelFeature("cover_letter_chars", (), "Length of the cover letter, in characters."),
    ModelFeature(
        "cover_letter_job_skills", ("job_skills",), "Job skills named in the cover letter."
    ),
)
MODEL_FEATURE_SPECS: tuple[ModelFeature, ...] = STORE_MODEL_FEATURES + REQUEST_FEATURES
MODEL_FEATURES: tuple[str, ...] = tuple(f.name for f in MODEL_FEATURE_SPECS)
"""The model's input columns, in order."""
STREAMING_FEATURES: tuple[str, ...] = tuple(f.name for f in MODEL_FEATURE_SPECS if f.streaming)
"""The model features that read a windowed feature (left out by the ablation)."""
STORE_FEATURES: tuple[str, ...] = tuple(
    s.name for s in FEATURES if any(s.name in f.sources for f in MODEL_FEATURE_SPECS)
)
"""The store features `model_frame` reads, in spec order: what serving fetches."""

_POLARS_TYPES: dict[Dtype, pl.DataType] = {
    Dtype.INT: pl.Int64(),
    Dtype.FLOAT: pl.Float64(),
    Dtype.BOOL: pl.Boolean(),
    Dtype.STRING: pl.String(),
    Dtype.STRINGS: pl.List(pl.String()),
    Dtype.TIMESTAMP: pl.Datetime("us", "UTC"),
}
INPUT_SCHEMA: dict[str, pl.DataType] = {
    REQUEST_COLUMN: pl.String(),
    BID_COLUMN: pl.Float64(),
    LETTER_COLUMN: pl.String(),
    **{name: _POLARS_TYPES[FEATURES_BY_NAME[name].dtype] for name in STORE_FEATURES},
}
"""The columns `model_frame` reads, with their types."""
_ARROW: dict[str, pa.DataType] = {
    REQUEST_COLUMN: pa.string(),
    BID_COLUMN: pa.float64(),
    LETTER_COLUMN: pa.string(),
    **{name: ARROW_TYPES[FEATURES_BY_NAME[name].dtype] for name in STORE_FEATURES},
}
_LISTS = frozenset(n for n in STORE_FEATURES if FEATURES_BY_NAME[n].dtype is Dtype.STRINGS)


def _ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    return pl.when(denominator > 0).then(numerator / denominator).otherwise(None)


def _request_exprs() -> dict[str, pl.Expr]:
    bid = pl.col(BID_COLUMN)
    fl_skills, job_skills = pl.col("fl_skills"), pl.col("job_skills")
    others = pl.len().over(REQUEST_COLUMN) - 1
    lower = bid.rank("average").over(REQUEST_COLUMN) - 1  # lower bids, plus half the ties
    matches = fl_skills.list.set_intersection(job_skills).list.len()
    budget_min, budget_max = pl.col("job_budget_min"), pl.col("job_budget_max")
    return {
        "bid_to_budget_max": _ratio(bid, budget_max),
        "bid_within_budget": ((bid >= budget_min) & (bid <= budget_max)).cast(pl.Float64),
        "bid_to_hourly_rate": _ratio(bid, pl.col("fl_hourly_rate")),
        "bid_to_fl_bid_avg_7d": _ratio(bid, pl.col("fl_bid_avg_7d")),
        "bid_to_job_bid_avg_24h": _ratio(bid, pl.col("job_bid_avg_24h")),
        "bid_share_lower_in_request": _ratio(lower.cast(pl.Float64), others.cast(pl.Float64)),
        "bid_to_request_median": _ratio(bid, bid.median().over(REQUEST_COLUMN)),
        "skill_matches": matches,
        "skill_overlap": _ratio(matches.cast(pl.Float64), job_skills.list.len().cast(pl.Float64)),
        "cover_letter_chars": pl.col(LETTER_COLUMN).str.len_chars(),
        "cover_letter_job_skills": pl.col("__letter_skills"),
    }


def _letter_skills(frame: pl.DataFrame) -> pl.Series:
    """Per row, how many of the job's distinct skills the cover letter names (case-insensitive);
    null where the job's skills are unknown."""
    skill = pl.col("__skill")
    hits = (
        frame.select(
            pl.int_range(pl.len(), dtype=pl.UInt32).alias("__row"),
            pl.col(LETTER_COLUMN).str.to_lowercase().alias("__letter"),
            pl.col("job_skills")
            .list.eval(pl.element().str.to_lowercase())
            .list.unique()
            .alias("__skill"),
        )
        .explode("__skill", empty_as_null=True, keep_nulls=True)  # one row per job skill, or null
        .group_by("__row", maintain_order=True)
        .agg(
            (pl.col("__letter").str.contains(skill, literal=True) & (skill != ""))
            .fill_null(False)
            .sum()
        )
    )
    counts = hits["__letter"].cast(pl.Float64)
    return counts.set(frame["job_skills"].is_null(), None)  # type: ignore[arg-type]


def model_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The model's input, `MODEL_FEATURES` as float64 columns in order, one row per proposal.

    `frame` holds the `INPUT_SCHEMA` columns: each proposal's request key, bid and cover letter,
    and the store features' values for its freelancer, job and client (null where unknown).
    Rows stay in order; request-relative features compare each row with its request's rows.
    """
    missing = [name for name in INPUT_SCHEMA if name not in frame.columns]
    if missing:
        msg = f"model_frame: missing input columns {missing}"
        raise ValueError(msg)
    typed = frame.select(pl.col(name).cast(dtype) for name, dtype in INPUT_SCHEMA.items())
    typed = typed.with_columns(_letter_skills(typed).alias("__letter_skills"))
    exprs: dict[str, pl.Expr] = {}
    for feature in STORE_MODEL_FEATURES:
        (source,) = feature.sources
        spec = FEATURES_BY_NAME[source]
        if spec.categories:
            codes = {c: float(i) for i, c in enumerate(spec.categories)}
            exprs[feature.name] = pl.col(source).replace_strict(
                codes, default=None, return_dtype=pl.Float64
            )
        else:
            exprs[feature.name] = pl.col(source)
    exprs.update(_request_exprs())
    return typed.select(
        exprs[name].cast(pl.Float64).fill_nan(None).alias(name) for name in MODEL_FEATURES
    )


def model_matrix(frame: pl.DataFrame) -> np.ndarray:
    """`model_frame` as a C-contiguous float64 matrix, NaN for missing."""
    return np.ascontiguousarray(model_frame(frame).to_numpy(), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RequestProposal:
    """One proposal of a ranking request, with its freelancer's store values (absent: None)."""

    bid_amount: float
    cover_letter: str
    freelancer: Mapping[str, Any]


def request_frame(job: Mapping[str, Any], proposals: Sequence[RequestProposal]) -> pl.DataFrame:
    """The `model_frame` input of one request: `job` holds the job's and the client's values."""
    n = len(proposals)
    columns: dict[str, list[Any]] = {
        REQUEST_COLUMN: ["request"] * n,
        BID_COLUMN: [p.bid_amount for p in proposals],
        LETTER_COLUMN: [p.cover_letter for p in proposals],
    }
    for name in STORE_FEATURES:
        if FEATURES_BY_NAME[name].entity == FREELANCER:
            columns[name] = [p.freelancer.get(name) for p in proposals]
        else:
            columns[name] = [job.get(name)] * n
    # Arrow builds list columns far faster than polars does from Python lists.
    arrays = {
        name: pa.array(map(_plain, values) if name in _LISTS else values, _ARROW[name], size=n)
        for name, values in columns.items()
    }
    frame = pl.from_arrow(pa.table(arrays))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _plain(value: Any) -> Any:
    """Store values as polars takes them: tuples of skills as lists."""
    return list(value) if isinstance(value, tuple) else value


# --- the one-request form of `model_frame`, in numpy ------------------------------------------

_NAN = float("nan")
_C = {name: i for i, name in enumerate(MODEL_FEATURES)}  # each model feature's column


@dataclass(frozen=True, slots=True)
class _StoreColumns:
    """The store-feature columns one entity kind fills: the numbers (where, from which value),
    then the category codes (where, from which value, each category's code)."""

    numbers: list[int]
    number_sources: tuple[str, ...]
    coded: tuple[tuple[int, str, dict[Any, float]], ...]

    def fill(self, out: np.ndarray, entities: Sequence[Mapping[str, Any]]) -> None:
        """Each entity's values into its row of `out` (one entity: every row). None is NaN."""
        rows = [tuple(map(values.get, self.number_sources)) for values in entities]
        out[:, self.numbers] = np.array(rows, dtype=np.float64)  # None -> NaN, bool -> 0/1
        for column, source, codes in self.coded:
            out[:, column] = [codes.get(values.get(source), _NAN) for values in entities]


def _store_columns(freelancer: bool) -> _StoreColumns:
    picked = [
        (_C[f.name], FEATURES_BY_NAME[f.sources[0]])
        for f in STORE_MODEL_FEATURES
        if (FEATURES_BY_NAME[f.sources[0]].entity == FREELANCER) == freelancer
    ]
    return _StoreColumns(
        [column for column, spec in picked if not spec.categories],
        tuple(spec.name for _, spec in picked if not spec.categories),
        tuple(
            (column, spec.name, {c: float(i) for i, c in enumerate(spec.categories)})
            for column, spec in picked
            if spec.categories
        ),
    )


_FREELANCER_COLUMNS = _store_columns(freelancer=True)
_JOB_COLUMNS = _store_columns(freelancer=False)  # the job's and its client's


def _lower(texts: Sequence[str]) -> list[str]:
    """Lower case as polars' `str.to_lowercase` has it: ASCII by Python, anything else by polars
    itself (its Unicode tables are newer than Python's, so dozens of letters differ)."""
    out = [t.lower() if t.isascii() else "" for t in texts]
    others = [i for i, t in enumerate(texts) if not t.isascii()]
    if others:
        series = pl.Series([texts[i] for i in others], dtype=pl.String()).str.to_lowercase()
        for i, lowered in zip(others, series.to_list(), strict=True):
            out[i] = lowered
    return out


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _ratios(bid: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """`bid / denominator` where the denominator is positive; NaN elsewhere (missing, NaN, <= 0)."""
    return np.divide(bid, denominator, out=np.full(len(bid), _NAN), where=denominator > 0)


def _within(bid: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """`low <= bid <= high` as polars computes it: a null bound is unknown (false AND unknown is
    false), and NaN is above every number."""
    n = len(bid)
    above = None if low is None else (np.zeros(n, bool) if low != low else bid >= low)
    below = None if high is None else (np.ones(n, bool) if high != high else bid <= high)
    if above is not None and below is not None:
        return (above & below).astype(np.float64)
    known = above if above is not None else below
    if known is None:
        return np.full(n, _NAN)
    return np.where(known, _NAN, 0.0)


def _bid_ranks(bid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each bid's share of lower bids among the others (ties half; NaN alone), and its ratio to
    the request's median (polars' median: `lower + (upper - lower) * 0.5` for an even count)."""
    n = len(bid)
    ordered = np.sort(bid)
    if n > 1:
        below = np.searchsorted(ordered, bid, "left")
        ties = np.searchsorted(ordered, bid, "right") - below - 1
        share = (below + ties * 0.5) / (n - 1)
    else:
        share = np.full(n, _NAN)
    middle = n // 2
    if n % 2:
        median = ordered[middle]
    else:
        lower, upper = ordered[middle - 1], ordered[middle]
        median = lower + (upper - lower) * 0.5
    return share, (bid / median if median > 0 else np.full(n, _NAN))


def _ratio_to(bid: np.ndarray, denominator: float | None) -> np.ndarray | float:
    return bid / denominator if denominator is not None and denominator > 0 else _NAN


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity: it holds an array
class FreelancerColumns:
    """A freelancer's part of the model's input that no request changes: a full-width row with
    its store columns filled (NaN elsewhere; read-only, shared between requests), and its skills
    (what the request-relative skill features compare with the job's)."""

    row: np.ndarray
    skills: Sequence[str] | None


def freelancer_columns(freelancer: Mapping[str, Any]) -> FreelancerColumns:
    """What `request_matrix` reads of one freelancer's store values, computed once: serving
    keeps it with the decoded entity and builds each request's matrix with `matrix_of`."""
    row = np.full((1, len(MODEL_FEATURES)), _NAN)
    _FREELANCER_COLUMNS.fill(row, [freelancer])
    row = row[0]
    row.flags.writeable = False
    return FreelancerColumns(row, freelancer.get("fl_skills"))


def request_matrix(job: Mapping[str, Any], proposals: Sequence[RequestProposal]) -> np.ndarray:
    """The model's input for one request, one row per proposal in request order.

    `model_frame(request_frame(job, proposals))` computed without a frame: the same values, bit
    for bit (the parity property test holds the two together; `model_frame` is the definition).
    """
    n = len(proposals)
    out = np.empty((n, len(MODEL_FEATURES)), dtype=np.float64)  # every column is filled
    if n == 0:
        return out
    freelancers = [p.freelancer for p in proposals]
    _FREELANCER_COLUMNS.fill(out, freelancers)  # the columns `freelancer_columns` holds
    _request_columns(
        out,
        job,
        [p.bid_amount for p in proposals],
        [p.cover_letter for p in proposals],
        [f.get("fl_skills") for f in freelancers],
    )
    return out


def matrix_of(
    job: Mapping[str, Any],
    freelancers: Sequence[FreelancerColumns],
    bids: Sequence[float],
    letters: Sequence[str],
) -> np.ndarray:
    """`request_matrix` for proposals whose freelancers' columns are already computed (by
    `freelancer_columns`): their rows are copied, only the job's and the request's columns are
    computed. The same values, bit for bit (a property test holds the two together)."""
    n = len(freelancers)
    if n == 0:
        return np.empty((0, len(MODEL_FEATURES)), dtype=np.float64)
    out = np.array([f.row for f in freelancers], dtype=np.float64)
    _request_columns(out, job, bids, letters, [f.skills for f in freelancers])
    return out


def _request_columns(
    out: np.ndarray,
    job: Mapping[str, Any],
    bids: Sequence[float],
    letters: Sequence[str],
    freelancer_skills: Sequence[Sequence[str] | None],
) -> None:
    """The job's columns and the request-relative ones, in place; the freelancers' columns of
    `out` are filled already."""
    _JOB_COLUMNS.fill(out, [job])
    bid = np.array(bids, dtype=np.float64)
    budget_max = _number(job.get("job_budget_max"))
    with np.errstate(over="ignore"):  # a bid over a tiny denominator is inf, as in polars
        out[:, _C["bid_to_budget_max"]] = _ratio_to(bid, budget_max)
        out[:, _C["bid_to_hourly_rate"]] = _ratios(bid, out[:, _C["fl_hourly_rate"]])
        out[:, _C["bid_to_fl_bid_avg_7d"]] = _ratios(bid, out[:, _C["fl_bid_avg_7d"]])
        job_bids = _number(job.get("job_bid_avg_24h"))
        out[:, _C["bid_to_job_bid_avg_24h"]] = _ratio_to(bid, job_bids)
        share, to_median = _bid_ranks(bid)
    out[:, _C["bid_within_budget"]] = _within(bid, _number(job.get("job_budget_min")), budget_max)
    out[:, _C["bid_share_lower_in_request"]] = share
    out[:, _C["bid_to_request_median"]] = to_median
    out[:, _C["cover_letter_chars"]] = [len(letter) for letter in letters]
    _skill_features(out, job.get("job_skills"), freelancer_skills, letters)


def _skill_features(
    out: np.ndarray,
    job_skills: Sequence[str] | None,
    freelancer_skills: Sequence[Sequence[str] | None],
    letters: Sequence[str],
) -> None:
    """`skill_matches`, `skill_overlap` and `cover_letter_job_skills`, in place."""
    if job_skills is None:
        out[:, [_C["skill_matches"], _C["skill_overlap"], _C["cover_letter_job_skills"]]] = _NAN
        return
    wanted = set(job_skills)
    matches = np.array(
        [_NAN if s is None else len(wanted.intersection(s)) for s in freelancer_skills],
        dtype=np.float64,
    )
    out[:, _C["skill_matches"]] = matches
    out[:, _C["skill_overlap"]] = matches / len(job_skills) if job_skills else _NAN
    named = {s for s in _lower([s for s in wanted if s is not None]) if s}
    if not named:
        out[:, _C["cover_letter_job_skills"]] = 0.0
        return
    lowered = _lower(letters)
    out[:, _C["cover_letter_job_skills"]] = [sum(map(t.__contains__, named)) for t in lowered]
