"""BestMatch's two Feast stores, named by class path in `feature_store.yaml`.

`BestMatchRedisOnlineStore` is Feast's Redis store configured by a `redis://` URL
(`BESTMATCH_REDIS_URL`) instead of Feast's `host:port,db=N,...` connection string.

`DeltaChangelogOfflineStore` answers `get_historical_features` from the Delta change-log tables
(`offline_layout`). It reads each table through `deltalake`, which honours the Delta log, so
compaction, vacuum, overwrites and deletes never show stale files (Feast's file store reads the
folder as plain Parquet). The point-in-time join is a polars as-of join: per entity row, the latest
change with `event_timestamp <= t`, ties broken by the greater `created`; an entity row with no
change at or before `t` is kept, with nulls.

Feast expands `${VAR}` in the yaml and leaves an unset one as the literal text. Both configs treat
such a value (or an empty one) as "not given" and fall back to `Settings()`: the environment, the
`.env` file, then the defaults, exactly as every other BestMatch entry point.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pds
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import (
    OfflineStore,
    RetrievalJob,
    RetrievalMetadata,
)
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
from feast.infra.online_stores.redis import (
    RedisOnlineStore,
    RedisOnlineStoreConfig,
    RedisType,
)
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from feast.type_map import feast_value_type_to_pa
from feast.utils import _get_requested_feature_views_to_features_dict
from pydantic import StrictStr, model_validator
from redis import Redis
from redis import asyncio as redis_asyncio
from redis.connection import parse_url

from features.errors import ConfigError, StoreError
from features.settings import Settings

_UNRESOLVED = re.compile(r"\$\{?\w+\}?")
_ROW = "__bestmatch_row"
_TS = "__bestmatch_ts"
_CREATED = "__bestmatch_created"
_UTC_US = pl.Datetime("us", "UTC")


def _given(value: object) -> str | None:
    """A yaml value, or None where Feast left an unset `${VAR}` (or it is empty)."""
    if not isinstance(value, str) or not value.strip() or _UNRESOLVED.fullmatch(value.strip()):
        return None
    return value.strip()


def _settings(**given: str | None) -> Settings:
    overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return Settings(**overrides)


# --- online ----------------------------------------------------------------------------------


def redis_connection_string(url: str) -> str:
    """Feast's `host:port,db=N,...` form of a `redis://` or `rediss://` URL."""
    parts = parse_url(url)
    if "host" not in parts:
        return "localhost:6379"  # a unix socket: only our own client (from the URL) is used
    out = [f"{parts['host']}:{parts.get('port', 6379)}", f"db={parts.get('db', 0)}"]
    if urlsplit(url).scheme == "rediss":
        out.append("ssl=true")
    out += [f"{name}={parts[name]}" for name in ("username", "password") if parts.get(name)]
    return ",".join(out)


class BestMatchRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis config, given a `url:` (`${BESTMATCH_REDIS_URL}`)."""

    type: Literal["features.feast_stores.BestMatchRedisOnlineStore"] = (
        "features.feast_stores.BestMatchRedisOnlineStore"  # type: ignore[assignment]
    )
    url: StrictStr = ""

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        if isinstance(data, dict):
            settings = _settings(redis_url=_given(data.get("url")))
            url = settings.redis_url
            data = {**data, "url": url, "connection_string": redis_connection_string(url)}
            if settings.redis_cluster and "redis_type" not in data:
                # Feast's own cluster client (RedisCluster), from the URL's node: database 0
                data["redis_type"] = "redis_cluster"
                data["connection_string"] = ",".join(
                    part for part in data["connection_string"].split(",") if part != "db=0"
                )
        return data


class BestMatchRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store, connecting from the configured URL (on a Redis Cluster,
    Feast's own cluster client does, from the URL's node)."""

    def _get_client(self, online_store_config: RedisOnlineStoreConfig) -> Any:
        if online_store_config.redis_type == RedisType.redis_cluster:
            return super()._get_client(online_store_config)
        if self._client is None:
            assert isinstance(online_store_config, BestMatchRedisOnlineStoreConfig)
            self._client = Redis.from_url(online_store_config.url)
        return self._client

    async def _get_client_async(self, online_store_config: RedisOnlineStoreConfig) -> Any:
        if online_store_config.redis_type == RedisType.redis_cluster:
            return await super()._get_client_async(online_store_config)
        if self._client_async is None:
            assert isinstance(online_store_config, BestMatchRedisOnlineStoreConfig)
            self._client_async = redis_asyncio.Redis.from_url(online_store_config.url)
        return self._client_async


# --- offline ---------------------------------------------------------------------------------


