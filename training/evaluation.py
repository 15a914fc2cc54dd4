"""Ranking metrics, baselines and slices, on groups of proposals (one group per job).

Metrics, per job, then averaged over jobs:

- NDCG@k with gain `2^label - 1` and discount `1 / log2(rank + 1)`, over jobs with at least one
  labelled proposal (a job nobody acted on has no ideal ranking and says nothing about order);
- MAP: average precision with "relevant" = label >= 1 (shortlisted or better), over jobs with at
  least one relevant proposal.

Scores that tie keep the rows' order (the training set's: ranking moment, then proposal id), so a
metric never depends on an unstable sort.

Baselines: `newest_first` (the marketplace's default sort), `lowest_bid` (cheapest first) and
`random` (seeded).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from features.offline_layout import TIMESTAMP_COLUMN
from training.proposals import GROUP_COLUMN, LABEL_COLUMN

METRICS = ("ndcg@5", "ndcg@10", "map")
SIZE_BUCKETS = ((1, 15), (16, 30), (31, 60), (61, 1_000_000))


def per_group_metrics(
    sizes: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> dict[str, np.ndarray]:
    """Each metric of `METRICS` per group (NaN where undefined); groups are contiguous runs."""
    sizes = np.asarray(sizes, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n, groups = labels.size, sizes.size
    if sizes.sum() != n or scores.size != n:
        msg = f"sizes sum to {sizes.sum()}, labels {n}, scores {scores.size}: must be equal"
        raise ValueError(msg)
    group = np.repeat(np.arange(groups), sizes)
    starts = np.cumsum(sizes) - sizes
    rank = np.arange(n) - np.repeat(starts, sizes)  # 0-based rank at each sorted position
    row = np.arange(n)
    ranked = labels[np.lexsort((row, -scores, group))]
    ideal = labels[np.lexsort((row, -labels, group))]
    discount = 1.0 / np.log2(rank + 2.0)
    out: dict[str, np.ndarray] = {}
    for k in (5, 10):
        top = rank < k
        dcg = np.bincount(group, (np.exp2(ranked) - 1) * discount * top, groups)
        idcg = np.bincount(group, (np.exp2(ideal) - 1) * discount * top, groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"ndcg@{k}"] = np.where(idcg > 0, dcg / idcg, np.nan)
    relevant = (ranked >= 1).astype(np.float64)
    hits = np.cumsum(relevant)
    before = np.concatenate([[0.0], hits[starts[1:] - 1]]) if groups else np.zeros(0)
    hits_in_group = hits - np.repeat(before, sizes)
    precision_sum = np.bincount(group, relevant * hits_in_group / (rank + 1.0), groups)
    total_relevant = np.bincount(group, relevant, groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["map"] = np.where(total_relevant > 0, precision_sum / total_relevant, np.nan)
    return out


def ranking_metrics(sizes: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """`METRICS` averaged over the groups where each is defined."""
    per_group = per_group_metrics(sizes, labels, scores)
    return {
        name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        for name, values in per_group.items()
    }


def baseline_scores(frame: pl.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Scores of the baselines for training-set rows: higher ranks first."""
    moment = frame[TIMESTAMP_COLUMN].dt.epoch("us").to_numpy().astype(np.float64)
    return {
        "newest_first": moment,
        "lowest_bid": -frame["bid_amount"].to_numpy().astype(np.float64),
        "random": np.random.default_rng(seed).random(frame.height),
    }


def group_sizes(frame: pl.DataFrame) -> np.ndarray:
    """Sizes of the contiguous job groups, in row order (what LightGBM's `group` wants)."""
    runs = frame.select(pl.col(GROUP_COLUMN).rle()).unnest(GROUP_COLUMN)
    return runs["len"].to_numpy().astype(np.int64)


def evaluation_table(frame: pl.DataFrame, scores: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """One row per model: `METRICS` on `frame`'s groups."""
    sizes = group_sizes(frame)
    labels = frame[LABEL_COLUMN].to_numpy()
    rows = [{"model": name, **ranking_metrics(sizes, labels, s)} for name, s in scores.items()]
    return pl.DataFrame(rows, schema={"model": pl.String, **dict.fromkeys(METRICS, pl.Float64)})


def _bucket(size: int) -> str:
    for low, high in SIZE_BUCKETS:
        if low <= size <= high:
            return f"{low}+" if high >= 1_000_000 else f"{low}-{high}"
    return "other"


def slice_table(frame: pl.DataFrame, scores: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """NDCG@10 per model by slice: job size (proposals per job) and budget type."""
    sizes = group_sizes(frame)
    labels = frame[LABEL_COLUMN].to_numpy()
    starts = np.cumsum(sizes) - sizes
    budget = frame["job_budget_type"].gather(starts).fill_null("unknown").to_list()
    slices = {
        "job size": [_bucket(int(s)) for s in sizes],
        "budget type": budget,
    }
    rows = []
    for name, s in scores.items():
        ndcg = per_group_metrics(sizes, labels, s)["ndcg@10"]
        for kind, values in slices.items():
            for value in sorted(set(values)):
                mask = np.array([v == value for v in values]) & np.isfinite(ndcg)
                if mask.any():
                    rows.append(
                        {
                            "model": name,
                            "slice": kind,
                            "value": value,
                            "jobs": int(mask.sum()),
                            "ndcg@10": float(ndcg[mask].mean()),
                        }
                    )
    return pl.DataFrame(rows)
