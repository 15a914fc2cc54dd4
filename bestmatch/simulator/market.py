"""The simulated market as columns: who is on it (freelancers, jobs) and what happened
(proposals, client actions, profile updates). Times are integer milliseconds since the Unix
epoch, UTC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

VIEWED, SHORTLISTED, MESSAGED, ARCHIVED, HIRED = range(5)
ACTION_NAMES = ("viewed", "shortlisted", "messaged", "archived", "hired")


@dataclass(frozen=True, slots=True)
class Freelancers:
    country: np.ndarray
    category: np.ndarray
    skills: np.ndarray  # bool (n, len(SKILLS))
    skill_list: np.ndarray  # int (n, _MAX_SKILLS...), the first skill_count entries are real
    skill_count: np.ndarray
    rate: np.ndarray
    job_success: np.ndarray  # NaN for new freelancers
    earned: np.ndarray
    quality: np.ndarray  # hidden: no event carries it
    spammer: np.ndarray
    activity: np.ndarray
    letter: np.ndarray  # int (n, 5): the arguments of vocab.letter_parts after `spam`

    def __len__(self) -> int:
        return len(self.rate)


@dataclass(frozen=True, slots=True)
class Jobs:
    time: np.ndarray  # sorted
    client: np.ndarray
    category: np.ndarray
    skills: np.ndarray  # bool (n, len(SKILLS))
    title_skill: np.ndarray
    project: np.ndarray
    level: np.ndarray
    hourly: np.ndarray
    budget_min: np.ndarray
    budget_max: np.ndarray

    def __len__(self) -> int:
        return len(self.time)


@dataclass(frozen=True, slots=True)
class Proposals:
    time: np.ndarray  # sorted; the row is the proposal's number
    job: np.ndarray
    freelancer: np.ndarray
    bid: np.ndarray
    spam: np.ndarray  # sent in a spammer's burst
    letter_skill: np.ndarray  # see vocab.letter_parts
    letter_variant: np.ndarray

    def __len__(self) -> int:
        return len(self.time)


@dataclass(frozen=True, slots=True)
class Actions:
    time: np.ndarray
    proposal: np.ndarray
    action: np.ndarray


@dataclass(frozen=True, slots=True)
class Profiles:
    time: np.ndarray
    freelancer: np.ndarray
    rate: np.ndarray
    job_success: np.ndarray  # NaN → null
    earned: np.ndarray
    top_rated: np.ndarray


@dataclass(frozen=True, slots=True)
class Market:
    start: int
    end: int
    clients: int
    freelancers: Freelancers
    jobs: Jobs
    proposals: Proposals
    actions: Actions
    profiles: Profiles
    share_25_in_24h: float
