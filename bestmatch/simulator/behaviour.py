"""How the simulated marketplace comes about: who is on it, what they post and bid, and (from
`decisions`) what clients do with the proposals and how profiles follow.

Everything is drawn columnar with numpy from one Generator in a fixed order, so one seed gives one
market.
"""

from __future__ import annotations

import numpy as np

from bestmatch.simulator import vocabulary as vocab
from bestmatch.simulator.decisions import client_actions, profile_updates
from bestmatch.simulator.market import (
    ACTION_NAMES,
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    Freelancers,
    Jobs,
    Market,
    Proposals,
)

__all__ = ["ACTION_NAMES", "Market", "simulate_market"]

_MEAN_PROPOSALS = 44.0  # regular proposals per job before the level's pull
_LEVEL_PULL = np.array([1.25, 1.0, 0.75])  # entry-level posts draw more proposals
_HOUR_WEIGHTS = 1.0 + 0.7 * np.cos(2 * np.pi * (np.arange(24) - 16) / 24)  # US/EU working day
_SPAM_BURSTS_PER_DAY = 0.35
_MAX_SKILLS_PER_FREELANCER = 10


def simulate_market(days: int, jobs_per_day: int, seed: int, start: int) -> Market:
    """The whole market over `days` from `start` (ms), every event strictly before the end."""
    rng = np.random.default_rng(seed)
    end = start + days * DAY
    n_clients = max(30, 4 * jobs_per_day)
    freelancers = _freelancers(rng, max(300, 20 * jobs_per_day))
    client_weight = rng.lognormal(0.0, 1.0, n_clients)
    client_engagement = rng.normal(0.0, 0.5, n_clients)
    client_latency = rng.lognormal(0.0, 0.6, n_clients)
    jobs = _jobs(rng, days, jobs_per_day, start, client_weight / client_weight.sum())
    proposals = _proposals(rng, freelancers, jobs, start, end)
    actions = client_actions(
        rng, freelancers, jobs, proposals, client_engagement, client_latency, start, end
    )
    profiles = profile_updates(rng, freelancers, jobs, proposals, actions, start, end)
    return Market(
        start,
        end,
        n_clients,
        freelancers,
        jobs,
        proposals,
        actions,
        profiles,
        _share_25_in_24h(jobs, proposals, end),
    )


def _pick_skills(
    rng: np.random.Generator, matrix: np.ndarray, rows_category: np.ndarray, counts: np.ndarray
) -> None:
    """Set `counts[i]` distinct skills of category `rows_category[i]` in row i of `matrix`."""
    for category, pool in enumerate(vocab.CATEGORY_SKILLS):
        rows = np.flatnonzero(rows_category == category)
        if rows.size == 0:
            continue
        order = np.argsort(rng.random((rows.size, pool.size)), axis=1)
        take = np.arange(pool.size) < np.minimum(counts[rows], pool.size)[:, None]
        row, col = np.nonzero(take)
        matrix[rows[row], pool[order[row, col]]] = True


def _freelancers(rng: np.random.Generator, n: int) -> Freelancers:
    quality = rng.normal(0.0, 1.0, n)
    spammer = rng.random(n) < 0.04
    quality[spammer] -= 1.2
    n_categories = len(vocab.CATEGORY_NAMES)
    category = rng.choice(n_categories, n, p=vocab.CATEGORY_WEIGHTS)
    second = rng.choice(n_categories, n, p=vocab.CATEGORY_WEIGHTS)
    skills = np.zeros((n, len(vocab.SKILLS)), dtype=bool)
    _pick_skills(rng, skills, category, rng.integers(3, 8, n))
    _pick_skills(rng, skills, second, rng.integers(0, 3, n))
    skill_count = np.minimum(skills.sum(axis=1), _MAX_SKILLS_PER_FREELANCER)
    # each row's skills in a random order, so "the freelancer's first skill" varies
    keyed = np.where(skills, rng.random(skills.shape), 2.0)
    skill_list = np.argsort(keyed, axis=1)[:, :_MAX_SKILLS_PER_FREELANCER]
    country = rng.choice(len(vocab.COUNTRY_CODES), n, p=vocab.COUNTRY_WEIGHTS)
    rate = (
        vocab.CATEGORY_RATE[category]
        * vocab.COUNTRY_RATE[country]
        * np.exp(0.25 * quality + rng.normal(0.0, 0.35, n))
    )
    rate = np.maximum(np.round(rate, 2), 3.0)
    new = rng.random(n) < 0.2
    job_success = np.clip(np.round(86 + 7 * quality + rng.normal(0.0, 5.0, n)), 30, 100)
    job_success[new] = np.nan
    earned = np.round(rng.lognormal(np.log(6000.0) + 0.6 * quality, 1.4), 2)
    earned[new] = 0.0
    activity = rng.lognormal(0.0, 0.7, n)
    letter = np.stack(
        [
            rng.integers(0, 20, n),
            rng.integers(0, 6, n),
            rng.integers(0, 5, n),
            rng.integers(2, 16, n),
            skill_list[:, 1],
        ],
        axis=1,
    )
    return Freelancers(
        country,
        category,
        skills,
        skill_list,
        skill_count,
        rate,
        job_success,
        earned,
        quality,
        spammer,
        activity,
        letter,
    )


