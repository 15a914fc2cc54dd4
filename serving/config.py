"""Serving's own settings: how the ranking service behaves, beside the platform's `Settings`.

Read once, in the app's lifespan (or given to `create_app` by a test or a benchmark), from
`BESTMATCH_SERVE_*` variables or the `.env` file. The platform's `Settings` (Redis URL, lake,
MLflow, Feast project, API key) stay where they are; this class holds only what serving alone uses.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """`BESTMATCH_SERVE_<NAME>` for each field (e.g. `BESTMATCH_SERVE_LOG_RATE=0.1`)."""

    model_config = SettingsConfigDict(
        env_prefix="BESTMATCH_SERVE_", env_file=".env", extra="ignore"
    )

    log_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    """Share of requests whose feature vectors go to `<lake>/serving_log` (whole requests)."""
    log_batch_rows: int = Field(default=20_000, ge=1)
    """The serving log is written when this many rows wait ... (a Delta append costs about
    28 ms CPU for 2,000 rows and 90 ms for 20,000: big batches, written mostly by time)"""
    log_flush_s: float = Field(default=10.0, gt=0.0)
    """... or when the oldest waiting row is this old, and always on shutdown."""
    log_queue_requests: int = Field(default=1000, ge=1)
    """Sampled requests waiting for the writer; beyond this they are dropped (and counted)."""
    model_poll_s: float = Field(default=5.0, gt=0.0)
    """How often the registry is asked where the `champion` alias points."""
    redis_timeout_s: float = Field(default=0.05, gt=0.0)
    """Socket (connect and read) timeout of the online store: a slow store costs at most this."""
    redis_retry_s: float = Field(default=0.5, ge=0.0)
    """After a failed read, requests skip the store (degraded at once) for this long."""
    best_match_share: float = Field(default=0.1, gt=0.0, le=1.0)
    best_match_max: int = Field(default=10, ge=1)
    """`best_match`: the top max(1, min(best_match_max, round(share * n))) of n proposals."""
    explain_top: int = Field(default=3, ge=1)
    """Reasons per proposal when a request asks `explain`."""
    predict_threads: int = Field(default=1, ge=1)
    """LightGBM threads per prediction: one request is small, threads only add overhead."""
    compiled: bool = True
    """Score with the model's trees compiled to machine code (`serving.compiled`, lleaves), which
    is used only where it scores as LightGBM does, bit for bit; false: LightGBM scores."""
    compiled_cache: Path | None = None
    """Where compiled models are kept (default: `$XDG_CACHE_HOME/bestmatch/compiled`)."""

    @property
    def compiled_models(self) -> Path | None:
        """The folder compiled models are kept in; None where `compiled` is off."""
        if not self.compiled:
            return None
        from serving.compiled import default_cache

        return self.compiled_cache or default_cache()

    workers: int = Field(default=1, ge=1)
    """Processes answering on the port (`bestmatch serve --workers`): 1 serves in the command's
    own process; more are uvicorn's workers, each with its own model, Redis connections and
    serving-log writer. About one per core: ranking is CPU work, one process uses one core."""
