"""The shipped JSON Schemas describe what the code emits: the README's examples, every alert type,
score records, dead letters of every reason and ``replay``'s readings all validate; broken
documents do not. (The end-to-end tests validate what they read back from the broker too.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from connectors.file import Table
from detector.alert import (ALERT_MODES, ANOMALY, ANOMALY_END, ANOMALY_START, AlertContext, Verdict,
                            make_alerts, score_record)
from detector.message import (
    Rejection, dead_letter, dead_letter_record, fill_missing, parse_reading, reject_future,
)
from detector.protocol import Message
from detector.stream import EntityState
from ganwatch.replay import messages
from ganwatch.schema import SCHEMAS, load_schema
from tests.contract import check, problems

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
T0 = 1_583_748_873_000
CHANNELS = ["Pressure", "Current"]
CTX = AlertContext(CHANNELS, 4.1, "lstm-gan-3f2a9c0d1e4b", T0 + 18)


def readme_examples() -> dict[str, list[dict]]:
    """The README's JSON examples by the schema they show."""
    found: dict[str, list[dict]] = {}
    for block in re.findall(r"```json\n(.*?)```", README, flags=re.S):
        doc = json.loads(block)
        name = ("dead-letter" if "reason" in doc else "alert" if "alert_id" in doc
                else "score" if "is_anomaly" in doc else "reading")
        found.setdefault(name, []).append(doc)
    return found


def test_every_readme_example_validates_and_every_schema_has_one():
    examples = readme_examples()
    assert set(examples) == set(SCHEMAS)
    for name, docs in examples.items():
        for doc in docs:
            check(doc, name)


def test_schemas_are_valid_draft_2020_12_and_named_in_the_readme():
    for name in SCHEMAS:
        schema = load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:ganwatch:schema:{name}" and schema["description"]
        assert f"`{name}`" in README


def verdict(score: float, anomalous: bool, t: int) -> Verdict:
    return Verdict("pump-7", T0 + 1000 * t, T0 + 1000 * (t - 7), score, anomalous,
                   np.array([0.3, 0.7]))


@pytest.mark.parametrize("mode", ALERT_MODES)
def test_alerts_of_every_type_validate(mode):
    episode: dict = {}
    alerts = []
    for t, (score, bad) in enumerate([(9.0, True), (12.0, True), (float("nan"), True)]
                                     + [(1.0, False)] * 5):
        alerts += make_alerts(verdict(score, bad, t + 10), episode, mode, 5, CTX)
    types = [a["type"] for a in alerts]
    assert types == ([ANOMALY] * 3 if mode == "window" else [ANOMALY_START, ANOMALY_END])
    for alert in alerts:
        check(json.loads(json.dumps(alert)), "alert")


def test_alert_schema_ties_the_peak_fields_to_anomaly_end():
    episode: dict = {}
    start = make_alerts(verdict(9.0, True, 10), episode, "episode", 1, CTX)[0]
    (end,) = make_alerts(verdict(1.0, False, 11), episode, "episode", 1, CTX)
    assert problems({**start, "peak_score": 9.0}, "alert")
    assert problems({k: v for k, v in end.items() if k != "peak_ts_ms"}, "alert")
    assert problems({**start, "type": "anomaly_begin"}, "alert")
    assert problems({**start, "alert_id": "not-a-uuid"}, "alert")
    assert problems({**start, "ts": "2020-03-09 10:14:33"}, "alert")
    assert problems({**start, "surprise": 1}, "alert")  # the tests' strictness: no unnamed field


def test_score_records_validate():
    check(score_record(verdict(7.3, True, 10), CTX), "score")
    check(score_record(verdict(float("inf"), False, 10), CTX), "score")  # null score
    assert problems({**score_record(verdict(1.0, False, 10), CTX), "is_anomaly": 0}, "score")


