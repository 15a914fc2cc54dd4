"""The simulated market's events as JSON Lines, in time order: rendered chunk by chunk from the
columns with polars string kernels, with duplicates and invalid events slotted in when dirty."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import numpy as np
import orjson
import polars as pl

from bestmatch.simulator import behaviour as mb
from bestmatch.simulator import vocabulary as vocab

EXPERIENCE_LEVELS = ("entry", "intermediate", "expert")
EVENT_TYPES = ("freelancer_profile", "job_posted", "proposal_submitted", "proposal_action")
DUPLICATE_RATE = 0.01
INVALID_RATE = 0.006
_CHUNK = 100_000
_THREADS = 2

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"  # what features.events.format_time writes for whole ms


def _id(column: str | pl.Expr, prefix: str, width: int) -> list[str | pl.Expr]:
    """`prefix` + the 1-based number in `column`, zero-padded: f-000001, j-0000001, ..."""
    number = pl.col(column) if isinstance(column, str) else column
    return [f'"{prefix}-', (number + 1).cast(pl.String).str.zfill(width), '"']


def _lines(frame: pl.DataFrame, event_type: str, *parts: str | pl.Expr) -> pl.Series:
    """One JSON line per row: the common head, then `parts` (JSON-safe literals and columns)."""
    head = [
        '{"event_id":',
        *_id("position", "e", 8),
        f',"event_type":"{event_type}"',
        ',"event_time":"',
        pl.col("ms").cast(pl.Datetime("ms")).dt.strftime(_TIME_FORMAT),
        '"',
    ]
    pieces = [pl.lit(p) if isinstance(p, str) else p for p in (*head, *parts, "}")]
    return frame.select(pl.concat_str(pieces).alias("line")).to_series()


@dataclass(frozen=True, slots=True)
class _Chunk:
    lines: pl.Series
    duplicates: int
    invalid: int


class EventWriter:
    """Renders the market's events in time order, chunk by chunk, with polars string kernels
    (the Python-level f-string per event was 5x slower); dirty lines are slotted in per chunk."""

    def __init__(self, market: mb.Market, dirty_seed: int | None) -> None:
        self.market = market
        self.written = self.duplicates = self.invalid = 0
        fl = market.freelancers
        self.fl_skills = [[vocab.SKILLS[s] for s in np.flatnonzero(row)] for row in fl.skills]
        self.countries = [vocab.COUNTRY_CODES[c] for c in fl.country]
        letters = [
            vocab.letter_parts(spam, *code)
            for spam, code in zip(fl.spammer.tolist(), fl.letter.tolist(), strict=True)
        ]
        self.letter_heads = pl.Series([head for head, _ in letters])
        self.letter_endings = pl.Series([end for _, endings in letters for end in endings])
        self.skill_names = pl.Series(vocab.SKILLS)
        self.action_names = pl.Series(mb.ACTION_NAMES)
        tables = (
            market.profiles.time,
            market.jobs.time,
            market.proposals.time,
            market.actions.time,
        )
        kind = np.concatenate([np.full(t.size, k, dtype=np.int8) for k, t in enumerate(tables)])
        row = np.concatenate([np.arange(t.size) for t in tables])
        times = np.concatenate(tables)
        order = np.argsort(times, kind="stable")  # ties: profiles, jobs, proposals, actions
        self.kind, self.row, self.times = kind[order], row[order], times[order]
        self.counts = {name: int(t.size) for name, t in zip(EVENT_TYPES, tables, strict=True)}
        codes = np.bincount(market.actions.action, minlength=len(mb.ACTION_NAMES))
        self.action_counts = {name: int(codes[i]) for i, name in enumerate(mb.ACTION_NAMES)}
        self.dirty_seed = dirty_seed
        empty = np.empty(0, dtype=np.int64)
        self.dup_source, self.dup_after, self.bad = empty, empty, empty
        if dirty_seed is not None:
            self._plan_dirt(np.random.default_rng([dirty_seed, 1]))

    def _plan_dirt(self, rng: np.random.Generator) -> None:
        n = self.times.size
        dups = np.sort(rng.choice(n, int(n * DUPLICATE_RATE), replace=False))
        # a duplicate goes after the last event within 0.5-5 s of event time of its original
        target = self.times[dups] + rng.integers(500, 5000, dups.size)
        after = np.maximum(np.searchsorted(self.times, target, side="right") - 1, dups)
        by_after = np.argsort(after, kind="stable")
        self.dup_source, self.dup_after = dups[by_after], after[by_after]
        self.bad = np.sort(rng.choice(n, int(n * INVALID_RATE), replace=False))

    def write(self, sink: IO[bytes]) -> Iterator[int]:
        """Write every line; yield the count so far after each chunk. Two chunks render at once
        (polars releases the GIL), a bounded few ahead of the one being written."""
        starts = range(0, self.times.size, _CHUNK)
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            ahead: deque[Future[_Chunk]] = deque()
            for begin in starts:
                ahead.append(pool.submit(self._chunk, begin, min(begin + _CHUNK, self.times.size)))
                if len(ahead) > _THREADS:
                    yield self._flush(ahead.popleft().result(), sink)
            while ahead:
                yield self._flush(ahead.popleft().result(), sink)

    def _flush(self, chunk: _Chunk, sink: IO[bytes]) -> int:
        chunk.lines.to_frame().write_csv(sink, include_header=False, quote_style="never")
        self.written += chunk.lines.len()
        self.duplicates += chunk.duplicates
        self.invalid += chunk.invalid
        return self.written

    def _chunk(self, begin: int, end: int) -> _Chunk:
        """Lines of sorted positions [begin, end), each duplicate after its slot, each invalid
        line right after the valid line it was made from. Depends on nothing but its range."""
        d0, d1 = np.searchsorted(self.dup_after, [begin, end])
        b0, b1 = np.searchsorted(self.bad, [begin, end])
        valid = np.arange(begin, end)
        position = np.concatenate([valid, self.dup_source[d0:d1], self.bad[b0:b1]])
        slot = np.concatenate([valid * 3, self.dup_after[d0:d1] * 3 + 1, self.bad[b0:b1] * 3 + 2])
        parts = []
        renderers = (self._profiles, self._jobs, self._proposals, self._actions)
        for kind, render in enumerate(renderers):
            where = np.flatnonzero(self.kind[position] == kind)
            if where.size:
                frame = pl.DataFrame(
                    {
                        "position": position[where],
                        "ms": self.times[position[where]],
                        "row": self.row[position[where]],
                    }
                )
                parts.append(pl.DataFrame({"line": render(frame), "slot": slot[where]}))
        lines = pl.concat(parts).sort("slot", maintain_order=True)["line"]
        if b1 > b0:
            rng = np.random.default_rng([self.dirty_seed, begin])
            at = np.flatnonzero(slot[np.argsort(slot, kind="stable")] % 3 == 2)
            broken = [
                corrupt(line, rng, number)
                for line, number in zip(lines.gather(at).to_list(), self.bad[b0:b1], strict=True)
            ]
            lines = lines.scatter(at, broken)
        return _Chunk(lines, int(d1 - d0), int(b1 - b0))

    def _profiles(self, frame: pl.DataFrame) -> pl.Series:
        p = self.market.profiles
        rows = frame["row"].to_numpy()
        return pl.Series(
            [
                orjson.dumps(
                    {
                        "event_id": f"e-{position + 1:08d}",
                        "event_type": "freelancer_profile",
                        "event_time": ts,
                        "freelancer_id": f"f-{f + 1:06d}",
                        "country": self.countries[f],
                        "hourly_rate": rate,
                        "skills": self.fl_skills[f],
                        "job_success": None if js != js else js,
                        "total_earned": earned,
                        "top_rated": top,
                    }
                ).decode()
                for position, ts, f, rate, js, earned, top in zip(
                    frame["position"].to_list(),
                    _stamps(frame),
                    p.freelancer[rows].tolist(),
                    p.rate[rows].tolist(),
                    p.job_success[rows].tolist(),
                    p.earned[rows].tolist(),
                    p.top_rated[rows].tolist(),
                    strict=True,
                )
            ],
            dtype=pl.String,
        )

    def _jobs(self, frame: pl.DataFrame) -> pl.Series:
        j = self.market.jobs
        return pl.Series(
            [
                orjson.dumps(
                    {
                        "event_id": f"e-{position + 1:08d}",
                        "event_type": "job_posted",
                        "event_time": ts,
                        "job_id": f"j-{job + 1:07d}",
                        "client_id": f"c-{j.client[job] + 1:05d}",
                        "title": vocab.job_title(
                            int(j.level[job]),
                            int(j.title_skill[job]),
                            int(j.category[job]),
                            int(j.project[job]),
                        ),
                        "skills": [vocab.SKILLS[s] for s in np.flatnonzero(j.skills[job])],
                        "budget_type": "hourly" if j.hourly[job] else "fixed",
                        "budget_min": float(j.budget_min[job]),
                        "budget_max": float(j.budget_max[job]),
                        "experience_level": EXPERIENCE_LEVELS[j.level[job]],
                        "category": vocab.CATEGORY_NAMES[j.category[job]],
                    }
                ).decode()
                for position, ts, job in zip(
                    frame["position"].to_list(), _stamps(frame), frame["row"].to_list(), strict=True
                )
            ],
            dtype=pl.String,
        )

    def _proposals(self, frame: pl.DataFrame) -> pl.Series:
        p = self.market.proposals
        rows = frame["row"].to_numpy()
        frame = frame.with_columns(
            job=p.job[rows],
            client=self.market.jobs.client[p.job[rows]],
            freelancer=p.freelancer[rows],
            bid=p.bid[rows],
            skill=p.letter_skill[rows],
            ending=p.freelancer[rows] * vocab.LETTER_VARIANTS + p.letter_variant[rows],
        )
        # the cover letter's pieces are JSON-safe by construction (vocab.json_safe)
        return _lines(
            frame,
            "proposal_submitted",
            ',"proposal_id":',
            *_id("row", "p", 8),
            ',"job_id":',
            *_id("job", "j", 7),
            ',"client_id":',
            *_id("client", "c", 5),
            ',"freelancer_id":',
            *_id("freelancer", "f", 6),
            ',"bid_amount":',
            pl.col("bid").cast(pl.String),
            ',"cover_letter":"',
            pl.lit(self.letter_heads).gather(pl.col("freelancer")),
            pl.lit(self.skill_names).gather(pl.col("skill")),
            pl.lit(self.letter_endings).gather(pl.col("ending")),
            '"',
        )

    def _actions(self, frame: pl.DataFrame) -> pl.Series:
        a, p = self.market.actions, self.market.proposals
        proposal = a.proposal[frame["row"].to_numpy()]
        frame = frame.with_columns(
            proposal=proposal,
            job=p.job[proposal],
            client=self.market.jobs.client[p.job[proposal]],
            freelancer=p.freelancer[proposal],
            action=a.action[frame["row"].to_numpy()],
        )
        return _lines(
            frame,
            "proposal_action",
            ',"proposal_id":',
            *_id("proposal", "p", 8),
            ',"job_id":',
            *_id("job", "j", 7),
            ',"client_id":',
            *_id("client", "c", 5),
            ',"freelancer_id":',
            *_id("freelancer", "f", 6),
            ',"action":"',
            pl.lit(self.action_names).gather(pl.col("action")),
            '"',
        )


def _stamps(frame: pl.DataFrame) -> list[str]:
    return (
        frame.select(pl.col("ms").cast(pl.Datetime("ms")).dt.strftime(_TIME_FORMAT))
        .to_series()
        .to_list()
    )


_TYPE_FIELDS = {  # a required field to drop, per event type
    "freelancer_profile": "country",
    "job_posted": "budget_type",
    "proposal_submitted": "freelancer_id",
    "proposal_action": "action",
}


def corrupt(line: str, rng: np.random.Generator, number: int) -> str:
    """An invalid variant of a valid event line, one broken rule of docs/contract.md §1."""
    event = orjson.loads(line)
    event["event_id"] = f"x-{number:08d}"  # never the id of a valid event
    kind = event["event_type"]
    breakers: list[Callable[[dict], str]] = [
        lambda e: orjson.dumps(e).decode()[: rng.integers(5, 60)],  # cut short: bad JSON
        lambda e: _dumps({**e, "event_type": "job_deleted"}),
        lambda e: _dumps({k: v for k, v in e.items() if k != _TYPE_FIELDS[kind]}),
        lambda e: _dumps({**e, "event_time": e["event_time"].removesuffix("Z")}),
        lambda e: _dumps({**e, "event_id": "e-" + "9" * 200}),
        lambda e: "[" + _dumps(e) + "]",
    ]
    if kind == "proposal_submitted":
        breakers += [
            lambda e: _dumps({**e, "bid_amount": -abs(e["bid_amount"])}),
            lambda e: _dumps({**e, "bid_amount": 0}).replace('"bid_amount":0', '"bid_amount":NaN'),
            lambda e: _dumps({**e, "bid_amount": str(e["bid_amount"])}),
            lambda e: _dumps({**e, "job_id": "j-" + "0" * 130}),
            lambda e: _dumps({**e, "cover_letter": "spam " * 2500}),
        ]
    elif kind == "proposal_action":
        breakers += [
            lambda e: _dumps({**e, "action": "liked"}),
            lambda e: _dumps({**e, "proposal_id": ""}),
        ]
    elif kind == "job_posted":
        breakers += [
            lambda e: _dumps({**e, "budget_min": e["budget_max"] + 10}),
            lambda e: _dumps({**e, "skills": "python"}),
            lambda e: _dumps({**e, "experience_level": "guru"}),
        ]
    else:
        breakers += [
            lambda e: _dumps({**e, "job_success": 140}),
            lambda e: _dumps({**e, "country": "usa"}),
            lambda e: _dumps({**e, "top_rated": "yes"}),
            lambda e: _dumps({**e, "hourly_rate": -1}),
        ]
    return breakers[int(rng.integers(len(breakers)))](event)


def _dumps(event: dict) -> str:
    return orjson.dumps(event).decode()
