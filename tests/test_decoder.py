"""``ReadingDecoder``: the msgspec path gives exactly what ``parse_reading`` gives, record by record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detector.decoder as decoder_module
from detector.decoder import ReadingDecoder, have_msgspec
from detector.message import FieldNames, ParsedReading, Rejection, parse_reading
from detector.protocol import Message
from tests.test_message import CHANNELS, T0_MS, doc, json_value, msg

pytestmark = pytest.mark.skipif(not have_msgspec(), reason="msgspec (the fast extra) not installed")

ODD_CHANNELS = ["Pressure (bar)", "temp.1", "", "é", "c0"]  # names msgspec must not trip on


def same(a: ParsedReading | Rejection, b: ParsedReading | Rejection) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, Rejection):
        return (a.reason, a.detail, a.message) == (b.reason, b.detail, b.message)
    va, vb = np.asarray(a.values), np.asarray(b.values)  # a tuple of floats, or an array
    return ((a.entity, a.ts_ms, a.missing, a.message) == (b.entity, b.ts_ms, b.missing, b.message)
            and va.dtype == vb.dtype == np.float64 and va.shape == vb.shape
            and np.array_equal(va, vb, equal_nan=True))


def check(messages: list[Message], channels=CHANNELS, fields: FieldNames = FieldNames()) -> list:
    """Decode with both paths; they must agree with each other and with ``parse_reading``."""
    fast = ReadingDecoder(channels, fields, fast=True).decode(messages)
    slow = ReadingDecoder(channels, fields, fast=False).decode(messages)
    reference = [parse_reading(m, channels, fields) for m in messages]
    assert len(fast) == len(slow) == len(messages)
    for m, f, s, r in zip(messages, fast, slow, reference):
        assert same(s, r), m
        assert same(f, r), (m, f, r)
    return fast


RECORDS = [
    doc(),
    doc(ts=T0_MS), doc(ts=T0_MS + 0.6), doc(ts=0), doc(ts=-1), doc(ts=2**70), doc(ts=True),
    doc(ts="2020-03-09T12:14:33+02:00"), doc(ts="2020-03-09 10:14:33.000123"), doc(ts="yesterday"),
    doc(ts=None), doc(ts=...), doc(ts=[T0_MS]),
    doc(entity=...), doc(entity=None), doc(entity=""), doc(entity=7), doc(entity="ü-pump"),
    doc(entity="x" * 256), doc(entity="x" * 257), doc(entity="a\tb"), doc(entity="a\x7fb"),
    doc(entity="\u00e9\n"), doc(entity="pump 7"),
    doc(values={"Pressure": 1, "Temperature": -0.0}),
    doc(values={"Pressure": 1.5}), doc(values={"Pressure": None, "Temperature": 2.0}),
    doc(values={"Other": 1}), doc(values={"Pressure": "1.5", "Temperature": 1}),
    doc(values={"Pressure": True, "Temperature": 1}), doc(values={"Pressure": [1], "Temperature": 1}),
    doc(values={"Pressure": 1e308, "Temperature": 1e308}),  # finite, though their sum is not
    doc(values={"Pressure": 1, "Temperature": 2, "Status": "ok", "More": {"a": [1]}}),
    doc(values={"Pressure": 10**30, "Temperature": 2}), doc(values=[1, 2]), doc(values=...),
    b'{"ts": 1, "values": {"Pressure": NaN, "Temperature": 1}}',
    b'{"ts": 1, "values": {"Pressure": 1e400, "Temperature": 1}}',
    b'{"ts": 1, "values": {"Pressure": -Infinity, "Temperature": 1}}',
    b'{"ts": NaN, "values": {"Pressure": 1, "Temperature": 1}}',
    b'{"ts": 1, "values": {"Pressure": 1, "Temperature": 2, "Pressure": 3}, "ts": 2}',  # last wins
    b'{"entity": "\\ud800", "ts": 1, "values": {"Pressure": 1, "Temperature": 1}}',
    b'{"entity": "\\u00e9", "ts": 1, "values": {"Pressure": 1, "Temperature": 1}}',
    b'{"ts": 1, "values": {"Pressure": 1, "Temperature": 1}} trailing',
    b'\xef\xbb\xbf{"ts": 1, "values": {"Pressure": 1, "Temperature": 1}}',  # a BOM: stdlib takes it
    json.dumps(doc()).encode("utf-16"),  # so does UTF-16
    b"", None, b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe\x00garbage", b"[" * 100000,
]


@pytest.mark.parametrize("key", [b"pump-7", None, b"", b"\xff\xfe", b"a\nb"])
def test_fast_and_stdlib_paths_agree_on_every_kind_of_record(key):
    out = check([msg(v, key=key, offset=i) for i, v in enumerate(RECORDS)])
    assert any(isinstance(o, ParsedReading) for o in out)
    assert any(isinstance(o, Rejection) for o in out)


def test_the_common_case_takes_the_fast_path(monkeypatch):
    calls = []
    monkeypatch.setattr(decoder_module, "parse_reading",
                        lambda *a: calls.append(a) or parse_reading(*a))
    records = [msg(doc(ts=T0_MS + i, values={"Pressure": i, "Temperature": 0.5}), offset=i)
               for i in range(50)]
    records += [msg(doc(ts="2020-03-09T10:14:33Z")), msg(doc(entity=...), key=b"from-key")]
    out = ReadingDecoder(CHANNELS, fast=True).decode(records)
    assert [o.ts_ms for o in out[:50]] == [T0_MS + i for i in range(50)]
    assert out[50].ts_ms == T0_MS and out[51].entity == "from-key"
    assert calls == []  # none needed the stdlib path
    ReadingDecoder(CHANNELS, fast=True).decode([msg(doc(values={"Pressure": None}))])
    assert len(calls) == 1  # a missing channel does


def test_odd_channel_names_and_custom_fields():
    fields = FieldNames("device", "time", "readings")
    values = {name: float(j) for j, name in enumerate(ODD_CHANNELS)}
    body = {"device": "d1", "time": T0_MS, "readings": {**values, "extra": "x"}}
    out = check([msg(body), msg({**body, "readings": {"c0": 1.0}})], ODD_CHANNELS, fields)
    assert isinstance(out[0], ParsedReading) and list(out[0].values) == list(values.values())
    assert isinstance(out[1], ParsedReading) and out[1].missing == (0, 1, 2, 3)


def test_one_channel():
    out = check([msg({"ts": 1, "values": {"Pressure": 2}}), msg({"ts": 1, "values": {}})],
                ["Pressure"])
    assert list(out[0].values) == [2.0] and isinstance(out[1], Rejection)


def test_fast_required_without_msgspec_is_an_error(monkeypatch):
    monkeypatch.setattr(decoder_module, "msgspec", None)
    with pytest.raises(RuntimeError, match="msgspec"):
        ReadingDecoder(CHANNELS, fast=True)
    assert not ReadingDecoder(CHANNELS).fast  # auto falls back to the stdlib path


def test_clashing_field_names_fall_back_to_the_stdlib_path():
    decoder = ReadingDecoder(CHANNELS, FieldNames("x", "x", "values"))
    assert not decoder.fast
    assert isinstance(decoder.decode([msg(doc())])[0], Rejection)  # "ts" is not the ts field


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), st.binary(max_size=300)),
       key=st.one_of(st.none(), st.binary(max_size=20)))
def test_fuzz_arbitrary_bytes_agree(value, key):
    check([Message("t", 0, 0, key, value, 0)])


@settings(max_examples=400, deadline=None)
@given(
    entity=st.one_of(json_value, st.text(max_size=20)),
    ts=st.one_of(json_value, st.integers(min_value=-(10**16), max_value=10**16),
                 st.datetimes().map(lambda d: d.isoformat())),
    values=st.one_of(json_value, st.fixed_dictionaries(
        {}, optional={c: st.one_of(json_value, st.floats()) for c in CHANNELS + ["Other"]})),
    drop=st.sets(st.sampled_from(["entity", "ts", "values"])),
)
def test_fuzz_jsonish_documents_agree(entity, ts, values, drop):
    body = {k: v for k, v in {"entity": entity, "ts": ts, "values": values}.items() if k not in drop}
    check([msg(json.dumps(body).encode())])
