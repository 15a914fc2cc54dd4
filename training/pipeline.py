"""`bestmatch train`: training set → ranker and ablation → evaluation → MLflow run and registry.

`train(settings, events=...)` runs the four steps below in order and returns a `TrainReport`;
each step is a function of its own, so a notebook or a test can run, inspect or vary one.

1. `build_training_set` (see `training.dataset`): proposals of the events file, labels within the
   horizon, every feature as of each proposal's ranking moment, split by day.
2. `fit_models`: the LightGBM lambdarank ranker on every model feature, and the ablation, the same
   ranker without the features that read a windowed (streaming) feature.
3. `evaluate_models`: NDCG@5, NDCG@10 and MAP on the test days for both and for the baselines;
   NDCG@10 by slice; the plots.
4. `publish`: one MLflow run (params, metrics, plots, training-set summary, feature list), the
   booster registered as a new version of `bestmatch-ranker`, and the alias decision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from features.ranking import MODEL_FEATURES, REQUEST_COLUMN, STREAMING_FEATURES, model_frame
from features.settings import Settings
from training import registry
from training.dataset import TrainingSet, build_training_set
from training.evaluation import (
    METRICS,
    baseline_scores,
    evaluation_table,
    group_sizes,
    slice_table,
)
from training.plots import importance_figure, score_figure, slices_figure
from training.proposals import DEFAULT_HORIZON, DEFAULT_WINDOW, GROUP_COLUMN, LABEL_COLUMN
from training.ranker import FittedRanker, RankerParams, fit_ranker

TRAIN_STAGES = (
    "building the training set",
    "training the ranker and the ablation",
    "evaluating on the test days",
    "logging to MLflow",
)
RANKER = "ranker"
ABLATION = "ranker_no_streaming"
MODEL_LABELS = {
    RANKER: "LightGBM ranker",
    ABLATION: "ranker without streaming features",
    "newest_first": "newest first (default sort)",
    "lowest_bid": "lowest bid first",
    "random": "random",
}
ABLATION_FEATURES: tuple[str, ...] = tuple(f for f in MODEL_FEATURES if f not in STREAMING_FEATURES)


def model_inputs(frame: pl.DataFrame) -> pl.DataFrame:
    """Training-set rows as the model's input frame: requests are jobs."""
    return model_frame(frame.with_columns(pl.col(GROUP_COLUMN).alias(REQUEST_COLUMN)))


def fit_models(
    training_set: TrainingSet, params: RankerParams
) -> tuple[FittedRanker, FittedRanker]:
    """The ranker on every model feature, and the ablation without the streaming ones."""
    parts = [training_set.split("train"), training_set.split("valid")]
    inputs = [model_inputs(part) for part in parts]
    labels = [part[LABEL_COLUMN].to_numpy() for part in parts]
    sizes = [group_sizes(part) for part in parts]

    def fit(features: tuple[str, ...]) -> FittedRanker:
        train, valid = (
            (x.select(features).to_numpy(), y, g)
            for x, y, g in zip(inputs, labels, sizes, strict=True)
        )
        return fit_ranker(features, train, valid, params)

    return fit(MODEL_FEATURES), fit(ABLATION_FEATURES)


@dataclass(frozen=True)
class Evaluation:
    """Test-day metrics of every model, NDCG@10 by slice, the ranker's scores and the plots."""

    table: pl.DataFrame
    slices: pl.DataFrame
    inputs: pl.DataFrame  # the test set's model inputs (every model feature)
    scores: dict[str, np.ndarray]
    figures: dict[str, Figure] = field(default_factory=dict)

    def metric(self, model: str, name: str) -> float:
        return float(self.table.filter(pl.col("model") == model)[name].item())


def evaluate_models(
    training_set: TrainingSet, ranker: FittedRanker, ablation: FittedRanker, seed: int
) -> Evaluation:
    test = training_set.split("test")
    inputs = model_inputs(test)
    scores = {
        RANKER: ranker.predict(inputs.select(ranker.features).to_numpy()),
        ABLATION: ablation.predict(inputs.select(ablation.features).to_numpy()),
        **baseline_scores(test, seed),
    }
    table = evaluation_table(test, scores)
    slices = slice_table(test, scores)
    figures = {
        "feature_importance": importance_figure(ranker.importance()),
        "ndcg_by_slice": slices_figure(slices),
        "score_by_label": score_figure(test, scores[RANKER]),
    }
    return Evaluation(table, slices, inputs, scores, figures)


def score_champion(
    client: Any, training_set: TrainingSet, evaluation: Evaluation
) -> registry.Champion | None:
    """The current champion's NDCG@10 on this test set (None when there is no champion)."""
    version = registry.current_champion(client)
    if version is None:
        return None
    model = registry.load_ranker(version)
    scores = registry.score_with(model, evaluation.inputs)
    if scores is None:
        missing = sorted(set(registry.model_features(model)) - set(evaluation.inputs.columns))
        return registry.Champion(version, None, f"it needs features {missing or '(none listed)'}")
    test = training_set.split("test")
    table = evaluation_table(test, {"champion": scores})
    return registry.Champion(version, float(table[registry.COMPARE_METRIC].item()))


