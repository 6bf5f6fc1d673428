"""The input contract: parsing readings, rejections, dead-letter records, the missing-channel policy."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.message import (
    MAX_TS_MS, FieldNames, ParsedReading, Rejection, dead_letter, fill_missing, iso_ms, parse_reading,
    reject_future,
)
from detector.protocol import Message
from detector.stream import EntityState

CHANNELS = ["Pressure", "Temperature"]
T0_MS = 1583748873000  # 2020-03-09T10:14:33Z


def msg(value: bytes | dict | None, key: bytes | None = b"pump-7", offset: int = 5) -> Message:
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    return Message("readings", 2, offset, key, value, 1583748880000)


def doc(**overrides) -> dict:
    base = {"entity": "pump-7", "ts": "2020-03-09T10:14:33Z", "values": {"Pressure": 1.5, "Temperature": 20}}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def ok(m: Message, fields: FieldNames = FieldNames()) -> ParsedReading:
    out = parse_reading(m, CHANNELS, fields)
    assert isinstance(out, ParsedReading), out
    return out


@pytest.mark.parametrize(
    "ts, expected",
    [
        ("2020-03-09T10:14:33Z", T0_MS),
        ("2020-03-09T10:14:33.250Z", T0_MS + 250),
        ("2020-03-09T12:14:33+02:00", T0_MS),
        ("2020-03-09T10:14:33", T0_MS),  # naive means UTC
        ("2020-03-09 10:14:33.000123", T0_MS),  # sub-millisecond truncated
        (T0_MS, T0_MS),
        (T0_MS + 0.6, T0_MS + 1),  # float milliseconds rounded
        (0, 0),
    ],
)
def test_timestamps(ts, expected):
    assert ok(msg(doc(ts=ts))).ts_ms == expected


def test_values_follow_model_channels_and_extras_are_ignored():
    r = ok(msg(doc(values={"Temperature": 3, "Extra": "not a number", "Pressure": -1.25})))
    assert r.values.tolist() == [-1.25, 3.0]
    assert r.missing == ()
    assert r.entity == "pump-7"


def test_entity_from_value_wins_over_key_and_key_is_the_fallback():
    assert ok(msg(doc(entity="valve-1"), key=b"pump-7")).entity == "valve-1"
    assert ok(msg(doc(entity=...), key="pümp-8".encode())).entity == "pümp-8"


def test_custom_field_names():
    fields = FieldNames(entity="asset", ts="time", values="readings")
    m = msg({"asset": "a-1", "time": T0_MS, "readings": {"Pressure": 1, "Temperature": 2}})
    r = ok(m, fields)
    assert (r.entity, r.ts_ms, r.values.tolist()) == ("a-1", T0_MS, [1.0, 2.0])
    assert parse_reading(msg(doc()), CHANNELS, fields).reason == "missing_field"


def test_missing_and_null_channels_are_reported_not_rejected():
    r = ok(msg(doc(values={"Temperature": None, "Pressure": 2})))
    assert r.missing == (1,)
    assert r.values[0] == 2 and math.isnan(r.values[1])


@pytest.mark.parametrize(
    "value, key, reason",
    [
        (None, b"k", "empty"),
        (b"", b"k", "empty"),
        (b"{not json", b"k", "not_json"),
        (b"\xff\xfe\x00garbage", b"k", "not_json"),
        (b"[" * 100000, b"k", "not_json"),
        (b"[1, 2]", b"k", "not_object"),
        (b'"text"', b"k", "not_object"),
        (doc(ts=...), b"k", "missing_field"),
        (doc(values=...), b"k", "missing_field"),
        (doc(entity=...), None, "missing_field"),
        (doc(entity=...), b"\xff\xfe", "bad_key"),
        (doc(entity=...), b"", "bad_key"),
        (doc(entity=7), b"k", "bad_type"),
        (doc(entity=""), b"k", "bad_type"),
        (doc(values=[1, 2]), b"k", "bad_type"),
        (doc(ts=True), b"k", "bad_ts"),
        (doc(ts="yesterday"), b"k", "bad_ts"),
        (doc(ts="2020-13-01T00:00:00Z"), b"k", "bad_ts"),
        (doc(ts=-1), b"k", "bad_ts"),
        (doc(ts=MAX_TS_MS + 1), b"k", "bad_ts"),
        (doc(ts=[T0_MS]), b"k", "bad_ts"),
        (b'{"ts": NaN, "values": {"Pressure": 1}}', b"k", "bad_ts"),
        (b'{"ts": 1, "values": {"Pressure": NaN}}', b"k", "non_finite"),
        (b'{"ts": 1, "values": {"Pressure": -Infinity}}', b"k", "non_finite"),
        (b'{"ts": 1, "values": {"Pressure": 1e400}}', b"k", "non_finite"),
        (b'{"ts": 1, "values": {"Pressure": 1' + b"0" * 400 + b"}}", b"k", "non_finite"),
        (doc(values={"Pressure": "1.5", "Temperature": 1}), b"k", "non_numeric"),
        (doc(values={"Pressure": True, "Temperature": 1}), b"k", "non_numeric"),
        (doc(values={"Pressure": [1], "Temperature": 1}), b"k", "non_numeric"),
        (doc(values={"Other": 1}), b"k", "missing_channel"),
        (b'{"entity": "\\ud800", "ts": 1, "values": {"Pressure": 1}}', b"k", "bad_entity"),
        (doc(entity="x" * 257), b"k", "bad_entity"),
        (doc(entity="pump\n7"), b"k", "bad_entity"),
        (doc(entity="pump\x007"), b"k", "bad_entity"),
        (doc(entity="\u200bpump"), b"k", "bad_entity"),  # a zero-width space: not printable
        (doc(entity=...), b"pump\x1b[31m", "bad_entity"),  # from the key, same rules
    ],
)
def test_rejections(value, key, reason):
    out = parse_reading(msg(value, key=key), CHANNELS, FieldNames())
    assert isinstance(out, Rejection)
    assert out.reason == reason, out.detail
    assert out.detail and len(out.detail) <= 200


def test_dead_letter_record_keeps_original_bytes_and_position():
    m = msg(b"\xff not utf-8", key=b"pump-7", offset=42)
    rejection = parse_reading(m, CHANNELS)
    key, value = dead_letter(rejection, T0_MS)
    record = json.loads(value)
    assert key == b"pump-7"
    assert record["reason"] == "not_json" and record["detail"]
    assert record["source"] == {"topic": "readings", "partition": 2, "offset": 42, "timestamp_ms": 1583748880000}
    assert base64.b64decode(record["value_b64"]) == m.value
    assert base64.b64decode(record["key_b64"]) == b"pump-7"
    assert "value_text" not in record
    assert record["dead_lettered_at"] == "2020-03-09T10:14:33.000Z"


def test_dead_letter_record_has_text_for_utf8_and_nulls_for_missing_bytes():
    _, value = dead_letter(parse_reading(msg(b"[1]", key=None), CHANNELS), T0_MS)
    record = json.loads(value)
    assert record["value_text"] == "[1]" and record["key_b64"] is None
    _, value = dead_letter(parse_reading(msg(None), CHANNELS), T0_MS)
    record = json.loads(value)
    assert record["reason"] == "empty" and record["value_b64"] is None and "value_text" not in record


def test_iso_ms_is_exact():
    assert iso_ms(T0_MS) == "2020-03-09T10:14:33.000Z"
    assert iso_ms(T0_MS + 7) == "2020-03-09T10:14:33.007Z"
    assert iso_ms(MAX_TS_MS) == "9999-12-31T23:59:59.999Z"


def reading(ts_ms: int, pressure: float | None, temperature: float | None) -> ParsedReading:
    values = {"Pressure": pressure, "Temperature": temperature}
    return ok(msg(doc(ts=ts_ms, values=values)))


def stored_state(last_row: list[float], last_ts: int) -> EntityState:
    return EntityState("pump-7", 2, last_ts_ms=last_ts, count=1,
                       ts=np.array([last_ts]), values=np.array([last_row], dtype=float))


def test_carry_uses_the_stored_last_value_then_earlier_readings_of_the_batch():
    state = stored_state([1.0, 10.0], T0_MS)
    batch = [reading(T0_MS + 1, None, 11), reading(T0_MS + 2, 2, None), reading(T0_MS + 3, None, 12)]
    kept, dropped = fill_missing(batch, state, carry=True, channels=CHANNELS)
    assert dropped == []
    assert [r.values.tolist() for r in kept] == [[1.0, 11.0], [2.0, 11.0], [2.0, 12.0]]
    assert all(r.missing == () for r in kept)


def test_carry_without_a_previous_value_rejects_and_dead_letter_policy_always_rejects():
    fresh = EntityState("pump-7", 2)
    kept, dropped = fill_missing([reading(T0_MS, 1, None), reading(T0_MS + 1, 1, 2)], fresh, True, CHANNELS)
    assert [r.ts_ms for r in kept] == [T0_MS + 1]
    assert [d.reason for d in dropped] == ["missing_channel"] and "Temperature" in dropped[0].detail
    kept, dropped = fill_missing([reading(T0_MS + 1, 1, None)], stored_state([1, 2], T0_MS), False, CHANNELS)
    assert kept == [] and dropped[0].reason == "missing_channel"


def test_carry_keeps_duplicates_for_advance_to_skip():
    state = stored_state([1.0, 10.0], T0_MS)
    kept, dropped = fill_missing([reading(T0_MS, 5, None), reading(T0_MS + 1, None, 3)], state, True, CHANNELS)
    assert dropped == [] and len(kept) == 2
    assert kept[1].values.tolist() == [1.0, 3.0]  # the duplicate did not become the carry source


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=300)), key=st.one_of(st.none(), st.binary(max_size=20)))
def test_fuzz_arbitrary_bytes_never_raise(value, key):
    out = parse_reading(Message("t", 0, 0, key, value, 0), CHANNELS)
    assert isinstance(out, (ParsedReading, Rejection))
    if isinstance(out, Rejection):
        assert json.loads(dead_letter(out, 0)[1])["reason"] == out.reason


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
channel_values = st.dictionaries(st.sampled_from(CHANNELS + ["Other"]), json_value, max_size=3)


@settings(max_examples=400, deadline=None)
@given(
    entity=st.one_of(json_value, st.text(max_size=20)),
    ts=st.one_of(json_value, st.integers(min_value=-(10**16), max_value=10**16),
                 st.datetimes().map(lambda d: d.isoformat())),
    values=st.one_of(json_value, channel_values),
    drop=st.sets(st.sampled_from(["entity", "ts", "values"])),
)
def test_fuzz_jsonish_documents_never_raise(entity, ts, values, drop):
    body = {k: v for k, v in {"entity": entity, "ts": ts, "values": values}.items() if k not in drop}
    out = parse_reading(msg(json.dumps(body).encode()), CHANNELS)
    assert isinstance(out, (ParsedReading, Rejection))
    if isinstance(out, ParsedReading):
        assert 0 <= out.ts_ms <= MAX_TS_MS and out.entity
        present = [j for j in range(len(CHANNELS)) if j not in out.missing]
        assert present and np.isfinite(out.values[present]).all()
    else:
        assert json.loads(dead_letter(out, 0)[1])["reason"] == out.reason


def test_readings_too_far_ahead_of_the_clock_are_rejected_as_future_ts():
    now = T0_MS
    records = [msg(doc(ts=t)) for t in (now - 10**9, now + 300_000, now + 300_001, MAX_TS_MS)]
    parsed = [parse_reading(m, CHANNELS) for m in records]
    parsed.append(parse_reading(msg(b"{not json"), CHANNELS))
    assert reject_future(parsed, now, 300_000) == 2
    assert [p.reason if isinstance(p, Rejection) else "ok" for p in parsed] == [
        "ok", "ok", "future_ts", "future_ts", "not_json"]
    assert "300.001 s ahead of the worker's clock" in parsed[2].detail
    assert parsed[2].message is records[2]  # the dead letter keeps the original record


@pytest.mark.parametrize("key_size, value_size", [(6, 700_000), (6, 3_000_000), (600_000, 10),
                                                  (400_000, 900_000)])
def test_a_dead_letter_over_the_limit_is_cut_to_fit_and_says_so(key_size, value_size):
    key, value = b"k" * key_size, b"v" * value_size
    m = msg(value, key=key, offset=42)
    rejection = parse_reading(m, CHANNELS)
    out_key, out = dead_letter(rejection, T0_MS, max_bytes=1_000_000)
    assert len(out) + len(out_key or b"") <= 1_000_000
    record = json.loads(out)
    assert record["truncated"] is True and "value_text" not in record
    assert (record["key_bytes"], record["value_bytes"]) == (key_size, value_size)
    assert record["reason"] == rejection.reason and record["source"]["offset"] == 42
    kept_value, kept_key = base64.b64decode(record["value_b64"]), base64.b64decode(record["key_b64"])
    assert value.startswith(kept_value) and key.startswith(kept_key)
    assert len(kept_value) + len(kept_key) > 500_000  # most of the budget holds the original
    assert out_key == (key if key_size <= 250_000 else None)


def test_a_dead_letter_within_the_limit_is_whole():
    m = msg(b"x" * 1000, key=b"pump-7")
    _, out = dead_letter(parse_reading(m, CHANNELS), T0_MS, max_bytes=1_000_000)
    record = json.loads(out)
    assert "truncated" not in record and record["value_text"] == "x" * 1000
