"""What the ranker reads: its ordered feature list, and the one function that builds its input.

`input_matrix` computes the model's input from proposals' rows (each with its freelancer's and its
job's store values, its bid and cover letter, and which request it belongs to). It is the only
implementation: training calls it over a whole training set through `model_frame` (polars in,
polars out; every job is a request), serving calls it for one request (`request_matrix`, or
`ProposalRows` built from its own caches), so the two cannot compute a feature differently. It is
pure: numbers in, a float64 matrix in `MODEL_FEATURES` order out. Missing values stay missing
(NaN): LightGBM learns a direction for them, which is what a new freelancer or an unseen job needs.

The list is derived from `specs.FEATURES`:

- every INT, FLOAT and BOOL feature, as a number (BOOL as 0/1);
- every STRING feature with a closed vocabulary (`categories`), as its index in that vocabulary
  (`job_budget_type_code`: hourly 0, fixed 1; `job_experience_level_code`: entry 0 ... expert 2);
  a value outside it is missing;
- then the request-time features below, which combine store values with the request.

Left out on purpose: `fl_country` and `job_category` (open vocabularies: a stable hash would give
codes whose order means nothing, and a client's decision does not hinge on them here),
`job_posted_at` (the job's age is the same for every proposal of a serving request, so it cannot
rank them; in training it would only stand in for arrival order). The skill lists are used through
the overlap features.

Request-time features (`REQUEST_FEATURES`), each defined in its description:

- a ratio `bid / x` is missing where `x` is missing or not positive;
- `bid_within_budget` is missing where either bound is;
- `bid_share_lower_in_request`: among the request's other proposals, the share that bid less,
  ties counting half ((lower + equal / 2) / others); missing for a request of one proposal;
- `bid_to_request_median`: the median of an even count is the mean of the two middle bids;
- skills are compared as written (`skill_matches`: distinct job skills the freelancer lists;
  `skill_overlap`: that over the number of the job's skills); the cover letter is searched for
  each distinct non-empty job skill, both lower-cased by Python's `str.lower`. Unknown skills
  (the job's or the freelancer's) make these missing, as a missing letter makes its two missing.

The parity test holds `input_matrix` (through `model_frame` over many requests, and through
`request_matrix` for one) to a plain per-proposal transcription of these definitions.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
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


_NAN = float("nan")
_C = {name: i for i, name in enumerate(MODEL_FEATURES)}  # each model feature's column


# --- the store columns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityColumns:
    """The store-feature columns of the model's input that one side fills (`FREELANCER_COLUMNS`:
    the freelancer's; `JOB_COLUMNS`: the job's and its client's), in column order: where they are,
    which store value each reads, and for a category each category's code (None for a number)."""

    where: slice
    sources: tuple[str, ...]
    codes: tuple[dict[Any, float] | None, ...]

    def matrix(self, columns: Mapping[str, Sequence[Any] | np.ndarray], rows: int) -> np.ndarray:
        """The side's columns for `rows` rows, from its store values by name (a name not there:
        missing). A number as float64 (None and NaN missing, a bool 0/1); a category as its
        code (one outside the vocabulary, or None, missing)."""
        out = np.empty((rows, len(self.sources)), dtype=np.float64)
        for j, (source, codes) in enumerate(zip(self.sources, self.codes, strict=True)):
            values = columns.get(source)
            if values is None:
                out[:, j] = _NAN
            elif codes is None:
                out[:, j] = np.asarray(values, dtype=np.float64)  # None -> NaN, bool -> 0/1
            else:
                out[:, j] = [codes.get(value, _NAN) for value in values]
        return out

    def row(self, entity: Mapping[str, Any]) -> np.ndarray:
        """One entity's columns (`matrix` of one row), as a flat array."""
        return self.matrix({source: (entity.get(source),) for source in self.sources}, 1)[0]


