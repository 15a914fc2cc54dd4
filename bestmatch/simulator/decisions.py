"""How the simulated clients decide on proposals, and how freelancers' profiles follow.

Clients decide from what the features (docs/contract.md §2) can see — skill overlap between
freelancer and job, bid against budget, the freelancer's shortlists and hires of the last 30 days,
job_success, top_rated, a burst of proposals in the last hour or day, the competition on the job —
plus a hidden quality that no feature shows. So a ranker trained on the features has something
real to learn, and cannot learn everything.
"""

from __future__ import annotations

import numpy as np

from bestmatch.simulator.market import (
    ARCHIVED,
    DAY,
    HIRED,
    HOUR,
    MESSAGED,
    MINUTE,
    SECOND,
    SHORTLISTED,
    VIEWED,
    Actions,
    Freelancers,
    Jobs,
    Profiles,
    Proposals,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _recent_counts(owner: np.ndarray, time: np.ndarray, window: int, span: int) -> np.ndarray:
    """For each event, how many events of the same owner fall in [time - window, time]."""
    key = owner.astype(np.int64) * span + time
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    counts = np.empty(key.size, dtype=np.int64)
    counts[order] = (
        np.arange(key.size) + 1 - np.searchsorted(sorted_key, sorted_key - window, side="left")
    )
    return counts


def proposal_signals(
    fl: Freelancers, jobs: Jobs, props: Proposals, start: int, end: int
) -> dict[str, np.ndarray]:
    """What the features can see of each proposal, when the client looks at it."""
    span = end - start + 8 * DAY
    rel = props.time - start
    job_skills = np.packbits(jobs.skills, axis=1)[props.job]
    shared = np.bitwise_count(np.packbits(fl.skills, axis=1)[props.freelancer] & job_skills)
    overlap = shared.sum(axis=1) / np.maximum(np.bitwise_count(job_skills).sum(axis=1), 1)
    within_24h = props.time - jobs.time[props.job] < DAY
    per_job = np.bincount(props.job[within_24h], minlength=len(jobs))
    by_job = np.lexsort((props.time, props.job))
    position = np.empty(len(props), dtype=np.int64)
    position[by_job] = np.arange(len(props)) - np.searchsorted(props.job[by_job], props.job[by_job])
    return {
        "overlap": overlap,
        "bid_ratio": props.bid / np.maximum(jobs.budget_max[props.job], 1.0),
        "proposals_1h": _recent_counts(props.freelancer, rel, HOUR, span),
        "proposals_24h": _recent_counts(props.freelancer, rel, DAY, span),
        "job_proposals": np.maximum(per_job[props.job], 1),
        "position": position / np.maximum(per_job[props.job], 1),
    }


def _delay(rng: np.random.Generator, median: float, size: int) -> np.ndarray:
    """Log-normal waits (ms) of the given median, at least a few seconds."""
    return 5 * SECOND + rng.lognormal(np.log(median), 1.0, size)


def _recent_record(past: list[tuple[np.ndarray, np.ndarray]], now: int, n: int) -> np.ndarray:
    """Per freelancer, how many of the past (freelancer, time) actions fall in the last 30 days."""
    counts = np.zeros(n, dtype=np.int64)
    for who, time in past:
        counts += np.bincount(who[(time < now) & (time >= now - 30 * DAY)], minlength=n)
    return counts


def client_actions(
    rng: np.random.Generator,
    fl: Freelancers,
    jobs: Jobs,
    props: Proposals,
    engagement: np.ndarray,
    latency: np.ndarray,
    start: int,
    end: int,
) -> Actions:
    sig = proposal_signals(fl, jobs, props, start, end)
    post_day = (jobs.time[props.job] - start) // DAY
    by_day = np.argsort(post_day, kind="stable")
    bounds = np.searchsorted(post_day[by_day], np.arange(post_day.max(initial=0) + 2))
    js = np.nan_to_num(fl.job_success, nan=0.0)
    new = np.isnan(fl.job_success)
    top_rated = ~new & (fl.job_success >= 90) & (fl.earned >= 10_000)
    times: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    history: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {SHORTLISTED: [], HIRED: []}
    for day in range(len(bounds) - 1):
        r = by_day[bounds[day] : bounds[day + 1]]
        if r.size == 0:
            continue
        # the freelancer's track record as of the start of the post's day
        day_start = start + day * DAY
        record = {code: _recent_record(past, day_start, len(fl)) for code, past in history.items()}
        f, job, m = props.freelancer[r], props.job[r], r.size
        ratio = np.clip(sig["bid_ratio"][r], 0.0, 3.0)
        score = (
            2.2 * (sig["overlap"][r] - 0.5)
            - 0.8 * (ratio - 0.8)
            - 2.0 * np.maximum(ratio - 1.0, 0.0)
            - 1.5 * np.maximum(0.25 - ratio, 0.0)
            + 0.35 * np.log1p(record[SHORTLISTED][f])
            + 0.7 * np.log1p(record[HIRED][f])
            + np.where(new[f], -0.2, 0.035 * (js[f] - 88))
            + 0.5 * top_rated[f]
            - 0.5 * np.log1p(np.maximum(sig["proposals_1h"][r] - 3, 0))
            - 0.3 * np.log1p(np.maximum(sig["proposals_24h"][r] - 15, 0))
            + 0.8 * fl.quality[f]
        )
        crowd = np.log(sig["job_proposals"][r] / 30)
        client = jobs.client[job]
        draws = rng.random((5, m))
        viewed = draws[0] < _sigmoid(
            0.4 + 0.5 * score - 0.5 * crowd - 1.0 * sig["position"][r] + engagement[client]
        )
        shortlisted = viewed & (draws[1] < _sigmoid(-2.5 + 1.2 * score - 0.4 * crowd))
        archived = viewed & ~shortlisted & (draws[2] < _sigmoid(-0.6 - 0.9 * score))
        messaged = shortlisted & (draws[3] < _sigmoid(-1.2 + 0.8 * score))
        # at most one hire per job: the client's favourite among those messaged, if any
        appeal = np.where(messaged, 1.5 * score + rng.gumbel(size=m), -np.inf)
        order = np.lexsort((-appeal, job))
        top = np.zeros(m, dtype=bool)
        top[order[np.r_[True, job[order][1:] != job[order][:-1]]]] = True
        hired = top & messaged & (draws[4] < 0.8)

        t_view = props.time[r] + (_delay(rng, 40 * MINUTE, m) * latency[client]).astype(np.int64)
        t_short = t_view + _delay(rng, 8 * MINUTE, m).astype(np.int64)
        t_arch = t_view + _delay(rng, 3 * MINUTE, m).astype(np.int64)
        t_msg = t_short + _delay(rng, 45 * MINUTE, m).astype(np.int64)
        t_hire = t_msg + _delay(rng, 6 * HOUR, m).astype(np.int64)
        for code, mask, t in (
            (VIEWED, viewed, t_view),
            (SHORTLISTED, shortlisted, t_short),
            (ARCHIVED, archived, t_arch),
            (MESSAGED, messaged, t_msg),
            (HIRED, hired, t_hire),
        ):
            mask = mask & (t < end)
            times.append(t[mask])
            rows.append(r[mask])
            codes.append(np.full(int(mask.sum()), code, dtype=np.int8))
            if code in history:
                history[code].append((props.freelancer[r[mask]], t[mask]))
    if not times:
        return Actions(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8))
    return Actions(np.concatenate(times), np.concatenate(rows), np.concatenate(codes))


