"""The whole platform on the three servers at once: a 4-partition Kafka topic (librdkafka's mock
cluster) read by `bestmatch stream --processes 2`, into a 3-master Redis Cluster and a lake in an
S3 bucket (moto's server), SIGKILLed twice while events arrive; then `bestmatch train` and the
service from those stores. Each must hold what a backfill of the same events into one Redis and a
local lake holds, and the service must rank as one on those stores does."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import redis
from fastapi.testclient import TestClient

from bestmatch.services import LocalS3, ServiceProcess, free_port, stream_env
from bestmatch.services.redis_cluster import LocalRedisCluster
from bestmatch.simulator import simulate
from features.events import Event, parse_event
from features.settings import Settings
from flows.runner import run_backfill
from serving import ServingSettings, create_app
from tests.kafka_fixtures import MockKafka, on_topic
from tests.s3_fixtures import s3_lake
from tests.streaming import Publisher, StreamProcess, changelog_rows, converge, dead_letters
from tests.test_kafka import in_order_dirty, run_command
from tests.test_redis_cluster import cluster_keys, every_key
from tests.test_stream import write_lines
from training.proposals import read_market_events

START_TIMEOUT = 240.0  # `bestmatch stream` in a fresh interpreter, on a loaded 2-core box
CATCH_UP_TIMEOUT = 120.0


def keys_held(cluster: LocalRedisCluster) -> int:
    return sum(int(node.client().dbsize()) for node in cluster.nodes)


def letters(settings: Settings) -> list[tuple[str, str]]:
    return sorted((raw, reason) for _, _, raw, reason in dead_letters(settings))


def a_request(events: Path) -> dict[str, Any]:
    """The busiest job's proposals, as a `POST /v1/rank` body."""
    proposals = read_market_events(events).proposals
    job = proposals.group_by("job_id").len().sort(["len", "job_id"], descending=[True, False])
    job_id = job.row(0, named=True)["job_id"]
    mine = proposals.filter(pl.col("job_id") == job_id).head(40)
    return {
        "job_id": job_id,
        "client_id": mine["client_id"][0],
        "proposals": [
            {
                "proposal_id": row["proposal_id"],
                "freelancer_id": row["freelancer_id"],
                "bid_amount": row["bid_amount"],
                "cover_letter": "I can help",
            }
            for row in mine.iter_rows(named=True)
        ],
    }


@pytest.mark.timeout(900)
def test_the_platform_on_kafka_a_redis_cluster_and_s3(
    tmp_path: Path,
    kafka_cluster: MockKafka,
    redis_cluster: LocalRedisCluster,
    s3_server: LocalS3,
    s3_env: dict[str, str],
    s3_bucket: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = tmp_path / "events.jsonl"
    simulate(10, 7, events, jobs_per_day=12)  # `train`'s default horizon and window: 10 days
    parsed = [parse_event(line) for line in events.read_bytes().splitlines()]
    # in time order, with bad lines and repeats; none late, so that the topic's merge (in event
    # time) and the file (in line order) judge alike
    lines = in_order_dirty([e for e in parsed if isinstance(e, Event)], seed=3)
    tracking = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.chdir(tmp_path)  # nothing may land in a local `s3:` folder
    redis_cluster.flush()
    on_cluster = Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        mlflow_tracking_uri=tracking,
        _env_file=None,
    )
    platform = on_topic(s3_lake(on_cluster, s3_bucket, tmp_path / "checkpoints"), kafka_cluster)

    # the reference: a backfill of the same lines into one Redis and a local lake
    reference = Settings(redis_url=redis_url, lake=str(tmp_path / "lake"), _env_file=None)
    run_backfill(reference, write_lines(tmp_path / "lines.jsonl", lines), checkpoint=False)
    single = redis.Redis.from_url(redis_url)
    want_online = every_key(single)
    single.close()
    want_rows, want_letters = changelog_rows(reference), letters(reference)
    assert len(want_letters) > 5 and len(want_online) > 500

    # the stream, killed twice while the events arrive
    publisher = Publisher(platform, lines, len(lines) / 16)
    stream = StreamProcess(
        platform,
        tmp_path / "stream.log",
        free_port(),
        how="cli",
        options=("--processes", "2"),
    )
    try:
        stream.start()
        publisher.start()
        rng = random.Random(5)
        for _ in range(2):
            before = keys_held(redis_cluster)
            grew = converge(lambda n=before: keys_held(redis_cluster) > n, True, START_TIMEOUT)
            assert grew, f"the stream wrote nothing within {START_TIMEOUT:.0f} s (stream.log)"
            time.sleep(rng.uniform(0.5, 2.0))
            stream.kill()
            stream.start()
        publisher.finish(120)
        # every partition idle: the stream closes its newest instant, as a backfill's end does
        # the key count first: a whole dump of the cluster is dear to take every 0.25 s
        converge(lambda: keys_held(redis_cluster), len(want_online), CATCH_UP_TIMEOUT)
        got = converge(lambda: cluster_keys(redis_cluster), want_online, 30)
        assert got == want_online
        assert converge(lambda: changelog_rows(platform), want_rows, 60) == want_rows
        assert converge(lambda: letters(platform), want_letters, 30) == want_letters
    finally:
        stream.kill()
    assert stream.starts == 3

    # training from the S3 lake, into MLflow
    env = {**stream_env(platform), "MLFLOW_TRACKING_URI": tracking}
    code, output = run_command(["train", "--events", str(events)], env, timeout=600)
    assert code == 0, output
    assert "bestmatch-ranker v1" in output

    # serving from the cluster (and the S3 lake's serving log) ranks as from the reference
    body = a_request(events)
    # LightGBM's own trees, not the compiled ones (bit for bit the same: test_serving_compiled):
    # compiling costs the test seconds and says nothing of the stores
    serving = {"LOG_RATE": "1", "COMPILED": "false"}
    service = ServiceProcess(platform, tmp_path / "serve.log", serving)
    try:
        service.wait_ready(timeout_s=START_TIMEOUT)
        import httpx

        answer = httpx.post(f"{service.url}/v1/rank", json=body, timeout=30)
    finally:
        service.stop()
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert not served["degraded"] and served["missing"]["freelancers"] == []
    config = ServingSettings(  # type: ignore[call-arg]
        _env_file=None, log_rate=0.0, redis_timeout_s=5.0, compiled=False
    )
    with TestClient(
        create_app(reference.model_copy(update={"mlflow_tracking_uri": tracking}), config)
    ) as local:
        expected = local.post("/v1/rank", json=body).json()
    assert [(p["proposal_id"], p["score"]) for p in served["ranked"]] == [
        (p["proposal_id"], p["score"]) for p in expected["ranked"]
    ]
    assert orjson.dumps(served["model"]) == orjson.dumps(expected["model"])
