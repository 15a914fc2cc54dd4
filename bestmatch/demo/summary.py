"""The demo's headline figures, as the terminal and the report show them."""

from __future__ import annotations

from typing import Any

import numpy as np


def percentile(values: list[float], p: float) -> float | None:
    return float(np.percentile(values, p)) if values else None


def ndcg(figures: dict[str, Any], model: str) -> float | None:
    """The model's NDCG@10 on the test days, from the figures' evaluation table."""
    for row in figures["training"]["evaluation"]:
        if row["model"] == model:
            return float(row["ndcg@10"])
    return None


def summary_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures, as the terminal and the report show them."""
    from training.pipeline import ABLATION, RANKER

    s, b, st, sv = figures["simulated"], figures["backfill"], figures["stream"], figures["serving"]
    c = figures["consistency"]
    baselines = [
        (row["model"], float(row["ndcg@10"]))
        for row in figures["training"]["evaluation"]
        if row["model"] not in (RANKER, ABLATION)
    ]
    best = max(baselines, key=lambda item: item[1]) if baselines else ("-", float("nan"))

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} ms"

    return [
        ("events simulated", f"{s['events']:,} ({s['jobs']:,} jobs)"),
        ("backfill", f"{b['events']:,} events, {b['events_per_s']:,.0f} events/s"),
        (
            "stream freshness (publish → Redis)",
            f"p50 {ms(st['freshness_p50_ms'])}, p99 {ms(st['freshness_p99_ms'])} "
            f"({st['sampled'] - st['unseen']} of {st['sampled']} samples)",
        ),
        ("NDCG@10 ranker", f"{ndcg(figures, RANKER):.4f}"),
        ("NDCG@10 without streaming features", f"{ndcg(figures, ABLATION):.4f}"),
        (f"NDCG@10 best baseline ({best[0]})", f"{best[1]:.4f}"),
        (
            "ranking latency (client side)",
            f"p50 {ms(sv['latency_p50_ms'])}, p99 {ms(sv['latency_p99_ms'])}, "
            f"{sv['requests_per_s']:,.0f} requests/s, "
            f"{sv['proposals_per_request_mean']:.0f} proposals/request",
        ),
        (
            "consistency (served vs offline)",
            f"{c['verdict']}: {c['totals']['mismatches']:,} mismatches, "
            f"{c['totals']['served_missing'] + c['totals']['offline_missing']:,} one-sided missing "
            f"in {c['totals']['rows']:,} entity rows ({c['totals']['stale']:,} stale)",
        ),
        ("wall time", f"{figures['wall_s']:.0f} s"),
    ]
