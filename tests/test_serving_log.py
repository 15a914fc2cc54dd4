"""The serving log: its wire to the writer process, and the writer: rows converted a chunk of
requests at a time, written together.

Real Delta tables in a temp folder; requests built as the service builds them (no store needed:
the values are what a request would have read).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from serving.priority import autogroup_nice
from serving.schemas import RankRequest
from serving.serving_log import (
    BEHIND_S,
    CAUGHT_UP_S,
    SCHEMA,
    WRITER_NICE,
    CatchUp,
    Decoder,
    Encoder,
    ServedRequest,
    ServingLog,
    rows_of,
    rows_table,
)


def served(k: int, proposals: int = 3, skills: Any = ("python", "sql")) -> ServedRequest:
    request = RankRequest.model_validate(
        {
            "job_id": f"j-{k}",
            "client_id": f"c-{k}",
            "proposals": [
                {"proposal_id": f"p-{k}-{i}", "freelancer_id": f"f-{i}", "bid_amount": 10.0 + i}
                for i in range(proposals)
            ],
        }
    )
    freelancers = {
        f"f-{i}": {"fl_skills": skills, "fl_hourly_rate": 20.0 + i} for i in range(proposals)
    }
    return ServedRequest(
        1_764_000_000_000_000 + k,
        request,
        "3",
        False,
        {"job_proposals_1h": k},
        freelancers,
        np.linspace(0.0, 1.0, proposals),
        np.arange(1, proposals + 1),
    )


def read(uri: Path) -> pa.Table:
    return DeltaTable(str(uri)).to_pyarrow_table().select(SCHEMA.names).sort_by("served_at")


class Counts:
    """What the log reports: rows written and rows dropped, per call."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.dropped: list[int] = []

    def log(self, uri: Path, **options: Any) -> ServingLog:
        """A log that writes only when closed (unless `options` say otherwise), counted here."""
        given: dict[str, Any] = {"batch_rows": 10_000, "flush_s": 60.0, "max_queued": 100}
        return ServingLog(
            str(uri),
            on_written=self.written.append,
            on_dropped=self.dropped.append,
            **(given | options),
        )


def offer_all(uri: Path, requests: list[ServedRequest], chunk_requests: int) -> Counts:
    """Offer every request to a log that writes only at close, then close it."""
    counts = Counts()
    log = counts.log(uri, chunk_requests=chunk_requests)
    for request in requests:
        log.offer(request)
    log.close()
    return counts


def test_chunks_are_written_together_as_the_rows_of_every_request(tmp_path: Path) -> None:
    uri = tmp_path / "serving_log"
    requests = [served(k, proposals=1 + k % 4) for k in range(7)]
    counts = offer_all(uri, requests, chunk_requests=3)  # chunks of 3, 3, then 1 at the write
    rows = sum(len(r.request.proposals) for r in requests)
    assert (counts.written, counts.dropped) == ([rows], [])
    assert DeltaTable(str(uri)).version() == 0  # one append, not one per chunk
    assert read(uri).equals(rows_table(requests).select(SCHEMA.names).sort_by("served_at"))


def test_a_request_arrow_refuses_loses_its_chunk_only(tmp_path: Path) -> None:
    uri = tmp_path / "serving_log"
    good = [served(k) for k in range(4)]
    bad = served(9, skills=12.5)  # fl_skills must be a list of strings
    counts = offer_all(uri, [good[0], good[1], bad, good[2], good[3]], chunk_requests=2)
    # chunks: [good0, good1], [bad, good2] (lost together), [good3] at the write
    assert counts.dropped == [6]
    assert counts.written == [9]
    assert read(uri)["job_id"].to_pylist() == ["j-0"] * 3 + ["j-1"] * 3 + ["j-3"] * 3


