"""Scoring a whole series through the same stream rules and detector call the worker uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.score import Detector, Threshold
from detector.stream import AdvanceStats, EntityState, StreamConfig, WindowRef, advance

# rows pushed through ``advance`` at a time, so a long file never holds all its windows at once
CHUNK_ROWS = 20_000


@dataclass
class SeriesScores:
    """One value per input row; NaN score (and flag 0) where no window completed at that row."""

    scores: np.ndarray
    flags: np.ndarray
    contributions: np.ndarray
    stats: AdvanceStats


def iter_windows(ts_ms: np.ndarray, values: np.ndarray, stream: StreamConfig):
    """Yield (row offset, windows) chunk by chunk for one entity's rows, as the worker would."""
    state = EntityState("offline", values.shape[1])
    stats = AdvanceStats()
    for start in range(0, len(ts_ms), CHUNK_ROWS):
        windows, chunk_stats = advance(
            state, ts_ms[start : start + CHUNK_ROWS], values[start : start + CHUNK_ROWS], stream
        )
        stats.accepted += chunk_stats.accepted
        stats.duplicates += chunk_stats.duplicates
        stats.gaps += chunk_stats.gaps
        yield start, windows, stats


def window_array(windows: list[WindowRef]) -> np.ndarray:
    return np.stack([w.values for w in windows]) if windows else np.empty((0, 0, 0))


def score_series(
    detector: Detector, threshold: Threshold, ts_ms: np.ndarray, values: np.ndarray,
    stream: StreamConfig,
) -> SeriesScores:
    """Score every window of one series; row ``i`` gets the score of the window ending at row ``i``."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n, c = values.shape
    scores = np.full(n, np.nan)
    contributions = np.full((n, c), np.nan)
    stats = AdvanceStats()
    for start, windows, stats in iter_windows(ts_ms, values, stream):
        if not windows:
            continue
        batch = detector.score(window_array(windows))
        rows = start + np.fromiter((w.index for w in windows), dtype=np.int64, count=len(windows))
        scores[rows] = batch.scores
        contributions[rows] = batch.contributions
    flags = np.zeros(n, dtype=np.int64)
    scored = ~np.isnan(scores)
    flags[scored] = threshold.is_anomaly(scores[scored]).astype(np.int64)
    return SeriesScores(scores=scores, flags=flags, contributions=contributions, stats=stats)