def _entity_columns(freelancer: bool) -> EntityColumns:
    picked = [  # in column order, as `STORE_MODEL_FEATURES` is
        (_C[f.name], FEATURES_BY_NAME[f.sources[0]])
        for f in STORE_MODEL_FEATURES
        if (FEATURES_BY_NAME[f.sources[0]].entity == FREELANCER) == freelancer
    ]
    places = [column for column, _ in picked]
    if places != list(range(places[0], places[0] + len(places))):
        msg = "features.specs: one entity's model features must be listed together"
        raise ValueError(msg)
    return EntityColumns(
        slice(places[0], places[0] + len(places)),
        tuple(spec.name for _, spec in picked),
        tuple(
            {c: float(i) for i, c in enumerate(spec.categories)} if spec.categories else None
            for _, spec in picked
        ),
    )


FREELANCER_COLUMNS = _entity_columns(freelancer=True)
JOB_COLUMNS = _entity_columns(freelancer=False)  # the job's and its client's


# --- the one implementation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposalRows:
    """What the model's input is computed from, one row per proposal.

    `freelancer` and `job` hold the rows' store columns as `FREELANCER_COLUMNS.matrix` and
    `JOB_COLUMNS.matrix` give them (`job` may be one row, then every proposal's). The skills are
    any collections of strings (None: unknown), per row; `requests` says which request each row
    belongs to (None: all the same one)."""

    freelancer: np.ndarray
    job: np.ndarray
    bids: np.ndarray | Sequence[float]
    letters: Sequence[str | None]
    freelancer_skills: Sequence[Collection[str] | None]
    job_skills: Sequence[Collection[str] | None]
    requests: np.ndarray | Sequence[Any] | None = None


_BID_RATIOS = (  # bid / a store column
    ("bid_to_budget_max", "job_budget_max"),
    ("bid_to_hourly_rate", "fl_hourly_rate"),
    ("bid_to_fl_bid_avg_7d", "fl_bid_avg_7d"),
    ("bid_to_job_bid_avg_24h", "job_bid_avg_24h"),
)


def input_matrix(rows: ProposalRows) -> np.ndarray:
    """The model's input: one row per proposal, in order, `MODEL_FEATURES` as float64 columns,
    NaN where missing (the module's docstring defines each feature)."""
    n = len(rows.letters)
    out = np.empty((n, len(MODEL_FEATURES)), dtype=np.float64)  # every column is filled
    if n == 0:
        return out
    out[:, FREELANCER_COLUMNS.where] = rows.freelancer
    out[:, JOB_COLUMNS.where] = rows.job
    bid = np.asarray(rows.bids, dtype=np.float64)
    with np.errstate(over="ignore"):  # a bid over a tiny denominator is inf
        for name, source in _BID_RATIOS:
            np.divide(bid, _divisors(out[:, _C[source]]), out=out[:, _C[name]])
        _bids_in_requests(out, bid, rows.requests)
    low, high = out[:, _C["job_budget_min"]], out[:, _C["job_budget_max"]]
    within = out[:, _C["bid_within_budget"]]
    within[:] = (low <= bid) & (bid <= high)
    within[np.isnan(low) | np.isnan(high)] = _NAN
    _skill_columns(out, rows.job_skills, rows.freelancer_skills, rows.letters)
    return out


def _divisors(values: np.ndarray) -> np.ndarray:
    """What a bid is divided by: the value where positive, NaN elsewhere (missing, NaN, <= 0),
    so that the ratio is missing there (NaN divides to NaN)."""
    return np.where(values > 0, values, _NAN)


