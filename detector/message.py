"""The input contract: turn one consumed record into a reading, or into a reason to dead-letter it.

A record's key is the entity (UTF-8); its value is JSON like
``{"entity": "pump-7", "ts": "2020-03-09T10:14:33Z", "values": {"Pressure": 1.2}}``. ``ts`` is
ISO-8601 (``Z`` or an offset; naive means UTC) or epoch milliseconds. The entity comes from the value
when present, else from the key. Only the model's channels are read; extra ones are ignored, and a
missing (or ``null``) channel is reported in ``ParsedReading.missing`` for the worker's policy.

``parse_reading`` never raises: anything a producer can send ends up as a ``Rejection`` with a short
machine-friendly ``reason``, because one bad record must not stop a partition.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Sequence

import numpy as np

from detector.protocol import Message
from detector.stream import EntityState

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last instant ISO output can show
MAX_TS_TEXT = 64
MAX_ENTITY = 256  # characters; an entity name is a Redis key and a Kafka key downstream
MAX_DETAIL = 200


@dataclass(frozen=True, slots=True)
class FieldNames:
    """Names of the entity, timestamp and values fields in the JSON value."""

    entity: str = "entity"
    ts: str = "ts"
    values: str = "values"


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 0.4 us more per record
class ParsedReading:
    """A valid reading: ``values`` follow the model's channel order, NaN where ``missing``; a
    tuple of floats from the fast decoder (``prepare`` stacks a batch's rows in one go)."""

    entity: str
    ts_ms: int
    values: np.ndarray | tuple[float, ...]  # (n_channels,) float64
    missing: tuple[int, ...]  # indices of channels the record did not carry
    message: Message


@dataclass(slots=True)
class Rejection:
    """Why a record cannot be used; ``reason`` is a stable code, ``detail`` is for humans."""

    reason: str
    detail: str
    message: Message


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail[:MAX_DETAIL]


def parse_reading(
    msg: Message, channels: Sequence[str], fields: FieldNames = FieldNames()
) -> ParsedReading | Rejection:
    """Parse one record against the model's ``channels``; never raises."""
    try:
        return _parse(msg, channels, fields)
    except _Reject as exc:
        return Rejection(exc.reason, exc.detail, msg)
    except Exception as exc:  # a safety net: a parser bug must dead-letter, not kill the worker
        return Rejection("unparseable", f"{type(exc).__name__}: {exc}"[:MAX_DETAIL], msg)


def _parse(msg: Message, channels: Sequence[str], fields: FieldNames) -> ParsedReading:
    if not msg.value:
        raise _Reject("empty", "record has no value")
    try:
        doc = json.loads(msg.value)
    except RecursionError:
        raise _Reject("not_json", "nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise _Reject("not_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise _Reject("not_object", f"JSON value is a {type(doc).__name__}, not an object")
    entity = resolve_entity(doc.get(fields.entity), msg.key, fields.entity)
    if fields.ts not in doc:
        raise _Reject("missing_field", f"no {fields.ts!r} field")
    ts_ms = parse_ts(doc[fields.ts])
    raw = doc.get(fields.values)
    if raw is None:
        raise _Reject("missing_field", f"no {fields.values!r} field")
    if not isinstance(raw, dict):
        raise _Reject("bad_type", f"{fields.values!r} is a {type(raw).__name__}, not an object")
    present = [raw.get(name) for name in channels]
    if all(type(v) is float and math.isfinite(v) for v in present):  # the common case, quickly
        return ParsedReading(entity, ts_ms, np.array(present), (), msg)
    values = np.full(len(channels), np.nan)
    missing = []
    for j, (name, v) in enumerate(zip(channels, present)):
        if v is None:
            missing.append(j)
            continue
        values[j] = _number(name, v)
    if len(missing) == len(channels):
        # Nothing the model knows: carrying every channel would invent a whole reading.
        raise _Reject("missing_channel", "none of the model's channels present")
    return ParsedReading(entity, ts_ms, values, tuple(missing), msg)


def reject_future(parsed: list[ParsedReading | Rejection], now_ms: int,
                  max_future_ms: int) -> int:
    """Replace, in place, every reading dated more than ``max_future_ms`` after ``now_ms`` by a
    ``future_ts`` rejection; return how many. One reading from a clock a year ahead would
    otherwise make every real reading of its entity look like a replayed duplicate."""
    limit, n = now_ms + max_future_ms, 0
    for i, p in enumerate(parsed):
        if type(p) is ParsedReading and p.ts_ms > limit:
            ahead = (p.ts_ms - now_ms) / 1000
            parsed[i] = Rejection("future_ts", f"timestamp {iso_ms(p.ts_ms)} is {ahead:.3f} s ahead "
                                  f"of the worker's clock (more than {max_future_ms / 1000:g} s)",
                                  p.message)
            n += 1
    return n


def fill_missing(
    readings: Sequence[ParsedReading], state: EntityState, carry: bool, channels: Sequence[str]
) -> tuple[list[ParsedReading], list[Rejection]]:
    """Apply the missing-channel policy to one entity's readings (arrival order).

    ``carry`` takes the entity's last accepted value of the channel (the stored window's last row,
    then earlier readings of this batch); without one, or with ``carry`` off, the reading is
    rejected. Readings ``advance`` will skip as duplicates are kept as they are.
    """
    if not any(r.missing for r in readings):  # the common case: nothing to fill
        return list(readings), []
    kept: list[ParsedReading] = []
    dropped: list[Rejection] = []
    last = state.values[-1].copy() if len(state.values) else np.full(len(channels), np.nan)
    last_ts = state.last_ts_ms
    for r in readings:
        duplicate = last_ts is not None and r.ts_ms <= last_ts
        if r.missing:
            names = ", ".join(channels[j] for j in r.missing)
            carried = last[list(r.missing)]
            if not carry or (not duplicate and np.isnan(carried).any()):
                why = "" if not carry else ", no previous value to carry"
                dropped.append(Rejection("missing_channel", f"missing {names}{why}", r.message))
                continue
            values = r.values.copy()
            values[list(r.missing)] = np.nan_to_num(carried)  # a skipped duplicate's values don't matter
            r = ParsedReading(r.entity, r.ts_ms, values, (), r.message)
        if not duplicate:
            last, last_ts = np.asarray(r.values, dtype=np.float64), r.ts_ms
        kept.append(r)
    return kept, dropped


def resolve_entity(field: Any, key: bytes | None, name: str) -> str:
    """The entity from the value's field, else from the record key; raises ``_Reject``."""
    if field is not None:
        if not isinstance(field, str) or not field:
            raise _Reject("bad_type", f"{name!r} must be a non-empty string")
        entity = field
    elif key is None:
        raise _Reject("missing_field", f"no {name!r} field and no record key")
    else:
        try:
            entity = key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject("bad_key", "record key is not UTF-8") from None
        if not entity:
            raise _Reject("bad_key", "record key is empty")
    if len(entity) > MAX_ENTITY:
        raise _Reject("bad_entity", f"entity longer than {MAX_ENTITY} characters")
    try:
        entity.encode("utf-8")  # JSON escapes can smuggle lone surrogates in; keys must encode
    except UnicodeEncodeError:
        raise _Reject("bad_entity", "entity is not valid Unicode") from None
    if not entity.isprintable():  # control characters, newlines: they break keys, logs, dashboards
        raise _Reject("bad_entity", f"entity has unprintable characters: {entity[:40]!r}")
    return entity


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Reject("non_numeric", f"channel {name!r} is a {type(v).__name__}")
    try:
        x = float(v)
    except OverflowError:
        raise _Reject("non_finite", f"channel {name!r} overflows a float") from None
    if not math.isfinite(x):
        raise _Reject("non_finite", f"channel {name!r} is {x}")
    return x


def parse_ts(v: Any) -> int:
    """Epoch milliseconds from ISO-8601 text or a number of epoch milliseconds (floats rounded)."""
    if isinstance(v, bool):
        raise _Reject("bad_ts", "timestamp is a boolean")
    if isinstance(v, int):
        ms = v
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise _Reject("bad_ts", f"timestamp is {v}")
        ms = round(v)
    elif isinstance(v, str):
        if len(v) > MAX_TS_TEXT:
            raise _Reject("bad_ts", "timestamp text too long")
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise _Reject("bad_ts", f"not ISO-8601: {v!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            ms = (dt - EPOCH) // timedelta(milliseconds=1)
        except OverflowError:
            raise _Reject("bad_ts", f"out of range: {v!r}") from None
    else:
        raise _Reject("bad_ts", f"timestamp is a {type(v).__name__}")
    if not 0 <= ms <= MAX_TS_MS:
        raise _Reject("bad_ts", f"timestamp {ms} ms outside 1970..9999")
    return int(ms)


def iso_ms(ts_ms: int) -> str:
    """``2020-03-09T10:14:33.000Z`` for epoch milliseconds (exact, no float rounding)."""
    dt = EPOCH + timedelta(milliseconds=int(ts_ms))
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


MAX_DEAD_LETTER_BYTES = 1_000_000  # key + value; Kafka's default limits are 1 MiB with overhead


def dead_letter(rejection: Rejection, now_ms: int,
                max_bytes: int = MAX_DEAD_LETTER_BYTES) -> tuple[bytes | None, bytes]:
    """The dead-letter record (key, value): the original bytes, where they came from, and why.

    A record whose key and value would pass ``max_bytes`` (a 700 KB value is carried twice, as
    base64 and as text) is cut to fit: ``value_text`` goes first, then the base64 of the key and
    value is shortened; ``truncated`` is then true and ``key_bytes``/``value_bytes`` give the
    original sizes. A record key over a quarter of the budget is not reused as the key.
    """
    key, value, _ = dead_letter_record(rejection, now_ms, max_bytes)
    return key, value


def dead_letter_record(rejection: Rejection, now_ms: int,
                       max_bytes: int = MAX_DEAD_LETTER_BYTES) -> tuple[bytes | None, bytes, bool]:
    """``dead_letter`` and whether it had to be cut."""
    key, value = _dead_letter(rejection, now_ms, None)
    if len(value) + len(key or b"") <= max_bytes:
        return key, value, False
    return *_dead_letter(rejection, now_ms, max_bytes), True


def _dead_letter(rejection: Rejection, now_ms: int,
                 max_bytes: int | None) -> tuple[bytes | None, bytes]:
    msg = rejection.message
    record_key = msg.key
    if max_bytes is not None and record_key is not None and len(record_key) > max_bytes // 4:
        record_key = None
    doc: dict[str, Any] = {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "source": {
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "timestamp_ms": msg.timestamp_ms,
        },
        "key_b64": _b64(msg.key),
        "value_b64": _b64(msg.value),
    }
    if msg.value is not None and max_bytes is None:
        try:
            doc["value_text"] = msg.value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # value_b64 still carries it
    doc["dead_lettered_at"] = iso_ms(now_ms)
    if max_bytes is not None:
        doc["truncated"] = True
        doc["key_bytes"] = None if msg.key is None else len(msg.key)
        doc["value_bytes"] = None if msg.value is None else len(msg.value)
        doc["key_b64"] = doc["value_b64"] = ""
        room = max_bytes - len(record_key or b"") - len(_encode(doc)) - 16  # quotes, padding
        budget = max(0, room * 3 // 4)  # raw bytes that fit as base64
        n_key, n_value = len(msg.key or b""), len(msg.value or b"")
        small = min(n_key, n_value, budget // 2)  # the smaller one whole if it fits in half
        key_room = small if n_key <= n_value else min(n_key, budget - small)
        value_room = min(n_value, budget - key_room)
        doc["key_b64"] = _b64(msg.key[:key_room]) if msg.key is not None else None
        doc["value_b64"] = _b64(msg.value[:value_room]) if msg.value is not None else None
    return record_key, _encode(doc)


def _encode(doc: dict[str, Any]) -> bytes:
    # backslashreplace turns a stray surrogate in a detail into a JSON escape instead of raising
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "backslashreplace")


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")
