"""Seeded telemetry of centrifugal pumps with injected faults, for the demo and tests.

Each pump follows a hidden load (its normalised speed ``n``): a daily cycle compressed to ``period``
rows, plus a slow random fluctuation, around the pump's operating point (``loads``; 0.65 unless
given), so the pumps of a fleet can run at different levels. The channels follow the pump
affinity laws, so they are correlated through ``n`` but not linearly: flow ~ n, pressure ~ n**2,
current ~ n**3 (plus the no-load current), vibration ~ n**2, temperature follows power through a
thermal lag, speed ~ n.

Fault magnitudes are in units of the channel's standard deviation ``sd`` over the clean series
(which includes the daily swing, so they stand out from the normal range, not only from noise):

- ``spike``: +6 sd on every row of a short span (a few rows), e.g. an impact on the vibration sensor;
- ``level_shift``: +3 sd for the whole span, e.g. a sensor offset or a worn impeller;
- ``drift``: a ramp from 0 to +4 sd across the span, e.g. a bearing heating up;
- ``stuck``: the value frozen at the reading before the span (zero variance), a hung sensor;
- ``correlation_break``: the channel's load-driven part is mirrored around its mean, so it moves
  against the load while the other channels follow it (e.g. flow falling as speed rises: clogging).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd

CHANNELS = ("flow", "pressure", "current", "vibration", "temperature", "speed")
KINDS = ("spike", "level_shift", "drift", "stuck", "correlation_break")
SPIKE_SD, SHIFT_SD, DRIFT_SD = 6.0, 3.0, 4.0
DEFAULT_LOAD = 0.65  # a pump's operating point (mean normalised speed) unless ``loads`` says
DEFAULT_START_TS_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, fixed so output is reproducible
# which channel each default fault hits, and how long it lasts at most (rows)
DEFAULT_CHANNEL = {"spike": "vibration", "level_shift": "current", "drift": "temperature",
                   "stuck": "pressure", "correlation_break": "flow"}
DEFAULT_LENGTH = {"spike": 3, "level_shift": 120, "drift": 240, "stuck": 150,
                  "correlation_break": 240}


@dataclass(frozen=True)
class Channel:
    """``value = offset + gain * n**power`` (temperature: of the lagged power) + noise."""

    offset: float
    gain: float
    power: float
    noise: float
    decimals: int


SPECS = {
    "flow": Channel(0.0, 180.0, 1, 2.5, 2),  # m3/h
    "pressure": Channel(0.5, 8.0, 2, 0.08, 3),  # bar
    "current": Channel(6.0, 50.0, 3, 0.6, 2),  # A
    "vibration": Channel(0.8, 3.0, 2, 0.12, 3),  # mm/s RMS
    "temperature": Channel(30.0, 35.0, 3, 0.25, 2),  # degC, bearing
    "speed": Channel(0.0, 2950.0, 1, 8.0, 1),  # rpm
}
THERMAL_TAU_ROWS = 30.0


@dataclass(frozen=True)
class Fault:
    """One injected fault on ``channel`` of ``entity``, rows ``start`` (inclusive) to ``end`` (exclusive)."""

    entity: str
    kind: str
    channel: str
    start: int
    end: int


@dataclass
class Telemetry:
    """Simulated readings: one frame per entity (``ts``, channels, ``anomaly``) and the faults."""

    frames: dict[str, pd.DataFrame]
    faults: list[Fault]
    channels: tuple[str, ...]
    load: dict[str, np.ndarray] = field(repr=False)  # hidden normalised speed per entity
    normal_rows: int = 0


def default_faults(entities: Sequence[str], rows: int, normal_rows: int,
                   channels: Sequence[str] = CHANNELS) -> list[Fault]:
    """One fault of each kind after the first ``normal_rows`` rows, entities taken in turn."""
    if not entities:
        raise ValueError("no entities")
    segment = (rows - normal_rows) // len(KINDS)
    if normal_rows < 0 or segment < 10:
        raise ValueError(f"need at least {10 * len(KINDS)} rows after the {normal_rows} normal ones")
    faults = []
    for i, kind in enumerate(KINDS):
        channel = DEFAULT_CHANNEL[kind]
        if channel not in channels:
            channel = channels[i % len(channels)]
        length = max(1, min(DEFAULT_LENGTH[kind], int(segment * 0.6)))
        start = normal_rows + i * segment + (segment - length) // 3
        faults.append(Fault(entities[i % len(entities)], kind, channel, start, start + length))
    return faults


def simulate(
    entities: Sequence[str] = ("pump-1", "pump-2", "pump-3"),
    rows: int = 3600,
    seed: int = 0,
    faults: list[Fault] | Literal["default"] | None = "default",
    start_ts_ms: int = DEFAULT_START_TS_MS,
    step_ms: int = 1000,
    period: int = 600,
    normal_rows: int | None = None,
    channels: Sequence[str] = CHANNELS,
    loads: Mapping[str, float] | None = None,
) -> Telemetry:
    """Simulate ``rows`` readings per entity, ``step_ms`` apart; deterministic for a seed.

    ``faults="default"`` places one fault of each kind after ``normal_rows`` (default: 60 % of the
    rows); each entity's data depends only on the seed, its name and its operating point
    ``loads[entity]`` (mean normalised speed, default ``DEFAULT_LOAD``), not on the other entities.
    """
    unknown = [c for c in channels if c not in SPECS]
    if unknown or not channels:
        raise ValueError(f"unknown channels {unknown}; known: {', '.join(CHANNELS)}")
    if rows < 2 or period < 2 or step_ms < 1:
        raise ValueError("rows and period must be >= 2 and step_ms >= 1")
    loads = dict(loads or {})
    if set(loads) - set(entities) or not all(0.4 <= v <= 0.9 for v in loads.values()):
        raise ValueError(f"loads must give entities among {list(entities)} a level in 0.4..0.9")
    normal_rows = int(rows * 0.6) if normal_rows is None else normal_rows
    if faults == "default":
        faults = default_faults(entities, rows, normal_rows, channels)
    faults = list(faults or [])
    for f in faults:
        if f.entity not in entities or f.channel not in channels or f.kind not in KINDS:
            raise ValueError(f"fault {f} names an unknown entity, channel or kind")
        if not 0 <= f.start < f.end <= rows:
            raise ValueError(f"fault {f} is outside rows 0..{rows}")

    ts = start_ts_ms + step_ms * np.arange(rows, dtype=np.int64)
    stamps = np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms")
    frames, speeds = {}, {}  # per entity: its table and its hidden load series
    for entity in entities:
        rng = np.random.default_rng([seed, zlib.crc32(entity.encode())])
        n = _load(rng, rows, period, loads.get(entity, DEFAULT_LOAD))
        data, driven = _channels(rng, n, channels)
        label = np.zeros(rows, dtype=np.int64)
        sd = {c: float(data[c].std()) for c in channels}  # of the clean series
        for f in (f for f in faults if f.entity == entity):
            _inject(data[f.channel], driven[f.channel], sd[f.channel], f)
            label[f.start:f.end] = 1
        frame = pd.DataFrame({"ts": np.char.add(stamps, "Z")})
        for c in channels:
            frame[c] = np.round(data[c], SPECS[c].decimals)
        frame["anomaly"] = label
        frames[entity], speeds[entity] = frame, n
    return Telemetry(frames, faults, tuple(channels), speeds, normal_rows)


def _ar1(rng: np.random.Generator, rows: int, phi: float, sd: float) -> np.ndarray:
    """A stationary AR(1) series with standard deviation ``sd``."""
    shocks = rng.normal(0.0, sd * np.sqrt(1 - phi**2), rows)
    out = np.empty(rows)
    out[0] = rng.normal(0.0, sd)
    for i in range(1, rows):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def _load(rng: np.random.Generator, rows: int, period: int, level: float = DEFAULT_LOAD
          ) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(rows)
    daily = 0.15 * np.sin(2 * np.pi * t / period + phase) + 0.04 * np.sin(4 * np.pi * t / period)
    return np.clip(level + daily + _ar1(rng, rows, 0.98, 0.03), level - 0.35, level + 0.3)


def _channels(rng: np.random.Generator, n: np.ndarray, channels: Sequence[str]
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(channel values, their load-driven part) for one entity."""
    data, driven = {}, {}
    for c in channels:  # draws in channel order, so a subset of channels stays reproducible
        spec = SPECS[c]
        x = n**spec.power
        if c == "temperature":  # heat follows power with a first-order lag
            x = _lag(x, THERMAL_TAU_ROWS)
        gain = spec.gain * rng.uniform(0.95, 1.05)  # pumps differ a little
        driven[c] = gain * x
        data[c] = spec.offset + driven[c] + rng.normal(0.0, spec.noise, len(n))
    return data, driven


