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

import itertools
import operator
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

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


# --- the one-request form of `model_frame`, in numpy -------------------------------------------
# With ~50 proposals a numpy call costs about as much as a Python loop over the column, a few
# microseconds, so each column is one or two numpy calls writing into the matrix in place; what
# only Python computes (letter lengths, skill counts) is packed into float64 by `struct`, several
# times faster than `np.array` converts a list, and the freelancers' columns are joined from the
# bytes `freelancer_columns` kept. The cover letters are searched once per job skill, joined.

_NAN = float("nan")
_C = {name: i for i, name in enumerate(MODEL_FEATURES)}  # each model feature's column


def _where(columns: Sequence[int]) -> slice | list[int]:
    """Columns of the matrix as an index: a slice where they are consecutive (faster to write)."""
    first = columns[0]
    if list(columns) == list(range(first, first + len(columns))):
        return slice(first, first + len(columns))
    return list(columns)


@dataclass(frozen=True, slots=True)
class _StoreColumns:
    """The store-feature columns one entity kind fills, in column order: where they are, which
    value each reads, and for a category each category's code (None for a number)."""

    where: slice | list[int]
    sources: tuple[str, ...]
    codes: tuple[dict[Any, float] | None, ...]

    def values(self, entity: Mapping[str, Any]) -> list[Any]:
        """The entity's values in column order; an unknown category is NaN."""
        return [
            entity.get(source) if codes is None else codes.get(entity.get(source), _NAN)
            for source, codes in zip(self.sources, self.codes, strict=True)
        ]

    def fill(self, out: np.ndarray, entities: Sequence[Mapping[str, Any]]) -> None:
        """Each entity's values into its row of `out` (one entity: every row). None is NaN."""
        rows = [self.values(entity) for entity in entities]
        out[:, self.where] = np.array(rows, dtype=np.float64)  # None -> NaN, bool -> 0/1


def _store_columns(freelancer: bool) -> _StoreColumns:
    picked = [  # in column order, as `STORE_MODEL_FEATURES` is
        (_C[f.name], FEATURES_BY_NAME[f.sources[0]])
        for f in STORE_MODEL_FEATURES
        if (FEATURES_BY_NAME[f.sources[0]].entity == FREELANCER) == freelancer
    ]
    return _StoreColumns(
        _where([column for column, _ in picked]),
        tuple(spec.name for _, spec in picked),
        tuple(
            {c: float(i) for i, c in enumerate(spec.categories)} if spec.categories else None
            for _, spec in picked
        ),
    )


_FREELANCER_COLUMNS = _store_columns(freelancer=True)
_JOB_COLUMNS = _store_columns(freelancer=False)  # the job's and its client's
# bid / a freelancer's value: where the ratios go, and the values they divide by
_FREELANCER_RATIOS = _where([_C["bid_to_hourly_rate"], _C["bid_to_fl_bid_avg_7d"]])
_FREELANCER_DIVISORS = [_C["fl_hourly_rate"], _C["fl_bid_avg_7d"]]


def _divisors(values: np.ndarray) -> np.ndarray:
    """What a bid is divided by: the value where positive, NaN elsewhere (missing, NaN, <= 0),
    so that the ratio is missing there (NaN divides to NaN)."""
    return np.where(values > 0, values, _NAN)


def _divisor(value: Any) -> float:
    """`_divisors` for one store value (None: missing)."""
    return float(value) if value is not None and value > 0 else _NAN


def _lower(texts: Sequence[str]) -> list[str]:
    """Lower case as polars' `str.to_lowercase` has it: ASCII by Python, anything else by polars
    itself (its Unicode tables are newer than Python's, so dozens of letters differ)."""
    out = list(map(str.lower, texts))
    if all(map(str.isascii, texts)):
        return out
    others = [i for i, t in enumerate(texts) if not t.isascii()]
    series = pl.Series([texts[i] for i in others], dtype=pl.String()).str.to_lowercase()
    for i, lowered in zip(others, series.to_list(), strict=True):
        out[i] = lowered
    return out


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _within(bid: np.ndarray, low: float | None, high: float | None) -> np.ndarray | float:
    """`low <= bid <= high` as polars computes it: a null bound is unknown (false AND unknown is
    false), and NaN is above every number."""
    if low is not None and high is not None:
        if low != low:
            return 0.0
        return bid >= low if high != high else (bid >= low) & (bid <= high)
    if low is not None:  # known where false: below the bound (every bid is below NaN)
        return 0.0 if low != low else np.where(bid >= low, _NAN, 0.0)
    if high is not None:
        return _NAN if high != high else np.where(bid <= high, _NAN, 0.0)
    return _NAN


