"""BestMatch's exceptions: one small tree, so callers can catch exactly what they mean.

    BestMatchError            anything this platform raises on purpose
    ├── ConfigError           a setting is missing or malformed (names the variable, never a secret)
    ├── InvalidEventError     an event breaks docs/contract.md §1 (carries the field and the reason)
    ├── StoreError            an online/offline store is unreachable or holds something unexpected
    ├── FlowError             the feature flow stopped abnormally
    ├── ModelError            no registered model, or one whose feature list does not match
    └── ServiceError          the ranking service could not start or answer (demo, benchmarks)

Bad *data* in a flow is not raised: it becomes a dead letter. These exceptions are for callers
(commands, the service) that must stop and say one clear line.
"""

from __future__ import annotations


class BestMatchError(Exception):
    """Base class of every error BestMatch raises on purpose."""


class ConfigError(BestMatchError):
    """A setting is missing or malformed."""


class InvalidEventError(BestMatchError):
    """An event breaks the event contract."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class StoreError(BestMatchError):
    """An online or offline store cannot be used."""


class FlowError(BestMatchError):
    """The feature flow stopped abnormally."""


class ModelError(BestMatchError):
    """The ranking model cannot be loaded or does not fit the features."""


class ServiceError(BestMatchError):
    """The ranking service, run as a child process, could not start or answer."""
