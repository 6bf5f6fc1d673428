"""Training windows of a fleet: many entities' rows in one table, one model.

Each entity's rows keep their order and pass the stream rules on their own, so no window spans
two entities and a duplicate, an out-of-order row or a gap is judged within its entity. The split
is per entity: the first ``1 - calib_fraction`` of each entity's rows fit, the windows ending after
them are held back for calibration. Each entity's baseline is the median of its fitting rows
(``detector.baseline``); its windows are centred on it, and one scaler is fitted on every entity's
centred fitting rows. The gap rule, when learned, is from each entity's own steps. Windows of all
entities are then ordered by the time of their last reading, so the level model's latest windows
(``detector.level``) are the fleet's latest, not the last entity's.

An entity too short to give both a fitting and a held-back window is left out, with a warning:
the model then treats it as an entity it has never seen.
"""

from __future__ import annotations

import logging

import numpy as np

from detector.baseline import EntityBaselines, check_entity_name
from detector.fleet import group_rows
from detector.scaler import StandardScaler
from detector.stream import AdvanceStats, learn_entities_max_gap_ms
from training.config import TrainConfig
from training.trainer import (
    TrainingWindows, make_windows, slow_channels, too_few_windows, warn_skipped,
)

log = logging.getLogger(__name__)


def fleet_max_gap_ms(series: list[np.ndarray], configured: int | None) -> int | None:
    """The gap rule: ``configured`` ms, none for 0, or learned from each entity's own steps."""
    if configured is None:
        return learn_entities_max_gap_ms(series)
    return int(configured) or None


def fleet_windows(ts_ms: np.ndarray, values: np.ndarray, entities: np.ndarray,
                  config: TrainConfig) -> TrainingWindows:
    """Windows, scaler, slow channels, gap rule and baselines of a fleet's rows (``entities``: one
    name per row)."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if len(entities) != len(values):
        raise ValueError(f"{len(entities)} entity names for {len(values)} rows")
    groups = group_rows(entities)
    for name in groups:
        problem = check_entity_name(name)
        if problem:
            raise ValueError(f"rows have {problem}")
    max_gap_ms = fleet_max_gap_ms([ts_ms[rows] for rows in groups.values()], config.max_gap_ms)
    stats = AdvanceStats()
    fit_rows, bases, fit, calib, skipped = {}, {}, [], [], []
    for name, rows in groups.items():
        ts, raw = ts_ms[rows], values[rows]
        n_fit = int(round(len(rows) * (1 - config.calib_fraction)))
        if n_fit < 1:
            skipped.append(name)
            continue
        base = np.median(raw[:n_fit], axis=0)
        windows, ends, part, _ = make_windows(ts, raw - base, config.window, max_gap_ms)
        stats.add(part)
        held = ends >= n_fit
        if held.all() or not held.any():
            skipped.append(name)
            continue
        fit_rows[name], bases[name] = raw[:n_fit], base
        fit.append((windows[~held], ts[ends[~held]]))
        calib.append((windows[held], ts[ends[held]]))
    warn_skipped(stats, len(ts_ms))
    if skipped:
        log.warning("left %d of %d entities out of training, too few rows for a fitting and a "
                    "held-back window: %s; the model judges them as entities it has not seen",
                    len(skipped), len(groups), ", ".join(skipped[:10]))
    fit_windows = _by_time(fit, values.shape[1], config.window)
    calib_windows = _by_time(calib, values.shape[1], config.window)
    if len(fit_windows) < 2 or len(calib_windows) < 1:
        raise ValueError(too_few_windows(len(fit_windows), len(calib_windows), stats, max_gap_ms,
                                         config.window))
    baselines = EntityBaselines(tuple(bases), np.stack(list(bases.values())))
    centred = [rows - bases[name] for name, rows in fit_rows.items()]
    pooled = np.concatenate(centred)
    breaks = np.cumsum([len(c) for c in centred])[:-1]
    return TrainingWindows(
        fit_windows, calib_windows, StandardScaler.fit(pooled),
        slow_channels(pooled, config.slow_autocorr, breaks), max_gap_ms, stats, baselines,
        {"entities": len(baselines), "skipped_entities": skipped})


def _by_time(parts: list[tuple[np.ndarray, np.ndarray]], n_channels: int, window: int
             ) -> np.ndarray:
    """The entities' windows in one array, ordered by their last reading's time (ties: entity
    order)."""
    if not parts:
        return np.empty((0, window, n_channels))
    windows = np.concatenate([w for w, _ in parts])
    ends = np.concatenate([t for _, t in parts])
    return windows[np.argsort(ends, kind="stable")]
