"""The detector contract (a score, higher is more anomalous) and the thresholder that judges it.

As in River's ``anomaly/base.py``, a detector only scores; turning scores into verdicts is the
separate, small ``Threshold``. Scores of one window never depend on what else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """Scores of a batch of windows and each channel's share of the reconstruction error."""

    scores: np.ndarray  # (B,) float64
    contributions: np.ndarray  # (B, C) float64, each row sums to 1 (or is all zero)


class Detector(Protocol):
    """Scores windows of raw readings, shape (B, window, len(channels)), oldest reading first.

    A detector whose scores read the time of day or week has ``uses_time`` true; callers then pass
    ``ts_ms``, each reading's epoch ms (B, window), as a keyword (``needs_time``)."""

    channels: list[str]
    window: int
    version: str

    def score(self, windows: np.ndarray) -> ScoreBatch:
        """Score every window independently."""


def needs_time(detector: object) -> bool:
    """Whether ``detector.score`` needs the readings' timestamps (``ts_ms=``)."""
    return bool(getattr(detector, "uses_time", False))


def score_windows(detector: Detector, windows: np.ndarray, ts_ms: np.ndarray | None = None
                  ) -> ScoreBatch:
    """``detector.score(windows)``, with ``ts_ms=`` when there are timestamps to pass (detectors
    that do not read time keep the plain contract)."""
    if ts_ms is None:
        return detector.score(windows)
    return detector.score(windows, ts_ms=ts_ms)  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Threshold:
    """A score at or above ``value`` is anomalous. Fitted once, at training time.

    ``false_alarm_target``: the share of normal windows the rule allows above ``value`` (``None``
    for thresholds set by hand and artifacts written before it was stated)."""

    value: float
    rule: str = ""
    false_alarm_target: float | None = None

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.value


def shares(errors: np.ndarray) -> np.ndarray:
    """Normalise per-channel errors (B, C) into contributions that sum to 1 per row."""
    errors = np.asarray(errors, dtype=np.float64)
    total = errors.sum(axis=1, keepdims=True)
    return np.divide(errors, total, out=np.zeros_like(errors), where=total > 0)


class ZScoreDetector:
    """Reference detector for tests: mean squared z-score of the window's last reading.

    It needs no trained weights, so worker tests run in milliseconds (as Orion's dummy pipeline
    serves its end-to-end tests); it follows exactly the ``Detector`` contract.
    """

    def __init__(
        self, channels: list[str], window: int, mean: np.ndarray, std: np.ndarray,
        version: str = "zscore-test",
    ) -> None:
        self.channels, self.window, self.version = list(channels), window, version
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.where(np.asarray(std, dtype=np.float64) > 0, std, 1.0)

    def score(self, windows: np.ndarray) -> ScoreBatch:
        windows = np.asarray(windows, dtype=np.float64)
        z2 = ((windows[:, -1, :] - self.mean) / self.std) ** 2
        return ScoreBatch(scores=z2.mean(axis=1), contributions=shares(z2))