class DeltaChangelogOfflineStoreConfig(FeastConfigBaseModel):
    """Where the change-log tables live: `lake:` (`${BESTMATCH_LAKE}`), resolved like Settings,
    and delta-rs's `storage_options:` (default: `Settings.storage_options`; given ones win)."""

    type: Literal["features.feast_stores.DeltaChangelogOfflineStore"] = (
        "features.feast_stores.DeltaChangelogOfflineStore"
    )
    lake: StrictStr = ""
    storage_options: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_lake(cls, data: Any) -> Any:
        if isinstance(data, dict):
            settings = _settings(lake=_given(data.get("lake")))
            given = data.get("storage_options") or {}
            options = {**(settings.storage_options or {}), **given} or None
            data = {**data, "lake": settings.lake_path(), "storage_options": options}
        return data

    def table_uri(self, path: str) -> str:
        """A source path: absolute paths and URIs as they are, others under the lake root."""
        if "://" in path or path.startswith("/"):
            return path
        return f"{self.lake.rstrip('/')}/{path.lstrip('./')}"


class ArrowRetrievalJob(RetrievalJob):
    """A lazily evaluated retrieval whose result is an Arrow table."""

    def __init__(
        self,
        evaluate: Callable[[], pa.Table],
        full_feature_names: bool = False,
        on_demand_feature_views: list[OnDemandFeatureView] | None = None,
        metadata: RetrievalMetadata | None = None,
    ) -> None:
        self._evaluate = evaluate
        self._full_feature_names = full_feature_names
        self._on_demand_feature_views = on_demand_feature_views or []
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:  # noqa: ARG002
        return self._evaluate()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:  # noqa: ARG002
        return self._evaluate().to_pandas()

    def persist(
        self,
        storage: SavedDatasetStorage,
        allow_overwrite: bool | None = False,
        timeout: int | None = None,
    ) -> None:
        msg = "saved datasets are not supported: write the training set where you need it"
        raise NotImplementedError(msg)


class DeltaChangelogOfflineStore(OfflineStore):
    """Point-in-time reads from the Delta change logs (see the module docstring)."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        **kwargs: Any,  # noqa: ARG004 (Feast's interface)
    ) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            msg = "get_historical_features needs an entity_df pandas DataFrame"
            raise ValueError(msg)
        ts_column = _entity_timestamp_column(entity_df)
        on_demand = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        views_to_features, _ = _get_requested_feature_views_to_features_dict(
            feature_refs, feature_views, on_demand
        )
        times = pd.to_datetime(entity_df[ts_column], utc=True)
        store_config = _store_config(config)

        def evaluate() -> pa.Table:
            return _point_in_time_join(
                store_config, entity_df, ts_column, views_to_features, full_feature_names
            )

        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != ts_column],
            min_event_timestamp=times.min().to_pydatetime() if len(times) else None,
            max_event_timestamp=times.max().to_pydatetime() if len(times) else None,
        )
        return ArrowRetrievalJob(evaluate, full_feature_names, on_demand, metadata)

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        columns = [*join_key_columns, *feature_name_columns, timestamp_field]
        order = [timestamp_field, *([created_timestamp_column] if created_timestamp_column else [])]

        def evaluate() -> pa.Table:
            table = _read_source(
                _store_config(config),
                data_source,
                columns + order[1:],
                start=start_date,
                end=end_date,
            )
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            frame = frame.sort([*join_key_columns, *order]).unique(
                subset=join_key_columns, keep="last", maintain_order=True
            )
            return frame.to_arrow()

        return ArrowRetrievalJob(evaluate)

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        created = [created_timestamp_column] if created_timestamp_column else []
        columns = [*join_key_columns, *feature_name_columns, timestamp_field, *created]

        def evaluate() -> pa.Table:
            return _read_source(
                _store_config(config), data_source, columns, start=start_date, end=end_date
            )

        return ArrowRetrievalJob(evaluate)

    def validate_data_source(self, config: RepoConfig, data_source: DataSource) -> None:  # noqa: ARG002
        # The tables may not exist before the first flow run; only the kind of source matters.
        if not isinstance(data_source, FileSource):
            msg = f"source {data_source.name}: the Delta change-log store reads FileSources only"
            raise StoreError(msg)


def _store_config(config: RepoConfig) -> DeltaChangelogOfflineStoreConfig:
    store_config = config.offline_store
    if not isinstance(store_config, DeltaChangelogOfflineStoreConfig):
        msg = f"offline_store must be a DeltaChangelogOfflineStore, got {type(store_config)}"
        raise ConfigError(msg)
    return store_config


def _entity_timestamp_column(entity_df: pd.DataFrame) -> str:
    if DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL in entity_df.columns:
        return DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    candidates = entity_df.select_dtypes(include=["datetime", "datetimetz"]).columns
    if len(candidates) == 1:
        return str(candidates[0])
    msg = f"entity_df needs a `{DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL}` column"
    raise ValueError(msg)


def _read_source(
    store_config: DeltaChangelogOfflineStoreConfig,
    source: DataSource,
    columns: list[str],
    *,
    keys: tuple[str, list[Any]] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    types: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """Rows of a source's Delta table, read through its log; an absent table reads as empty."""
    from deltalake import DeltaTable

    if not isinstance(source, FileSource):
        msg = f"source {source.name}: the Delta change-log store reads FileSources only"
        raise StoreError(msg)
    uri = store_config.table_uri(source.path)
    options = store_config.storage_options
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        types = types or {}
        return pa.table({c: pa.array([], types.get(c, pa.null())) for c in columns})
    ts = pds.field(source.timestamp_field)
    conditions = []
    if start is not None:
        conditions.append(ts >= pa.scalar(start, pa.timestamp("us", tz="UTC")))
    if end is not None:
        conditions.append(ts <= pa.scalar(end, pa.timestamp("us", tz="UTC")))
    if keys is not None:
        conditions.append(pds.field(keys[0]).isin(keys[1]))
    condition = None
    for each in conditions:
        condition = each if condition is None else condition & each
    dataset = DeltaTable(uri, storage_options=options).to_pyarrow_dataset()
    return dataset.to_table(columns=columns, filter=condition)


