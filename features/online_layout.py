"""The online store's layout: how an entity's values become one Redis hash that Feast can read.

It is Feast's own Redis layout (`feast.infra.online_stores.redis`), written without Feast on the
hot path. One hash per (entity key, project); the key is Feast's `serialize_entity_key` (version 3)
followed by the project name. In it, per feature view:

- `murmur3("<view>:<feature>")` (4 bytes) -> the value as a serialized Feast `ValueProto`
  (empty for null, which Feast reads as null);
- `_ts:<view>` -> the event time as a serialized protobuf `Timestamp`;
- `_us:<view>` -> the same time as decimal microseconds. Feast never reads it; `write_entities`
  compares against it so a replayed older value never overwrites a newer one.

The protobuf bytes are built by hand (a few fixed wire-format shapes), because this runs once per
entity change; the tests check them byte for byte against the protobuf classes. TIMESTAMP features
are kept at whole seconds: Feast's `UnixTimestamp` value holds seconds.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import redis
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType

from features.specs import Dtype, Entity, features_of, view_name

ENTITY_KEY_SERIALIZATION_VERSION = 3
SECOND_US = 1_000_000
_NULL_TIMESTAMP = -(2**63)  # how Feast's own writers (materialize) store a null UnixTimestamp
_STRING_VALUE_TYPE = struct.pack("<I", ValueType.STRING)

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]


class EntityUpdate(NamedTuple):
    """One entity's new values, stamped with the time of the change."""

    entity: Entity
    entity_id: str
    values: Sequence[Any]  # in features_of(entity) order
    stamp_us: int


# --- protobuf wire format ---------------------------------------------------------------------


def _slow_varint(value: int) -> bytes:
    value &= 0xFFFF_FFFF_FFFF_FFFF  # int64 fields encode negatives as 10-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Counts and lengths are almost always small: their varints are looked up, not built.
_SMALL = 1 << 14
_VARINTS = tuple(_slow_varint(n) for n in range(_SMALL))


def _varint(value: int) -> bytes:
    return _VARINTS[value] if 0 <= value < _SMALL else _slow_varint(value)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# ValueProto field tags: (field number << 3) | wire type.
_INT64, _DOUBLE, _BOOL, _STRING, _UNIX_TS, _STRING_LIST = (
    b"\x20",
    b"\x29",
    b"\x38",
    b"\x12",
    b"\x40",
    b"\x62",
)
_TRUE, _FALSE = _BOOL + b"\x01", _BOOL + b"\x00"
_INTS = tuple(_INT64 + v for v in _VARINTS)
_STRING_HEADS = tuple(_STRING + v for v in _VARINTS)
_ITEM_HEADS = tuple(b"\x0a" + v for v in _VARINTS)  # StringList.val, field 1
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from


def _encode_int(value: Any) -> bytes:
    return _INTS[value] if 0 <= value < _SMALL else _INT64 + _slow_varint(value)


def _encode_float(value: Any) -> bytes:
    return _DOUBLE + _pack_double(value)


def _encode_bool(value: Any) -> bytes:
    return _TRUE if value else _FALSE


def _encode_string(value: Any) -> bytes:
    raw = value.encode()
    size = len(raw)
    return (_STRING_HEADS[size] if size < _SMALL else _STRING + _slow_varint(size)) + raw


def _encode_strings(value: Any) -> bytes:
    parts = []
    for item in value:
        raw = item.encode()
        size = len(raw)
        parts.append(_ITEM_HEADS[size] if size < _SMALL else b"\x0a" + _slow_varint(size))
        parts.append(raw)
    inner = b"".join(parts)
    return _STRING_LIST + _varint(len(inner)) + inner


