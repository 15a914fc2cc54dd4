"""End to end: `bestmatch demo`, small, from an empty lake to its report; the report's numbers are
checked against the stores, the events and each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import orjson
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from bestmatch.cli import app
from features.settings import Settings
from serving.serving_log import serving_log_uri
from tests.conftest import RedisServer
from tests.test_flow import changelog

runner = CliRunner()
DAY_US = 86_400 * 1_000_000


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> tuple[Settings, dict, str, str]:
    """One small demo for the module's tests: (settings, report.json, index.html, output)."""
    lake = tmp_path_factory.mktemp("demo-lake")
    url = redis_server.url.removesuffix("/0") + "/7"  # a database of its own
    settings = Settings(lake=str(lake), redis_url=url, _env_file=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
        patch.setenv("BESTMATCH_LAKE", settings.lake)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = runner.invoke(
            app, ["demo", "--days", "9", "--jobs-per-day", "25", "--requests", "40"]
        )
    assert result.exit_code == 0, result.output
    folder = lake / "demo" / "report"
    report = json.loads((folder / "report.json").read_text())
    return settings, report, (folder / "index.html").read_text(), result.output


def test_the_demo_ends_with_its_summary_and_report(demo: tuple[Settings, dict, str, str]) -> None:
    settings, report, page, output = demo
    assert "demo done" in output
    assert "report" in output.lower()
    folder = Path(settings.lake) / "demo" / "report"
    for name in ("evaluation", "freshness", "latency", "consistency"):
        png = (folder / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
    assert page.count("data:image/png;base64,") == 4


def test_every_event_went_through_a_flow(demo: tuple[Settings, dict, str, str]) -> None:
    settings, report, _, _ = demo
    simulated = report["simulated"]
    assert simulated["history_events"] + simulated["live_events"] == simulated["events"]
    assert report["backfill"]["events"] == simulated["history_events"]
    assert report["stream"]["events"] == simulated["live_events"]
    rows = changelog(settings)
    last_day = max(stamp for _, _, stamp, _ in rows) - DAY_US
    assert any(stamp > last_day for _, _, stamp, _ in rows)  # the streamed day reached Delta


def test_freshness_figures_are_the_samples_percentiles(
    demo: tuple[Settings, dict, str, str],
) -> None:
    stream = demo[1]["stream"]
    samples = stream["freshness_ms"]
    assert stream["sampled"] > 10 and stream["unseen"] == 0
    assert len(samples) == stream["sampled"]
    assert all(v >= 0 for v in samples)
    assert stream["freshness_p50_ms"] == pytest.approx(np.percentile(samples, 50))
    assert stream["freshness_p99_ms"] == pytest.approx(np.percentile(samples, 99))


def test_the_service_ranked_with_the_trained_model(demo: tuple[Settings, dict, str, str]) -> None:
    _, report, page, _ = demo
    serving, training = report["serving"], report["training"]
    assert serving["model_version"] == training["version"]
    assert len(serving["latency_ms"]) == serving["requests"] == 40
    assert serving["latency_p50_ms"] == pytest.approx(np.percentile(serving["latency_ms"], 50))
    assert serving["showcase"], "no open job was ranked"
    for job in serving["showcase"]:
        answer = job["answer"]
        assert answer["model"]["version"] == training["version"]
        assert not answer["degraded"]
        ranked = answer["ranked"]
        assert len(ranked) == job["proposals"]
        assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
        scores = [r["score"] for r in ranked]
        assert scores == sorted(scores, reverse=True)
        best = max(1, min(10, int(0.1 * len(ranked) + 0.5)))
        assert [r["best_match"] for r in ranked] == [i < best for i in range(len(ranked))]
        assert all(len(r["explanation"]) == 3 for r in ranked)
        assert job["job_id"] in page
    assert page.count("BEST MATCH") == sum(
        sum(r["best_match"] for r in job["answer"]["ranked"]) for job in serving["showcase"]
    )


def test_showcased_jobs_are_open_with_their_proposals(
    demo: tuple[Settings, dict, str, str],
) -> None:
    settings, report, _, _ = demo
    live = Path(settings.lake) / "demo" / "live.jsonl"
    proposals: dict[str, set[str]] = {}
    hired: set[str] = set()
    for line in live.read_bytes().splitlines():
        event = orjson.loads(line)
        if event["event_type"] == "proposal_submitted":
            proposals.setdefault(event["job_id"], set()).add(event["proposal_id"])
        elif event["event_type"] == "proposal_action" and event["action"] == "hired":
            hired.add(event["job_id"])
    for job in report["serving"]["showcase"]:
        assert job["job_id"] not in hired
        assert {r["proposal_id"] for r in job["answer"]["ranked"]} == proposals[job["job_id"]]


def test_the_report_shows_the_evaluation_and_the_ranker_wins(
    demo: tuple[Settings, dict, str, str],
) -> None:
    _, report, page, _ = demo
    evaluation = {row["model"]: row for row in report["training"]["evaluation"]}
    assert {"ranker", "ranker_no_streaming", "newest_first", "lowest_bid", "random"} <= set(
        evaluation
    )
    for row in evaluation.values():
        assert " / ".join(f"{row[m]:.4f}" for m in ("ndcg@5", "ndcg@10", "map")) in page
    ranker = evaluation["ranker"]["ndcg@10"]
    assert all(ranker > evaluation[b]["ndcg@10"] for b in ("newest_first", "lowest_bid", "random"))


def test_consistency_is_healthy_over_every_logged_vector(
    demo: tuple[Settings, dict, str, str],
) -> None:
    settings, report, page, _ = demo
    consistency, serving = report["consistency"], report["serving"]
    logged = DeltaTable(serving_log_uri(settings)).to_pyarrow_table(columns=["proposal_id"])
    served = sum(job["proposals"] for job in serving["showcase"]) + round(
        serving["proposals_per_request_mean"] * serving["requests"]
    )
    assert logged.num_rows == served  # log rate 1: every answered proposal
    assert consistency["logged_rows"] == served
    assert consistency["verdict"] == "healthy"
    assert consistency["totals"]["mismatches"] == 0
    assert consistency["totals"]["served_missing"] == consistency["totals"]["offline_missing"] == 0
    assert consistency["totals"]["rows"] > 0
    assert re.search(r"verdict-healthy", page)
