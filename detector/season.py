"""Time of day and week: what a channel usually reads at this point of its daily or weekly cycle.

A window of 32 readings five minutes apart sees under three hours, so a model of windows cannot
tell a quiet Thursday from a Sunday, or a night-time level at noon. ``SeasonProfile`` keeps, per
channel, the median reading in each phase bin of one period (a day or a week), fitted on the
training rows, and gives each window the mean of its readings' departures from that profile, in
robust spreads of the departures on those rows (``detector.term.SeasonTerm`` scores it).

It is fitted only where it can know the cycle: the fitted rows span at least ``MIN_CYCLES``
periods, and on the held-back rows (which the profile has not seen) it explains at least
``MIN_EXPLAINED`` of a channel's variation around its median (1 - the squared ratio of their mean
absolute departures from the profile and from that median). Of the day and the week, the
period that explains more, summed over channels, is kept. A plant that runs for minutes or hours
(SKAB, TEP) never gets one; a signal with no cycle gets none either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.term import channel_spreads

DAY_MS, WEEK_MS = 86_400_000, 7 * 86_400_000
# (period, most bins): at most 5-minute bins over a day, 30-minute bins over a week
PERIODS = ((DAY_MS, 288), (WEEK_MS, 336))
MIN_CYCLES = 3.0
MIN_EXPLAINED = 0.5
# a profile never claims to predict a channel closer than this share of its spread
SPREAD_FLOOR = 0.01
KEYS = ("period_ms", "profile", "spread", "active")


def phase_bins(ts_ms: np.ndarray, period_ms: int, bins: int) -> np.ndarray:
    """The bin of each timestamp's phase in the period (epoch ms, UTC)."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    return ((ts % period_ms) * bins // period_ms).astype(np.int64)


def _profile(ts_ms: np.ndarray, values: np.ndarray, period_ms: int, bins: int) -> np.ndarray:
    """(bins, C) median per phase bin; empty bins take the nearest filled one's (circularly)."""
    b = phase_bins(ts_ms, period_ms, bins)
    out = np.full((bins, values.shape[1]), np.nan)
    order = np.argsort(b, kind="stable")
    b_sorted, v_sorted = b[order], values[order]
    starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(b_sorted)]):
        out[b_sorted[lo]] = np.median(v_sorted[lo:hi], axis=0)
    filled = np.flatnonzero(~np.isnan(out[:, 0]))
    if len(filled) < bins:
        centres = np.arange(bins)
        for c in range(values.shape[1]):
            out[:, c] = np.interp(centres, filled, out[filled, c], period=bins)
    return out


def _size(x: np.ndarray) -> np.ndarray:
    """Per channel, the mean absolute value (never 0): unlike a quantile spread it sees a
    two-level pattern (weekdays and weekends), and it weighs outliers less than a variance."""
    return np.maximum(np.abs(x).mean(axis=0), 1e-12)


@dataclass(frozen=True)
class SeasonProfile:
    period_ms: int
    profile: np.ndarray  # (bins, C) median raw reading per phase bin
    spread: np.ndarray  # (C,) robust spread of the departures on the fitted rows
    active: np.ndarray  # (C,) bool: channels the profile explains; the others get 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", np.asarray(self.profile, dtype=np.float64))
        object.__setattr__(self, "spread", np.asarray(self.spread, dtype=np.float64))
        object.__setattr__(self, "active", np.asarray(self.active, dtype=bool))
        c = self.profile.shape[1] if self.profile.ndim == 2 else -1
        if (self.period_ms <= 0 or c < 1 or len(self.profile) < 1
                or self.spread.shape != (c,) or self.active.shape != (c,)):
            raise ValueError("season_profile needs a positive period and one profile column, "
                             "spread and active flag per channel")
        if not (np.isfinite(self.profile).all() and (self.spread > 0).all()
                and np.isfinite(self.spread).all()):
            raise ValueError("season_profile values must be finite and its spreads positive")

    @property
    def bins(self) -> int:
        return len(self.profile)

    def departure(self, ts_ms: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per reading, (value - profile) / spread: ``ts_ms`` (...,), ``values`` (..., C)."""
        expected = self.profile[phase_bins(ts_ms, self.period_ms, self.bins)]
        return np.where(self.active, (values - expected) / self.spread, 0.0)

    def residual(self, ts_ms: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Each window's mean departure, (B, W) timestamps and (B, W, C) raw readings -> (B, C)."""
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        if ts_ms.shape != windows.shape[:2]:
            raise ValueError(f"need one timestamp per reading: {ts_ms.shape} for windows of "
                             f"shape {windows.shape}")
        return self.departure(ts_ms, windows).mean(axis=1)

    @classmethod
    def fit(cls, fit_ts: np.ndarray, fit_values: np.ndarray, held_ts: np.ndarray,
            held_values: np.ndarray) -> "SeasonProfile | None":
        """The period (of ``PERIODS``) that explains the held-back rows best, or None when none
        spans ``MIN_CYCLES`` of the fitted rows and explains ``MIN_EXPLAINED`` of a channel."""
        fit_ts, held_ts = np.asarray(fit_ts, dtype=np.int64), np.asarray(held_ts, dtype=np.int64)
        if len(fit_ts) < 2 or len(held_ts) < 2:
            return None
        steps = np.diff(fit_ts)
        step = float(np.median(steps[steps > 0])) if (steps > 0).any() else 0.0
        around = _size(held_values - np.median(fit_values, axis=0))
        best: tuple[float, SeasonProfile] | None = None
        for period, most in PERIODS:
            if step <= 0 or (fit_ts[-1] - fit_ts[0]) / period < MIN_CYCLES:
                continue
            bins = int(min(most, max(1, round(period / step))))
            profile = _profile(fit_ts, fit_values, period, bins)
            expected = lambda ts: profile[phase_bins(ts, period, bins)]
            fit_dep, held_dep = fit_values - expected(fit_ts), held_values - expected(held_ts)
            explained = 1.0 - (_size(held_dep) / around) ** 2
            active = explained >= MIN_EXPLAINED
            if not active.any():
                continue
            spread = np.maximum(channel_spreads(fit_dep), SPREAD_FLOOR * around)
            gain = float(np.clip(explained, 0.0, 1.0)[active].sum())
            if best is None or gain > best[0]:
                best = (gain, cls(int(period), profile, spread, active))
        return best[1] if best else None

    def to_dict(self) -> dict[str, Any]:
        return {"period_ms": self.period_ms, "profile": self.profile.tolist(),
                "spread": self.spread.tolist(), "active": self.active.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], n_channels: int) -> "SeasonProfile":
        """Strict: unknown or missing fields and mismatched sizes are refused."""
        unknown = sorted(set(data) - set(KEYS))
        missing = sorted(set(KEYS) - set(data))
        if unknown or missing:
            raise ValueError(f"season_profile has unknown fields {unknown} or lacks {missing}")
        profile = cls(int(data["period_ms"]), np.asarray(data["profile"], dtype=np.float64),
                      np.asarray(data["spread"], dtype=np.float64),
                      np.asarray(data["active"], dtype=bool))
        if profile.profile.shape[1] != n_channels:
            raise ValueError("season_profile and channels disagree in size")
        return profile
