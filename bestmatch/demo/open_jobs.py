"""The open jobs of the streamed day, ranked through the running service's `POST /v1/rank`:
a few with explanations for the report, then a timed loop over all of them."""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bestmatch.console import progress
from bestmatch.demo.summary import percentile
from features.errors import ServiceError

MAX_PROPOSALS = 500  # the most proposals one ranking request may carry


@dataclass
class OpenJob:
    """A job posted on the streamed day and not hired by its end, with its proposals so far."""

    job_id: str
    client_id: str
    title: str
    posted_at: str
    proposals: list[dict[str, Any]] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)  # proposal id → the client's furthest

    def request(self, explain: bool) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "client_id": self.client_id,
            "proposals": self.proposals[:MAX_PROPOSALS],
            "explain": explain,
        }


_ACTION_ORDER = ("viewed", "archived", "shortlisted", "messaged", "hired")


def open_jobs(live: Path, min_proposals: int = 5) -> list[OpenJob]:
    """Jobs posted on the streamed day, not hired, with at least `min_proposals` proposals, most
    proposals first; each with its proposals in arrival order and what the client did so far."""
    jobs: dict[str, OpenJob] = {}
    hired: set[str] = set()
    for line in live.read_bytes().splitlines():
        try:
            event = orjson.loads(line)
            kind = event["event_type"]
            if kind == "job_posted":
                jobs[event["job_id"]] = OpenJob(
                    event["job_id"], event["client_id"], event["title"], event["event_time"]
                )
            elif kind == "proposal_submitted" and event["job_id"] in jobs:
                jobs[event["job_id"]].proposals.append(
                    {
                        "proposal_id": event["proposal_id"],
                        "freelancer_id": event["freelancer_id"],
                        "bid_amount": float(event["bid_amount"]),
                        "cover_letter": event["cover_letter"],
                    }
                )
            elif kind == "proposal_action" and event["job_id"] in jobs:
                job, action = jobs[event["job_id"]], event["action"]
                if action == "hired":
                    hired.add(job.job_id)
                before = job.actions.get(event["proposal_id"])
                if action in _ACTION_ORDER and (
                    before is None or _ACTION_ORDER.index(action) > _ACTION_ORDER.index(before)
                ):
                    job.actions[event["proposal_id"]] = action
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a dirty line: the flow sent it to the dead letters
    for job in jobs.values():  # a repeated proposal event is one proposal
        job.proposals = list({p["proposal_id"]: p for p in job.proposals}.values())
    found = [
        j for j in jobs.values() if j.job_id not in hired and len(j.proposals) >= min_proposals
    ]
    return sorted(found, key=lambda j: (-len(j.proposals), j.job_id))


class RankClient:
    """One keep-alive HTTP connection to `POST /v1/rank`."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def rank(self, body: bytes) -> tuple[float, dict[str, Any]]:
        """(milliseconds, answer) of one request, timed on the client."""
        started = time.perf_counter()
        self.connection.request(
            "POST", "/v1/rank", body, headers={"Content-Type": "application/json"}
        )
        reply = self.connection.getresponse()
        data = reply.read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if reply.status != 200:
            msg = f"POST /v1/rank answered {reply.status}: {data[:300].decode(errors='replace')}"
            raise ServiceError(msg)
        return elapsed_ms, orjson.loads(data)

    def close(self) -> None:
        self.connection.close()


def rank_open_jobs(
    port: int, live: Path, showcase: int, requests: int, version: str
) -> dict[str, Any]:
    jobs = open_jobs(live)
    if not jobs:
        msg = f"the streamed day ({live}) has no open job with proposals to rank"
        raise ServiceError(msg)
    ranker = RankClient(port)
    try:
        shown = []
        for job in jobs[:showcase]:
            _, answer = ranker.rank(orjson.dumps(job.request(explain=True)))
            shown.append(
                {
                    "job_id": job.job_id,
                    "client_id": job.client_id,
                    "title": job.title,
                    "posted_at": job.posted_at,
                    "proposals": len(job.proposals),
                    "answer": answer,
                    "bids": {p["proposal_id"]: p["bid_amount"] for p in job.proposals},
                    "letters": {p["proposal_id"]: p["cover_letter"] for p in job.proposals},
                    "actions": job.actions,
                }
            )
        bodies = [orjson.dumps(job.request(explain=False)) for job in jobs]
        latencies, sizes = [], []
        with progress(f"5/7 ranking {requests} requests over {len(jobs)} open jobs") as advance:
            begun = time.perf_counter()
            for i in range(requests):
                body = bodies[i % len(bodies)]
                ms, answer = ranker.rank(body)
                latencies.append(ms)
                sizes.append(len(answer["ranked"]))
                advance(i + 1)
            elapsed = time.perf_counter() - begun
    finally:
        ranker.close()
    return {
        "model_version": version,
        "open_jobs": len(jobs),
        "showcase": shown,
        "requests": requests,
        "proposals_per_request_mean": float(np.mean(sizes)),
        "latency_ms": latencies,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "requests_per_s": requests / elapsed,
        "degraded_answers": sum(1 for s in shown if s["answer"]["degraded"]),
    }
