"""What every child process we start shares: its environment and a free loopback port."""

from __future__ import annotations

import os
import socket

# Importing feast (its `feast.metrics`) points both at a temporary folder of its own, which puts
# every later prometheus_client importer in multiprocess mode writing there: a child we start
# must not inherit that (it would write into a folder the parent deletes at exit).
_FOREIGN_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def child_env(**variables: str) -> dict[str, str]:
    """The environment of a child process we start: ours, with `variables`, without Feast's
    Prometheus folder."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_VARIABLES}
    env.update(variables)
    return env


def free_port() -> int:
    """A free TCP port on the loopback interface (for the child processes the commands run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
