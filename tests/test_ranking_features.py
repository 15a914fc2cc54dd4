"""The model's feature list and the one function that builds its input (features.ranking),
held to a plain per-proposal transcription of the features' definitions."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import polars as pl
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features.ranking import (
    INPUT_SCHEMA,
    MODEL_FEATURE_SPECS,
    MODEL_FEATURES,
    REQUEST_COLUMN,
    STORE_FEATURES,
    STORE_MODEL_FEATURES,
    STREAMING_FEATURES,
    RequestProposal,
    model_frame,
    model_matrix,
    request_frame,
    request_matrix,
)
from features.specs import FEATURES, FEATURES_BY_NAME, FREELANCER, Dtype

COLUMN = {name: i for i, name in enumerate(MODEL_FEATURES)}
SKILLS = ["python", "sql", "React", "go", "excel"]

JOB: dict[str, Any] = {
    "job_budget_type": "hourly",
    "job_budget_min": 20.0,
    "job_budget_max": 60.0,
    "job_experience_level": "expert",
    "job_skills": ("Python", "sql", "docker"),
    "job_proposals_1h": 4,
    "job_proposals_24h": 9,
    "job_bid_avg_24h": 50.0,
    "client_jobs_30d": 2,
    "client_hires_30d": 1,
}


def value(matrix: np.ndarray, row: int, name: str) -> float:
    return float(matrix[row, COLUMN[name]])


# --- the feature list ------------------------------------------------------------------------


def test_the_feature_list_is_derived_from_the_specs() -> None:
    assert len(set(MODEL_FEATURES)) == len(MODEL_FEATURES)
    numeric = [f.name for f in FEATURES if f.dtype in (Dtype.INT, Dtype.FLOAT, Dtype.BOOL)]
    coded = [f"{f.name}_code" for f in FEATURES if f.categories]
    assert [n for n in MODEL_FEATURES if n in numeric] == numeric  # every one, in spec order
    assert set(coded) <= set(MODEL_FEATURES)
    for dropped in ("fl_country", "job_category", "job_posted_at", "fl_skills", "job_skills"):
        assert dropped not in MODEL_FEATURES
    assert all(s in FEATURES_BY_NAME for f in MODEL_FEATURE_SPECS for s in f.sources)
    assert list(STORE_FEATURES) == [f.name for f in FEATURES if f.name in STORE_FEATURES]


def test_streaming_features_are_those_reading_a_windowed_feature() -> None:
    windowed = {f.name for f in FEATURES if f.windowed}
    expected = {
        f.name for f in MODEL_FEATURE_SPECS if any(source in windowed for source in f.sources)
    }
    assert set(STREAMING_FEATURES) == expected
    assert windowed <= set(STREAMING_FEATURES)  # every windowed count and mean, as itself
    assert "bid_to_fl_bid_avg_7d" in STREAMING_FEATURES
    assert "bid_to_budget_max" not in STREAMING_FEATURES


# --- values ----------------------------------------------------------------------------------


def test_request_features_by_hand() -> None:
    proposals = [
        RequestProposal(
            30.0,
            "I use PYTHON and docker daily",
            {"fl_skills": ["Python", "go"], "fl_hourly_rate": 25.0, "fl_bid_avg_7d": 60.0},
        ),
        RequestProposal(30.0, "hello", {"fl_skills": [], "fl_top_rated": True}),
        RequestProposal(90.0, "", {}),
    ]
    m = request_matrix(JOB, proposals)
    assert m.shape == (3, len(MODEL_FEATURES)) and m.dtype == np.float64
    assert value(m, 0, "bid_to_budget_max") == 0.5
    assert [value(m, i, "bid_within_budget") for i in range(3)] == [1.0, 1.0, 0.0]
    assert value(m, 0, "bid_to_hourly_rate") == 1.2
    assert value(m, 0, "bid_to_fl_bid_avg_7d") == 0.5
    assert value(m, 0, "bid_to_job_bid_avg_24h") == 0.6
    # two others each: p0 ties p1 (half) and beats nobody; p2 is above both
    assert [value(m, i, "bid_share_lower_in_request") for i in range(3)] == [0.25, 0.25, 1.0]
    assert [value(m, i, "bid_to_request_median") for i in range(3)] == [1.0, 1.0, 3.0]
    assert value(m, 0, "skill_matches") == 1.0  # skills match exactly: "Python"
    assert value(m, 0, "skill_overlap") == 1 / 3
    assert value(m, 1, "skill_overlap") == 0.0
    assert math.isnan(value(m, 2, "skill_overlap"))  # unknown freelancer: missing, not 0
    assert value(m, 0, "cover_letter_job_skills") == 2.0  # python and docker, any case
    assert [value(m, i, "cover_letter_chars") for i in range(3)] == [29.0, 5.0, 0.0]
    assert value(m, 0, "job_budget_type_code") == 0.0
    assert value(m, 0, "job_experience_level_code") == 2.0
    assert value(m, 1, "fl_top_rated") == 1.0
    assert math.isnan(value(m, 2, "fl_top_rated"))
    assert value(m, 2, "job_proposals_24h") == 9.0  # job values are the same for every row
    assert value(m, 2, "client_hires_30d") == 1.0


def test_missing_job_and_unknown_categories_are_missing() -> None:
    job = {"job_budget_type": "barter", "job_experience_level": None}
    m = request_matrix(job, [RequestProposal(10.0, "python", {})])
    for name in (
        "job_budget_type_code",
        "job_experience_level_code",
        "bid_to_budget_max",
        "bid_within_budget",
        "skill_overlap",
        "cover_letter_job_skills",
        "bid_share_lower_in_request",  # no other proposal to compare with
    ):
        assert math.isnan(value(m, 0, name)), name
    assert value(m, 0, "bid_to_request_median") == 1.0


def test_zero_denominators_give_missing_not_infinity() -> None:
    job = {"job_budget_min": 0.0, "job_budget_max": 0.0, "job_skills": []}
    m = request_matrix(job, [RequestProposal(10.0, "x", {"fl_hourly_rate": 0.0})])
    assert np.isnan(m[0, [COLUMN["bid_to_budget_max"], COLUMN["bid_to_hourly_rate"]]]).all()
    assert math.isnan(value(m, 0, "skill_overlap"))  # a job with no skills
    assert value(m, 0, "cover_letter_job_skills") == 0.0
    assert not np.isinf(m).any()


# --- properties ------------------------------------------------------------------------------

proposal = st.builds(
    RequestProposal,
    bid_amount=st.floats(0.5, 5000, allow_nan=False).map(lambda x: round(x, 2)),
    cover_letter=st.lists(st.sampled_from([*SKILLS, "hi", "I", "know", " "]), max_size=8).map(
        " ".join
    ),
    freelancer=st.fixed_dictionaries(
        {},
        optional={
            "fl_skills": st.lists(st.sampled_from(SKILLS), unique=True, max_size=4),
            "fl_hourly_rate": st.floats(0, 200),
            "fl_bid_avg_7d": st.none() | st.floats(1, 500),
            "fl_proposals_1h": st.integers(0, 20),
            "fl_top_rated": st.booleans(),
            "fl_job_success": st.none() | st.floats(0, 100),
        },
    ),
)
proposals = st.lists(proposal, min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(proposals, st.randoms(use_true_random=False))
def test_rows_follow_their_proposals_whatever_the_order(
    request_proposals: list[RequestProposal], rng: Any
) -> None:
    order = list(range(len(request_proposals)))
    rng.shuffle(order)
    shuffled = [request_proposals[i] for i in order]
    plain = request_matrix(JOB, request_proposals)
    np.testing.assert_array_equal(request_matrix(JOB, shuffled), plain[order])


@settings(max_examples=25, deadline=None)
@given(proposals, proposals)
def test_a_request_does_not_see_the_other_requests_in_a_batch(
    first: list[RequestProposal], second: list[RequestProposal]
) -> None:
    """Training builds every job's rows in one frame; serving builds one request: same rows."""
    other_job = {**JOB, "job_budget_max": 100.0, "job_skills": ["go"]}
    frames = [
        request_frame(JOB, first).with_columns(pl.lit("a").alias(REQUEST_COLUMN)),
        request_frame(other_job, second).with_columns(pl.lit("b").alias(REQUEST_COLUMN)),
    ]
    batch = model_matrix(pl.concat(frames))
    alone = np.vstack([request_matrix(JOB, first), request_matrix(other_job, second)])
    # polars may vectorise a division differently over a longer column: at most an ulp apart
    np.testing.assert_allclose(batch, alone, rtol=1e-15, atol=0)


