"""The ranking API's request and answer (docs/contract.md §4), as pydantic models.

Validation is strict: a number is not a string, a bool is not a number, NaN and Infinity are no
numbers at all. Unknown extra fields are ignored. The answer models describe what the route
returns in the OpenAPI schema; the route itself writes the JSON (see `serving.ranker`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_PROPOSALS = 500
MAX_ID_CHARS = 128
MAX_LETTER_CHARS = 10_000
# Room for the largest request the contract allows with plain-text letters (500 proposals of
# 10,000 characters: about 5.1 MB); anything bigger is refused with 413 before it is parsed.
MAX_BODY_BYTES = 6 * 1024 * 1024

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ProposalIn(_Strict):
    proposal_id: Id
    freelancer_id: Id
    bid_amount: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    cover_letter: Annotated[str, StringConstraints(max_length=MAX_LETTER_CHARS)] = ""


class RankRequest(_Strict):
    """`POST /v1/rank`: a job and its proposals (1 to 500, distinct `proposal_id`s)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "j-1",
                    "proposals": [
                        {
                            "proposal_id": "p-1",
                            "freelancer_id": "f-9",
                            "bid_amount": 45.0,
                            "cover_letter": "...",
                        }
                    ],
                    "explain": False,
                }
            ]
        }
    )

    job_id: Id
    proposals: Annotated[list[ProposalIn], Field(min_length=1, max_length=MAX_PROPOSALS)]
    explain: bool = False
    client_id: Id | None = Field(
        default=None,
        description=(
            "The job's client, when the caller knows it: its features are read too. "
            "Without it the client's features are missing (the job's online row does not "
            "name its client)."
        ),
    )

    @field_validator("proposals")
    @classmethod
    def _distinct_ids(cls, proposals: list[ProposalIn]) -> list[ProposalIn]:
        if len({p.proposal_id for p in proposals}) == len(proposals):
            return proposals  # the common case, checked at once; else: which two are alike
        first: dict[str, int] = {}
        for index, proposal in enumerate(proposals):
            seen = first.setdefault(proposal.proposal_id, index)
            if seen != index:
                msg = (
                    f"duplicate proposal_id {proposal.proposal_id!r}: "
                    f"proposals[{seen}] and proposals[{index}]"
                )
                raise ValueError(msg)
        return proposals


class ModelRef(BaseModel):
    name: str
    version: str


class Reason(BaseModel):
    """One feature's share of a score (LightGBM's SHAP-style contribution)."""

    feature: str
    value: float | None = Field(description="The feature's value (null: missing).")
    contribution: float = Field(description="Signed: what this feature adds to the score.")


class RankedProposal(BaseModel):
    proposal_id: str
    freelancer_id: str
    rank: int = Field(ge=1)
    score: float
    best_match: bool
    explanation: list[Reason] | None = Field(
        default=None, description="With `explain`: the top features by |contribution|."
    )


class Missing(BaseModel):
    """Entities the online store does not know (or could not be read: `degraded`)."""

    job: bool
    client: bool | None = Field(description="null: the request names no client.")
    freelancers: list[str]


class RankAnswer(BaseModel):
    job_id: str
    model: ModelRef
    ranked: list[RankedProposal]
    degraded: bool = Field(
        description="The online store could not be read in time: scored without its features."
    )
    missing: Missing


class FieldError(BaseModel):
    field: str
    message: str


class ErrorAnswer(BaseModel):
    """Every error answer: a one-line `detail` naming the field, and each problem found."""

    detail: str
    errors: list[FieldError] = []