JUNK = [None, b"", b"\xff\xfe", b"[1, 2]", b'{"ts": 1}', b'{"entity": 5, "ts": 1, "values": {}}',
        b'{"ts": "soon", "values": {"Pressure": 1}}', b'{"ts": 1, "values": {"Pressure": "x"}}',
        b'{"ts": 1, "values": {"Pressure": Infinity}}', b'{"ts": 1, "values": {"Other": 1}}',
        b'{"ts": 1, "values": []}']


def test_dead_letters_of_every_reason_validate():
    reasons = set()
    for key in (b"pump-7", None, b"\xff", b""):
        for offset, value in enumerate(JUNK):
            msg = Message("ganwatch.readings", 0, offset, key, value, T0)
            parsed = parse_reading(msg, CHANNELS)
            if hasattr(parsed, "reason"):
                reasons.add(parsed.reason)
                check(json.loads(dead_letter(parsed, T0 + 5)[1]), "dead-letter")
    carry = parse_reading(Message("t", 0, 99, b"e", b'{"ts": 1, "values": {"Current": 2}}', T0),
                          CHANNELS)
    _, dropped = fill_missing([carry], EntityState("e", len(CHANNELS)), True, CHANNELS)
    check(json.loads(dead_letter(dropped[0], T0)[1]), "dead-letter")
    reasons.add(dropped[0].reason)
    for key in (b"x" * 300, b"tab\there"):  # too long, unprintable
        bad = parse_reading(Message("t", 0, 7, key, b'{"ts": 1, "values": {"Pressure": 1}}', T0),
                            CHANNELS)
        check(json.loads(dead_letter(bad, T0)[1]), "dead-letter")
        reasons.add(bad.reason)
    ahead = [parse_reading(Message("t", 0, 8, b"e", b'{"ts": "2099-01-01T00:00:00Z", "values": '
                                   b'{"Pressure": 1, "Current": 2}}', T0), CHANNELS)]
    assert reject_future(ahead, T0, 300_000) == 1
    check(json.loads(dead_letter(ahead[0], T0)[1]), "dead-letter")
    reasons.add(ahead[0].reason)
    # the stage failures of poison isolation (detector.isolate), and a record cut to fit
    stages = ("load", "window", "score", "judge", "send", "flush", "save", "internal")
    for stage in stages:
        failed = Rejection(f"failed_{stage}", "boom", carry.message)
        check(json.loads(dead_letter(failed, T0)[1]), "dead-letter")
        reasons.add(failed.reason)
    big = Rejection("not_json", "x", Message("t", 0, 9, b"k", b"\x00" * 5000, T0))
    cut = json.loads(dead_letter_record(big, T0, max_bytes=2000)[1])
    assert cut["truncated"] is True and cut["value_bytes"] == 5000
    check(cut, "dead-letter")
    # every code but `unparseable`, the safety net for a parser bug
    assert reasons == set(load_schema("dead-letter")["properties"]["reason"]["enum"]) - {"unparseable"}


def test_dead_letter_reasons_are_the_readme_table():
    table = README.split("### Dead-letter contract", 1)[1].split("| Code | Meaning |", 1)[1]
    codes = set(re.findall(r"`([a-z_]+)`", table.split("\n\n", 1)[0]))
    assert set(load_schema("dead-letter")["properties"]["reason"]["enum"]) == codes


@pytest.mark.parametrize("ts_format", ["iso", "epoch-ms"])
def test_replayed_readings_validate_and_parse(ts_format):
    table = Table(CHANNELS, np.array([[1.5, 2.0], [1.25, -3.0]]), np.array([T0, T0 + 1000]),
                  timestamps=[], labels=None, frame_rows=2)
    for _, value in messages(table, "pump-7", ts_format, T0):
        check(json.loads(value), "reading")
    assert problems({"entity": "pump-7", "values": {"Pressure": 1.0}}, "reading")  # no ts
    assert problems({"ts": 1, "values": {"Pressure": "high"}}, "reading")
    assert problems({"entity": "", "ts": 1, "values": {}}, "reading")