@settings(max_examples=25, deadline=None)
@given(proposals)
def test_pure_same_input_same_output_input_untouched(
    request_proposals: list[RequestProposal],
) -> None:
    frame = request_frame(JOB, request_proposals)
    before = frame.clone()
    out = model_frame(frame)
    assert out.columns == list(MODEL_FEATURES)
    assert all(dtype == pl.Float64 for dtype in out.dtypes)
    assert frame.equals(before)
    assert out.equals(model_frame(frame))
    shares = out["bid_share_lower_in_request"].drop_nulls()
    assert ((shares >= 0) & (shares <= 1)).all()
    overlap = out["skill_overlap"].drop_nulls()
    assert ((overlap >= 0) & (overlap <= 1)).all()


def test_request_frame_has_the_input_schema_and_freelancer_values_per_row() -> None:
    frame = request_frame(JOB, [RequestProposal(1.0, "a", {"fl_hourly_rate": 3.0})])
    assert frame.schema == pl.Schema(INPUT_SCHEMA)
    freelancer_columns = [n for n in STORE_FEATURES if FEATURES_BY_NAME[n].entity == FREELANCER]
    assert frame.select(freelancer_columns).null_count().row(0) == tuple(
        0 if n == "fl_hourly_rate" else 1 for n in freelancer_columns
    )