def test_rows_wait_no_longer_than_flush_s_while_chunks_fill(tmp_path: Path) -> None:
    uri = tmp_path / "serving_log"
    written: list[int] = []
    log = ServingLog(
        str(uri), batch_rows=10_000, flush_s=0.2, max_queued=100, on_written=written.append
    )
    try:
        log.offer(served(1))
        deadline = time.monotonic() + 30
        while not written and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written == [3]  # one request, far from a chunk: written by time
        assert read(uri)["job_id"].to_pylist() == ["j-1"] * 3
    finally:
        log.close()


def test_the_wire_sends_each_shared_values_mapping_once_and_loses_nothing() -> None:
    shared = {f"f-{i}": {"fl_skills": ("go",), "fl_hourly_rate": 30.0 + i} for i in range(3)}
    requests = [dataclasses.replace(served(k), freelancers=shared) for k in range(4)]
    requests.append(served(9))  # values of its own (new objects): sent with it
    encoder, decoder = Encoder(), Decoder()
    frames = [encoder.frame(r) for r in requests]
    logged = [decoder.request(frame[4:]) for frame in frames]
    assert [int.from_bytes(frame[:4], "big") for frame in frames] == [len(f) - 4 for f in frames]
    assert len(frames[1]) < len(frames[0]) - 40  # the second names the values the first sent
    assert len(frames[1]) == len(frames[2])
    assert len(frames[4]) > len(frames[3])
    assert rows_of(logged).equals(rows_table(requests))


def test_the_wire_starts_over_when_its_table_is_full() -> None:
    requests = [served(k) for k in range(5)]  # 3 new values mappings each
    encoder, decoder = Encoder(kept=7), Decoder()
    logged = [decoder.request(encoder.frame(r)[4:]) for r in requests]
    assert rows_of(logged).equals(rows_table(requests))


def test_a_writer_that_dies_is_started_again(tmp_path: Path) -> None:
    uri = tmp_path / "serving_log"
    counts = Counts()
    log = counts.log(uri, restart_s=0.0)
    first = log.writer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while log.writer_running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    log.offer(served(1))
    log.close()
    assert log.writer_pid not in (None, first)
    assert (counts.written, counts.dropped) == ([3], [])
    assert read(uri)["job_id"].to_pylist() == ["j-1"] * 3


@pytest.mark.skipif(sys.platform != "linux", reason="nice values are Linux's")
def test_the_writer_runs_below_the_answers_priority(tmp_path: Path) -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ours_path = Path("/proc/self/autogroup")
    ours = autogroup_nice(ours_path)
    log = ServingLog(str(tmp_path / "serving_log"), batch_rows=10, flush_s=60.0, max_queued=10)
    try:
        deadline = time.monotonic() + 30
        while log.niceness is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.niceness == max(WRITER_NICE, before)
        assert log.writer_pid is not None
        assert os.getpriority(os.PRIO_PROCESS, log.writer_pid) == log.niceness
        # the thread that made it (an answer's, in the service) keeps its own
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
        # the writer leads a session of its own: its autogroup (where the kernel has them) is
        # another than ours, lowered too, and ours is as it was
        theirs_path = Path(f"/proc/{log.writer_pid}/autogroup")
        if ours is not None:
            assert theirs_path.read_text().split()[0] != ours_path.read_text().split()[0]
            assert autogroup_nice(theirs_path) == WRITER_NICE
            assert autogroup_nice(ours_path) == ours
    finally:
        log.close()


def _writer_autogroup_becomes(log: ServingLog, nice: int, make: Any) -> None:
    """Offer `make(k)` every 20 ms until the writer's autogroup is at `nice` (within 10 s)."""
    group = Path(f"/proc/{log.writer_pid}/autogroup")
    deadline = time.monotonic() + 10
    k = 0
    while autogroup_nice(group) != nice:
        assert time.monotonic() < deadline, f"the writer's autogroup: {group.read_text()}"
        log.offer(make(k))
        k += 1
        time.sleep(0.02)


