"""The marketplace simulator: valid, deterministic, sorted, and learnable."""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from bestmatch.simulator import SimulationReport, simulate
from bestmatch.simulator import vocabulary as vocab
from features.events import (
    FreelancerProfile,
    JobPosted,
    ProposalAction,
    ProposalSubmitted,
    Rejection,
    format_time,
    parse_event,
)

SMALL = {"days": 2, "jobs_per_day": 50}


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data.splitlines()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationReport, list[bytes]]:
    out = tmp_path_factory.mktemp("clean") / "events.jsonl"
    report = simulate(seed=7, out=out, **SMALL)
    return report, _lines(out)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> list:
    """A bigger run, parsed, for the behavioural checks."""
    out = tmp_path_factory.mktemp("market") / "events.jsonl"
    simulate(days=4, seed=3, out=out, jobs_per_day=150)
    events = [parse_event(line) for line in _lines(out)]
    assert not any(isinstance(e, Rejection) for e in events)
    return events


def test_every_line_of_a_default_run_is_a_valid_event(clean):
    report, lines = clean
    events = [parse_event(line) for line in lines]
    rejected = [e for e in events if isinstance(e, Rejection)]
    assert rejected == []
    assert len({e.event_id for e in events}) == len(events) == report.events
    assert Counter(e.event_type for e in events) == report.counts
    assert report.duplicates == report.invalid == 0
    assert report.counts["proposal_submitted"] > 25 * report.jobs
    assert all(count > 0 for count in report.actions.values())
    assert report.bytes == sum(len(line) + 1 for line in lines)


def test_times_are_sorted_rfc3339_milliseconds_in_utc(clean):
    _, lines = clean
    events = [parse_event(line) for line in lines]
    times = [e.event_time for e in events]
    assert times == sorted(times)
    for line, event in zip(lines[:500], events[:500], strict=True):
        assert orjson.loads(line)["event_time"] == format_time(event.event_time)
        assert event.event_time % 1000 == 0
    assert min(times) >= 1_767_571_200_000_000  # the default start, 2026-01-05T00:00Z
    assert max(times) < 1_767_571_200_000_000 + 2 * 86_400_000_000


def test_ids_follow_the_house_shapes(clean):
    _, lines = clean
    first = {orjson.loads(line)["event_type"]: orjson.loads(line) for line in lines}
    proposal = first["proposal_submitted"]
    assert proposal["freelancer_id"].startswith("f-") and len(proposal["freelancer_id"]) == 8
    assert proposal["job_id"].startswith("j-") and len(proposal["job_id"]) == 9
    assert proposal["client_id"].startswith("c-") and len(proposal["client_id"]) == 7
    assert proposal["proposal_id"].startswith("p-")
    assert proposal["event_id"].startswith("e-")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, clean):
    report, lines = clean
    again = tmp_path / "again.jsonl"
    simulate(seed=7, out=again, **SMALL)
    assert again.read_bytes() == report.path.read_bytes()
    other = tmp_path / "other.jsonl"
    simulate(seed=8, out=other, **SMALL)
    assert other.read_bytes() != again.read_bytes()


def test_gzip_output_is_deterministic_and_holds_the_same_lines(tmp_path, clean):
    _, lines = clean
    first, second = tmp_path / "a" / "events.jsonl.gz", tmp_path / "b" / "events.jsonl.gz"
    simulate(seed=7, out=first, **SMALL)
    simulate(seed=7, out=second, **SMALL)
    assert first.read_bytes()[:2] == b"\x1f\x8b"
    assert first.read_bytes() == second.read_bytes()
    assert _lines(first) == lines


def test_dirty_mode_adds_duplicates_and_rejected_lines_only(tmp_path, clean):
    _, clean_lines = clean
    out = tmp_path / "dirty.jsonl"
    report = simulate(seed=7, out=out, dirty=True, **SMALL)
    lines = _lines(out)
    assert report.events == len(lines)
    assert report.duplicates > 0 and report.invalid > 0
    rejected = [line for line in lines if isinstance(parse_event(line), Rejection)]
    assert len(rejected) == report.invalid
    valid = [line for line in lines if not isinstance(parse_event(line), Rejection)]
    repeated = [line for line, count in Counter(valid).items() if count > 1]
    assert sum(Counter(valid)[line] - 1 for line in repeated) == report.duplicates
    # without the repeats, the valid lines are exactly the clean run, in the same order
    assert list(dict.fromkeys(valid)) == clean_lines
    # a duplicate arrives within seconds of event time of the original
    seen: dict[str, int] = {}
    newest = 0
    for line in valid:
        event = parse_event(line)
        assert not isinstance(event, Rejection)
        if event.event_id in seen:
            assert newest - event.event_time <= 5_000_000
        seen[event.event_id] = event.event_time
        newest = max(newest, event.event_time)
    reasons = {parse_event(line).reason.split(":")[0] for line in rejected}  # type: ignore[union-attr]
    assert len(reasons) >= 3


def test_most_jobs_get_25_proposals_in_their_first_day(clean):
    report, lines = clean
    assert report.share_25_in_24h > 0.6
    events = [parse_event(line) for line in lines]
    posted = {e.job_id: e.event_time for e in events if isinstance(e, JobPosted)}
    day = 86_400_000_000
    counts = Counter(
        e.job_id
        for e in events
        if isinstance(e, ProposalSubmitted) and e.event_time - posted[e.job_id] < day
    )
    complete = [job for job, at in posted.items() if at + day <= max(posted.values()) + 1]
    share = sum(counts[job] >= 25 for job in complete) / len(complete)
    assert share > 0.6