def test_model_frame_names_missing_input_columns() -> None:
    frame = request_frame(JOB, [RequestProposal(1.0, "a", {})]).drop("job_skills")
    try:
        model_frame(frame)
    except ValueError as error:
        assert "job_skills" in str(error)
    else:
        raise AssertionError("a missing column must be named")


# --- the one implementation against the definitions ------------------------------------------


def _number(value: Any) -> float | None:
    """A store value as the model reads a number: None (or NaN) missing."""
    return None if value is None or value != value else float(value)


def _ratio(bid: float, value: float | None) -> float | None:
    if value is None or not value > 0:
        return None
    with np.errstate(over="ignore"):  # inf where it overflows, as numpy
        return float(np.float64(bid) / np.float64(value))


def definition(job: dict[str, Any], proposals: list[RequestProposal]) -> list[list[float | None]]:
    """The model's input for one request, written out from the definitions (features.ranking's
    docstring and `REQUEST_FEATURES`), one proposal at a time; None where missing."""
    bids = [p.bid_amount for p in proposals]
    median = statistics.median(bids)
    job_skills = job.get("job_skills")
    rows = []
    for n, p in enumerate(proposals):
        fl, bid, letter = p.freelancer, p.bid_amount, p.cover_letter
        value: dict[str, float | None] = {}
        for feature in STORE_MODEL_FEATURES:
            (source,) = feature.sources
            spec = FEATURES_BY_NAME[source]
            raw = (fl if spec.entity == FREELANCER else job).get(source)
            if spec.categories:
                raw = spec.categories.index(raw) if raw in spec.categories else None
            value[feature.name] = _number(raw)
        low, high = _number(job.get("job_budget_min")), _number(job.get("job_budget_max"))
        value["bid_to_budget_max"] = _ratio(bid, high)
        value["bid_within_budget"] = (
            None if low is None or high is None else float(low <= bid <= high)
        )
        value["bid_to_hourly_rate"] = _ratio(bid, _number(fl.get("fl_hourly_rate")))
        value["bid_to_fl_bid_avg_7d"] = _ratio(bid, _number(fl.get("fl_bid_avg_7d")))
        value["bid_to_job_bid_avg_24h"] = _ratio(bid, _number(job.get("job_bid_avg_24h")))
        others = bids[:n] + bids[n + 1 :]
        lower = sum(other < bid for other in others)
        ties = sum(other == bid for other in others)
        value["bid_share_lower_in_request"] = (lower + ties / 2) / len(others) if others else None
        value["bid_to_request_median"] = _ratio(bid, median)
        fl_skills = fl.get("fl_skills")
        if job_skills is None:
            matches = named = None
        else:
            matches = None if fl_skills is None else len(set(job_skills) & set(fl_skills))
            searched = {skill.lower() for skill in job_skills} - {""}
            named = sum(skill in letter.lower() for skill in searched)
        value["skill_matches"] = _number(matches)
        value["skill_overlap"] = (
            matches / len(job_skills) if matches is not None and job_skills else None
        )
        value["cover_letter_chars"] = float(len(letter))
        value["cover_letter_job_skills"] = _number(named)
        rows.append([value[name] for name in MODEL_FEATURES])
    return rows


def assert_is_definition(matrix: np.ndarray, expected: list[list[float | None]]) -> None:
    """Missing where the definition is, and the same float, bit for bit, elsewhere."""
    assert matrix.shape == (len(expected), len(MODEL_FEATURES)) and matrix.dtype == np.float64
    for name, column in COLUMN.items():
        wanted = [row[column] for row in expected]
        got = matrix[:, column]
        assert np.isnan(got).tolist() == [w is None for w in wanted], name
        known = [i for i, w in enumerate(wanted) if w is not None]
        assert got[known].view(np.uint64).tolist() == (
            np.array([wanted[i] for i in known], dtype=np.float64).view(np.uint64).tolist()
        ), name


