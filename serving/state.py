"""Everything a running service holds, built once in the lifespan and closed at shutdown."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from features.settings import Settings
from serving.config import ServingSettings
from serving.metrics import ServingMetrics
from serving.model import ChampionWatcher, LoadedRanker
from serving.serving_log import ServingLog, serving_log_uri
from serving.store import FeatureReader, open_reader


@dataclass
class ServingState:
    settings: Settings
    config: ServingSettings
    metrics: ServingMetrics
    reader: FeatureReader
    watcher: ChampionWatcher
    log: ServingLog | None
    sampler: random.Random = field(default_factory=random.Random)

    @property
    def api_key(self) -> str | None:
        return self.settings.api_key or None

    async def aclose(self) -> None:
        """Stop the watcher and the log (which waits for its writer: in a thread), then close
        the store's connections."""
        await asyncio.to_thread(self._stop_threads)
        await self.reader.aclose()

    def _stop_threads(self) -> None:
        self.watcher.stop()
        if self.log is not None:
            self.log.close()


def open_state(settings: Settings, config: ServingSettings) -> ServingState:
    """Load the champion, start the watcher and the log writer; the store's client connects
    when first used (on the event loop: `await state.reader.ping()`)."""
    metrics = ServingMetrics()

    def loaded(ranker: LoadedRanker) -> None:
        metrics.serving_model(ranker.name, ranker.version)
        metrics.model_loads.inc()
        metrics.model_compiled.set(1 if ranker.compiled is not None else 0)

    watcher = ChampionWatcher(
        settings,
        poll_s=config.model_poll_s,
        threads=config.predict_threads,
        compiled_cache=config.compiled_models,
        on_swap=loaded,
        on_failure=lambda _exc: metrics.model_load_failures.inc(),
    )
    watcher.load_initial()
    reader = open_reader(
        settings.redis_url,
        settings.redis_cluster,
        settings.feast_project,
        config.redis_timeout_s,
        config.redis_retry_s,
    )
    log = None
    if config.log_rate > 0:
        log = ServingLog(
            serving_log_uri(settings),
            storage_options=settings.storage_options,
            batch_rows=config.log_batch_rows,
            flush_s=config.log_flush_s,
            max_queued=config.log_queue_requests,
            on_written=metrics.log_rows.inc,
            on_dropped=metrics.log_dropped.inc,
        )
    watcher.start()
    return ServingState(settings, config, metrics, reader, watcher, log)
