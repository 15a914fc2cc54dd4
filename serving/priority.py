"""The priority of the processes that run beside the service (the serving log's writer, the
model compiler): lowered, so that answers come first when the cores are busy."""

from __future__ import annotations

import os
import sys


def lower_priority(nice: int) -> int | None:
    """Lower this process's priority to at least `nice` (never raise it): its nice value after
    (None off Linux, or where the system refuses). Threads started after it inherit it."""
    if sys.platform != "linux":
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
        now = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return None
    return now
