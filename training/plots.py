"""The evaluation's figures, as matplotlib `Figure`s drawn with the Agg canvas.

Figures are built with `matplotlib.figure.Figure`, never `pyplot`: no global figure registry, no
backend chosen at import, nothing left open. MLflow logs them with `log_figure`; a notebook
displays them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.proposals import LABEL_COLUMN, LABEL_GRADES

_GRADE_NAMES = {0: "none", **{grade: name for name, grade in LABEL_GRADES.items()}}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def importance_figure(importance: Mapping[str, float], *, top: int = 25) -> Figure:
    """Total gain per feature, largest at the top."""
    ranked = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:top]
    names = [name for name, _ in ranked][::-1]
    gains = [gain for _, gain in ranked][::-1]
    figure = _figure(8, 0.28 * len(names) + 1.2)
    axes = figure.add_subplot()
    axes.barh(names, gains, color="#3b75af")
    axes.set_xlabel("total gain")
    axes.set_title("Feature importance (gain)")
    return figure


def slices_figure(slices: pl.DataFrame) -> Figure:
    """NDCG@10 per slice (job size, budget type), one bar per model."""
    kinds = slices["slice"].unique(maintain_order=True).to_list()
    models = slices["model"].unique(maintain_order=True).to_list()
    figure = _figure(5.5 * len(kinds), 4)
    width = 0.8 / max(len(models), 1)
    for index, kind in enumerate(kinds):
        axes = figure.add_subplot(1, len(kinds), index + 1)
        part = slices.filter(pl.col("slice") == kind)
        values = part["value"].unique(maintain_order=True).to_list()
        jobs = dict(part.select("value", "jobs").unique("value").iter_rows())
        for m, model in enumerate(models):
            scores = dict(part.filter(pl.col("model") == model).select("value", "ndcg@10").rows())
            axes.bar(
                np.arange(len(values)) + m * width,
                [scores.get(v, np.nan) for v in values],
                width,
                label=model,
            )
        axes.set_xticks(np.arange(len(values)) + width * (len(models) - 1) / 2)
        axes.set_xticklabels([f"{v}\n({jobs[v]} jobs)" for v in values])
        axes.set_ylim(0, 1)
        axes.set_ylabel("NDCG@10")
        axes.set_title(f"NDCG@10 by {kind}")
    figure.axes[0].legend(fontsize="small")
    return figure


def score_figure(frame: pl.DataFrame, scores: np.ndarray) -> Figure:
    """The ranker's scores on the test set, one histogram per label grade (densities)."""
    labels = frame[LABEL_COLUMN].to_numpy()
    figure = _figure(7, 4)
    axes = figure.add_subplot()
    bins = (
        list(np.linspace(float(np.min(scores)), float(np.max(scores)), 50)) if scores.size else 10
    )
    for grade in sorted(_GRADE_NAMES):
        chosen = scores[labels == grade]
        if chosen.size:
            axes.hist(
                chosen,
                bins=bins,
                density=True,
                histtype="step",
                linewidth=1.5,
                label=f"{grade} {_GRADE_NAMES[grade]} ({chosen.size:,})",
            )
    axes.set_xlabel("ranker score")
    axes.set_ylabel("density")
    axes.set_title("Score distribution by label (test set)")
    axes.legend(fontsize="small")
    return figure
