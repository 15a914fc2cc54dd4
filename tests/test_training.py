"""Training against real stores: a small simulated market backfilled into Delta, real Feast, real
MLflow on SQLite in tmp_path, real LightGBM.

One backfill serves the module (the `market` fixture); the leakage test backfills a truncated copy
of the same events into a second lake.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import orjson
import polars as pl
import pytest
from mlflow import MlflowClient
from polars.testing import assert_frame_equal

from bestmatch.benchmarks.training_set import bench_training_set
from bestmatch.simulator import DEFAULT_START, simulate
from features.events import ProposalAction, ProposalSubmitted, event_to_json, parse_time
from features.offline_layout import TIMESTAMP_COLUMN
from features.ranking import MODEL_FEATURES, RequestProposal, request_frame
from features.settings import Settings
from features.specs import ENTITIES, FEATURES, Entity
from flows.runner import run_backfill
from tests.conftest import RedisServer
from tests.test_offline_store import BASE_US, make_log, query_times, write
from training import registry
from training.dataset import build_training_set
from training.feast_reference import feast_historical_features, feast_store
from training.pipeline import TrainReport, evaluate_models, fit_models, publish, train
from training.point_in_time import historical_features
from training.proposals import (
    LABEL_GRADES,
    collect_market_events,
    complete_jobs,
    label_proposals,
    read_market_events,
)
from training.ranker import RankerParams

HOURS = timedelta(hours=12)  # the small market's horizon and window: 4 days leave 3 to split


@dataclasses.dataclass(frozen=True)
class Market:
    events: Path
    settings: Settings


def _backfill(root: Path, server: RedisServer, events: Path, db: int) -> Settings:
    settings = Settings(
        redis_url=f"{server.url.rsplit('/', 1)[0]}/{db}", lake=str(root / "lake"), _env_file=None
    )
    run_backfill(settings, events, checkpoint=False)
    return settings


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Market:
    root = tmp_path_factory.mktemp("market")
    events = root / "events.jsonl"
    simulate(4, 7, events, jobs_per_day=40)
    return Market(events, _backfill(root, redis_server, events, db=11))


def _entity_rows(market: Market) -> pl.DataFrame:
    """Every proposal's keys and moment, then 60 rows that some change log knows nothing of:
    20 before the market began, 20 of an unknown freelancer, 20 of an unknown job and client."""
    proposals = read_market_events(market.events).proposals
    keys = proposals.select(*(e.join_key for e in ENTITIES), TIMESTAMP_COLUMN)
    sample = keys.sample(20, seed=3)
    early = pl.lit(DEFAULT_START - timedelta(hours=1)).cast(keys.schema[TIMESTAMP_COLUMN])
    strangers = [
        sample.with_columns(early.alias(TIMESTAMP_COLUMN)),
        sample.with_columns(pl.lit("f-nobody").alias("freelancer_id")),
        sample.with_columns(pl.lit("j-nobody").alias("job_id"), pl.lit("c-x").alias("client_id")),
    ]
    return pl.concat([keys, *strangers])


# --- point-in-time values --------------------------------------------------------------------


def test_fast_path_returns_exactly_feasts_values(market: Market, tmp_path: Path) -> None:
    rows = _entity_rows(market)
    fast = historical_features(market.settings, rows)
    reference = feast_historical_features(feast_store(market.settings, tmp_path / "feast"), rows)
    assert fast.columns == reference.columns
    assert_frame_equal(fast, reference)
    # the rows with no history are kept, in place, with missing values
    strangers = fast.tail(60)
    before = strangers.head(20)
    assert before.select(f.name for f in FEATURES).null_count().row(0) == (20,) * len(FEATURES)
    nobody = strangers.slice(20, 20)
    assert nobody["fl_proposals_7d"].null_count() == 20
    assert nobody["job_proposals_24h"].null_count() == 0
    no_job = strangers.tail(20)
    assert no_job["job_budget_max"].null_count() == no_job["client_jobs_30d"].null_count() == 20


def test_fast_path_breaks_ties_like_feast(settings: Settings, tmp_path: Path) -> None:
    """Hand-written change logs with several rows at one instant: the latest `created` wins."""
    rng = random.Random(5)
    logs = make_log(rng)
    for entity, rows in logs.items():
        write(settings, entity, rows)
    ids: dict[Entity, list[str]] = {
        e: sorted({r.entity_id for r in rows}) + ["nobody"] for e, rows in logs.items()
    }
    times = sorted({t for rows in logs.values() for t in query_times(rows)})
    picks = [(rng.choice(times), {e: rng.choice(ids[e]) for e in ENTITIES}) for _ in range(400)]
    rows = pl.DataFrame(
        {
            **{e.join_key: [p[1][e] for p in picks] for e in ENTITIES},
            TIMESTAMP_COLUMN: [p[0] for p in picks],
        }
    ).with_columns(pl.col(TIMESTAMP_COLUMN).cast(pl.Datetime("us", "UTC")))
    fast = historical_features(settings, rows)
    assert_frame_equal(fast, feast_historical_features(feast_store(settings, tmp_path / "f"), rows))
    assert rows[TIMESTAMP_COLUMN].dt.epoch("us").min() <= BASE_US  # some rows predate every log


# --- no leakage ------------------------------------------------------------------------------


def test_features_at_the_ranking_moment_ignore_every_later_event(
    market: Market, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Cut the events right at a hired proposal's submission and backfill only what came before:
    the features of that proposal, and of every one before it, are the same in both lakes."""
    full = read_market_events(market.events)
    labelled = label_proposals(full.proposals, full.actions, timedelta(days=30)).with_columns(
        pl.col(TIMESTAMP_COLUMN).dt.epoch("us").alias("moment")
    )
    middle = (labelled["moment"].min() + labelled["moment"].max()) // 2  # type: ignore[operator]
    hired = labelled.filter((pl.col("label") == 3) & (pl.col("moment") >= middle)).row(
        0, named=True
    )
    cut = hired["moment"]
    hired_actions = full.actions.filter(pl.col("proposal_id") == hired["proposal_id"])
    assert hired_actions.height >= 3  # shortlisted, messaged, hired: all after the cut

    truncated = tmp_path / "before.jsonl"
    with market.events.open("rb") as source, truncated.open("wb") as sink:
        for line in source:
            if _time_us(line) <= cut:
                sink.write(line)
    before = _backfill(tmp_path, redis_server, truncated, db=12)

    rows = full.proposals.filter(pl.col(TIMESTAMP_COLUMN).dt.epoch("us") <= cut)
    rows = rows.select(*(e.join_key for e in ENTITIES), TIMESTAMP_COLUMN, "proposal_id")
    assert_frame_equal(
        historical_features(market.settings, rows), historical_features(before, rows)
    )
    own = historical_features(before, rows.filter(pl.col("proposal_id") == hired["proposal_id"]))
    assert own["fl_proposals_1h"].item() >= 1  # its own submission counts at its moment