# Letters whose lower case is tricky: final sigma, dotted I (two code points lower-cased), title
# case, letters outside Python 3.11's Unicode tables.
ODD = ["Σ", "ΑΣ", "ΟΔΟΣ", "σ", "ς", "İ", "i̇", "ß", "ǅ", "ǆ", "Ⅻ", "é", "É", "🙂", ""]
ODD += ["\ua7cb", "ɤ", "\U00010d50", "\U00010d70"]
skill = st.sampled_from([*SKILLS, "Python", "PYTHON", *ODD]) | st.text(max_size=4)
floats = st.none() | st.floats() | st.sampled_from([0.0, -0.0, -5.0, 1e-310, 45.0])


def store_value(name: str) -> st.SearchStrategy[Any]:
    spec = FEATURES_BY_NAME[name]
    if spec.categories:
        return st.none() | st.sampled_from(spec.categories) | st.text(max_size=3)
    return {
        Dtype.INT: st.none() | st.integers(-(2**63), 2**63 - 1) | st.integers(0, 30),
        Dtype.FLOAT: floats,
        Dtype.BOOL: st.none() | st.booleans(),
        Dtype.STRINGS: st.none()
        | st.lists(skill, max_size=5)
        | st.lists(skill, max_size=5).map(tuple),
    }[spec.dtype]


def entity_values(freelancer: bool) -> st.SearchStrategy[dict[str, Any]]:
    names = [n for n in STORE_FEATURES if (FEATURES_BY_NAME[n].entity == FREELANCER) == freelancer]
    return st.just({}) | st.fixed_dictionaries({}, optional={n: store_value(n) for n in names})


any_proposal = st.builds(
    RequestProposal,
    bid_amount=st.sampled_from([10.0, 20.0, 45.5, 0.01])
    | st.floats(1e-300, 1e12, allow_nan=False, allow_infinity=False),
    cover_letter=st.text(max_size=20)
    | st.lists(skill | st.sampled_from(["I", "know", " "]), max_size=8).map(" ".join),
    freelancer=entity_values(freelancer=True),
)


any_job = entity_values(freelancer=False)
any_request = st.lists(any_proposal, min_size=1, max_size=9)


@settings(max_examples=400, deadline=None)
@given(any_job, any_request)
@example(  # a NaN lower bound alone: within is missing
    {"job_budget_min": math.nan}, [RequestProposal(5.0, "", {}), RequestProposal(9.0, "", {})]
)
@example(
    {"job_budget_min": 6.0, "job_budget_max": math.nan},
    [RequestProposal(5.0, "", {}), RequestProposal(9.0, "", {})],
)
@example(  # skills with separators and empty ones
    {"job_skills": ["a\0b", "\0", "b", ""]},
    [
        RequestProposal(5.0, "xa\0by", {"fl_skills": ["b", "b"]}),
        RequestProposal(5.0, "\0\0", {"fl_skills": []}),
        RequestProposal(5.0, "", {}),
    ],
)
@example(  # lower cases longer than their letters, and a final sigma
    {"job_skills": ["i\u0307", "ς", "ΟΔΟΣ"]}, [RequestProposal(5.0, "İ οδος", {})]
)
def test_one_request_is_the_definition(
    job: dict[str, Any], request_proposals: list[RequestProposal]
) -> None:
    """Serving's form (`request_matrix`, one request) is the definition, bit for bit."""
    fast = request_matrix(job, request_proposals)
    assert fast.flags.c_contiguous
    assert_is_definition(fast, definition(job, request_proposals))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(any_job, any_request), min_size=1, max_size=4), st.randoms())
def test_a_whole_set_is_the_definition_of_each_request(
    requests: list[tuple[dict[str, Any], list[RequestProposal]]], rng: Any
) -> None:
    """Training's form (`model_frame` over many requests, their rows interleaved) is the
    definition of each request, bit for bit."""
    frames = [
        request_frame(job, proposals).with_columns(pl.lit(f"r{k}").alias(REQUEST_COLUMN))
        for k, (job, proposals) in enumerate(requests)
    ]
    whole = pl.concat(frames)
    order = list(range(whole.height))
    rng.shuffle(order)
    shuffled = whole[order]
    expected = [row for job, proposals in requests for row in definition(job, proposals)]
    assert_is_definition(model_matrix(shuffled), [expected[i] for i in order])
