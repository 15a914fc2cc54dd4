"""Scoring one request: store values + proposals → the model's input → booster → ranked answer.

The model's input comes from `features.ranking.input_matrix`, the one implementation training
uses too (`serving.inputs.request_input` feeds it each freelancer's columns as the store's memo
computed them once, and the job's), so serving cannot compute a feature differently. Missing
entities give missing values (NaN), which the model was trained with.

Order: by score, highest first; equal scores keep request order. `rank` is 1..n in that order.

`best_match`: the top k of n proposals, k = max(1, min(best_match_max, round_half_up(share * n)))
(defaults: 10 %, at least one, at most 10). A share of the list rather than a score threshold,
because lambdarank scores are only comparable within one request, not across jobs or models.

`explain`: per proposal, the `explain_top` features with the largest |contribution| (LightGBM's
`pred_contrib`, SHAP values that sum with the bias to the score), each with its value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from features.ranking import MODEL_FEATURES
from serving.inputs import UNKNOWN, FreelancerInput, freelancer_input, request_input
from serving.model import LoadedRanker
from serving.schemas import RankRequest
from serving.store import RequestFeatures, Stamped


def best_match_count(n: int, share: float, cap: int) -> int:
    return max(1, min(cap, math.floor(share * n + 0.5)))


def job_values(found: RequestFeatures) -> dict[str, Any]:
    """The job's and its client's store values by feature name (absent: not there)."""
    values: dict[str, Any] = {}
    for stamped in (found.job, found.client):
        if stamped is not None:
            values.update(stamped.values)
    return values


def freelancer_values(found: RequestFeatures) -> dict[str, Mapping[str, Any]]:
    return {fid: s.values if s is not None else {} for fid, s in found.freelancers.items()}


def _columns(stamped: Stamped | None) -> FreelancerInput:
    """A freelancer's part of the model's input: kept with the decoded entity by the store's
    memo."""
    if stamped is None:
        return UNKNOWN
    return stamped.columns if stamped.columns is not None else freelancer_input(stamped.values)


@dataclass(frozen=True)
class Ranking:
    """One scored request: the answer's bytes, and what the serving log keeps of it."""

    body: bytes
    job: dict[str, Any]
    scores: np.ndarray
    ranks: np.ndarray  # rank of each proposal, in request order


def rank_proposals(
    model: LoadedRanker,
    request: RankRequest,
    found: RequestFeatures,
    *,
    best_share: float = 0.1,
    best_max: int = 10,
    explain_top: int = 3,
) -> Ranking:
    job = job_values(found)
    columns = {fid: _columns(s) for fid, s in found.freelancers.items()}
    proposals = request.proposals
    matrix = request_input(
        job,
        [columns[p.freelancer_id] for p in proposals],
        [p.bid_amount for p in proposals],
        [p.cover_letter for p in proposals],
    )
    scores = model.predict(matrix)
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    best = best_match_count(len(order), best_share, best_max)
    reasons = explanations(model, matrix, explain_top) if request.explain else None
    ordered = order.tolist()
    ranked = [  # dicts in key order: orjson writes each as the `RankedProposal` object
        {
            "proposal_id": p.proposal_id,
            "freelancer_id": p.freelancer_id,
            "rank": rank,
            "score": score,
            "best_match": rank <= best,
            "explanation": None if reasons is None else reasons[i],
        }
        for rank, i, p, score in zip(
            range(1, len(ordered) + 1),
            ordered,
            map(proposals.__getitem__, ordered),
            scores[order].tolist(),
            strict=True,
        )
    ]
    answer = {
        "job_id": request.job_id,
        "model": {"name": model.name, "version": model.version},
        "ranked": ranked,
        "degraded": found.degraded,
        "missing": {
            "job": found.job is None,
            "client": None if request.client_id is None else found.client is None,
            "freelancers": [f for f, s in found.freelancers.items() if s is None],
        },
    }
    return Ranking(orjson.dumps(answer), job, scores, ranks)


def explanations(model: LoadedRanker, matrix: np.ndarray, top: int) -> list[list[dict[str, Any]]]:
    """Each row's `top` features by |contribution|: name, value (None if missing), contribution."""
    contrib = model.contributions(matrix)[:, : len(MODEL_FEATURES)]
    picks = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
    out = []
    for row, columns in enumerate(picks.tolist()):
        reasons = []
        for j in columns:
            value = float(matrix[row, j])
            reasons.append(
                {
                    "feature": MODEL_FEATURES[j],
                    "value": None if math.isnan(value) else value,
                    "contribution": float(contrib[row, j]),
                }
            )
        out.append(reasons)
    return out
