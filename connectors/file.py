"""Data files in: CSV (any delimiter) or Parquet, read through pandas (score files out:
``connectors/writer.py``).

Rows are numbered from 0, the first data row after the header (in a CSV without blank lines, row N
is on line N + 2), the same numbering as ``--from-row`` and as the row numbers written in place of
a missing timestamp column.

Timestamps are ISO-8601 text (``Z`` or an offset; naive means UTC) or epoch numbers. Epoch numbers
are seconds when the column's largest magnitude is below 1e11 and milliseconds otherwise: 1e11 s
is the year 5138 while 1e11 ms is March 1973, so real data of either unit lands on the right side.
Every problem with a file is a ``DataError`` with a one-line message naming file, column and row.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from detector.baseline import check_entity_name
from detector.message import MAX_TS_MS

log = logging.getLogger(__name__)

CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
SEPARATORS = (",", ";", "\t", "|")  # ties go to the earlier one
EPOCH_MS_FROM = 1e11  # see the module docstring
ROW_STEP_MS = 1000  # spacing of the stand-in timestamps of a file without a timestamp column


class DataError(ValueError):
    """A data file (or an option about it) the user has to fix; the message is one line."""


@dataclass
class Table:
    """Channels of one file as float64, with its timestamps and optional 0/1 labels."""

    channels: list[str]
    values: np.ndarray  # (n, C) float64, gaps forward-filled
    ts_ms: np.ndarray | None  # (n,) int64 epoch ms, None without a timestamp column
    timestamps: list[str] | np.ndarray  # the timestamp column as written, or row numbers
    labels: np.ndarray | None  # (n,) int64 0/1
    frame_rows: int
    source: str = ""
    entities: np.ndarray | None = None  # (n,) object: each row's entity name, with an entity column

    def row_ts_ms(self) -> np.ndarray:
        """``ts_ms``, or rows ``ROW_STEP_MS`` apart from 0 when the file has no timestamps."""
        if self.ts_ms is not None:
            return self.ts_ms
        return np.arange(len(self.values), dtype=np.int64) * ROW_STEP_MS


def check_min_rows(table: Table, need: int, what: str) -> None:
    """Raise unless the table has ``need`` rows; ``what`` says why, e.g. ``"a window of 30"``."""
    if len(table.values) < need:
        raise DataError(f"{table.source}: needs at least {need} rows for {what}, "
                        f"file has {len(table.values)}")


def read_table(
    path: str | os.PathLike, *, sep: str | None = None, timestamp_column: str | None = None,
    channels: Sequence[str] | None = None, exclude_columns: Sequence[str] = (),
    label_column: str | None = None, ffill_limit: int = 3, entity_column: str | None = None,
) -> Table:
    """Read a CSV or Parquet file into a ``Table``.

    Channels are ``channels`` in that order, or else every numeric column except
    ``exclude_columns`` and the timestamp and label columns. Missing or infinite values are
    forward-filled when a gap spans at most ``ffill_limit`` rows; anything else is a ``DataError``.
    """
    if ffill_limit < 0:
        raise ValueError(f"ffill_limit must be >= 0, got {ffill_limit}")
    frame = _read_frame(Path(path), sep, timestamp_column, entity_column)
    return frame_table(frame, str(path), timestamp_column=timestamp_column, channels=channels,
                       exclude_columns=exclude_columns, label_column=label_column,
                       ffill_limit=ffill_limit, entity_column=entity_column)


def read_frame(path: str | os.PathLike, *, sep: str | None = None,
               timestamp_column: str | None = None, entity_column: str | None = None
               ) -> pd.DataFrame:
    """The file as ``read_table`` reads it, before any column is checked (a column named here
    may be absent)."""
    return _read_frame(Path(path), sep, timestamp_column, entity_column)


def frame_table(
    frame: pd.DataFrame, name: str, *, timestamp_column: str | None = None,
    channels: Sequence[str] | None = None, exclude_columns: Sequence[str] = (),
    label_column: str | None = None, ffill_limit: int = 3, entity_column: str | None = None,
) -> Table:
    """A ``Table`` from a frame already in memory, by ``read_table``'s rules; ``name`` stands for
    the file in messages. The frame is not changed. ``entity_column`` names each row's entity (a
    fleet file): never a channel, and every name must be one the worker accepts as a key."""
    if ffill_limit < 0:
        raise ValueError(f"ffill_limit must be >= 0, got {ffill_limit}")
    columns = [str(c) for c in frame.columns]
    if list(frame.columns) != columns:
        frame = frame.set_axis(columns, axis=1)
    named = [c for c in (timestamp_column, label_column, entity_column) if c]
    if len(set(named)) != len(named):
        raise DataError(f"{name}: the timestamp, label and entity columns must differ, got "
                        f"{', '.join(map(repr, named))}")
    for col in [*named, *(channels or ()), *exclude_columns]:
        if col not in columns:
            raise DataError(f"{name}: unknown column {col!r}; available: {', '.join(columns)}")
    if len(frame) == 0:
        raise DataError(f"{name}: no data rows")
    special = set(named)
    if channels is not None:
        chosen = list(channels)
        for col in chosen:
            if col in special:
                role = ("timestamp" if col == timestamp_column else
                        "entity" if col == entity_column else "label")
                raise DataError(f"{name}: column {col!r} cannot be both a channel and the "
                                f"{role} column")
        if len(set(chosen)) != len(chosen):
            raise DataError(f"{name}: a channel is listed twice in {chosen}")
    else:
        skip = special | set(exclude_columns)
        chosen = [c for c in columns if c not in skip and _is_channel(frame[c])]
    if not chosen:
        raise DataError(f"{name}: no numeric channels among columns {', '.join(columns)}")
    values = np.column_stack([_numeric(name, c, frame[c]) for c in chosen])
    _fill_gaps(name, chosen, values, ffill_limit)
    if timestamp_column:
        raw = frame[timestamp_column]
        ts_ms = _parse_ts(name, timestamp_column, raw)
        timestamps = np.asarray(_ts_text(raw), dtype=object)
    else:
        ts_ms = None
        timestamps = np.asarray([str(i) for i in range(len(frame))], dtype=object)
    labels = _labels(name, label_column, frame[label_column]) if label_column else None
    entities = _entities(name, entity_column, frame[entity_column]) if entity_column else None
    log.debug("read %s: %d rows, channels %s", name, len(frame), chosen)
    return Table(chosen, values, ts_ms, timestamps, labels, len(frame), name, entities)


def sniff_separator(header: str) -> str:
    """The candidate separator found most often in the header line, outside double quotes."""
    unquoted = re.sub(r'"[^"]*"', "", header)
    counts = [unquoted.count(s) for s in SEPARATORS]
    best = max(counts)
    return SEPARATORS[counts.index(best)] if best else ","


def _read_frame(path: Path, sep: str | None, ts_col: str | None,
                entity_col: str | None = None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv, .tsv, "
                        f".txt, .parquet or .pq")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix in PARQUET_SUFFIXES and importlib.util.find_spec("pyarrow") is None:
        raise DataError(f"{path}: reading Parquet needs the parquet extra: "
                        f"pip install 'ganwatch[parquet]'")
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        with open(path, encoding="utf-8-sig") as f:
            header = f.readline()
        if not header.strip():
            raise DataError(f"{path}: empty file (no header line)")
        # The timestamp column stays text so it can be written back exactly as it came in, and
        # the entity column so that "007" stays the name the worker sees, not 7.
        text = {c: str for c in (ts_col, entity_col) if c}
        return pd.read_csv(path, sep=sep or sniff_separator(header), encoding="utf-8-sig",
                           skipinitialspace=True, dtype=text or None)
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        detail = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read: {detail}") from None
    except Exception as e:  # pyarrow raises its own types for a corrupt Parquet file
        detail = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read: {type(e).__name__}: {detail}") from None


def _is_channel(col: pd.Series) -> bool:
    """Numeric columns, and text columns that are mostly numbers (so a stray typo is reported)."""
    if pd.api.types.is_numeric_dtype(col):
        return True
    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        return False
    present = col.dropna()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().mean() > 0.5


def _numeric(name: str, column: str, col: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(col, errors="coerce")
    bad = parsed.isna() & col.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        text = str(col.iloc[row])
        hint = " (decimal comma? write 1.5, not 1,5)" if re.fullmatch(r"-?\d+,\d+", text) else ""
        raise DataError(f"{name}: column {column!r} row {row}: {text[:40]!r} is not a number{hint}")
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan)


def _fill_gaps(name: str, channels: list[str], values: np.ndarray, limit: int) -> None:
    """Forward-fill, in place, runs of at most ``limit`` missing (NaN or inf) rows per channel."""
    missing = ~np.isfinite(values)
    if not missing.any():
        return
    problems = []  # (row, message) of the first unfillable gap per channel
    for j in np.flatnonzero(missing.any(axis=0)):
        m = missing[:, j].astype(np.int8)
        edges = np.diff(np.concatenate([[0], m, [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for s, e in zip(starts, ends):
            if s == 0:
                problems.append((0, f"column {channels[j]!r} row 0 is missing and has no earlier "
                                    "value to forward-fill from"))
                break
            if e - s > limit:
                problems.append((s, f"column {channels[j]!r} rows {s}-{e - 1} are missing, "
                                    f"{e - s} in a row (ffill_limit is {limit})"))
                break
            values[s:e, j] = values[s - 1, j]
    if problems:
        raise DataError(f"{name}: {min(problems)[1]}")


def _parse_ts(name: str, column: str, raw: pd.Series) -> np.ndarray:
    where = f"{name}: timestamp column {column!r}"
    absent = raw.isna().to_numpy()
    if absent.any():
        raise DataError(f"{where} row {int(np.flatnonzero(absent)[0])}: missing timestamp")
    if pd.api.types.is_datetime64_any_dtype(raw):  # Parquet timestamps
        dt = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
        ms = _datetime_ms(dt)
    else:
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().all():
            ms = _epoch_ms(where, numbers.to_numpy(dtype=np.float64))
        else:
            dt = pd.to_datetime(raw.astype(str), format="ISO8601", utc=True, errors="coerce")
            bad = dt.isna().to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where} row {row}: {str(raw.iloc[row])[:40]!r} is neither "
                                "ISO-8601 nor an epoch number")
            ms = _datetime_ms(dt)
    out = (ms < 0) | (ms > MAX_TS_MS)
    if out.any():
        row = int(np.flatnonzero(out)[0])
        raise DataError(f"{where} row {row}: {raw.iloc[row]} is outside 1970..9999")
    # repeated or out-of-order timestamps are kept: the stream rules skip them (detector.stream),
    # in training exactly as in scoring and in the worker
    return ms


def _epoch_ms(where: str, x: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(f"{where} row {int(np.flatnonzero(bad)[0])}: not a finite epoch number")
    scale = 1000.0 if np.abs(x).max() < EPOCH_MS_FROM else 1.0
    scaled = np.rint(x * scale)
    scaled[(scaled < 0) | (scaled > MAX_TS_MS)] = -1  # reported by the caller's range check
    return scaled.astype(np.int64)


def _datetime_ms(dt: pd.Series) -> np.ndarray:
    return dt.dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64)


def _ts_text(raw: pd.Series) -> list[str]:
    if pd.api.types.is_datetime64_any_dtype(raw):
        return [t.isoformat() for t in raw]
    return [str(v) for v in raw.tolist()]


def _labels(name: str, column: str, col: pd.Series) -> np.ndarray:
    numbers = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(numbers, (0.0, 1.0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = col.iloc[row]
        text = "missing value" if pd.isna(value) else repr(str(value)[:40])
        raise DataError(f"{name}: label column {column!r} row {row}: {text} is not 0 or 1")
    return numbers.astype(np.int64)


def _entities(name: str, column: str, col: pd.Series) -> np.ndarray:
    """Each row's entity name as text; a missing, empty or unprintable one is a ``DataError``."""
    names = np.asarray([v if isinstance(v, str) else "" if pd.isna(v) else str(v)
                        for v in col.tolist()], dtype=object)
    for value in dict.fromkeys(names.tolist()):  # each distinct name once, in order of rows
        problem = check_entity_name(value)
        if problem:
            row = names.tolist().index(value)
            raise DataError(f"{name}: entity column {column!r} row {row}: {problem}")
    return names