def _lag(x: np.ndarray, tau: float) -> np.ndarray:
    out = np.empty_like(x)
    out[0] = x[0]
    a = 1.0 / tau
    for i in range(1, len(x)):
        out[i] = out[i - 1] + a * (x[i] - out[i - 1])
    return out


def _inject(values: np.ndarray, driven: np.ndarray, sd: float, fault: Fault) -> None:
    """Apply ``fault`` to one channel's ``values`` in place; ``sd`` is the clean series' std."""
    span = slice(fault.start, fault.end)
    length = fault.end - fault.start
    if fault.kind == "spike":
        values[span] += SPIKE_SD * sd
    elif fault.kind == "level_shift":
        values[span] += SHIFT_SD * sd
    elif fault.kind == "drift":
        values[span] += DRIFT_SD * sd * np.linspace(1 / length, 1.0, length)
    elif fault.kind == "stuck":
        values[span] = values[max(fault.start - 1, 0)]
    elif fault.kind == "correlation_break":
        values[span] -= 2 * (driven[span] - driven.mean())


def fleet_frame(telemetry: Telemetry, column: str = "entity") -> pd.DataFrame:
    """Every entity's readings in one table with an entity ``column``, in time order (entities
    interleaved, in their order at equal times): the fleet file ``--entity-column`` reads."""
    parts = [frame.assign(**{column: entity}) for entity, frame in telemetry.frames.items()]
    table = pd.concat(parts, ignore_index=True)
    table = table.iloc[np.argsort(table["ts"].to_numpy(), kind="stable")].reset_index(drop=True)
    return table[["ts", column] + [c for c in table.columns if c not in ("ts", column)]]


def write_csv(telemetry: Telemetry, directory: str | Path) -> list[Path]:
    """One ``<entity>.csv`` per entity in ``directory`` (created); returns the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for entity, frame in telemetry.frames.items():
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in entity)
        path = out / f"{safe}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ganwatch.simulator --out DIR``: write simulated CSVs (e.g. deploy/sample)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ganwatch.simulator", description=main.__doc__)
    p.add_argument("--out", required=True, help="directory for <entity>.csv files")
    p.add_argument("--entities", default="pump-1,pump-2,pump-3", help="comma-separated names")
    p.add_argument("--rows", type=int, default=3600)
    p.add_argument("--normal-rows", type=int, default=None, help="fault-free prefix (default 60 %%)")
    p.add_argument("--period", type=int, default=600, help="rows per simulated day")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    entities = [e.strip() for e in args.entities.split(",") if e.strip()]
    telemetry = simulate(entities, args.rows, args.seed, period=args.period,
                         normal_rows=args.normal_rows)
    for path in write_csv(telemetry, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