def _encode_timestamp(value: Any) -> bytes:
    return _UNIX_TS + _varint(value // SECOND_US)


def _decode_int(raw: bytes) -> int:
    return _signed64(_read_varint(raw, 1)[0])


def _decode_float(raw: bytes) -> float:
    return float(_unpack_double(raw, 1)[0])


def _decode_bool(raw: bytes) -> bool:
    return raw[1] != 0


def _decode_string(raw: bytes) -> str:
    length, pos = _read_varint(raw, 1)
    return raw[pos : pos + length].decode()


def _decode_strings(raw: bytes) -> tuple[str, ...]:
    end, pos = _read_varint(raw, 1)
    end += pos
    items = []
    while pos < end:
        length, pos = _read_varint(raw, pos + 1)
        items.append(raw[pos : pos + length].decode())
        pos += length
    return tuple(items)


def _decode_timestamp(raw: bytes) -> int | None:
    seconds = _signed64(_read_varint(raw, 1)[0])
    return None if seconds == _NULL_TIMESTAMP else seconds * SECOND_US


_CODECS: dict[Dtype, tuple[bytes, Encoder, Decoder]] = {
    Dtype.INT: (_INT64, _encode_int, _decode_int),
    Dtype.FLOAT: (_DOUBLE, _encode_float, _decode_float),
    Dtype.BOOL: (_BOOL, _encode_bool, _decode_bool),
    Dtype.STRING: (_STRING, _encode_string, _decode_string),
    Dtype.STRINGS: (_STRING_LIST, _encode_strings, _decode_strings),
    Dtype.TIMESTAMP: (_UNIX_TS, _encode_timestamp, _decode_timestamp),
}


def encode_value(dtype: Dtype, value: Any) -> bytes:
    """A feature value as serialized `ValueProto` bytes (b"" for null)."""
    return b"" if value is None else _CODECS[dtype][1](value)


def decode_value(dtype: Dtype, raw: bytes | None) -> Any:
    """The inverse of `encode_value`: STRINGS come back as a tuple, TIMESTAMPs as int µs."""
    if not raw:
        return None
    tag, _, decoder = _CODECS[dtype]
    if raw[:1] == tag:
        return decoder(raw)
    return _decode_other(raw)


def _decode_other(raw: bytes) -> Any:
    # Written by someone else (e.g. `feast materialize` with another type): let protobuf read it.
    proto = ValueProto.FromString(raw)
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    value = getattr(proto, kind)
    if kind == "unix_timestamp_val":
        return None if value == _NULL_TIMESTAMP else value * SECOND_US
    return tuple(value.val) if hasattr(value, "val") else value


def encode_event_time(stamp_us: int) -> bytes:
    """The `_ts:<view>` value: a serialized `google.protobuf.Timestamp`."""
    seconds, micros = divmod(stamp_us, SECOND_US)
    out = b"\x08" + _varint(seconds) if seconds else b""
    return out + b"\x10" + _varint(micros * 1000) if micros else out


# --- keys and fields --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityLayout:
    """Everything precomputed to write or read one entity kind's hash."""

    entity: Entity
    view: str
    key_prefix: bytes
    fields: tuple[bytes, ...]  # one per feature, in features_of order
    ts_field: bytes
    stamp_field: bytes
    encoders: tuple[Encoder, ...]
    dtypes: tuple[Dtype, ...]

    @property
    def read_fields(self) -> tuple[bytes, ...]:
        """What `read_entities` asks for: every feature field, then `_ts:<view>`."""
        return (*self.fields, self.ts_field)


@cache
def layout(entity: Entity) -> EntityLayout:
    """The precomputed layout of an entity kind."""
    view = view_name(entity)
    specs = features_of(entity)
    return EntityLayout(
        entity=entity,
        view=view,
        key_prefix=serialize_entity_key_prefix(
            [entity.join_key], entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION
        )
        + _STRING_VALUE_TYPE,
        fields=tuple(feature_field(view, spec.name) for spec in specs),
        ts_field=f"_ts:{view}".encode(),
        stamp_field=f"_us:{view}".encode(),
        encoders=tuple(_CODECS[spec.dtype][1] for spec in specs),
        dtypes=tuple(spec.dtype for spec in specs),
    )


@cache
def feature_field(view: str, feature: str) -> bytes:
    """The hash field of a feature: Feast's murmur3 of `<view>:<feature>`."""
    return bytes(_mmh3(f"{view}:{feature}"))


def redis_key(project: str, entity: Entity, entity_id: str) -> bytes:
    """The hash key of an entity, exactly as Feast's RedisOnlineStore builds it."""
    encoded = entity_id.encode()
    return layout(entity).key_prefix + struct.pack("<I", len(encoded)) + encoded + project.encode()


# --- whole entities ---------------------------------------------------------------------------


def _feature_items(lay: EntityLayout, values: Sequence[Any]) -> list[bytes]:
    if len(values) != len(lay.fields):
        msg = f"{lay.view}: expected {len(lay.fields)} values, got {len(values)}"
        raise ValueError(msg)
    items: list[bytes] = []
    append = items.append
    for field, encoder, value in zip(lay.fields, lay.encoders, values):  # noqa: B905 (checked)
        append(field)
        append(b"" if value is None else encoder(value))
    return items


def encode_entity(
    project: str, entity: Entity, entity_id: str, values: Sequence[Any], stamp_us: int
) -> tuple[bytes, dict[bytes, bytes]]:
    """An entity's hash key and the HSET mapping that stores `values` as of `stamp_us`."""
    lay = layout(entity)
    items = _feature_items(lay, values)
    mapping = dict(zip(items[::2], items[1::2], strict=True))
    mapping[lay.ts_field] = encode_event_time(stamp_us)
    mapping[lay.stamp_field] = str(stamp_us).encode()
    return redis_key(project, entity, entity_id), mapping


def decode_entity(entity: Entity, mapping: Mapping[bytes, bytes]) -> tuple[Any, ...] | None:
    """An entity's values from its hash (as HGETALL returns it); None where it has none."""
    lay = layout(entity)
    if not mapping.get(lay.ts_field):
        return None
    return tuple(
        decode_value(dtype, mapping.get(field))
        for dtype, field in zip(lay.dtypes, lay.fields, strict=True)
    )


# Writes only when the stored stamp is absent or <= the new one: replays never go back in time.
_GUARDED_HSET = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3))
return 1
"""
_GUARDED_HSET_SHA = hashlib.sha1(_GUARDED_HSET.encode()).hexdigest()  # noqa: S324 (Redis's name)


def write_entities(client: redis.Redis, project: str, updates: Iterable[EntityUpdate]) -> int:
    """Write many entity updates in one pipeline round trip; returns how many were applied.

    An update older than what the hash already holds for its view is skipped, inside Redis, so
    concurrent writers and replays after a crash cannot move a value back in time.
    """
    commands = []
    for entity, entity_id, values, stamp_us in updates:
        lay = layout(entity)
        args = _feature_items(lay, values)
        args.append(lay.ts_field)
        args.append(encode_event_time(stamp_us))
        commands.append((redis_key(project, entity, entity_id), lay.stamp_field, stamp_us, args))
    if not commands:
        return 0
    results = _run_guarded(client, commands)
    if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
        client.script_load(_GUARDED_HSET)  # a fresh or flushed server; the writes are idempotent
        results = _run_guarded(client, commands)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return sum(results)


def _run_guarded(
    client: redis.Redis, commands: list[tuple[bytes, bytes, int, list[bytes]]]
) -> list:
    with client.pipeline(transaction=False) as pipe:
        for key, stamp_field, stamp_us, args in commands:
            pipe.evalsha(_GUARDED_HSET_SHA, 1, key, stamp_field, stamp_us, *args)
        return pipe.execute(raise_on_error=False)


def read_entities(
    client: redis.Redis, project: str, requests: Sequence[tuple[Entity, str]]
) -> list[tuple[Any, ...] | None]:
    """The current values of many entities in one round trip; None for an entity with none."""
    with client.pipeline(transaction=False) as pipe:
        for entity, entity_id in requests:
            key, fields = redis_key(project, entity, entity_id), list(layout(entity).read_fields)
            pipe.hmget(key, fields)  # type: ignore[arg-type]  # bytes keys are fine
        replies = pipe.execute()
    out: list[tuple[Any, ...] | None] = []
    for (entity, _), raw in zip(requests, replies, strict=True):
        lay = layout(entity)
        if not raw[-1]:
            out.append(None)
            continue
        out.append(tuple(decode_value(d, r) for d, r in zip(lay.dtypes, raw, strict=False)))
    return out
