"""The reference path: Feast's own `get_historical_features` over the same change logs.

`feast_store` applies the repo of `features/feast_repo.py` (every entity, view and the feature
service, exactly what `feast apply` registers) to a registry in a work folder, with the stores
configured from `Settings` as `features/feature_store.yaml` configures them from the environment.
So a benchmark or a test asks the real `FeatureStore` without touching the user's `features/data`
registry and without reading the environment.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from feast import FeatureStore
from feast.repo_config import RepoConfig

from features.feast_repo import FEAST_ENTITIES, FEATURE_SERVICE, FEATURE_VIEWS, feature_refs
from features.offline_layout import TIMESTAMP_COLUMN
from features.settings import Settings
from features.specs import ENTITIES


def feast_store(settings: Settings, workdir: Path) -> FeatureStore:
    """A `FeatureStore` with BestMatch's repo applied to a registry under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry={"registry_type": "file", "path": str(workdir / "registry.db")},
        online_store={
            "type": "features.feast_stores.BestMatchRedisOnlineStore",
            "url": settings.redis_url,
        },
        offline_store={
            "type": "features.feast_stores.DeltaChangelogOfflineStore",
            "lake": settings.lake_path(),
        },
        entity_key_serialization_version=3,
        repo_path=str(workdir),
    )
    store = FeatureStore(config=config)
    store.apply([*FEAST_ENTITIES, *FEATURE_VIEWS, FEATURE_SERVICE])
    return store


def feast_historical_features(store: FeatureStore, entity_rows: pl.DataFrame) -> pl.DataFrame:
    """Every feature for each entity row (join keys and `event_timestamp`), through Feast."""
    keys = [e.join_key for e in ENTITIES]
    entity_df = entity_rows.select(*keys, TIMESTAMP_COLUMN).to_pandas()
    table = store.get_historical_features(entity_df=entity_df, features=feature_refs()).to_arrow()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame
