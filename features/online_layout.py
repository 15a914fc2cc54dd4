"""The online store's layout: how an entity's values become one Redis hash that Feast can read.

It is Feast's own Redis layout (`feast.infra.online_stores.redis`), written without Feast: this
module runs in the flow's sink and the serving process, where importing Feast (15-25 s) is too
dear. One hash per (entity key, project); the key is Feast's `serialize_entity_key` (version 3)
followed by the project name. In it, per feature view:

- `murmur3("<view>:<feature>")` (4 bytes) -> the value as a serialized Feast `ValueProto`
  (empty for null, which Feast reads as null);
- `_ts:<view>` -> the event time as a serialized protobuf `Timestamp`;
- `_us:<view>` -> the same time as decimal microseconds. Feast never reads it; `write_entities`
  compares against it so a replayed older value never overwrites a newer one.

Beside each hash, under `record_key` (`bm:r:{TAG}` then the hash key: no Feast key starts so, and
Feast's scans of `<entity key prefix>*<project>` never meet it), a string holds the same values
packed for serving, so a reader gets a whole entity with one `GET`. `TAG` is three characters
whose hash slot is the hash key's (`features.redis_cluster.slot_tag`), so on a Redis Cluster an
entity's record lives with its hash:

    b"bmr1" | fingerprint (8 bytes) | stamp (µs, int64 LE) | per feature: varint length, value

The fingerprint is of the view and its ordered features' names and dtypes, so a record written by
another feature schema is recognised (`decode_record` answers None) and the hash is read instead.
Each value is the very bytes its hash field holds (empty for null). The same guarded script call
writes both, so they never disagree. A writer that changes a hash another way (e.g. `feast
materialize`) must delete the record, or readers of the record keep the older values.

The protobuf bytes are built and read by hand (a few fixed wire-format shapes), because this runs
once per entity change; the tests check keys, fields and values byte for byte against Feast's own
functions and protobuf classes. TIMESTAMP features are kept at whole seconds: Feast's
`UnixTimestamp` value holds seconds.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import mmh3
import redis

from features.errors import StoreError
from features.redis_cluster import TAG_SIZE, Cluster, key_slot, moved, slot_tag
from features.specs import Dtype, Entity, FeatureSpec, features_of, view_name

ENTITY_KEY_SERIALIZATION_VERSION = 3
SECOND_US = 1_000_000
VALUE_TYPE_STRING = 2  # feast.types.Value.ValueType.STRING
_NULL_TIMESTAMP = -(2**63)  # how Feast's own writers (materialize) store a null UnixTimestamp
RECORD_PREFIX = b"bm:r:"
RECORD_KEY_HEAD = len(RECORD_PREFIX) + TAG_SIZE + 2  # `bm:r:{TAG}`, before the hash key
RECORD_FORMAT = b"bmr1"  # a new record format takes a new tag
_pack_u32 = struct.Struct("<I").pack
_STAMP = struct.Struct("<q")

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


# Varints are looked up 14 bits at a time, not built: counts and lengths take one lookup,
# epoch seconds and nanoseconds three.
_SMALL = 1 << 14
_VARINTS = tuple(_slow_varint(n) for n in range(_SMALL))
_GROUPS = tuple(bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(_SMALL))


def _varint(value: int) -> bytes:
    if 0 <= value < _SMALL:
        return _VARINTS[value]
    if 0 <= value < 1 << 28:
        return _GROUPS[value & 0x3FFF] + _VARINTS[value >> 14]
    if 0 <= value < 1 << 42:
        return _GROUPS[value & 0x3FFF] + _GROUPS[(value >> 14) & 0x3FFF] + _VARINTS[value >> 28]
    return _slow_varint(value)


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
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from


def _encode_int(value: Any) -> bytes:
    return _INTS[value] if 0 <= value < _SMALL else _INT64 + _varint(value)


def _encode_float(value: Any) -> bytes:
    return _DOUBLE + _pack_double(value)


def _encode_bool(value: Any) -> bytes:
    return _TRUE if value else _FALSE


class _Memo(dict[Any, bytes]):
    """Encodings of values that repeat a lot (categories, skill lists, times of a batch).

    `memo[value]` is one C-level lookup on a hit. Bounded: a full memo starts over.
    """

    __slots__ = ("_build",)
    SIZE = 1 << 15

    def __init__(self, build: Encoder) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, value: Any) -> bytes:
        if len(self) >= self.SIZE:
            self.clear()
        raw = self[value] = self._build(value)
        return raw


def _build_string(value: Any) -> bytes:
    raw = value.encode()
    size = len(raw)
    return (_STRING_HEADS[size] if size < _SMALL else _STRING + _varint(size)) + raw


def _build_list_item(item: str) -> bytes:
    """One `StringList.val` entry (field 1): tag, length, UTF-8."""
    raw = item.encode()
    return b"\x0a" + _varint(len(raw)) + raw


_list_item = _Memo(_build_list_item).__getitem__


def _build_strings(value: Any) -> bytes:
    inner = b"".join([_list_item(item) for item in value])
    return _STRING_LIST + _varint(len(inner)) + inner


_encode_string = _Memo(_build_string).__getitem__
_string_list = _Memo(_build_strings).__getitem__


def _encode_strings(value: Any) -> bytes:
    # Tuples (what events and the engine hold) are remembered; a list is built every time.
    return _string_list(value) if type(value) is tuple else _build_strings(value)


def _build_timestamp(value: Any) -> bytes:
    return _UNIX_TS + _varint(value // SECOND_US)


_encode_timestamp = _Memo(_build_timestamp).__getitem__


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


# --- any other ValueProto (written by someone else, e.g. `feast materialize` with another type) ---


def _wire_fields(raw: bytes) -> Iterator[tuple[int, Any]]:
    """`(field number, value)` of a message: varints as int, everything else as bytes."""
    pos = 0
    while pos < len(raw):
        key, pos = _read_varint(raw, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(raw, pos)
        elif wire in (1, 2, 5):
            size = 8 if wire == 1 else 4 if wire == 5 else None
            if size is None:
                size, pos = _read_varint(raw, pos)
            value, pos = raw[pos : pos + size], pos + size
        else:
            msg = f"cannot read a protobuf field of wire type {wire} (field {number})"
            raise StoreError(msg)
        yield number, value


def _scalar_items(kind: str, value: Any) -> list[Any]:
    """The items one `val` field of a list holds: one item, or a packed run of them."""
    if not isinstance(value, bytes) or kind in "bs":
        return [_scalar(kind, value)]
    if kind in "df":
        width = 8 if kind == "d" else 4
        return [_scalar(kind, value[i : i + width]) for i in range(0, len(value), width)]
    items, pos = [], 0
    while pos < len(value):
        item, pos = _read_varint(value, pos)
        items.append(_scalar(kind, item))
    return items


def _scalar(kind: str, value: Any) -> Any:
    if kind == "b":
        return bytes(value)
    if kind == "s":
        return bytes(value).decode()
    if kind == "i":
        return _signed64(value)
    if kind == "d":
        return float(_unpack_double(value)[0])
    if kind == "f":
        return float(_unpack_float(value)[0])
    return value != 0  # "?"


# Value's oneof `val`: field number -> item kind (b bytes, s str, i int, d double, f float,
# ? bool). Lists and sets hold their items in field 1 of a nested message.
_SCALAR_FIELDS = {1: "b", 2: "s", 3: "i", 4: "i", 5: "d", 6: "f", 7: "?", 32: "s", 36: "s"}
_SCALAR_FIELDS |= {37: "s", 44: "s"}
_LIST_FIELDS = dict(zip(range(11, 19), "bsiidf?i", strict=True))
_LIST_FIELDS |= dict(zip(range(22, 30), "bsiidf?i", strict=True))
_LIST_FIELDS |= dict.fromkeys((33, 38, 39, 40, 41, 45, 46), "s")
_UNIX_TIMESTAMP_FIELD, _NULL_FIELD = 8, 19


def _decode_other(raw: bytes) -> Any:
    fields = list(_wire_fields(raw))
    if not fields:
        return None
    number, value = fields[-1]  # a oneof: the last field wins
    if number == _NULL_FIELD:
        return None
    if number == _UNIX_TIMESTAMP_FIELD:
        seconds = _signed64(value)
        return None if seconds == _NULL_TIMESTAMP else seconds * SECOND_US
    if number in _SCALAR_FIELDS:
        return _scalar(_SCALAR_FIELDS[number], value)
    if number in _LIST_FIELDS:
        kind = _LIST_FIELDS[number]
        return tuple(
            item
            for item_number, item_value in _wire_fields(value)
            if item_number == 1
            for item in _scalar_items(kind, item_value)
        )
    msg = f"cannot read a Feast value of field {number}: not a scalar or a list of scalars"
    raise StoreError(msg)


def _build_event_time(stamp_us: int) -> bytes:
    seconds, micros = divmod(stamp_us, SECOND_US)
    out = b"\x08" + _varint(seconds) if seconds else b""
    return out + b"\x10" + _varint(micros * 1000) if micros else out


_event_time = _Memo(_build_event_time).__getitem__  # the updates of a batch share few stamps


def encode_event_time(stamp_us: int) -> bytes:
    """The `_ts:<view>` value: a serialized `google.protobuf.Timestamp`."""
    return _event_time(stamp_us)


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
    record_head: bytes  # the record's format tag and this layout's fingerprint

    @property
    def read_fields(self) -> tuple[bytes, ...]:
        """What `read_entities` asks for: every feature field, then `_ts:<view>`."""
        return (*self.fields, self.ts_field)


def entity_key_prefix(join_key: str) -> bytes:
    """Feast's `serialize_entity_key_prefix([join_key])`, version 3: count, then typed key."""
    encoded = join_key.encode()
    return _pack_u32(1) + _pack_u32(VALUE_TYPE_STRING) + _pack_u32(len(encoded)) + encoded