def _metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def publish(
    settings: Settings,
    training_set: TrainingSet,
    ranker: FittedRanker,
    evaluation: Evaluation,
    *,
    extra_params: dict[str, Any] | None = None,
) -> tuple[str, registry.Promotion]:
    """Log the run, register the ranker, move or keep the champion. Returns (run id, decision)."""
    import mlflow

    client = registry.tracking_client(settings)
    champion = score_champion(client, training_set, evaluation)
    summary = training_set.summary()
    with mlflow.start_run(experiment_id=registry.experiment_id(client)) as run:
        mlflow.log_params(
            registry.as_params(
                {
                    **ranker.params.lightgbm(),
                    "max_rounds": ranker.params.max_rounds,
                    "early_stopping_rounds": ranker.params.early_stopping_rounds,
                    "best_iteration": ranker.best_iteration,
                    "horizon_hours": summary["horizon_hours"],
                    "n_features": len(ranker.features),
                    "features": ",".join(ranker.features),
                    **{f"{s}_days": summary[f"{s}_days"] for s in ("train", "valid", "test")},
                    **(extra_params or {}),
                }
            )
        )
        for row in evaluation.table.iter_rows(named=True):
            prefix = "test" if row["model"] == RANKER else f"test_{row['model']}"
            mlflow.log_metrics({f"{prefix}_{_metric_key(m)}": row[m] for m in METRICS})
        mlflow.log_metric("valid_ndcg_at_10", ranker.valid_ndcg_at_10)
        mlflow.log_metrics(
            {f"set_{k}": float(v) for k, v in summary.items() if isinstance(v, int | float)}
        )
        mlflow.log_dict(summary, "training_set_summary.json")
        mlflow.log_dict({"features": list(ranker.features)}, "features.json")
        mlflow.log_text(evaluation.slices.write_csv(), "evaluation/ndcg_by_slice.csv")
        mlflow.log_text(evaluation.table.write_csv(), "evaluation/test_metrics.csv")
        registry.log_figures(evaluation.figures)
        metadata = {
            "streaming_features": [f for f in ranker.features if f in STREAMING_FEATURES],
            "label_horizon_hours": summary["horizon_hours"],
            "test_days": summary["test_days"],
        }
        version = registry.log_ranker(
            ranker.booster, ranker.features, evaluation.inputs, metadata=metadata
        )
        new_score = evaluation.metric(RANKER, registry.COMPARE_METRIC)
        promotion = registry.promote(client, version, new_score, champion)
        mlflow.set_tags({"alias": promotion.alias, "promotion": promotion.reason})
        return run.info.run_id, promotion


@dataclass(frozen=True)
class TrainReport:
    """What `train` did: the evaluation table, the training set, the run and the alias decision."""

    run_id: str
    tracking_uri: str
    version: str
    alias: str
    promoted: bool
    reason: str
    evaluation: pl.DataFrame  # model, ndcg@5, ndcg@10, map on the test days
    summary: dict[str, Any]
    best_iteration: int
    timings: dict[str, float]
    model_name: str = registry.MODEL_NAME

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a two-column table: set, timings, run and decision."""
        s = self.summary
        labels = ", ".join(
            f"{k.removeprefix('label_')} {v:,}" for k, v in s.items() if k.startswith("label_")
        )
        return [
            ("proposals (jobs)", f"{s['proposals']:,} ({s['jobs']:,})"),
            ("labels", labels),
            ("label horizon", f"{s['horizon_hours']:g} h"),
            *(
                (f"{name} days", f"{s[f'{name}_days']}: {s[f'{name}_proposals']:,} proposals")
                for name in ("train", "valid", "test")
            ),
            ("jobs left out (labels incomplete)", f"{s['dropped_jobs_incomplete_labels']:,}"),
            ("best iteration", str(self.best_iteration)),
            *((f"{stage} (s)", f"{seconds:.1f}") for stage, seconds in self.timings.items()),
            ("MLflow run", f"{self.run_id} ({self.tracking_uri})"),
            ("registered", f"{self.model_name} v{self.version} → @{self.alias}"),
            ("why", self.reason),
        ]

    def evaluation_rows(self) -> tuple[list[str], list[list[str]]]:
        """The evaluation table: header and rows (model, NDCG@5, NDCG@10, MAP)."""
        header = ["model", *(m.upper() for m in METRICS)]
        rows = [
            [MODEL_LABELS.get(row["model"], row["model"]), *(f"{row[m]:.4f}" for m in METRICS)]
            for row in self.evaluation.iter_rows(named=True)
        ]
        return header, rows

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "model": f"{self.model_name} v{self.version}",
                "alias": self.alias,
                "reason": self.reason,
                "evaluation": self.evaluation.to_dicts(),
                "summary": self.summary,
                "timings": self.timings,
            },
            default=str,
        )


def train(
    settings: Settings,
    *,
    events: Path,
    seed: int = 1,
    horizon: timedelta = DEFAULT_HORIZON,
    window: timedelta = DEFAULT_WINDOW,
    params: RankerParams | None = None,
    progress: Callable[[float], None] | None = None,
) -> TrainReport:
    """Build the training set, train, evaluate, log and register; `progress(stages_done)`."""
    params = params or RankerParams(seed=seed)
    advance = progress or (lambda _done: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    training_set = build_training_set(
        settings, events, horizon=horizon, window=window, clock=time.perf_counter
    )
    timings.update(training_set.timings)
    advance(1)
    mark = time.perf_counter()
    ranker, ablation = fit_models(training_set, params)
    timings["training_s"] = time.perf_counter() - mark
    advance(2)
    mark = time.perf_counter()
    evaluation = evaluate_models(training_set, ranker, ablation, seed)
    timings["evaluation_s"] = time.perf_counter() - mark
    advance(3)
    mark = time.perf_counter()
    run_id, promotion = publish(
        settings, training_set, ranker, evaluation, extra_params={"seed": seed}
    )
    timings["mlflow_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started
    advance(4)
    return TrainReport(
        run_id=run_id,
        tracking_uri=settings.tracking_uri,
        version=promotion.version,
        alias=promotion.alias,
        promoted=promotion.promoted,
        reason=promotion.reason,
        evaluation=evaluation.table,
        summary=training_set.summary(),
        best_iteration=ranker.best_iteration,
        timings=timings,
    )