def _time_us(line: bytes) -> int:
    return parse_time(orjson.loads(line)["event_time"])


# --- labels ----------------------------------------------------------------------------------


def _lines(*events: ProposalSubmitted | ProposalAction) -> list[bytes]:
    return [orjson.dumps(event_to_json(e)) for e in events]


def _proposal(pid: str, t: int, job: str = "j-1") -> ProposalSubmitted:
    return ProposalSubmitted(f"e-{pid}", t, pid, job, "c-1", f"f-{pid}", 40.0, "hello")


def _action(pid: str, t: int, action: str, n: int, job: str = "j-1") -> ProposalAction:
    return ProposalAction(f"a-{pid}-{n}", t, pid, job, "c-1", f"f-{pid}", action)


def test_labels_grade_actions_strictly_after_the_moment_within_the_horizon() -> None:
    t0, h = BASE_US, 3_600_000_000
    events = _lines(
        _proposal("p1", t0),
        _proposal("p2", t0),
        _proposal("p3", t0),
        _proposal("p4", t0),
        _action("p1", t0 + 1, "viewed", 1),
        _action("p1", t0 + 2, "shortlisted", 2),
        _action("p1", t0 + h + 1, "hired", 3),  # after the horizon: not counted
        _action("p2", t0 + h, "hired", 1),  # exactly at the horizon: counted
        _action("p3", t0, "messaged", 1),  # at the moment itself: not after it
        _action("p3", t0 + 5, "archived", 2),
        _action("p4", t0 + 5, "messaged", 1),
        _action("p4", t0 + 6, "shortlisted", 2),  # the best grade wins, whatever the order
    )
    events += [events[0], b"{not json", b"\n"]  # a duplicate, a bad line, a blank line
    market = collect_market_events(events)
    assert (market.rejected, market.duplicates) == (1, 1)
    labelled = label_proposals(market.proposals, market.actions, timedelta(hours=1))
    got = dict(labelled.select("proposal_id", "label").iter_rows())
    assert got == {"p1": 1, "p2": 3, "p3": 0, "p4": 2}
    assert LABEL_GRADES == {"hired": 3, "messaged": 2, "shortlisted": 1}