def _jobs(
    rng: np.random.Generator, days: int, per_day: int, start: int, client_p: np.ndarray
) -> Jobs:
    n = days * per_day
    day = np.repeat(np.arange(days, dtype=np.int64), per_day)
    hour = rng.choice(24, n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    time = start + day * DAY + hour * HOUR + rng.integers(0, HOUR, n)
    time = np.sort(np.maximum(time, start + MINUTE))  # after everyone's first profile
    client = rng.choice(len(client_p), n, p=client_p)
    category = rng.choice(len(vocab.CATEGORY_NAMES), n, p=vocab.CATEGORY_WEIGHTS)
    skills = np.zeros((n, len(vocab.SKILLS)), dtype=bool)
    _pick_skills(rng, skills, category, rng.integers(2, 7, n))
    title_skill = np.argmax(np.where(skills, rng.random(skills.shape), -1.0), axis=1)
    level = rng.choice(3, n, p=[0.3, 0.5, 0.2])
    hourly = rng.random(n) < 0.45
    base = vocab.CATEGORY_RATE[category] * np.array([0.7, 1.0, 1.6])[level]
    hourly_min = np.maximum(np.round(base * rng.lognormal(0.0, 0.3, n)), 3.0)
    hourly_max = np.round(hourly_min * rng.uniform(1.2, 2.5, n))
    fixed_max = np.maximum(np.round(base * rng.lognormal(np.log(15.0), 1.0, n), -1), 10.0)
    fixed_min = np.where(
        rng.random(n) < 0.5, fixed_max, np.round(fixed_max * rng.uniform(0.4, 0.9, n))
    )
    return Jobs(
        time,
        client,
        category,
        skills,
        title_skill,
        rng.integers(0, len(vocab.PROJECTS), n),
        level,
        hourly,
        np.where(hourly, hourly_min, fixed_min),
        np.where(hourly, hourly_max, fixed_max),
    )


def _letter_skill(
    rng: np.random.Generator,
    fl: Freelancers,
    jobs: Jobs,
    job: np.ndarray,
    freelancer: np.ndarray,
    spam: np.ndarray,
) -> np.ndarray:
    """The skill a letter names: the job's headline skill when the freelancer has it, else one
    of their own; a spammer always names their own first skill."""
    pick = (rng.random(job.size) * fl.skill_count[freelancer]).astype(np.int64)
    own = fl.skill_list[freelancer, pick]
    has_title = fl.skills[freelancer, jobs.title_skill[job]]
    named = np.where(has_title, jobs.title_skill[job], own)
    return np.where(spam, fl.skill_list[freelancer, 0], named)


def _regular_proposals(
    rng: np.random.Generator, fl: Freelancers, jobs: Jobs
) -> tuple[np.ndarray, ...]:
    """A stream after each post, most of it in the first hours, mostly from its category."""
    mean = _MEAN_PROPOSALS * _LEVEL_PULL[jobs.level]
    job = np.repeat(np.arange(len(jobs)), rng.negative_binomial(4, 4 / (4 + mean)))
    n = job.size
    target = np.where(rng.random(n) < 0.85, jobs.category[job], -1)
    weight = fl.activity * np.where(fl.spammer, 0.3, 1.0)
    freelancer = np.empty(n, dtype=np.int64)
    for category in range(-1, len(vocab.CATEGORY_NAMES)):
        rows = np.flatnonzero(target == category)
        pool = np.flatnonzero(fl.category == category) if category >= 0 else np.arange(len(fl))
        if pool.size == 0:
            pool = np.arange(len(fl))
        freelancer[rows] = rng.choice(pool, rows.size, p=weight[pool] / weight[pool].sum())
    phase = rng.random(n)
    offset = np.where(
        phase < 0.6,
        rng.exponential(1.5 * HOUR, n),
        np.where(phase < 0.9, rng.exponential(7 * HOUR, n), rng.uniform(DAY, 4 * DAY, n)),
    )
    time = jobs.time[job] + 20 * SECOND + offset.astype(np.int64)
    # hourly: between the freelancer's rate and the budget; fixed: around the budget, dearer
    # for dearer freelancers
    rate = fl.rate[freelancer]
    mid = (jobs.budget_min[job] + jobs.budget_max[job]) / 2
    hourly_bid = rate**0.6 * mid**0.4 * rng.lognormal(0.0, 0.15, n)
    dearness = rate / vocab.CATEGORY_RATE[fl.category[freelancer]]
    fixed_bid = mid * dearness**0.3 * rng.lognormal(0.0, 0.25, n)
    bid = np.where(jobs.hourly[job], np.round(hourly_bid, 2), np.round(fixed_bid))
    return job, freelancer, time, bid


def _spam_proposals(
    rng: np.random.Generator, fl: Freelancers, jobs: Jobs, start: int, end: int
) -> tuple[np.ndarray, ...]:
    """Bursts: a spammer fires cheap bids at whatever was posted in the last day, a minute or
    so apart."""
    spammers = np.flatnonzero(fl.spammer)
    bursts = rng.poisson(_SPAM_BURSTS_PER_DAY * (end - start) / DAY, spammers.size)
    burst_f = np.repeat(spammers, bursts)
    burst_t = rng.integers(start + HOUR, end, burst_f.size)
    size = rng.integers(8, 25, burst_f.size)
    freelancer, time = np.repeat(burst_f, size), np.repeat(burst_t, size)
    gaps = np.cumsum(rng.exponential(45 * SECOND, freelancer.size) + 5 * SECOND)
    first = np.repeat(np.cumsum(size) - size, size)
    time = time + (gaps - gaps[first]).astype(np.int64)
    lo = np.searchsorted(jobs.time, time - DAY)
    hi = np.searchsorted(jobs.time, time - MINUTE)
    job = lo + (rng.random(freelancer.size) * (hi - lo)).astype(np.int64)
    keep = hi > lo
    job, freelancer, time = job[keep], freelancer[keep], time[keep]
    bid = np.where(
        jobs.hourly[job],
        np.round(fl.rate[freelancer] * rng.uniform(0.6, 0.9, job.size), 2),
        np.round(jobs.budget_min[job] * rng.uniform(0.3, 0.7, job.size)),
    )
    return job, freelancer, time, bid


def _proposals(
    rng: np.random.Generator, fl: Freelancers, jobs: Jobs, start: int, end: int
) -> Proposals:
    regular = _regular_proposals(rng, fl, jobs)
    spammy = _spam_proposals(rng, fl, jobs, start, end)
    job, freelancer, time, bid = (
        np.concatenate(pair) for pair in zip(regular, spammy, strict=True)
    )
    bid = np.maximum(bid, 1.0)
    spam = np.repeat([False, True], [regular[0].size, spammy[0].size])
    letter_skill = _letter_skill(rng, fl, jobs, job, freelancer, spam)
    variant = rng.integers(0, vocab.LETTER_VARIANTS, job.size)
    # one proposal per freelancer and job (the earliest), nothing after the end, in time order
    order = np.lexsort((time, freelancer, job))
    first_pair = np.ones(order.size, dtype=bool)
    first_pair[1:] = (np.diff(job[order]) != 0) | (np.diff(freelancer[order]) != 0)
    keep = order[first_pair & (time[order] < end)]
    keep = keep[np.argsort(time[keep], kind="stable")]
    return Proposals(
        time[keep],
        job[keep],
        freelancer[keep],
        bid[keep],
        spam[keep],
        letter_skill[keep],
        variant[keep],
    )


def _share_25_in_24h(jobs: Jobs, props: Proposals, end: int) -> float:
    """Share of jobs with 25+ proposals in their first 24h, among jobs whose 24h is complete."""
    complete = jobs.time + DAY <= end
    if not complete.any():
        complete[:] = True
    within = props.time - jobs.time[props.job] < DAY
    counts = np.bincount(props.job[within], minlength=len(jobs))
    return float((counts[complete] >= 25).mean()) if len(jobs) else 0.0
