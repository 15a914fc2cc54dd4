"""The Feast repo in features/: what `feast apply` registers, and how the yaml resolves settings.

`feast apply` runs in-process on a temp copy of the repo's yaml (so the registry lands in tmp_path),
with the objects discovered from the real features/ folder exactly as the CLI discovers them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from feast import Entity as FeastEntity
from feast import FeatureStore, ValueType
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.repo_config import load_repo_config
from feast.repo_operations import get_repo_files
from feast.types import Array, Bool, Float64, Int64, String, UnixTimestamp

from features.errors import ConfigError
from features.feast_repo import SERVICE_NAME, feast_entity, feature_refs, feature_view
from features.feast_stores import (
    BestMatchRedisOnlineStore,
    BestMatchRedisOnlineStoreConfig,
    DeltaChangelogOfflineStoreConfig,
    redis_connection_string,
)
from features.registry import ensure_registry
from features.settings import Settings
from features.specs import ENTITIES, FEATURES, JOB, Dtype, features_of, view_name
from tests.conftest import copy_feast_repo

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "features"
PROJECT = "bestmatch"


def test_feastignore_leaves_only_the_repo_module() -> None:
    assert [p.name for p in get_repo_files(REPO)] == ["feast_repo.py"]


def test_apply_registers_every_spec(feast_store: FeatureStore) -> None:
    feast_types = {
        Dtype.INT: Int64,
        Dtype.FLOAT: Float64,
        Dtype.BOOL: Bool,
        Dtype.STRING: String,
        Dtype.STRINGS: Array(String),
        Dtype.TIMESTAMP: UnixTimestamp,
    }
    entities = {e.name: e for e in feast_store.list_entities()}
    assert set(entities) == {e.name for e in ENTITIES}
    for entity in ENTITIES:
        assert entities[entity.name].join_key == entity.join_key
    views = {v.name: v for v in feast_store.list_feature_views()}
    assert set(views) == {view_name(e) for e in ENTITIES}
    for entity in ENTITIES:
        view = views[view_name(entity)]
        assert [(f.name, f.dtype) for f in view.features] == [
            (s.name, feast_types[s.dtype]) for s in features_of(entity)
        ]
        assert view.entities == [entity.name]
        assert view.online
        assert not view.ttl  # no TTL: the change log is complete
    services = feast_store.list_feature_services()
    assert [s.name for s in services] == [SERVICE_NAME]
    served = [
        f"{p.name}:{f.name}" for p in services[0].feature_view_projections for f in p.features
    ]
    assert sorted(served) == sorted(feature_refs())
    assert len(feature_refs()) == len(FEATURES)


def test_yaml_resolves_settings_from_the_environment(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESTMATCH_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("BESTMATCH_LAKE", settings.lake)
    repo = copy_feast_repo(tmp_path / "repo")
    config = load_repo_config(repo, repo / "feature_store.yaml")
    assert config.project == PROJECT
    assert config.online_store.url == settings.redis_url
    assert isinstance(config.offline_store, DeltaChangelogOfflineStoreConfig)
    assert config.offline_store.lake == settings.lake_path()


def test_yaml_falls_back_to_settings_defaults_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BESTMATCH_REDIS_URL", raising=False)
    monkeypatch.delenv("BESTMATCH_LAKE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    repo = copy_feast_repo(tmp_path / "repo")
    config = load_repo_config(repo, repo / "feature_store.yaml")
    assert config.online_store.url == "redis://127.0.0.1:6379/0"
    assert config.online_store.connection_string == "127.0.0.1:6379,db=0"
    assert config.offline_store.lake == str(tmp_path / "lake")


def test_online_store_config_takes_a_url() -> None:
    config = BestMatchRedisOnlineStoreConfig(url="rediss://user:s3cret@cache.example:6380/2")
    assert (
        config.connection_string == "cache.example:6380,db=2,ssl=true,username=user,password=s3cret"
    )
    assert redis_connection_string("redis://localhost:6379") == "localhost:6379,db=0"
    assert issubclass(BestMatchRedisOnlineStore, RedisOnlineStore)


def test_online_store_config_rejects_a_non_redis_url() -> None:
    with pytest.raises(Exception, match="BESTMATCH_REDIS_URL"):
        BestMatchRedisOnlineStoreConfig(url="http://127.0.0.1:6379")


def registered(repo: Path) -> dict[str, list[str]]:
    store = FeatureStore(repo_path=str(repo))
    return {
        "entities": sorted(e.name for e in store.list_entities()),
        "views": sorted(v.name for v in store.list_feature_views()),
        "services": sorted(s.name for s in store.list_feature_services()),
        "sources": sorted(s.name for s in store.list_data_sources()),
    }


DERIVED = {
    "entities": sorted(e.name for e in ENTITIES),
    "views": sorted(view_name(e) for e in ENTITIES),
    "services": [SERVICE_NAME],
    "sources": sorted(f"{view_name(e)}_changelog" for e in ENTITIES),
}


def test_ensure_registry_applies_only_when_the_registry_differs(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESTMATCH_LAKE", "/elsewhere")
    monkeypatch.delenv("BESTMATCH_REDIS_URL", raising=False)
    repo = copy_feast_repo(tmp_path / "repo")
    assert not (repo / "data" / "registry.db").exists()
    assert ensure_registry(settings, repo)
    assert (repo / "data" / "registry.db").exists()
    assert registered(repo) == DERIVED
    assert not ensure_registry(settings, repo)  # up to date: nothing written
    # The environment is the caller's again.
    assert os.environ["BESTMATCH_LAKE"] == "/elsewhere"
    assert "BESTMATCH_REDIS_URL" not in os.environ

    # A changed view and an object the specs no longer derive: both put right.
    store = FeatureStore(repo_path=str(repo))
    changed = feature_view(JOB, feast_entity(JOB))
    changed.description = "edited by hand"
    store.apply(
        [changed, FeastEntity(name="stale", join_keys=["stale_id"], value_type=ValueType.STRING)]
    )
    assert "stale" in registered(repo)["entities"]
    assert ensure_registry(settings, repo)
    assert registered(repo) == DERIVED
    view = FeatureStore(repo_path=str(repo)).get_feature_view(view_name(JOB))
    assert view.description == feature_view(JOB, feast_entity(JOB)).description
    assert not ensure_registry(settings, repo)


def test_ensure_registry_configures_feast_from_the_settings(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BESTMATCH_REDIS_URL", "redis://nowhere.invalid:1/0")
    repo = copy_feast_repo(tmp_path / "repo")
    seen = {}

    real_apply = FeatureStore.apply

    def spy(store: FeatureStore, *args: object, **kwargs: object) -> None:
        seen["url"] = store.config.online_store.url
        seen["lake"] = store.config.offline_store.lake
        real_apply(store, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "apply", spy)
    assert ensure_registry(settings, repo)
    assert seen == {"url": settings.redis_url, "lake": settings.lake_path()}


def test_ensure_registry_refuses_another_project(tmp_path: Path, settings: Settings) -> None:
    repo = copy_feast_repo(tmp_path / "repo")
    other = settings.model_copy(update={"feast_project": "other"})
    with pytest.raises(ConfigError, match="'other'"):
        ensure_registry(other, repo)
