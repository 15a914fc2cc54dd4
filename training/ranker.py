"""The LightGBM lambdarank ranker: grouped by job, early stopping on validation NDCG@10.

Reproducible: the same training set and seed give the same booster, bit for bit — LightGBM's
`deterministic` mode, every seed derived from one, row-wise histograms and a fixed thread count.
Another thread count gives another booster (float sums in another order; checked), so the count is
a parameter, not the machine's core count, and it is one: the same model on every machine, and on
a small shared machine far faster than OpenMP threads fighting for cores (measured on two busy
cores: 7 s with one thread, 98 s with two, for 136k proposals). The sets are small enough.
The returned booster holds only the trees up to the best iteration, so every later use of it (in
memory, from MLflow, in serving) scores the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

NUM_THREADS = 1  # fixed, not the machine's core count: see the module docstring


@dataclass(frozen=True, slots=True)
class RankerParams:
    """Hyper-parameters; `lightgbm()` turns them into LightGBM's parameter dict."""

    seed: int = 1
    learning_rate: float = 0.1
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    max_rounds: int = 500
    early_stopping_rounds: int = 30
    num_threads: int = NUM_THREADS

    def lightgbm(self) -> dict[str, Any]:
        params = asdict(self)
        for name in ("max_rounds", "early_stopping_rounds"):
            params.pop(name)
        return {
            **params,
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10, 5],  # the first one drives early stopping
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }


@dataclass(frozen=True)
class FittedRanker:
    booster: lgb.Booster
    features: tuple[str, ...]
    best_iteration: int
    valid_ndcg_at_10: float
    params: RankerParams

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(matrix), dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Total gain per feature, in feature order."""
        gains = self.booster.feature_importance(importance_type="gain")
        return dict(zip(self.features, map(float, gains), strict=True))


def fit_ranker(
    features: Sequence[str],
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    params: RankerParams,
) -> FittedRanker:
    """Train on `(matrix, labels, group sizes)`, stop early on the validation set's NDCG@10."""
    names = list(features)
    train_set = lgb.Dataset(
        train[0], label=train[1], group=train[2], feature_name=names, free_raw_data=False
    )
    valid_set = lgb.Dataset(
        valid[0], label=valid[1], group=valid[2], feature_name=names, reference=train_set
    )
    booster = lgb.train(
        params.lightgbm(),
        train_set,
        num_boost_round=params.max_rounds,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[
            lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    score = float(booster.best_score["valid"]["ndcg@10"]) if booster.best_score else float("nan")
    trimmed = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return FittedRanker(trimmed, tuple(names), best, score, params)