def test_actions_follow_a_plausible_order(market):
    proposals = {e.proposal_id: e for e in market if isinstance(e, ProposalSubmitted)}
    seen: dict[str, list[str]] = defaultdict(list)
    hires: Counter[str] = Counter()
    for event in market:
        if isinstance(event, ProposalAction):
            proposal = proposals[event.proposal_id]
            assert proposal.event_time < event.event_time
            assert (event.job_id, event.client_id, event.freelancer_id) == (
                proposal.job_id,
                proposal.client_id,
                proposal.freelancer_id,
            )
            seen[event.proposal_id].append(event.action)
            hires[event.job_id] += event.action == "hired"
    order = ["viewed", "shortlisted", "messaged", "hired"]
    for actions in seen.values():
        assert actions[0] == "viewed"
        assert len(actions) == len(set(actions))
        if "archived" in actions:
            assert actions == ["viewed", "archived"]
        else:
            assert actions == order[: len(actions)]
    assert max(hires.values()) == 1
    posted = {e.job_id for e in market if isinstance(e, JobPosted)}
    assert 0.2 < sum(hires.values()) / len(posted) < 0.95


def test_every_freelancer_publishes_a_profile_before_proposing(market):
    profiled: set[str] = set()
    for event in market:
        if isinstance(event, FreelancerProfile):
            profiled.add(event.freelancer_id)
            assert event.job_success is None or 0 <= event.job_success <= 100
        elif isinstance(event, ProposalSubmitted):
            assert event.freelancer_id in profiled


def _outcomes(events: list) -> list[tuple[float, float, bool, bool]]:
    """Per proposal: skill overlap, bid / budget_max, shortlisted, hired."""
    skills: dict[str, set[str]] = {}
    jobs: dict[str, JobPosted] = {}
    rows: dict[str, list] = {}
    for event in events:
        if isinstance(event, FreelancerProfile):
            skills[event.freelancer_id] = set(event.skills)
        elif isinstance(event, JobPosted):
            jobs[event.job_id] = event
        elif isinstance(event, ProposalSubmitted):
            job = jobs[event.job_id]
            overlap = len(skills[event.freelancer_id] & set(job.skills)) / len(job.skills)
            rows[event.proposal_id] = [overlap, event.bid_amount / job.budget_max, False, False]
        elif isinstance(event, ProposalAction) and event.action in ("shortlisted", "hired"):
            rows[event.proposal_id][2 if event.action == "shortlisted" else 3] = True
    return [tuple(row) for row in rows.values()]


def _rate(rows: list, keep, column: int) -> float:
    picked = [row for row in rows if keep(row)]
    assert len(picked) > 200
    return sum(row[column] for row in picked) / len(picked)


def test_clients_favour_skill_overlap_and_bids_within_budget(market):
    rows = _outcomes(market)
    for column in (2, 3):  # shortlisted, hired
        high = _rate(rows, lambda r: r[0] >= 0.67, column)
        low = _rate(rows, lambda r: r[0] < 0.34, column)
        assert high > 2 * low
        within = _rate(rows, lambda r: 0.5 <= r[1] <= 1.0, column)
        over = _rate(rows, lambda r: r[1] > 1.3, column)
        assert within > 1.5 * over


def test_spam_bursts_are_short_near_identical_and_rarely_shortlisted(market):
    by_freelancer: dict[str, list[ProposalSubmitted]] = defaultdict(list)
    for event in market:
        if isinstance(event, ProposalSubmitted):
            by_freelancer[event.freelancer_id].append(event)
    hour = 3_600_000_000
    bursty = {
        f
        for f, props in by_freelancer.items()
        if any(b.event_time - a.event_time < hour for a, b in zip(props, props[8:], strict=False))
    }
    assert bursty
    for freelancer in bursty:
        letters = {p.cover_letter.split(" ")[0] for p in by_freelancer[freelancer]}
        assert len(letters) <= 2
        assert max(len(p.cover_letter) for p in by_freelancer[freelancer]) < 120


def test_progress_reports_lines_written(tmp_path):
    seen: list[int] = []
    report = simulate(seed=1, out=tmp_path / "e.jsonl", progress=seen.append, **SMALL)
    assert seen and seen == sorted(seen) and seen[-1] == report.events
    labels = [label for label, _ in report.rows()]
    assert "events/s" in labels and "jobs with 25+ proposals in 24h" in labels
    assert all(isinstance(value, str) for _, value in report.rows())


def test_start_is_respected_and_must_be_aware(tmp_path):
    start = datetime(2026, 3, 1, 12, tzinfo=UTC)
    out = tmp_path / "e.jsonl"
    report = simulate(days=1, seed=1, out=out, jobs_per_day=20, start=start)
    first = parse_event(_lines(out)[0])
    assert not isinstance(first, Rejection)
    assert first.event_time >= int(start.timestamp()) * 1_000_000
    assert report.start == start
    with pytest.raises(ValueError, match="timezone-aware"):
        simulate(days=1, seed=1, out=out, start=datetime(2026, 3, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="days"):
        simulate(days=0, seed=1, out=out)


def test_text_fragments_need_no_json_escaping():
    fragments = [
        *vocab.SKILLS,
        *vocab.OPENERS,
        *vocab.BODIES,
        *vocab.MIDDLES,
        *vocab.CLOSINGS,
        *vocab.SPAM,
        *vocab.SPAM_ENDINGS,
    ]
    assert all(vocab.json_safe(text) for text in fragments)
