"""``ReadingDecoder``: the input contract for a whole poll batch, fast where msgspec is installed.

msgspec (in the ``fast`` extra) decodes a record straight into a typed struct of the model's
channels, in C, about 3.5 times faster than ``json.loads`` plus the checks of
``detector.message.parse_reading``. It only takes the common case whole: a JSON object whose
values carry every model channel as a finite number (extra channels are skipped), with a
timestamp and entity that ``parse_reading``'s rules accept. Anything else (not JSON to msgspec,
a missing, ``null`` or non-numeric channel, NaN, a bad timestamp or entity, a UTF-16 text) goes
through ``parse_reading`` itself, which gives the reading or the reason to dead-letter it. So a
record gets the same reading or the same rejection with or without msgspec; tests check both
paths on the same records.
"""

from __future__ import annotations

import logging
import math
from operator import attrgetter
from typing import Any, Callable, Sequence

from detector.message import (MAX_ENTITY, MAX_TS_MS, FieldNames, ParsedReading, Rejection,
                              parse_reading, parse_ts, resolve_entity)
from detector.protocol import Message

try:
    import msgspec
except ImportError:  # the stdlib path alone gives the same results, more slowly
    msgspec = None

log = logging.getLogger(__name__)


def have_msgspec() -> bool:
    return msgspec is not None


class ReadingDecoder:
    """Parses a batch of records against the model's ``channels``; never raises.

    ``fast`` None uses msgspec when installed; True requires it; False always takes the stdlib
    path (``parse_reading``).
    """

    def __init__(self, channels: Sequence[str], fields: FieldNames = FieldNames(),
                 fast: bool | None = None) -> None:
        self.channels, self.fields = list(channels), fields
        if fast and msgspec is None:
            raise RuntimeError("the fast decoder needs msgspec (pip install 'ganwatch[fast]')")
        self._decode: Callable[[bytes], Any] | None = None
        if fast is not False and msgspec is not None:
            try:
                self._decode = _typed_decoder(self.channels, fields)
                self._values = attrgetter(*[f"c{j}" for j in range(len(self.channels))])
            except Exception as exc:  # e.g. two contract fields configured with one name
                if fast:
                    raise
                log.warning("fast decoder unavailable, using the stdlib one: %s", exc)

    @property
    def fast(self) -> bool:
        return self._decode is not None

    def decode(self, messages: Sequence[Message]) -> list[ParsedReading | Rejection]:
        """One ``ParsedReading`` or ``Rejection`` per message, in order."""
        if self._decode is None:
            return [parse_reading(m, self.channels, self.fields) for m in messages]
        out: list[ParsedReading | Rejection] = []
        decode, values, fields = self._decode, self._values, self.fields
        single = len(self.channels) == 1
        for m in messages:
            try:
                doc = decode(m.value)
                row = (values(doc.values),) if single else values(doc.values)
                entity, ts = doc.entity, doc.ts
                if not (type(entity) is str and 0 < len(entity) <= MAX_ENTITY and entity.isascii()
                        and entity.isprintable()):
                    entity = resolve_entity(entity, m.key, fields.entity)
                if not (type(ts) is int and 0 <= ts <= MAX_TS_MS):
                    ts = parse_ts(ts)
                if math.isfinite(sum(row)):  # NaN or inf anywhere (or an overflowing sum) says no
                    out.append(ParsedReading(entity, ts, row, (), m))  # prepare stacks the rows
                    continue
            except Exception:  # msgspec refused it, or a rule did: the stdlib path says why
                pass
            out.append(parse_reading(m, self.channels, fields))
        return out


def _typed_decoder(channels: Sequence[str], fields: FieldNames) -> Callable[[bytes], Any]:
    """A msgspec decoder of the contract's object, its values a struct of the model's channels
    (``c0``, ``c1``, ... renamed to the channel names, so any name works)."""
    names = [f"c{j}" for j in range(len(channels))]
    values = msgspec.defstruct("Values", [(name, float) for name in names],
                               rename=dict(zip(names, channels)))
    reading = msgspec.defstruct(
        "Reading", [("entity", str | None, None), ("ts", int | float | str), ("values", values)],
        kw_only=True, rename={"entity": fields.entity, "ts": fields.ts, "values": fields.values},
    )
    return msgspec.json.Decoder(reading).decode
