"""The consistency check (`bestmatch consistency`): were the features served the features
training would have used?

The serving log (`<lake>/serving_log`) holds, per served proposal, the store values the service
read from Redis. This check recomputes each of them point in time, as of the moment it was served,
from the Delta change logs through `training.point_in_time.historical_features` (the builder
training sets come from), and compares them feature by feature.

Per entity kind (freelancer, job, client) it checks each distinct `(entity id, served_at)` once:

- both present: equal, or a mismatch (strings, skill lists, bools and ints exactly; floats within
  a relative `tolerance`, `|served - offline| <= tolerance * max(|served|, |offline|)`);
- served missing, offline present / offline missing, served present: a one-sided missing value;
- both missing (an entity neither store knows): consistent, counted apart.

Relative error is `|served - offline| / max(|served|, |offline|)` (0 when both are 0), over the
numeric features' rows where both sides are present. Degraded answers (the store was not read)
carry no store values: they are counted, not compared. A client the request did not name was not
looked up: not compared either.

It also rebuilds the model's input (`features.ranking.model_frame`) for each logged proposal from
the served values and from the offline values, with the logged bid and the request's own rows as
its group, and compares it column by column: the impact of any store difference on what the
model saw. The log keeps no cover letter, so the two cover-letter features are left out.

Served values are compared with the change log as of the change the service read: the serving
log keeps, per entity, the stamp of the values it served (`_us:<view>` in Redis), so a value
served in the moment between an event and its arrival in Redis (the flow's freshness lag) is
still compared with the right row. Such a value is counted apart as `stale`: consistent as read,
though the change log holds a newer change at `served_at`. That is lag, not skew: it does not make
the verdict inconsistent, but it is the share of answers that a fresher store would have changed.
A log written before stamps were kept is compared as of `served_at`.

On a healthy platform every count but `rows` (and `stale`) is zero: the online store holds exactly
what the change log says it held (docs/contract.md §2). One thing to know when reading it: a running
stream writes its newest instant's change-log rows only once its clock moves past it, or once the
bus has been quiet for a second (flows/sources.py); Redis has them at once. Values served from
that instant show as mismatches until then: check a quiet stream, or with `--since` / later.
"""

from bestmatch.consistency.check import SERVING_LOG_TABLE, check_consistency, read_serving_log
from bestmatch.consistency.report import (
    SKIPPED_MODEL_INPUTS,
    ConsistencyReport,
    Example,
    FeatureCheck,
    consistency_figure,
)

__all__ = [
    "SERVING_LOG_TABLE",
    "SKIPPED_MODEL_INPUTS",
    "ConsistencyReport",
    "Example",
    "FeatureCheck",
    "check_consistency",
    "consistency_figure",
    "read_serving_log",
]