def _bid_ranks(out: np.ndarray, bid: np.ndarray) -> None:
    """Each bid's share of lower bids among the others (ties half; NaN alone), and its ratio to
    the request's median (polars' median: `lower + (upper - lower) * 0.5` for an even count)."""
    n = len(bid)
    ordered = np.sort(bid)  # NaN last, as polars sorts
    share = out[:, _C["bid_share_lower_in_request"]]
    if n > 1:
        # (below + ties * 0.5) / (n - 1), with ties = above - below - 1, is the real number
        # (below + above - 1) / (2n - 2): exact integers divided once, so the same float
        below, above = ordered.searchsorted(bid, "left"), ordered.searchsorted(bid, "right")
        np.divide(below + above - 1, 2 * (n - 1), out=share)
    else:
        share[:] = _NAN
    middle = n // 2
    if n % 2:
        median = float(ordered[middle])
    else:
        lower, upper = float(ordered[middle - 1]), float(ordered[middle])
        median = lower + (upper - lower) * 0.5
    np.divide(bid, median if median > 0 else _NAN, out=out[:, _C["bid_to_request_median"]])


def _skills_named(named: set[str], letters: Sequence[str]) -> list[int]:
    """How many of `named` (distinct, lower case, not empty) each letter holds, in `_lower`'s
    lower case. Per skill, one pass over the letters in C (`map` of `in`, then of `+`): no
    Python-level step per letter or per match."""
    lowered = _lower(letters)
    counts = [0] * len(letters)
    for skill in named:
        held = map(operator.contains, lowered, itertools.repeat(skill))
        counts = list(map(operator.add, counts, held))
    return counts


_SKILL_BITS: dict[Any, int] = {}  # each skill a freelancer has had: its bit in a skill mask
_SKILL_BITS_LOCK = threading.Lock()


def skill_mask(skills: Sequence[str] | None) -> int | None:
    """A freelancer's distinct skills as the bits of one int (None: skills missing), so that
    the skills a job shares with it are counted by one `&` and a popcount, not a set
    intersection per proposal. A skill gets its bit the first time a freelancer has it (the
    table grows with the vocabulary, never with requests: a job's skills take no bits)."""
    if skills is None:
        return None
    bits = _SKILL_BITS
    mask = 0
    for skill in skills:
        bit = bits.get(skill)
        if bit is None:
            with _SKILL_BITS_LOCK:
                bit = bits.setdefault(skill, len(bits))
        mask |= 1 << bit
    return mask


def _job_mask(skills: Iterable[str]) -> int:
    """A job's skills as `skill_mask`'s bits; a skill no freelancer had has none (and matches
    no freelancer)."""
    bits = _SKILL_BITS
    mask = 0
    for skill in skills:
        bit = bits.get(skill)
        if bit is not None:
            mask |= 1 << bit
    return mask


