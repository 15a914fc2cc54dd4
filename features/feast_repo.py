"""The Feast repo: entities, feature views and the feature service, derived from `specs`.

One feature view per entity (`view_name(entity)`) holds all of that entity's features in spec
order; its batch source is the entity's Delta change log, a path relative to the lake root that
`DeltaChangelogOfflineStore` resolves. No TTL: the change log has a row whenever a value changes,
so the latest row at or before `t` is the value at `t`, however old.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity as FeastEntity
from feast import FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import DeltaFormat
from feast.types import Array, Bool, FeastType, Float64, Int64, String, UnixTimestamp

from features.offline_layout import CREATED_COLUMN, TIMESTAMP_COLUMN, changelog_table_path
from features.specs import ENTITIES, Dtype, Entity, features_of, view_name

SERVICE_NAME = "bestmatch_ranker"
NO_TTL = timedelta(0)  # Feast's spelling of "values never expire"

FEAST_TYPES: dict[Dtype, FeastType] = {
    Dtype.INT: Int64,
    Dtype.FLOAT: Float64,
    Dtype.BOOL: Bool,
    Dtype.STRING: String,
    Dtype.STRINGS: Array(String),
    Dtype.TIMESTAMP: UnixTimestamp,
}


def feast_entity(entity: Entity) -> FeastEntity:
    return FeastEntity(
        name=entity.name,
        join_keys=[entity.join_key],
        value_type=ValueType.STRING,
        description=entity.description,
    )


def changelog_source(entity: Entity) -> FileSource:
    return FileSource(
        name=f"{view_name(entity)}_changelog",
        path=changelog_table_path(entity),
        file_format=DeltaFormat(),
        timestamp_field=TIMESTAMP_COLUMN,
        created_timestamp_column=CREATED_COLUMN,
        description=f"Delta change log of the {entity.name} features.",
    )


def feature_view(entity: Entity, feast_entity_: FeastEntity) -> FeatureView:
    return FeatureView(
        name=view_name(entity),
        entities=[feast_entity_],
        ttl=NO_TTL,
        schema=[
            Field(name=entity.join_key, dtype=String),
            *(
                Field(name=spec.name, dtype=FEAST_TYPES[spec.dtype], description=spec.description)
                for spec in features_of(entity)
            ),
        ],
        source=changelog_source(entity),
        online=True,
        description=f"Every {entity.name} feature, as of the time of each change.",
    )


def feature_refs() -> list[str]:
    """Every feature as a Feast reference (`view:feature`), in spec order."""
    return [f"{view_name(e)}:{spec.name}" for e in ENTITIES for spec in features_of(e)]


def feature_service(views: list[FeatureView]) -> FeatureService:
    return FeatureService(
        name=SERVICE_NAME,
        features=list(views),
        description="Every feature the ranker reads.",
    )


FeastObject = FeastEntity | FeatureView | FeatureService


def feast_objects() -> list[FeastObject]:
    """Fresh Feast objects: the entities, the views, then the service.

    Fresh, because `FeatureStore.apply` fills in inferred parts of the objects it is given.
    """
    entities = [feast_entity(e) for e in ENTITIES]
    views = [feature_view(e, fe) for e, fe in zip(ENTITIES, entities, strict=True)]
    return [*entities, *views, feature_service(views)]


_OBJECTS = feast_objects()
FEAST_ENTITIES: tuple[FeastEntity, ...] = tuple(o for o in _OBJECTS if isinstance(o, FeastEntity))
FEATURE_VIEWS: tuple[FeatureView, ...] = tuple(o for o in _OBJECTS if isinstance(o, FeatureView))
(FEATURE_SERVICE,) = (o for o in _OBJECTS if isinstance(o, FeatureService))

# `feast apply` finds objects by module attribute, never inside containers: name each one.
globals().update({obj.name: obj for obj in _OBJECTS})