def test_labels_match_a_brute_force_count(market: Market) -> None:
    full = read_market_events(market.events)
    horizon = timedelta(hours=10)
    labelled = label_proposals(full.proposals, full.actions, horizon)
    moments = dict(full.proposals.select("proposal_id", TIMESTAMP_COLUMN).iter_rows())
    best: dict[str, int] = {}
    for pid, action, t in full.actions.iter_rows():
        if moments[pid] < t <= moments[pid] + horizon:
            best[pid] = max(best.get(pid, 0), LABEL_GRADES.get(action, 0))
    got = dict(labelled.select("proposal_id", "label").iter_rows())
    assert got == {pid: best.get(pid, 0) for pid in moments}
    assert set(got.values()) == {0, 1, 2, 3}


def test_censoring_keeps_whole_jobs_whose_labels_are_complete() -> None:
    h = timedelta(hours=1)
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "proposal_id": ["a1", "a2", "b1", "c1"],
            "job_id": ["a", "a", "b", "c"],
            TIMESTAMP_COLUMN: [t0, t0 + 3 * h, t0 + h, t0 + 2 * h],
            "label": [0, 1, 0, 0],
        }
    ).with_columns(pl.col(TIMESTAMP_COLUMN).cast(pl.Datetime("us", "UTC")))
    cutoff = int((t0 + 4 * h).timestamp() * 1_000_000)
    kept = complete_jobs(frame, cutoff, horizon=h, window=2 * h)
    # a: a2 came after the window; b: first + window + horizon = cutoff; c: one hour too late
    assert kept["proposal_id"].to_list() == ["a1", "b1"]


# --- the training set ------------------------------------------------------------------------


def test_training_set_is_grouped_split_by_time_and_keeps_missing_values(market: Market) -> None:
    training_set = build_training_set(market.settings, market.events, horizon=HOURS, window=HOURS)
    frame = training_set.frame
    runs = frame.select(pl.col("job_id").rle_id())["job_id"]
    assert runs.n_unique() == frame["job_id"].n_unique()  # each job one contiguous group
    day_of_job = frame.group_by("job_id").agg(
        pl.col(TIMESTAMP_COLUMN).min().dt.date().alias("day"), pl.col("split").first()
    )
    last = {s: day_of_job.filter(pl.col("split") == s)["day"].max() for s in ("train", "valid")}
    first = {s: day_of_job.filter(pl.col("split") == s)["day"].min() for s in ("valid", "test")}
    assert last["train"] < first["valid"] and last["valid"] < first["test"]
    assert frame["fl_job_success"].null_count() > 0  # new freelancers stay missing
    summary = training_set.summary()
    assert summary["proposals"] == frame.height
    assert sum(v for k, v in summary.items() if k.startswith("label_")) == frame.height


# --- MLflow ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(market: Market) -> TrainReport:
    return train(market.settings, events=market.events, horizon=HOURS, window=HOURS)


