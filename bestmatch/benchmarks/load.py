"""The load the serving benchmark puts on an endpoint: pre-encoded `POST /v1/rank` requests
over HTTP/1.1 keep-alive from one client (blocking sockets) or many (one asyncio loop), and the
figures of each run (every answer's latency, the wall time, the CPU the answering process used).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    """One run: the latency (seconds) of every answer, the wall time, the CPU the answering
    process used (None where it cannot be read)."""

    latencies: list[float]
    seconds: float
    errors: int = 0
    cpu_s: float | None = None

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def cpu_ms(self) -> float | None:
        """CPU per answer, in ms: what the answers cost, whatever else the machine runs."""
        return None if self.cpu_s is None else self.cpu_s * 1000 / max(1, len(self.latencies))


@dataclass(frozen=True)
class Runs:
    """Repeated runs of one setting (the machine is shared): medians of their figures."""

    runs: list[Figures]

    def _median(self, values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    @property
    def p50_ms(self) -> float:
        return statistics.median(f.p50_ms for f in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(f.p99_ms for f in self.runs)

    @property
    def rps(self) -> float:
        return statistics.median(f.rps for f in self.runs)

    @property
    def cpu_ms(self) -> float | None:
        return self._median([f.cpu_ms for f in self.runs])

    def line(self) -> str:
        answers = sum(len(f.latencies) for f in self.runs)
        errors = sum(f.errors for f in self.runs)
        cpu = f", CPU {self.cpu_ms:.2f} ms/answer" if self.cpu_ms is not None else ""
        more = f", {errors} errors" if errors else ""
        return (
            f"p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, {self.rps:,.0f} req/s{cpu} "
            f"(median of {len(self.runs)} runs, {answers:,} answers{more})"
        )


def http_request(port: int, body: bytes, api_key: str | None) -> bytes:
    """`POST /v1/rank` with `body`, encoded once, to be sent as it is."""
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (
        f"POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}\r\n"
    )
    return head.encode() + body


def status_and_length(head: bytes) -> tuple[int, int]:
    """The status and `Content-Length` of an answer's head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value)
    return status, 0


class Connection:
    """One keep-alive connection: send a request, read one answer (blocking)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def ask(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        head, body = self.answer()
        return status_and_length(head)[0], body

    def answer(self) -> tuple[bytes, bytes]:
        """The next answer on the connection: its head (status line and headers), its body."""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        _, length = status_and_length(head)
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return head, rest[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            msg = "the service closed the connection"
            raise ConnectionError(msg)
        return chunk

    def close(self) -> None:
        self.sock.close()


def drive_one(port: int, raws: Sequence[bytes], seconds: float) -> Figures:
    """One client, one request after the other."""
    conn = Connection(port)
    latencies, errors = [], 0
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        status, _ = conn.ask(raws[i % len(raws)])
        latencies.append(time.perf_counter() - t)
        errors += status != 200
        i += 1
    wall = time.perf_counter() - started
    conn.close()
    return Figures(latencies, wall, errors)


CONNECT_GAP_S = 0.005
"""`drive_many` opens its connections this far apart, before the clock starts, as clients and
gateways do, rather than all within microseconds: with several service processes on one port,
which process accepts each connection of such a burst is a race that one of them can win for
nearly all (measured: 16 connections, 2 processes, about 1 run in 2; half the throughput), and a
keep-alive connection stays where it landed."""


def drive_many(port: int, raws: Sequence[bytes], seconds: float, clients: int) -> Figures:
    """`clients` concurrent keep-alive connections on one asyncio loop."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.sleep(CONNECT_GAP_S)
        return reader, writer

    async def client(
        k: int,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        deadline: float,
        out: list[float],
        errors: list[int],
    ) -> None:
        reader, writer = connection
        i = k * 7919
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            writer.write(raws[i % len(raws)])
            head = await reader.readuntil(b"\r\n\r\n")
            status, length = status_and_length(head[:-4])
            await reader.readexactly(length)
            out.append(time.perf_counter() - t)
            if status != 200:
                errors.append(status)
            i += 1
        writer.close()

    async def main() -> Figures:
        out: list[float] = []
        errors: list[int] = []
        connections = [await connect() for _ in range(clients)]
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(client(k, c, deadline, out, errors) for k, c in enumerate(connections))
        )
        return Figures(out, time.perf_counter() - started, len(errors))

    return asyncio.run(main())
