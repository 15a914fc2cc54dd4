"""The priority of the processes that run beside the service (the serving log's writer, the
model compiler): lowered, so that answers come first when the cores are busy."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> int | None:
    """Lower this process's priority to at least `nice` (never raise it): its nice value after
    (None off Linux, or where the system refuses). Threads started after it inherit it.

    A process that leads a session of its own (the serving log's writer) needs its autogroup's
    lowered too: `lower_autogroup`.
    """
    if sys.platform != "linux":
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
        now = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return None
    return now


def lower_autogroup(nice: int, path: Path = AUTOGROUP) -> int | None:
    """Lower the nice value of this process's autogroup to at least `nice`, where the autogroup
    is this process's own (it leads its session); the autogroup's nice value after, or None
    (not a session leader, no autogroups, or refused).

    With autogroups on (`kernel.sched_autogroup_enabled`, Linux's default), the scheduler first
    shares a core between sessions' autogroups, each at its autogroup's nice value (0), and only
    then between a group's processes by their own nice values. A process in a session of its own
    at nice 19 thus still competed with the service as an equal: measured, the serving log's
    writer at nice 19 cost the service's p99 at 1 client about 1 ms (2.35 against 1.16 ms with
    the log off), and with its autogroup at 19 too, 0.17 ms (1.33 ms).

    Only a session leader does it: the autogroup of a process that shares its session (say,
    with the service) is the whole session's.
    """
    if os.getsid(0) != os.getpid():
        return None
    current = autogroup_nice(path)
    if current is None:
        return None
    if current < nice and not set_autogroup_nice(nice, path, tries=AUTOGROUP_TRIES):
        return current
    return autogroup_nice(path)


AUTOGROUP_TRIES = 12
AUTOGROUP_WAIT_S = 0.11
"""Linux takes one autogroup change per 100 ms from unprivileged processes, machine-wide (others
get EAGAIN): two service workers start their writers together."""


def set_autogroup_nice(
    nice: int, path: Path = AUTOGROUP, *, tries: int = 1, wait_s: float = AUTOGROUP_WAIT_S
) -> bool:
    """Set this process's autogroup's nice value (a session leader's own: see `lower_autogroup`);
    whether it took. Any process may raise it or bring it back down to 0, none but root below 0.
    A change refused for the kernel's rate limit is tried again `tries` times in all."""
    for attempt in range(tries):
        try:
            with path.open("w") as file:
                file.write(str(nice))
            return True
        except BlockingIOError:  # the rate limit
            if attempt + 1 < tries:
                time.sleep(wait_s)
        except OSError:
            return False
    return False


def autogroup_nice(path: Path = AUTOGROUP) -> int | None:
    """The nice value in an autogroup file (`/proc/<pid>/autogroup` reads "/autogroup-N nice K"
    and is written as "K"); None where there is none (autogroups not built in)."""
    try:
        words = path.read_text().split()
        return int(words[-1])
    except (OSError, ValueError, IndexError):
        return None
