"""The model's input for one request, from what serving keeps between requests.

`features.ranking.input_matrix` is the one implementation of the model's input; serving feeds it
from caches: each freelancer's store columns (`FREELANCER_COLUMNS.row`) and skills are computed
once, when the store's memo decodes the entity (`freelancer_input`), and kept with it, so a
request computes only its job's columns and the request-time features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.ranking import (
    FREELANCER_COLUMNS,
    JOB_COLUMNS,
    MODEL_FEATURES,
    ProposalRows,
    input_matrix,
)


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity: it holds an array
class FreelancerInput:
    """A freelancer's part of the model's input that no request changes: a full-width row of the
    model's input with its store columns filled (NaN elsewhere; read-only, shared between
    requests), those columns as float64 bytes (what `request_input` joins), and its skills
    (None: unknown)."""

    row: np.ndarray
    packed: bytes
    skills: frozenset[str] | None


def freelancer_input(values: Mapping[str, Any]) -> FreelancerInput:
    columns = FREELANCER_COLUMNS.row(values)
    row = np.full(len(MODEL_FEATURES), np.nan)
    row[FREELANCER_COLUMNS.where] = columns
    row.flags.writeable = False
    skills = values.get("fl_skills")
    return FreelancerInput(row, columns.tobytes(), None if skills is None else frozenset(skills))


UNKNOWN = freelancer_input({})
"""An unknown freelancer's: every value missing."""


def request_input(
    job: Mapping[str, Any],
    freelancers: Sequence[FreelancerInput],
    bids: Sequence[float],
    letters: Sequence[str],
) -> np.ndarray:
    """`features.ranking.input_matrix` for one request: `job` holds the job's and its client's
    store values, `freelancers` each proposal's freelancer's input."""
    n = len(freelancers)
    packed = np.frombuffer(b"".join([f.packed for f in freelancers]), dtype=np.float64)
    return input_matrix(
        ProposalRows(
            freelancer=packed.reshape(n, len(FREELANCER_COLUMNS.sources)),
            job=JOB_COLUMNS.row(job)[None, :],
            bids=bids,
            letters=letters,
            freelancer_skills=[f.skills for f in freelancers],
            job_skills=[job.get("job_skills")] * n,
        )
    )