def _bids_in_requests(out: np.ndarray, bid: np.ndarray, requests: Any) -> None:
    """`bid_share_lower_in_request` and `bid_to_request_median`."""
    if requests is None:
        share, median = _bids_in_one(bid)
        out[:, _C["bid_share_lower_in_request"]] = share
        out[:, _C["bid_to_request_median"]] = bid / (median if median > 0 else _NAN)
        return
    # Several requests: the bids sorted by request, then by bid; in each request's run, a bid's
    # equals are a run of their own.
    n = len(bid)
    _, group = np.unique(np.asarray(requests), return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((bid, group))
    group, ordered = group[order], bid[order]
    first = np.ones(n, dtype=bool)  # where a request's run starts
    first[1:] = group[1:] != group[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, n))
    start, size = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    equal = first.copy()  # where a run of equal bids starts
    equal[1:] |= ordered[1:] != ordered[:-1]
    run_starts = np.flatnonzero(equal)
    run = np.cumsum(equal) - 1
    below = run_starts[run] - start  # bids lower than this one
    up_to = np.append(run_starts[1:], n)[run] - start  # bids not higher, this one included
    # (below + (up_to - below - 1) / 2) / (size - 1), as one division of exact integers
    others = size - 1
    share = np.full(n, _NAN)
    np.divide(below + up_to - 1, 2 * others, out=share, where=others > 0)
    middle = starts + sizes // 2
    upper = ordered[middle]
    lower = ordered[np.maximum(middle - 1, starts)]
    median = np.where(sizes % 2 == 1, upper, (lower + upper) * 0.5)
    out[order, _C["bid_share_lower_in_request"]] = share
    out[order, _C["bid_to_request_median"]] = ordered / _divisors(np.repeat(median, sizes))


def _bids_in_one(bid: np.ndarray) -> tuple[np.ndarray | float, float]:
    """The two for the bids of one request: each bid's share, and the median."""
    n = len(bid)
    ordered = np.sort(bid)
    share: np.ndarray | float = _NAN
    if n > 1:  # as above: lower bids, and bids not higher
        below, up_to = ordered.searchsorted(bid, "left"), ordered.searchsorted(bid, "right")
        share = (below + up_to - 1) / (2 * (n - 1))
    middle = n // 2
    upper = float(ordered[middle])
    median = upper if n % 2 else (float(ordered[middle - 1]) + upper) * 0.5
    return share, median


def _job_skills(skills: Collection[str]) -> tuple[set[str], tuple[str, ...], float]:
    """A job's skills as the skill features read them: the set, the distinct non-empty lower
    cases a letter is searched for, and their number (NaN for none: the overlap's divisor)."""
    lowered = {skill.lower() for skill in skills if skill is not None} - {""}
    return set(skills), tuple(lowered), float(len(skills)) or _NAN


def _skill_columns(
    out: np.ndarray,
    job_skills: Sequence[Collection[str] | None],
    freelancer_skills: Sequence[Collection[str] | None],
    letters: Sequence[str | None],
) -> None:
    """`skill_matches`, `skill_overlap`, `cover_letter_chars`, `cover_letter_job_skills`: per
    row where the rows are of several jobs (a training set), per job skill over every row at
    once where they are of one (a serving request: the same object on every row)."""
    first = job_skills[0]
    if all(skills is first for skills in job_skills):
        columns = _one_job_skills(first, freelancer_skills, letters)
    else:
        columns = _skills_per_row(job_skills, freelancer_skills, letters)
    for name, values in zip(_SKILL_COLUMNS, columns, strict=True):
        out[:, _C[name]] = values


_SKILL_COLUMNS = ("skill_matches", "skill_overlap", "cover_letter_chars", "cover_letter_job_skills")


def _skills_per_row(
    job_skills: Sequence[Collection[str] | None],
    freelancer_skills: Sequence[Collection[str] | None],
    letters: Sequence[str | None],
) -> tuple[list[float], ...]:
    jobs: dict[int, tuple[set[str], tuple[str, ...], float]] = {}  # by the job's skills' id
    matches: list[float] = []
    overlaps: list[float] = []
    chars: list[float] = []
    named: list[float] = []
    for wanted, held, letter in zip(job_skills, freelancer_skills, letters, strict=True):
        chars.append(_NAN if letter is None else len(letter))
        if wanted is None:
            matches.append(_NAN)
            overlaps.append(_NAN)
            named.append(_NAN)
            continue
        job = jobs.get(id(wanted))
        if job is None:
            job = jobs[id(wanted)] = _job_skills(wanted)
        distinct, lowered, total = job
        matched = _NAN if held is None else len(distinct.intersection(held))
        matches.append(matched)
        overlaps.append(matched / total)
        if letter is None:
            named.append(_NAN)
        else:
            named.append(sum(map(letter.lower().__contains__, lowered)))
    return matches, overlaps, chars, named