def _fingerprint(view: str, specs: Sequence[FeatureSpec]) -> bytes:
    """8 bytes that change whenever the view's features, their order or their dtypes do."""
    described = "\n".join([view, *(f"{spec.name}:{spec.dtype.value}" for spec in specs)])
    return hashlib.blake2b(described.encode(), digest_size=8).digest()


@cache
def _build_layout(entity: Entity) -> EntityLayout:
    view = view_name(entity)
    specs = features_of(entity)
    return EntityLayout(
        entity=entity,
        view=view,
        key_prefix=entity_key_prefix(entity.join_key) + _pack_u32(VALUE_TYPE_STRING),
        fields=tuple(feature_field(view, spec.name) for spec in specs),
        ts_field=f"_ts:{view}".encode(),
        stamp_field=f"_us:{view}".encode(),
        encoders=tuple(_CODECS[spec.dtype][1] for spec in specs),
        dtypes=tuple(spec.dtype for spec in specs),
        record_head=RECORD_FORMAT + _fingerprint(view, specs),
    )


_LAYOUTS: dict[str, EntityLayout] = {}


def layout(entity: Entity) -> EntityLayout:
    """The precomputed layout of an entity kind."""
    # Found by name (a str hashes once), not by the dataclass (which hashes all its fields).
    found = _LAYOUTS.get(entity.name)
    if found is None or found.entity is not entity:
        found = _LAYOUTS[entity.name] = _build_layout(entity)
    return found


