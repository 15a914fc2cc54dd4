"""The Feast registry, kept equal to what `specs` derives.

`feast.FeatureStore(repo_path="features")` reads the registry that `feast apply` writes
(`features/data/registry.db`, git-ignored). `ensure_registry` is that `feast apply` for the commands
that need one (`backfill`, `stream`, `demo`): it applies the objects of `feast_repo` through Feast's
own `FeatureStore.apply`, and only when the registry lacks them or holds others, so a command run
against an up-to-date registry writes nothing. Objects the specs no longer derive are deleted.

Feast is imported inside the function: importing it takes seconds, and `features` is imported by
every process.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import ConfigError
from features.settings import environment

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.settings import Settings

REPO_PATH = Path(__file__).resolve().parent
"""The Feast repo: `feature_store.yaml` and `feast_repo.py`."""


def ensure_registry(settings: Settings, repo_path: Path | str = REPO_PATH) -> bool:
    """Apply the derived Feast objects where the registry differs; returns whether it applied.

    The repo's yaml is read with `BESTMATCH_REDIS_URL` and `BESTMATCH_LAKE` set from `settings`
    (and restored afterwards), so the stores Feast configures are the ones these settings name.
    """
    with _environment(settings):
        from feast import FeatureStore

        from features.feast_repo import feast_objects

        store = FeatureStore(repo_path=str(repo_path))
        if store.project != settings.feast_project:
            msg = (
                f"BESTMATCH_FEAST_PROJECT={settings.feast_project!r}, but the Feast repo "
                f"{repo_path} names project {store.project!r}"
            )
            raise ConfigError(msg)
        wanted = feast_objects()
        stale = _stale(store, wanted)
        if not stale and _registered(store, wanted):
            return False
        store.apply(wanted, objects_to_delete=stale, partial=not stale)  # type: ignore[arg-type]
        return True


def _environment(settings: Settings) -> AbstractContextManager[None]:
    return environment(
        {
            "BESTMATCH_REDIS_URL": settings.redis_url,
            "BESTMATCH_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
            "BESTMATCH_LAKE": settings.lake_path(),
        }
    )


def _listed(store: FeatureStore) -> list[Any]:
    """What the registry holds for the project (read afresh, not from the store's cache)."""
    from feast.feature_view import DUMMY_ENTITY_NAME

    registry, project = store.registry, store.project
    entities = registry.list_entities(project, allow_cache=False)
    return [
        *(entity for entity in entities if entity.name != DUMMY_ENTITY_NAME),
        *registry.list_feature_views(project, allow_cache=False),
        *registry.list_feature_services(project, allow_cache=False),
        *registry.list_data_sources(project, allow_cache=False),
    ]


def _derived(wanted: list[Any]) -> list[Any]:
    """The wanted objects and the data sources of their views (apply registers those too)."""
    return [*wanted, *(obj.batch_source for obj in wanted if getattr(obj, "batch_source", None))]


def _stale(store: FeatureStore, wanted: list[Any]) -> list[Any]:
    """Registered objects the specs no longer derive."""
    names = {(_kind(obj), obj.name) for obj in _derived(wanted)}
    return [obj for obj in _listed(store) if (_kind(obj), obj.name) not in names]


def _registered(store: FeatureStore, wanted: list[Any]) -> bool:
    """Whether the registry holds every wanted object, spec for spec."""
    held = {(_kind(obj), obj.name): _spec(obj) for obj in _listed(store)}
    return all(held.get((_kind(obj), obj.name)) == _spec(obj) for obj in _derived(wanted))


def _kind(obj: Any) -> str:
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    for kind in (Entity, FeatureView, FeatureService, DataSource):
        if isinstance(obj, kind):
            return kind.__name__
    return type(obj).__name__


def _spec(obj: Any) -> bytes:
    """An object's spec as deterministic bytes, without the times Feast stamps on sources."""
    proto = obj.to_proto()
    spec = proto.spec if "spec" in proto.DESCRIPTOR.fields_by_name else proto
    _drop_source_meta(spec)
    return bytes(spec.SerializeToString(deterministic=True))


def _drop_source_meta(message: Any) -> None:
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.name == "meta" and field.message_type.name == "SourceMeta":
            message.ClearField(field.name)
            continue
        if field.message_type.GetOptions().map_entry:
            items = (
                value.values() if field.message_type.fields_by_name["value"].message_type else []
            )
            for item in items:
                _drop_source_meta(item)
        elif _is_repeated(field):
            for item in value:
                _drop_source_meta(item)
        else:
            _drop_source_meta(value)


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == field.LABEL_REPEATED)