def _as_utc_us(column: pl.Series) -> pl.Series:
    if column.dtype == pl.String:
        return column.str.to_datetime(time_zone="UTC").dt.cast_time_unit("us")
    if isinstance(column.dtype, pl.Datetime) and column.dtype.time_zone is None:
        column = column.dt.replace_time_zone("UTC")
    return column.cast(_UTC_US)


def _point_in_time_join(
    store_config: DeltaChangelogOfflineStoreConfig,
    entity_df: pd.DataFrame,
    ts_column: str,
    views_to_features: dict[FeatureView, list[str]],
    full_feature_names: bool,
) -> pa.Table:
    left = pl.from_pandas(entity_df).with_row_index(_ROW)
    left = left.with_columns(_as_utc_us(left[ts_column]))
    until = left[ts_column].max()
    for view, features in views_to_features.items():
        left = _join_view(store_config, left, ts_column, until, view, features, full_feature_names)
    return left.sort(_ROW).drop(_ROW).to_arrow()


def _join_view(
    store_config: DeltaChangelogOfflineStoreConfig,
    left: pl.DataFrame,
    ts_column: str,
    until: Any,
    view: FeatureView,
    features: list[str],
    full_feature_names: bool,
) -> pl.DataFrame:
    source = view.batch_source
    assert source is not None
    key_map = view.projection.join_key_map
    keys = {column.name: key_map.get(column.name, column.name) for column in view.entity_columns}
    from_source = {v: k for k, v in source.field_mapping.items()}
    prefix = f"{view.projection.name_to_use()}__" if full_feature_names else ""
    wanted = {from_source.get(f, f): f"{prefix}{f}" for f in features}
    dtypes = {
        from_source.get(f.name, f.name): feast_value_type_to_pa(f.dtype.to_value_type())
        for f in view.features
    }
    created = source.created_timestamp_column
    columns = [*keys, source.timestamp_field, *([created] if created else []), *wanted]
    (source_key, entity_key), *_ = keys.items()
    ids = left[entity_key].drop_nulls().unique().to_list() if len(keys) == 1 else None
    table = _read_source(
        store_config,
        source,
        columns,
        keys=(source_key, ids) if ids is not None else None,
        end=until,
        types={**dtypes, source.timestamp_field: pa.timestamp("us", tz="UTC")},
    )
    right = pl.from_arrow(table)
    assert isinstance(right, pl.DataFrame)
    right = right.with_columns(_as_utc_us(right[source.timestamp_field]))
    renames = {source.timestamp_field: _TS, **keys, **wanted}
    if created:
        renames[created] = _CREATED
    right = right.rename(renames).with_columns(
        pl.col(k).cast(left.schema[k]) for k in keys.values()
    )
    order = [*keys.values(), _TS]
    right = right.sort([*order, _CREATED] if created else order, maintain_order=True)
    right = right.drop(_CREATED, strict=False)
    right = right.unique(subset=order, keep="last", maintain_order=True).sort(_TS)
    joined = left.sort(ts_column).join_asof(
        right,
        left_on=ts_column,
        right_on=_TS,
        by=list(keys.values()),
        strategy="backward",
        tolerance=view.ttl if view.ttl else None,
        check_sortedness=False,
    )
    return joined.drop(_TS)