def _skill_columns(
    out: np.ndarray,
    job_skills: Sequence[str] | None,
    freelancer_masks: Sequence[int | None],
    letters: Sequence[str],
) -> None:
    """`skill_matches`, `skill_overlap`, `cover_letter_chars`, `cover_letter_job_skills`.
    `freelancer_masks`: each proposal's freelancer's `skill_mask`."""
    n = len(letters)
    lengths = list(map(len, letters))
    if job_skills is None:
        matches: list[Any] = [_NAN] * n
        named: list[Any] = matches
        total = _NAN
    else:
        wanted = set(job_skills)
        job = _job_mask(wanted)
        if None in freelancer_masks:
            matches = [_NAN if m is None else (m & job).bit_count() for m in freelancer_masks]
        else:  # the same, in C
            masks = cast("Sequence[int]", freelancer_masks)
            matches = list(map(int.bit_count, map(job.__and__, masks)))
        lowered = {s for s in _lower([s for s in wanted if s is not None]) if s}
        named = _skills_named(lowered, letters) if lowered else [0] * n
        total = len(job_skills) or _NAN
    packed = struct.pack(f"{3 * n}d", *matches, *lengths, *named)
    matched, chars, counts = np.frombuffer(packed, dtype=np.float64).reshape(3, n)
    out[:, _C["skill_matches"]] = matched
    np.divide(matched, total, out=out[:, _C["skill_overlap"]])
    out[:, _C["cover_letter_chars"]] = chars
    out[:, _C["cover_letter_job_skills"]] = counts


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity: it holds an array
class FreelancerColumns:
    """A freelancer's part of the model's input that no request changes: a full-width row with
    its store columns filled (NaN elsewhere; read-only, shared between requests), its skills
    (what the request-relative skill features compare with the job's), and as float64 bytes
    its store columns then what its bid ratios divide by (what `matrix_of` joins)."""

    row: np.ndarray
    skills: Sequence[str] | None
    packed: bytes
    skill_mask: int | None  # `skill_mask(skills)`


def freelancer_columns(freelancer: Mapping[str, Any]) -> FreelancerColumns:
    """What `request_matrix` reads of one freelancer's store values, computed once: serving
    keeps it with the decoded entity and builds each request's matrix with `matrix_of`."""
    row = np.full((1, len(MODEL_FEATURES)), _NAN)
    _FREELANCER_COLUMNS.fill(row, [freelancer])
    row = row[0]
    row.flags.writeable = False
    packed = (
        row[_FREELANCER_COLUMNS.where].tobytes() + _divisors(row[_FREELANCER_DIVISORS]).tobytes()
    )
    skills = freelancer.get("fl_skills")
    return FreelancerColumns(row, skills, packed, skill_mask(skills))


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
        [skill_mask(f.get("fl_skills")) for f in freelancers],
        _divisors(out[:, _FREELANCER_DIVISORS]),
    )
    return out


def matrix_of(
    job: Mapping[str, Any],
    freelancers: Sequence[FreelancerColumns],
    bids: Sequence[float],
    letters: Sequence[str],
) -> np.ndarray:
    """`request_matrix` for proposals whose freelancers' columns are already computed (by
    `freelancer_columns`): their bytes are joined, only the job's and the request's columns are
    computed. The same values, bit for bit (a property test holds the two together)."""
    n = len(freelancers)
    out = np.empty((n, len(MODEL_FEATURES)), dtype=np.float64)  # every column is filled
    if n == 0:
        return out
    packed = np.frombuffer(b"".join([f.packed for f in freelancers]), dtype=np.float64)
    packed = packed.reshape(n, -1)
    stored = len(_FREELANCER_COLUMNS.sources)
    out[:, _FREELANCER_COLUMNS.where] = packed[:, :stored]
    masks = [f.skill_mask for f in freelancers]
    _request_columns(out, job, bids, letters, masks, packed[:, stored:])
    return out


def _request_columns(
    out: np.ndarray,
    job: Mapping[str, Any],
    bids: Sequence[float],
    letters: Sequence[str],
    skill_masks: Sequence[int | None],
    divisors: np.ndarray,
) -> None:
    """The job's columns and the request-relative ones, in place; the freelancers' columns of
    `out` are filled already, and `divisors` holds their `_divisors`."""
    _JOB_COLUMNS.fill(out, [job])
    bid = np.array(bids, dtype=np.float64)
    budget_max = _number(job.get("job_budget_max"))
    with np.errstate(over="ignore"):  # a bid over a tiny denominator is inf, as in polars
        np.divide(bid, _divisor(budget_max), out=out[:, _C["bid_to_budget_max"]])
        out[:, _FREELANCER_RATIOS] = bid[:, None] / divisors
        job_bids = _divisor(job.get("job_bid_avg_24h"))
        np.divide(bid, job_bids, out=out[:, _C["bid_to_job_bid_avg_24h"]])
        _bid_ranks(out, bid)
    low = _number(job.get("job_budget_min"))
    out[:, _C["bid_within_budget"]] = _within(bid, low, budget_max)
    _skill_columns(out, job.get("job_skills"), skill_masks, letters)