def hire_earnings(
    rng: np.random.Generator, jobs: Jobs, props: Proposals, hired: np.ndarray
) -> np.ndarray:
    """What each hire pays: the fixed bid, or the hourly bid times the hours worked."""
    hours = rng.lognormal(np.log(20.0), 0.7, hired.size)
    bid = props.bid[hired]
    return np.where(jobs.hourly[props.job[hired]], bid * hours, bid)


def profile_updates(
    rng: np.random.Generator,
    fl: Freelancers,
    jobs: Jobs,
    props: Proposals,
    acts: Actions,
    start: int,
    end: int,
) -> Profiles:
    n = len(fl)
    # everyone publishes once in the first minute (before any job is posted), then now and then
    updates = rng.poisson((end - start) / (10 * DAY), n)
    who = np.concatenate([np.arange(n), np.repeat(np.arange(n), updates)])
    time = np.concatenate(
        [
            start + rng.integers(0, MINUTE, n),
            rng.integers(start + HOUR, max(end, start + HOUR + 1), updates.sum()),
        ]
    )
    keep = time < end
    who, time = who[keep], time[keep]

    # hires before each publication raise total_earned, rate and (with quality) job_success
    hired = acts.proposal[acts.action == HIRED]
    hire_f, hire_t = props.freelancer[hired], acts.time[acts.action == HIRED]
    pay = hire_earnings(rng, jobs, props, hired)
    span = end - start + DAY
    key = hire_f * span + (hire_t - start)
    order = np.argsort(key, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(pay[order])])
    at = np.searchsorted(key[order], who * span + (time - start), side="right")
    since = np.searchsorted(key[order], who * span)
    hires = at - since
    earned = np.round(fl.earned[who] + cum[at] - cum[since], 2)
    fresh = np.clip(np.round(84 + 6 * fl.quality[who] + rng.normal(0.0, 3.0, who.size)), 40, 100)
    base = np.where(np.isnan(fl.job_success[who]) & (hires > 0), fresh, fl.job_success[who])
    job_success = np.clip(np.round(base + np.minimum(hires, 5) * fl.quality[who]), 0, 100)
    rate = np.round(
        fl.rate[who] * (1 + 0.03 * np.minimum(hires, 5)) * rng.lognormal(0.0, 0.03, who.size), 2
    )
    rate[time < start + MINUTE] = fl.rate[who[time < start + MINUTE]]
    top_rated = (job_success >= 90) & (earned >= 10_000)
    return Profiles(time, who, rate, job_success, earned, top_rated)
