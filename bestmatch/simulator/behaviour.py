"""How the simulated marketplace behaves: who is on it, what they post, bid and decide.

Everything is drawn columnar with numpy from one Generator in a fixed order, so one seed gives one
market. Times are integer milliseconds since the Unix epoch, UTC.

Clients decide on proposals from what the features (docs/contract.md §2) can see — skill overlap
between freelancer and job, bid against budget, the freelancer's shortlists and hires of the last
30 days, job_success, top_rated, a burst of proposals in the last hour or day, the competition on
the job — plus a hidden quality that no feature shows. So a ranker trained on the features has
something real to learn, and cannot learn everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bestmatch.simulator import vocabulary as vocab

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

VIEWED, SHORTLISTED, MESSAGED, ARCHIVED, HIRED = range(5)
ACTION_NAMES = ("viewed", "shortlisted", "messaged", "archived", "hired")

_MEAN_PROPOSALS = 44.0  # regular proposals per job before the level's pull
_LEVEL_PULL = np.array([1.25, 1.0, 0.75])  # entry-level posts draw more proposals
_HOUR_WEIGHTS = 1.0 + 0.7 * np.cos(2 * np.pi * (np.arange(24) - 16) / 24)  # US/EU working day
_SPAM_BURSTS_PER_DAY = 0.35
_MAX_SKILLS_PER_FREELANCER = 10


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
    actions = _actions(
        rng, freelancers, jobs, proposals, client_engagement, client_latency, start, end
    )
    profiles = _profiles(rng, freelancers, jobs, proposals, actions, start, end)
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


def _actions(
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


def _profiles(
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


def _share_25_in_24h(jobs: Jobs, props: Proposals, end: int) -> float:
    """Share of jobs with 25+ proposals in their first 24h, among jobs whose 24h is complete."""
    complete = jobs.time + DAY <= end
    if not complete.any():
        complete[:] = True
    within = props.time - jobs.time[props.job] < DAY
    counts = np.bincount(props.job[within], minlength=len(jobs))
    return float((counts[complete] >= 25).mean()) if len(jobs) else 0.0