@cache
def feature_field(view: str, feature: str) -> bytes:
    """The hash field of a feature: Feast's `_mmh3` of `<view>:<feature>` (murmur3, LE)."""
    return _pack_u32(mmh3.hash(f"{view}:{feature}", signed=False))


def redis_key(project: str, entity: Entity, entity_id: str) -> bytes:
    """The hash key of an entity, exactly as Feast's RedisOnlineStore builds it."""
    encoded = entity_id.encode()
    return layout(entity).key_prefix + _pack_u32(len(encoded)) + encoded + project.encode()


def record_key(project: str, entity: Entity, entity_id: str) -> bytes:
    """The key of an entity's serving record: `RECORD_PREFIX`, the slot tag, its hash key."""
    return record_key_of(redis_key(project, entity, entity_id))


def record_key_of(hash_key: bytes) -> bytes:
    """The record key of the entity whose Feast hash is at `hash_key`: in the same hash slot."""
    return RECORD_PREFIX + b"{" + slot_tag(key_slot(hash_key)) + b"}" + hash_key


def hash_key_of(record: bytes) -> bytes | None:
    """The hash key a record key belongs to; None where `record` is not a record key."""
    if not record.startswith(RECORD_PREFIX) or len(record) < RECORD_KEY_HEAD:
        return None
    return record[RECORD_KEY_HEAD:]


# --- whole entities ---------------------------------------------------------------------------


def _encoded(lay: EntityLayout, values: Sequence[Any]) -> list[bytes]:
    """Each feature's value bytes, as its hash field holds them (b"" for null)."""
    if len(values) != len(lay.fields):
        msg = f"{lay.view}: expected {len(lay.fields)} values, got {len(values)}"
        raise ValueError(msg)
    return [
        b"" if value is None else encode(value)
        for encode, value in zip(lay.encoders, values)  # noqa: B905 (length checked)
    ]


def _feature_items(lay: EntityLayout, encoded: list[bytes]) -> list[bytes]:
    """`[field, value, field, value, ...]` of an entity's features: the HSET arguments."""
    items = [b""] * (2 * len(encoded))
    items[::2] = lay.fields
    items[1::2] = encoded
    return items


def _record(lay: EntityLayout, encoded: list[bytes], stamp_us: int) -> bytes:
    parts = [lay.record_head, _STAMP.pack(stamp_us)]
    for raw in encoded:
        size = len(raw)
        parts += (_VARINTS[size] if size < _SMALL else _varint(size), raw)
    return b"".join(parts)


def encode_record(entity: Entity, values: Sequence[Any], stamp_us: int) -> bytes:
    """An entity's serving record: its values as of `stamp_us`, packed (see the top)."""
    lay = layout(entity)
    return _record(lay, _encoded(lay, values), stamp_us)


def decode_record(entity: Entity, raw: bytes) -> tuple[tuple[Any, ...], int] | None:
    """An entity's values and change stamp (µs) from its serving record; None where the record
    is of another format or feature schema (then its hash is the one to read)."""
    lay = layout(entity)
    head = lay.record_head
    if not raw.startswith(head):
        return None
    values = []
    try:
        (stamp_us,) = _STAMP.unpack_from(raw, len(head))
        pos = len(head) + _STAMP.size
        for dtype in lay.dtypes:
            size, start = _read_varint(raw, pos)
            pos = start + size
            if pos > len(raw):
                break
            values.append(decode_value(dtype, raw[start:pos]) if size else None)
    except (IndexError, struct.error):
        pos = -1
    if pos != len(raw) or len(values) != len(lay.dtypes):
        msg = f"{lay.view}: a serving record of {len(raw)} bytes is cut short or too long"
        raise StoreError(msg)
    return tuple(values), stamp_us


def encode_entity(
    project: str, entity: Entity, entity_id: str, values: Sequence[Any], stamp_us: int
) -> tuple[bytes, dict[bytes, bytes]]:
    """An entity's hash key and the HSET mapping that stores `values` as of `stamp_us`."""
    lay = layout(entity)
    items = _feature_items(lay, _encoded(lay, values))
    mapping = dict(zip(items[::2], items[1::2], strict=True))
    mapping[lay.ts_field] = _event_time(stamp_us)
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


# Per entity, writes only when the stored stamp is absent or <= the new one: replays never go back
# in time. KEYS holds, per entity, its hash key and its record key; ARGV, per entity in turn: the
# stamp field, the stamp, n, then n HSET arguments, then the record.
_GUARDED_HSET = """
local applied, a = 0, 1
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a + 2])
  local current = redis.call('HGET', KEYS[k], ARGV[a])
  if not current or tonumber(current) <= tonumber(ARGV[a + 1]) then
    redis.call('HSET', KEYS[k], ARGV[a], ARGV[a + 1], unpack(ARGV, a + 3, a + 2 + n))
    redis.call('SET', KEYS[k + 1], ARGV[a + 3 + n])
    applied = applied + 1
  end
  a = a + 4 + n
end
return applied
"""
# The same check on a Redis Cluster, sent to each master for the keys it owns: a script may not
# declare keys of several slots there, so each entity's hash and record key open its ARGV entry
# (hash key, record key, stamp field, stamp, n, n HSET arguments, record), and the flag lets one
# call touch the slots of its own node, one slot per command (the hash and record share one).
_GUARDED_HSET_CLUSTER = """#!lua flags=allow-cross-slot-keys
local applied, a = 0, 1
while a <= #ARGV do
  local hash, record, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 4])
  local current = redis.call('HGET', hash, ARGV[a + 2])
  if not current or tonumber(current) <= tonumber(ARGV[a + 3]) then
    redis.call('HSET', hash, ARGV[a + 2], ARGV[a + 3], unpack(ARGV, a + 5, a + 4 + n))
    redis.call('SET', record, ARGV[a + 5 + n])
    applied = applied + 1
  end
  a = a + 6 + n
end
return applied
"""
_SHA = {
    script: hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis's name for it)
    for script in (_GUARDED_HSET, _GUARDED_HSET_CLUSTER)
}
# Entities per script call: one call per entity costs Redis twice the time (measured), and a
# bounded call never blocks the server for long.
_ENTITIES_PER_CALL = 64
# A cluster whose map changed (a failover, a resharding) is asked again, this many times, with
# these pauses (seconds) before each new try: a failover takes about the nodes' timeout.
_CLUSTER_PAUSES = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)


def write_entities(
    client: redis.Redis | Cluster, project: str, updates: Iterable[EntityUpdate]
) -> int:
    """Write many entity updates in one pipeline round trip (per master, on a Redis Cluster);
    returns how many were applied.

    An update older than what the hash already holds for its view is skipped, inside Redis, so
    concurrent writers and replays after a crash cannot move a value back in time. Updates are
    applied in order, so of two for one entity at the same stamp the later one wins. The same
    check in the same script call writes, or skips, the entity's serving record.
    """
    keyed = [(redis_key(project, u.entity, u.entity_id), u) for u in updates]
    if not keyed:
        return 0
    if isinstance(client, Cluster):
        return _write_cluster(client, keyed)
    return _run_guarded(client, _GUARDED_HSET, _guarded_calls(keyed, inline=False))


def _write_cluster(cluster: Cluster, keyed: list[tuple[bytes, EntityUpdate]]) -> int:
    for pause in (*_CLUSTER_PAUSES, None):
        try:
            applied = 0
            for node, places in cluster.group([key for key, _ in keyed]).items():
                calls = _guarded_calls([keyed[n] for n in places], inline=True)
                applied += _run_guarded(cluster.nodes[node], _GUARDED_HSET_CLUSTER, calls)
            return applied
        except (redis.RedisError, OSError, StoreError) as exc:
            if pause is None or not moved(exc):
                msg = f"the Redis Cluster at {cluster.url.rpartition('@')[2]} failed a write: {exc}"
                raise StoreError(msg) from None
            time.sleep(pause)
            try:
                cluster.refresh()
            except StoreError:
                continue  # no node answers yet: the next pause, then again
    raise AssertionError  # the loop returns or raises


def _guarded_calls(keyed: Iterable[tuple[bytes, EntityUpdate]], inline: bool) -> list[list[Any]]:
    """The arguments of each script call: the number of keys, the keys, then ARGV; or, inline
    (`_GUARDED_HSET_CLUSTER`), no keys and each entity's keys in its ARGV."""
    calls = []
    keys: list[Any] = []
    args: list[Any] = []
    count = 0
    for key, (entity, _, values, stamp_us) in keyed:
        lay = layout(entity)
        encoded = _encoded(lay, values)
        items = _feature_items(lay, encoded)
        pair = (key, record_key_of(key))
        if inline:
            args += pair
        else:
            keys += pair
        args += (lay.stamp_field, stamp_us, len(items) + 2, *items, lay.ts_field)
        args += (_event_time(stamp_us), _record(lay, encoded, stamp_us))
        count += 1
        if count == _ENTITIES_PER_CALL:
            calls.append([len(keys), *keys, *args])
            keys, args, count = [], [], 0
    if count:
        calls.append([len(keys), *keys, *args])
    return calls


def _run_guarded(client: redis.Redis, script: str, calls: list[list[Any]]) -> int:
    results = _pipelined(client, _SHA[script], calls)
    if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
        client.script_load(script)  # a fresh or flushed server; the writes are idempotent
        results = _pipelined(client, _SHA[script], calls)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return sum(results)


def _pipelined(client: redis.Redis, sha: str, calls: list[list[Any]]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(sha, *call)
        return pipe.execute(raise_on_error=False)


def read_entities(
    client: redis.Redis | Cluster, project: str, requests: Sequence[tuple[Entity, str]]
) -> list[tuple[Any, ...] | None]:
    """The current values of many entities in one round trip (per master, on a Redis
    Cluster); None for an entity with none."""
    keys = [redis_key(project, entity, entity_id) for entity, entity_id in requests]
    replies: list[Any] = [None] * len(keys)
    if isinstance(client, Cluster):
        for node, places in client.group(keys).items():
            found = _hmgets(client.nodes[node], [(keys[n], requests[n][0]) for n in places])
            for n, reply in zip(places, found, strict=True):
                replies[n] = reply
    else:
        replies = _hmgets(client, [(key, r[0]) for key, r in zip(keys, requests, strict=True)])
    out: list[tuple[Any, ...] | None] = []
    for (entity, _), raw in zip(requests, replies, strict=True):
        lay = layout(entity)
        if not raw[-1]:
            out.append(None)
            continue
        out.append(tuple(decode_value(d, r) for d, r in zip(lay.dtypes, raw, strict=False)))
    return out


def _hmgets(client: redis.Redis, keyed: Sequence[tuple[bytes, Entity]]) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for key, entity in keyed:
            pipe.hmget(key, list(layout(entity).read_fields))  # type: ignore[arg-type]
        return pipe.execute()