def test_train_registers_a_champion_that_pyfunc_loads_and_scores(
    market: Market, first_run: TrainReport
) -> None:
    assert (first_run.version, first_run.alias, first_run.promoted) == ("1", "champion", True)
    header, rows = first_run.evaluation_rows()
    assert header == ["model", "NDCG@5", "NDCG@10", "MAP"]
    assert len(rows) == 5
    table = first_run.evaluation.to_dicts()
    ranker = next(r for r in table if r["model"] == "ranker")
    randomly = next(r for r in table if r["model"] == "random")
    assert ranker["ndcg@10"] > randomly["ndcg@10"]

    registry.tracking_client(market.settings)
    model = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@champion")
    assert registry.model_features(model) == list(MODEL_FEATURES)
    job = {"job_budget_type": "fixed", "job_budget_max": 500.0, "job_skills": ["python"]}
    proposals = [
        RequestProposal(300.0, "I write python", {"fl_skills": ["python"], "fl_job_success": 98.0}),
        RequestProposal(900.0, "hi", {}),
    ]
    frame = request_frame(job, proposals)
    from features.ranking import model_frame

    scores = model.predict(model_frame(frame).to_pandas())
    assert np.isfinite(np.asarray(scores)).all() and len(scores) == 2

    client = MlflowClient(market.settings.tracking_uri)
    run = client.get_run(first_run.run_id)
    assert run.data.params["features"] == ",".join(MODEL_FEATURES)
    assert "test_ndcg_at_10" in run.data.metrics
    assert "test_ranker_no_streaming_ndcg_at_10" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(first_run.run_id, "plots")}
    assert artifacts == {
        "plots/feature_importance.png",
        "plots/ndcg_by_slice.png",
        "plots/score_by_label.png",
    }


def test_a_second_identical_run_does_not_move_the_champion(
    market: Market, first_run: TrainReport
) -> None:
    second = train(market.settings, events=market.events, horizon=HOURS, window=HOURS)
    assert second.alias == "challenger" and not second.promoted
    assert "ties champion v1" in second.reason
    assert second.evaluation.equals(first_run.evaluation)  # same seed, same model, same numbers
    client = MlflowClient(market.settings.tracking_uri)
    assert str(client.get_model_version_by_alias(registry.MODEL_NAME, "champion").version) == "1"


def test_a_worse_model_becomes_challenger(market: Market, first_run: TrainReport) -> None:
    training_set = build_training_set(market.settings, market.events, horizon=HOURS, window=HOURS)
    shuffled = training_set.frame.with_columns(
        pl.when(pl.col("split") == "train")
        .then(pl.col("label").shuffle(seed=1))
        .otherwise(pl.col("label"))
    )
    noisy = dataclasses.replace(training_set, frame=shuffled)
    ranker, ablation = fit_models(noisy, RankerParams(seed=1))
    evaluation = evaluate_models(noisy, ranker, ablation, seed=1)
    _, promotion = publish(market.settings, noisy, ranker, evaluation)
    assert promotion.alias == "challenger" and not promotion.promoted
    assert "is below champion v1" in promotion.reason
    champion = promotion.champion
    assert champion is not None and champion.score is not None
    assert champion.score > promotion.new_score
    client = MlflowClient(market.settings.tracking_uri)
    assert str(client.get_model_version_by_alias(registry.MODEL_NAME, "champion").version) == "1"
    assert first_run.version == "1"


def test_any_tracking_uri_works(market: Market, tmp_path: Path) -> None:
    """An explicit MLFLOW_TRACKING_URI (another SQLite store) gets its own registry."""
    other = Settings(
        redis_url=market.settings.redis_url,
        lake=market.settings.lake,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'elsewhere.db'}",
        _env_file=None,
    )
    training_set = build_training_set(other, market.events, horizon=HOURS, window=HOURS)
    ranker, ablation = fit_models(training_set, RankerParams(seed=1, max_rounds=5))
    evaluation = evaluate_models(training_set, ranker, ablation, seed=1)
    _, promotion = publish(other, training_set, ranker, evaluation)
    assert (promotion.version, promotion.alias) == ("1", "champion")
    assert (tmp_path / "mlartifacts").is_dir()


# --- the benchmark ---------------------------------------------------------------------------


def test_bench_times_both_paths_on_the_same_rows(market: Market) -> None:
    bench = bench_training_set(market.settings, events=market.events, rows=3000, repeat=1)
    assert bench.identical and bench.entity_rows == 3000
    assert bench.ratio > 0 and len(bench.feast_s) == len(bench.fast_s) == 1
    labels = [label for label, _ in bench.rows()]
    assert "Feast get_historical_features" in labels and "ratio (Feast / fast)" in labels
