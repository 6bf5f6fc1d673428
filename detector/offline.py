"""Scoring a whole series through the same stream rules and detector call the worker uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.alert import (
    ANOMALY_END, ANOMALY_START, EPISODE, WINDOW, AlertContext, Verdict, make_alerts, stack_ts,
)
from detector.baseline import centre_windows
from detector.message import iso_ms
from detector.score import Detector, Threshold, needs_time, score_windows
from detector.stream import AdvanceStats, EntityState, StreamConfig, WindowRef, advance

# rows pushed through ``advance`` at a time, so a long file never holds all its windows at once
CHUNK_ROWS = 20_000


@dataclass
class SeriesScores:
    """One value per input row; NaN score (and flag 0) where no window completed at that row."""

    scores: np.ndarray
    flags: np.ndarray  # the window verdicts: 1 where the window ending at the row is anomalous
    contributions: np.ndarray
    stats: AdvanceStats
    starts_ms: np.ndarray  # (n,) int64: first reading of the window ending at the row, else -1


def iter_windows(ts_ms: np.ndarray, values: np.ndarray, stream: StreamConfig):
    """Yield (row offset, windows) chunk by chunk for one entity's rows, as the worker would."""
    state = EntityState("offline", values.shape[1])
    stats = AdvanceStats()
    for start in range(0, len(ts_ms), CHUNK_ROWS):
        windows, chunk_stats = advance(
            state, ts_ms[start : start + CHUNK_ROWS], values[start : start + CHUNK_ROWS], stream
        )
        stats.add(chunk_stats)
        yield start, windows, stats


def window_array(windows: list[WindowRef]) -> np.ndarray:
    return np.stack([w.values for w in windows]) if windows else np.empty((0, 0, 0))


def score_series(
    detector: Detector, threshold: Threshold, ts_ms: np.ndarray, values: np.ndarray,
    stream: StreamConfig, entity: str | None = None,
) -> SeriesScores:
    """Score every window of one series; row ``i`` gets the score of the window ending at row ``i``.

    ``entity`` names the series for a fleet model, which centres its windows by that entity's
    baseline as the worker does (None: an entity the model was not trained on)."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n, c = values.shape
    scores = np.full(n, np.nan)
    contributions = np.full((n, c), np.nan)
    starts = np.full(n, -1, dtype=np.int64)
    stats = AdvanceStats()
    for start, windows, stats in iter_windows(ts_ms, values, stream):
        if not windows:
            continue
        stacked = centre_windows(detector, window_array(windows), entity)
        times = stack_ts(windows) if needs_time(detector) else None
        batch = score_windows(detector, stacked, times)
        rows = start + np.fromiter((w.index for w in windows), dtype=np.int64, count=len(windows))
        scores[rows] = batch.scores
        contributions[rows] = batch.contributions
        starts[rows] = [w.start_ms for w in windows]
    flags = np.zeros(n, dtype=np.int64)
    scored = ~np.isnan(scores)
    flags[scored] = threshold.is_anomaly(scores[scored]).astype(np.int64)
    return SeriesScores(scores=scores, flags=flags, contributions=contributions, stats=stats,
                        starts_ms=starts)


@dataclass
class SeriesAlerts:
    """What the worker would publish for one series, and the rows its alerts cover."""

    alerts: list[dict]  # the alert contract's dicts, in order
    flags: np.ndarray  # (n,) 0/1: window mode, the anomalous windows' rows; episode mode, every
    # row from the window that opened an episode to the one that closed it (or the series' end)
    open_episode: dict  # episode state at the series' end (empty unless it ends inside one)
    # a fleet file's: each entity's own alerts (``detector.fleet.entity_alerts``); else None
    by_entity: dict[str, "SeriesAlerts"] | None = None


def series_alerts(
    scored: SeriesScores, ts_ms: np.ndarray, channels: list[str], threshold: Threshold,
    model_version: str, mode: str = EPISODE, end_windows: int = 5, entity: str = "offline",
) -> SeriesAlerts:
    """Run one series' window verdicts through the worker's alert rules (``make_alerts``)."""
    ctx = AlertContext(channels, threshold.value, model_version, now_ms=0)
    episode: dict = {}
    alerts: list[dict] = []
    flags = np.zeros(len(scored.scores), dtype=np.int64)
    opened = -1
    for i in np.flatnonzero(~np.isnan(scored.scores)).tolist():
        verdict = Verdict(entity, int(ts_ms[i]), int(scored.starts_ms[i]), float(scored.scores[i]),
                          bool(scored.flags[i]), scored.contributions[i])
        for alert in make_alerts(verdict, episode, mode, end_windows, ctx):
            alerts.append(alert)
            if alert["type"] == ANOMALY_START:
                opened = i
            elif alert["type"] == ANOMALY_END:
                flags[opened : i + 1] = 1
                opened = -1
    if mode == WINDOW:
        flags = scored.flags.copy()
    elif opened >= 0:  # the series ends inside an episode
        flags[opened:] = 1
    return SeriesAlerts(alerts, flags, episode)


def episode_rows(result: SeriesAlerts) -> list[dict]:
    """One record per episode from its ``anomaly_start`` and ``anomaly_end`` alerts: start, end
    (None while still open at the series' end), peak score and time, top channels."""
    out: list[dict] = []
    current: dict | None = None
    for alert in result.alerts:
        if alert["type"] == ANOMALY_START:
            current = {"start": alert["ts"], "start_ms": alert["ts_ms"], "end": None,
                       "end_ms": None, "peak_score": alert["score"], "peak_ts_ms": alert["ts_ms"],
                       "channels": alert["channels"]}
            out.append(current)
        elif alert["type"] == ANOMALY_END and current is not None:
            current.update(end=alert["ts"], end_ms=alert["ts_ms"], peak_score=alert["peak_score"],
                           peak_ts_ms=alert["peak_ts_ms"], channels=alert["channels"])
            current = None
    state = result.open_episode
    if current is not None and state.get("active"):
        current.update(peak_score=state.get("peak_score"), peak_ts_ms=state.get("peak_ts_ms"),
                       channels=state.get("peak_channels", current["channels"]))
    for row in out:
        row["peak_ts"] = iso_ms(row["peak_ts_ms"]) if row["peak_ts_ms"] is not None else None
    return out