@pytest.mark.skipif(
    autogroup_nice(Path("/proc/self/autogroup")) is None, reason="the kernel has no autogroups"
)
def test_a_writer_behind_the_answers_raises_its_priority_until_it_catches_up(
    tmp_path: Path,
) -> None:
    uri = tmp_path / "serving_log"
    counts = Counts()
    log = counts.log(uri)
    try:
        deadline = time.monotonic() + 30
        while log.niceness is None and time.monotonic() < deadline:
            time.sleep(0.01)
        group = Path(f"/proc/{log.writer_pid}/autogroup")
        assert autogroup_nice(group) == WRITER_NICE
        # requests served long ago (as a writer starved by saturated cores reads them)
        _writer_autogroup_becomes(log, 0, served)
        # requests served just now
        now = lambda k: dataclasses.replace(served(k), served_at_us=time.time_ns() // 1000)  # noqa: E731
        _writer_autogroup_becomes(log, WRITER_NICE, now)
    finally:
        log.close()
    rows = read(uri).num_rows
    assert rows > 0
    assert counts.written == [rows]
    assert counts.dropped == []


class _Nice:
    """A stand-in for the autogroup file: the values set, and refusals (the rate limit)."""

    def __init__(self, refuse: int = 0) -> None:
        self.values: list[int] = []
        self.refuse = refuse

    def __call__(self, nice: int) -> bool:
        if self.refuse:
            self.refuse -= 1
            return False
        self.values.append(nice)
        return True


def test_catch_up_raises_when_behind_and_lowers_when_caught_up() -> None:
    now = [1000.0]
    nice = _Nice()
    catch_up = CatchUp(19, 0, nice, lambda: now[0])

    def seen(lag_s: float) -> None:
        catch_up.seen(int((now[0] - lag_s) * 1e6))

    for lag in (0.0, 0.3, BEHIND_S - 0.1):  # keeping up
        seen(lag)
    assert (nice.values, catch_up.raised) == ([], False)
    seen(BEHIND_S + 0.1)
    assert (nice.values, catch_up.raised) == ([0], True)
    for lag in (BEHIND_S + 5, 1.0, CAUGHT_UP_S + 0.1):  # catching up, not yet there
        seen(lag)
    assert nice.values == [0]
    seen(CAUGHT_UP_S - 0.1)
    assert (nice.values, catch_up.raised) == ([0, 19], False)


def test_catch_up_tries_again_where_the_kernel_refused() -> None:
    nice = _Nice(refuse=2)
    catch_up = CatchUp(19, 0, nice, lambda: 1000.0)
    behind = int((1000.0 - BEHIND_S - 1) * 1e6)
    catch_up.seen(behind)
    catch_up.seen(behind)
    assert (nice.values, catch_up.raised) == ([], False)
    catch_up.seen(behind)
    assert (nice.values, catch_up.raised) == ([0], True)


_LOWER = (
    "import sys; from pathlib import Path; from serving.priority import lower_autogroup; "
    "print(lower_autogroup(int(sys.argv[2]), Path(sys.argv[1])))"
)


@pytest.mark.parametrize(
    ("own_session", "start", "nice", "printed", "after"),
    [
        (True, 0, 19, "19", 19),  # a session leader lowers its own autogroup
        (True, 5, 3, "5", 5),  # ... never raises it
        (False, 0, 19, "None", 0),  # one sharing a session leaves the session's alone
    ],
)
def test_only_a_session_leader_lowers_its_autogroup(
    tmp_path: Path, own_session: bool, start: int, nice: int, printed: str, after: int
) -> None:
    group = tmp_path / "autogroup"  # the kernel's file's format, in a file of our own
    group.write_text(f"/autogroup-7 nice {start}\n")
    done = subprocess.run(
        [sys.executable, "-c", _LOWER, str(group), str(nice)],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
    )
    assert done.stdout.strip() == printed
    assert autogroup_nice(group) == after


def test_an_autogroup_file_that_is_not_there_reads_as_none(tmp_path: Path) -> None:
    assert autogroup_nice(tmp_path / "none") is None
    (tmp_path / "odd").write_text("no nice here\n")
    assert autogroup_nice(tmp_path / "odd") is None
