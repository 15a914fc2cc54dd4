"""Benchmarks: figures side by side with a baseline measured in the same run (`bestmatch bench`).

- `flow`: backfill throughput and stream freshness of the feature flow.
- `kafka`: the Kafka bus: a replay from the topic beside `backfill`, freshness beside Redis.
- `serving`: `/v1/rank` latency and throughput beside the floor and the Feast client path.
- `load`: the HTTP clients that drive an endpoint and time its answers.
- `serving_floor`: the floor, the least a ranking endpoint does, in a process of its own.
- `training_set`: the point-in-time training set, Feast's `get_historical_features` against
  the fast path.
"""
