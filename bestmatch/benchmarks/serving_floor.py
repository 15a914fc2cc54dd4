"""The floor of `bestmatch bench serve`: the least a ranking endpoint does, in its own process.

One FastAPI route on uvicorn (uvloop, httptools): read the body, one `MGET` of the proposals'
freelancers (each one's model row as packed float64, written for the bench), LightGBM's
`Booster.predict` of those rows, a sorted JSON answer. No validation, no request-time features,
no metrics, no log: what the machine allows a Python service at all.

A module of its own, without `from __future__ import annotations`: FastAPI reads the route's
annotations to know that `request` is the request.
"""

import sys

import lightgbm as lgb
import numpy as np
import orjson
import redis
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def floor_child() -> None:
    """The floor's process (see the module's docstring): model, Redis URL, key prefix and port
    come as JSON on stdin."""
    given = orjson.loads(sys.stdin.buffer.read())
    booster = lgb.Booster(model_str=given["model"])
    client = redis.Redis.from_url(given["redis_url"])
    prefix = given["prefix"].encode()
    width = booster.num_feature()
    unknown = np.full(width, np.nan).tobytes()
    app = FastAPI()

    @app.post("/v1/rank")
    async def rank(request: Request) -> Response:
        data = orjson.loads(await request.body())
        proposals = data["proposals"]
        rows = client.mget([prefix + p["freelancer_id"].encode() for p in proposals])
        matrix = np.frombuffer(b"".join([row or unknown for row in rows]), dtype=np.float64)
        scores = booster.predict(matrix.reshape(len(proposals), width), num_threads=1)
        order = np.argsort(-scores, kind="stable").tolist()
        ranked = [
            {"proposal_id": proposals[i]["proposal_id"], "rank": r + 1, "score": float(scores[i])}
            for r, i in enumerate(order)
        ]
        answer = orjson.dumps({"job_id": data["job_id"], "ranked": ranked})
        return Response(answer, media_type="application/json")

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=given["port"],
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )
