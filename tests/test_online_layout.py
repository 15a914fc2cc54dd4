"""The online layout: Feast's Redis layout byte for byte, readable by Feast, safe from replays."""

from __future__ import annotations

import dataclasses
import random
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types import Value_pb2
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import StringList, ValueType
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.internal.decoder import _DecodeVarint
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from features import online_layout
from features.errors import StoreError
from features.feast_repo import feature_refs
from features.online_layout import (
    RECORD_FORMAT,
    VALUE_TYPE_STRING,
    EntityUpdate,
    decode_entity,
    decode_record,
    decode_value,
    encode_entity,
    encode_event_time,
    encode_record,
    encode_value,
    entity_key_prefix,
    feature_field,
    hash_key_of,
    layout,
    read_entities,
    record_key,
    redis_key,
    write_entities,
)
from features.settings import Settings
from features.specs import CLIENT, ENTITIES, FREELANCER, JOB, Dtype, Entity, features_of, view_name

PROJECT = "bestmatch"
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=40)
STAMP_US = st.integers(-(2**40), 2**52)


def proto_of(dtype: Dtype, value: Any) -> ValueProto:
    if value is None:
        return ValueProto()
    return {
        Dtype.INT: lambda: ValueProto(int64_val=value),
        Dtype.FLOAT: lambda: ValueProto(double_val=value),
        Dtype.BOOL: lambda: ValueProto(bool_val=value),
        Dtype.STRING: lambda: ValueProto(string_val=value),
        Dtype.STRINGS: lambda: ValueProto(string_list_val=StringList(val=list(value))),
        Dtype.TIMESTAMP: lambda: ValueProto(unix_timestamp_val=value // 1_000_000),
    }[dtype]()


VALUES = {
    Dtype.INT: INT64,
    Dtype.FLOAT: st.floats(allow_nan=False),
    Dtype.BOOL: st.booleans(),
    Dtype.STRING: TEXT,
    Dtype.STRINGS: st.lists(TEXT, max_size=8).map(tuple),
    Dtype.TIMESTAMP: STAMP_US,
}


@pytest.mark.parametrize("dtype", list(Dtype))
@given(data=st.data())
def test_values_are_feast_value_protos(dtype: Dtype, data: st.DataObject) -> None:
    value = data.draw(st.none() | VALUES[dtype])
    raw = encode_value(dtype, value)
    assert raw == proto_of(dtype, value).SerializeToString()
    expected = value if dtype is not Dtype.TIMESTAMP or value is None else value // 10**6 * 10**6
    assert decode_value(dtype, raw) == expected


def test_values_written_by_others_still_decode() -> None:
    assert decode_value(Dtype.FLOAT, ValueProto(int64_val=3).SerializeToString()) == 3
    assert decode_value(Dtype.INT, ValueProto(null_val=0).SerializeToString()) is None
    assert decode_value(Dtype.STRING, None) is None
    feast_null = ValueProto(
        unix_timestamp_val=-(2**63)
    ).SerializeToString()  # as materialize writes
    assert decode_value(Dtype.TIMESTAMP, feast_null) is None


INT32 = st.integers(-(2**31), 2**31 - 1)
ITEMS = {
    "bytes": st.binary(max_size=8),
    "string": TEXT,
    "int32": INT32,
    "int64": INT64,
    "double": st.floats(allow_nan=False),
    "float": st.floats(width=32, allow_nan=False),
    "bool": st.booleans(),
    "unix_timestamp": INT64,
}
# Every ValueProto kind `decode_value` reads without Feast: scalars, lists and sets of scalars.
OTHER_KINDS = {
    **{f"{kind}_val": items for kind, items in ITEMS.items()},
    **{f"{kind}_list_val": st.lists(items, max_size=5) for kind, items in ITEMS.items()},
    **{f"{kind}_set_val": st.lists(items, max_size=5) for kind, items in ITEMS.items()},
    **{f"{kind}_val": TEXT for kind in ("json", "uuid", "time_uuid", "decimal")},
    **{
        f"{kind}_{shape}_val": st.lists(TEXT, max_size=5)
        for kind in ("json", "uuid", "time_uuid", "decimal")
        for shape in ("list", "set")
        if f"{kind}_{shape}_val" in ValueProto.DESCRIPTOR.fields_by_name
    },
}


def other_proto(kind: str, value: Any) -> ValueProto:
    field = ValueProto.DESCRIPTOR.fields_by_name[kind]
    if field.message_type is None:
        return ValueProto(**{kind: value})
    message = getattr(Value_pb2, field.message_type.name)
    return ValueProto(**{kind: message(val=value)})


@given(kind=st.sampled_from(sorted(OTHER_KINDS)), data=st.data())
def test_any_scalar_or_list_value_proto_decodes_as_protobuf_reads_it(
    kind: str, data: st.DataObject
) -> None:
    proto = other_proto(kind, data.draw(OTHER_KINDS[kind]))
    value = getattr(proto, kind)
    if kind == "unix_timestamp_val":
        expected = None if value == -(2**63) else value * 1_000_000
    else:
        expected = tuple(value.val) if hasattr(value, "val") else value
    assert online_layout._decode_other(proto.SerializeToString()) == expected


def test_values_of_another_kind_decode_through_decode_value() -> None:
    raw = ValueProto(int32_list_val=Value_pb2.Int32List(val=[-1, 2])).SerializeToString()
    assert decode_value(Dtype.STRINGS, raw) == (-1, 2)
    assert decode_value(Dtype.INT, ValueProto(double_val=1.5).SerializeToString()) == 1.5
    with pytest.raises(StoreError, match="field 20"):
        decode_value(Dtype.INT, ValueProto(map_val=Value_pb2.Map()).SerializeToString())


@pytest.mark.parametrize("edge", [14, 28, 42, 63])
def test_varints_at_every_lookup_boundary(edge: int) -> None:
    for value in (2**edge - 1, 2**edge, 2**edge + 1, -(2**edge), 1 - 2**edge):
        if not -(2**63) <= value < 2**63:
            continue
        assert encode_value(Dtype.INT, value) == proto_of(Dtype.INT, value).SerializeToString()
        assert decode_value(Dtype.INT, encode_value(Dtype.INT, value)) == value
        stamp = value * 1_000_000 + 999_999  # no range check: Timestamp's own is years 1-9999
        ts = Timestamp(seconds=value, nanos=999_999_000)
        assert encode_event_time(stamp) == ts.SerializeToString()


def test_repeated_values_are_remembered_and_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online_layout._Memo, "SIZE", 4)
    for memo in memos():  # earlier tests may have filled them past 4 with values all hit here
        memo.__self__.clear()
    rng = random.Random(4)
    for _ in range(200):
        skills = tuple(rng.choice(["python", "sql", "ü", ""]) for _ in range(rng.randint(0, 5)))
        expected = proto_of(Dtype.STRINGS, skills).SerializeToString()
        assert encode_value(Dtype.STRINGS, skills) == expected
        assert encode_value(Dtype.STRINGS, list(skills)) == expected  # lists: never remembered
        text = rng.choice(["fixed", "hourly", "日本"]) + str(rng.randint(0, 9))
        assert encode_value(Dtype.STRING, text) == proto_of(Dtype.STRING, text).SerializeToString()
        stamp = rng.randint(0, 10) * 1_000_000 + rng.randint(0, 2)
        raw = encode_value(Dtype.TIMESTAMP, stamp)
        assert raw == proto_of(Dtype.TIMESTAMP, stamp).SerializeToString()
        ts = Timestamp()
        ts.FromMicroseconds(stamp)
        assert encode_event_time(stamp) == ts.SerializeToString()
    assert all(len(memo.__self__) <= 4 for memo in memos())


def memos() -> list[Any]:
    return [
        online_layout._encode_string,
        online_layout._string_list,
        online_layout._list_item,
        online_layout._encode_timestamp,
        online_layout._event_time,
    ]


def test_the_layout_imports_no_feast() -> None:
    # Importing Feast costs 15-25 s: the flow's sink and the service must not pay it.
    code = (
        "import sys, features.online_layout, features.offline_layout, features.settings; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'feast'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


@given(STAMP_US)
def test_event_time_is_a_protobuf_timestamp(stamp_us: int) -> None:
    ts = Timestamp()
    ts.FromMicroseconds(stamp_us)
    assert encode_event_time(stamp_us) == ts.SerializeToString()


@given(
    st.sampled_from(ENTITIES),
    st.text(min_size=1, max_size=128),
    st.sampled_from(["bestmatch", "p-2"]),
)
def test_keys_are_feasts_redis_keys(entity: Entity, entity_id: str, project: str) -> None:
    proto = EntityKeyProto(
        join_keys=[entity.join_key], entity_values=[ValueProto(string_val=entity_id)]
    )
    assert redis_key(project, entity, entity_id) == _redis_key(project, proto, 3)
    assert entity_key_prefix(entity.join_key) == serialize_entity_key_prefix([entity.join_key], 3)


def test_the_value_type_of_string_keys_is_feasts() -> None:
    assert VALUE_TYPE_STRING == ValueType.STRING


def test_fields_are_feasts_murmur_hashes() -> None:
    for entity in ENTITIES:
        view = view_name(entity)
        lay = layout(entity)
        assert lay.fields == tuple(_mmh3(f"{view}:{s.name}") for s in features_of(entity))
        assert len(set(lay.fields)) == len(lay.fields)
        assert feature_field(view, features_of(entity)[0].name) == lay.fields[0]
        assert lay.ts_field == f"_ts:{view}".encode()


def random_value(rng: random.Random, dtype: Dtype) -> Any:
    if rng.random() < 0.2 and dtype is not Dtype.INT:
        return None
    return {
        Dtype.INT: lambda: rng.randint(-5, 10**12),
        Dtype.FLOAT: lambda: rng.uniform(-1e6, 1e6),
        Dtype.BOOL: lambda: rng.random() < 0.5,
        Dtype.STRING: lambda: rng.choice(["", "hourly", "日本", "a,b"]) + str(rng.randint(0, 9)),
        Dtype.STRINGS: lambda: tuple(
            rng.choice(["python", "sql", "ü"]) for _ in range(rng.randint(0, 4))
        ),
        Dtype.TIMESTAMP: lambda: rng.randint(1_600_000_000, 1_800_000_000) * 10**6,
    }[dtype]()


def random_values(rng: random.Random, entity: Entity) -> tuple[Any, ...]:
    return tuple(random_value(rng, s.dtype) for s in features_of(entity))


def test_encode_then_decode_round_trips(redis_url: str) -> None:
    rng = random.Random(7)
    client = redis.Redis.from_url(redis_url)
    for entity in ENTITIES:
        values = random_values(rng, entity)
        key, mapping = encode_entity(PROJECT, entity, "e-1", values, 1_700_000_000_123_456)
        client.hset(key, mapping=mapping)
        assert decode_entity(entity, client.hgetall(key)) == values
    assert decode_entity(JOB, {}) is None
    with pytest.raises(ValueError, match="expected"):
        encode_entity(PROJECT, JOB, "j", (1, 2), 0)


def test_write_entities_never_goes_back_in_time(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(1)
    old, new, newer = (random_values(rng, JOB) for _ in range(3))
    assert write_entities(client, PROJECT, [EntityUpdate(JOB, "j-1", new, 2_000)]) == 1
    assert write_entities(client, PROJECT, [EntityUpdate(JOB, "j-1", old, 1_000)]) == 0
    assert read_entities(client, PROJECT, [(JOB, "j-1")]) == [new]
    # Same stamp: the later write wins (a second change at the same instant).
    assert write_entities(client, PROJECT, [EntityUpdate(JOB, "j-1", newer, 2_000)]) == 1
    assert read_entities(client, PROJECT, [(JOB, "j-1")]) == [newer]
    # Inside one batch, order in the batch is applied but time still only moves forward.
    batch = [EntityUpdate(JOB, "j-2", new, 5), EntityUpdate(JOB, "j-2", old, 4)]
    assert write_entities(client, PROJECT, batch) == 1
    assert read_entities(client, PROJECT, [(JOB, "j-2"), (JOB, "nobody")]) == [new, None]
    # Views of different entities never collide, and an empty batch is no round trip at all.
    assert write_entities(client, PROJECT, []) == 0


def test_write_entities_in_many_script_calls_keeps_order_and_guards(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(8)
    per_call = online_layout._ENTITIES_PER_CALL
    n = 2 * per_call + 5  # three script calls in one pipeline
    entities = [rng.choice(ENTITIES) for _ in range(n)]
    first = [
        EntityUpdate(e, f"x-{i % 50}", random_values(rng, e), 1000 + i)
        for i, e in enumerate(entities)
    ]
    assert write_entities(client, PROJECT, first) == n
    # Replays of all of them (older, same, newer stamps, across call boundaries): only the
    # same-or-newer ones apply, and the last update of an entity is what stays.
    shifts = [rng.choice([-1, 0, 1]) for _ in range(n)]
    second = [
        EntityUpdate(u.entity, u.entity_id, random_values(rng, u.entity), u.stamp_us + d)
        for u, d in zip(first, shifts, strict=True)
    ]
    applied = write_entities(client, PROJECT, second)
    latest: dict[tuple[str, str], EntityUpdate] = {}
    expected_applied = 0
    for u in [*first, *second]:
        key = (u.entity.name, u.entity_id)
        if key not in latest or latest[key].stamp_us <= u.stamp_us:
            latest[key] = u
            expected_applied += 1
    assert applied == expected_applied - n
    requests = [(u.entity, u.entity_id) for u in latest.values()]
    assert read_entities(client, PROJECT, requests) == [tuple(u.values) for u in latest.values()]
    assert read_records(client, requests) == [
        (tuple(u.values), u.stamp_us) for u in latest.values()
    ]


def test_write_entities_reloads_its_script_after_a_flush(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    values = random_values(random.Random(3), CLIENT)
    client.script_flush()
    assert write_entities(client, PROJECT, [EntityUpdate(CLIENT, "c-1", values, 10)]) == 1
    assert read_entities(client, PROJECT, [(CLIENT, "c-1")]) == [values]
    assert read_records(client, [(CLIENT, "c-1")]) == [(values, 10)]


# --- serving records ---------------------------------------------------------------------------


def read_records(
    client: redis.Redis, requests: list[tuple[Entity, str]]
) -> list[tuple[tuple[Any, ...], int] | None]:
    keys = [record_key(PROJECT, entity, entity_id) for entity, entity_id in requests]
    raws = client.mget(keys)
    return [
        None if raw is None else decode_record(entity, raw)
        for (entity, _), raw in zip(requests, raws, strict=True)
    ]


def record_parts(raw: bytes) -> tuple[bytes, int, list[bytes]]:
    """A record split by hand: its head, its stamp, its values' bytes."""
    head, (stamp,), pos = raw[:12], struct.unpack_from("<q", raw, 12), 20
    values = []
    while pos < len(raw):
        size, pos = _DecodeVarint(raw, pos)
        values.append(raw[pos : pos + size])
        pos += size
    assert pos == len(raw)
    return head, stamp, values


def test_records_hold_the_hash_values_bytes_and_stamp(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(21)
    updates = [
        EntityUpdate(entity, f"e-{n}-ü", random_values(rng, entity), stamp)
        for entity in ENTITIES
        for n, stamp in enumerate((-(2**40) - 1, 1, 1_700_000_000_123_456))
    ]
    long = list(random_values(rng, JOB))  # a value of over 2**14 bytes: a longer length prefix
    long[next(i for i, s in enumerate(features_of(JOB)) if s.dtype is Dtype.STRING)] = "x" * 20_000
    updates.append(EntityUpdate(JOB, "long", tuple(long), 5))
    assert any(None in u.values for u in updates)
    assert write_entities(client, PROJECT, updates) == len(updates)
    requests = [(u.entity, u.entity_id) for u in updates]
    stored = read_entities(client, PROJECT, requests)
    assert read_records(client, requests) == [
        (values, u.stamp_us) for values, u in zip(stored, updates, strict=True)
    ]
    for u in updates:
        lay = layout(u.entity)
        raw = client.get(record_key(PROJECT, u.entity, u.entity_id))
        assert raw == encode_record(u.entity, u.values, u.stamp_us)
        head, stamp, values = record_parts(raw)
        mapping = client.hgetall(redis_key(PROJECT, u.entity, u.entity_id))
        assert head == lay.record_head and head.startswith(RECORD_FORMAT)
        assert stamp == u.stamp_us == int(mapping[lay.stamp_field])
        assert values == [mapping[field] for field in lay.fields]  # one value encoding


def test_record_keys_are_apart_from_feasts_keys() -> None:
    for entity in ENTITIES:
        key = record_key(PROJECT, entity, "e-1")
        hash_key = redis_key(PROJECT, entity, "e-1")
        assert key.startswith(b"bm:r:{") and key.endswith(hash_key)
        assert hash_key_of(key) == hash_key
        # On a Redis Cluster a record lives in its hash's slot (the server's own CLUSTER KEYSLOT
        # agrees: tests/test_redis_cluster.py).
        assert key_slot(key) == key_slot(hash_key)
        # Feast's keys (and its scans for a view's keys) begin with the entity key prefix.
        assert not key.startswith(entity_key_prefix(entity.join_key)[:4])
    assert len({layout(e).record_head for e in ENTITIES}) == len(ENTITIES)


def test_a_record_of_another_schema_or_format_is_not_read() -> None:
    values = random_values(random.Random(2), FREELANCER)
    raw = encode_record(FREELANCER, values, 7)
    assert decode_record(FREELANCER, raw) == (values, 7)
    assert decode_record(JOB, raw) is None
    assert decode_record(FREELANCER, b"bmr0" + raw[4:]) is None
    assert decode_record(FREELANCER, b"") is None
    fingerprint = online_layout._fingerprint
    view, specs = view_name(FREELANCER), list(features_of(FREELANCER))
    assert fingerprint(view, specs) == layout(FREELANCER).record_head[4:]
    others = [
        specs[1:],
        [specs[1], specs[0], *specs[2:]],
        [dataclasses.replace(specs[0], name="renamed"), *specs[1:]],
        [dataclasses.replace(specs[0], dtype=Dtype.STRING), *specs[1:]],
    ]
    assert specs[0].dtype is not Dtype.STRING
    assert all(fingerprint(view, other) != fingerprint(view, specs) for other in others)
    assert fingerprint("other_view", specs) != fingerprint(view, specs)


@pytest.mark.parametrize("cut", [1, 8, 13])
def test_a_damaged_record_is_an_error(cut: int) -> None:
    raw = encode_record(CLIENT, random_values(random.Random(9), CLIENT), 7)
    with pytest.raises(StoreError, match="serving record"):
        decode_record(CLIENT, raw[:-cut])
    with pytest.raises(StoreError, match="serving record"):
        decode_record(CLIENT, raw + b"\x00")


def test_the_guard_decides_for_hash_and_record_together(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(12)
    old, new, newer = (random_values(rng, FREELANCER) for _ in range(3))
    key, rkey = redis_key(PROJECT, FREELANCER, "f-1"), record_key(PROJECT, FREELANCER, "f-1")

    def both() -> tuple[dict[bytes, bytes], bytes | None]:
        return client.hgetall(key), client.get(rkey)

    assert write_entities(client, PROJECT, [EntityUpdate(FREELANCER, "f-1", new, 2_000)]) == 1
    written = both()
    assert decode_record(FREELANCER, written[1]) == (new, 2_000)  # type: ignore[arg-type]
    # Older: neither changes.
    assert write_entities(client, PROJECT, [EntityUpdate(FREELANCER, "f-1", old, 1_999)]) == 0
    assert both() == written
    # Same stamp, later update: both change. Newer: both change.
    assert write_entities(client, PROJECT, [EntityUpdate(FREELANCER, "f-1", newer, 2_000)]) == 1
    assert read_records(client, [(FREELANCER, "f-1")]) == [(newer, 2_000)]
    assert read_entities(client, PROJECT, [(FREELANCER, "f-1")]) == [newer]
    batch = [
        EntityUpdate(FREELANCER, "f-1", old, 3_000),
        EntityUpdate(FREELANCER, "f-1", new, 2_500),
    ]
    assert write_entities(client, PROJECT, batch) == 1
    assert read_records(client, [(FREELANCER, "f-1")]) == [(old, 3_000)]
    assert read_entities(client, PROJECT, [(FREELANCER, "f-1")]) == [old]


def test_feast_reads_what_the_layout_writes(feast_store: FeatureStore, settings: Settings) -> None:
    rng = random.Random(11)
    client = redis.Redis.from_url(settings.redis_url)
    ids = {e: [f"{e.name[0]}-{i}-ü" for i in range(8)] for e in ENTITIES}
    expected = {e: {i: random_values(rng, e) for i in ids[e]} for e in ENTITIES}
    updates = [
        EntityUpdate(e, i, expected[e][i], 1_700_000_000_000_000 + n)
        for e in ENTITIES
        for n, i in enumerate(ids[e])
    ]
    assert write_entities(client, PROJECT, updates) == len(updates)
    # Replays of older values change nothing Feast sees.
    stale = [EntityUpdate(u.entity, u.entity_id, random_values(rng, u.entity), 1) for u in updates]
    assert write_entities(client, PROJECT, stale) == 0

    rows = [{e.join_key: ids[e][n] for e in ENTITIES} for n in range(8)]
    rows.append({e.join_key: "missing" for e in ENTITIES})
    online = feast_store.get_online_features(features=feature_refs(), entity_rows=rows).to_dict()
    for entity in ENTITIES:
        for n, entity_id in enumerate(ids[entity]):
            got = tuple(feast_value(s.dtype, online[s.name][n]) for s in features_of(entity))
            assert got == expected[entity][entity_id], (entity.name, entity_id)
        assert all(online[s.name][8] is None for s in features_of(entity))


def feast_value(dtype: Dtype, value: Any) -> Any:
    if value is None:
        return None
    if dtype is Dtype.STRINGS:
        return tuple(value)
    if dtype is Dtype.TIMESTAMP:
        return int(value.timestamp()) * 1_000_000
    return value


def test_encoding_is_cheap() -> None:
    rng = random.Random(5)
    values = random_values(rng, FREELANCER)
    n = 20_000
    start = time.perf_counter()
    for i in range(n):
        encode_entity(PROJECT, FREELANCER, f"f-{i}", values, 1_700_000_000_000_000 + i)
    per_entity_us = (time.perf_counter() - start) / n * 1e6
    assert per_entity_us < 200, per_entity_us  # generous: a loaded CI box; ~10 µs on a laptop
    assert struct.calcsize("<I") == 4