def _one_job_skills(
    wanted: Collection[str] | None,
    freelancer_skills: Sequence[Collection[str] | None],
    letters: Sequence[str | None],
) -> tuple[Any, ...]:
    """`_skills_per_row` where every row is of the same job: each step one `map` over the rows
    (in C), and the letters searched once per job skill."""
    n = len(letters)
    no_letter = None in letters
    if no_letter:
        chars = [_NAN if letter is None else len(letter) for letter in letters]
    else:
        chars = list(map(len, cast("Sequence[str]", letters)))
    if wanted is None:
        missing = [_NAN] * n
        return missing, missing, chars, missing
    distinct, lowered, total = _job_skills(wanted)
    if None in freelancer_skills:
        matches = [_NAN if h is None else len(distinct.intersection(h)) for h in freelancer_skills]
    else:
        matches = list(map(len, map(distinct.intersection, freelancer_skills)))  # type: ignore[arg-type]
    lowers = [letter.lower() if letter is not None else "" for letter in letters]
    named: list[float] = [0] * n
    for skill in lowered:
        named = list(map(operator.add, named, map(operator.contains, lowers, repeat(skill))))
    if no_letter:
        named = [_NAN if letter is None else k for letter, k in zip(letters, named, strict=True)]
    overlaps = np.array(matches, dtype=np.float64) / total
    return matches, overlaps, chars, named


# --- a whole set: polars in, polars out ---------------------------------------------------------


def model_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The model's input, `MODEL_FEATURES` as float64 columns in order, one row per proposal
    (`input_matrix` over the whole frame; null where missing).

    `frame` holds the `INPUT_SCHEMA` columns: each proposal's request key, bid and cover letter,
    and the store features' values for its freelancer, job and client (null where unknown).
    Rows stay in order; request-relative features compare each row with its request's rows.
    """
    missing = [name for name in INPUT_SCHEMA if name not in frame.columns]
    if missing:
        msg = f"model_frame: missing input columns {missing}"
        raise ValueError(msg)
    typed = frame.select(pl.col(name).cast(dtype) for name, dtype in INPUT_SCHEMA.items())
    matrix = input_matrix(
        ProposalRows(
            freelancer=_side(typed, FREELANCER_COLUMNS),
            job=_side(typed, JOB_COLUMNS),
            bids=typed[BID_COLUMN].to_numpy(),
            letters=typed[LETTER_COLUMN].to_list(),
            freelancer_skills=typed["fl_skills"].to_list(),
            job_skills=typed["job_skills"].to_list(),
            requests=typed[REQUEST_COLUMN].fill_null("").to_numpy(),
        )
    )
    return pl.DataFrame(matrix, schema=list(MODEL_FEATURES), orient="row").fill_nan(None)


def _side(frame: pl.DataFrame, side: EntityColumns) -> np.ndarray:
    columns = {
        name: frame[name].to_list() if codes is not None else frame[name].to_numpy()
        for name, codes in zip(side.sources, side.codes, strict=True)
    }
    return side.matrix(columns, frame.height)


def model_matrix(frame: pl.DataFrame) -> np.ndarray:
    """`model_frame` as a C-contiguous float64 matrix, NaN for missing."""
    return np.ascontiguousarray(model_frame(frame).to_numpy(), dtype=np.float64)


# --- one request ---------------------------------------------------------------------------------


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


def request_matrix(job: Mapping[str, Any], proposals: Sequence[RequestProposal]) -> np.ndarray:
    """The model's input for one request, one row per proposal in request order: `job` holds
    the job's and its client's store values, each proposal its freelancer's."""
    freelancers = [p.freelancer for p in proposals]
    n = len(proposals)
    return input_matrix(
        ProposalRows(
            freelancer=FREELANCER_COLUMNS.matrix(
                {name: [f.get(name) for f in freelancers] for name in FREELANCER_COLUMNS.sources},
                n,
            ),
            job=JOB_COLUMNS.row(job)[None, :],
            bids=[p.bid_amount for p in proposals],
            letters=[p.cover_letter for p in proposals],
            freelancer_skills=[f.get("fl_skills") for f in freelancers],
            job_skills=[job.get("job_skills")] * n,
        )
    )
