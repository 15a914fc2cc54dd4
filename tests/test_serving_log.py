"""The serving log: its wire to the writer process, and the writer: rows converted a chunk of
requests at a time, written together.

Real Delta tables in a temp folder; requests built as the service builds them (no store needed:
the values are what a request would have read).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from serving.schemas import RankRequest
from serving.serving_log import (
    SCHEMA,
    WRITER_NICE,
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
def test_the_writer_runs_below_the_answers_priority_in_a_process_group_of_its_own(
    tmp_path: Path,
) -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
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
        # its own process group (a terminal's Ctrl-C to ours does not reach it), in our session
        # (so the scheduler weighs it against the service by its nice value)
        assert os.getpgid(log.writer_pid) == log.writer_pid != os.getpgid(0)
        assert os.getsid(log.writer_pid) == os.getsid(0)
    finally:
        log.close()
