"""The score's terms. Each fits its own statistics on held-back normal windows at training time and
gives a (windows, channels) contribution; ``WindowScore`` adds them, and the score of a window is
the sum of every term's contributions over channels.

- ``ErrorTerm``: reconstruction error. Per channel, the mean squared residual plus
  ``bias_weight * W * (mean residual)^2`` (a matched filter for offsets that last the window, which
  the mean square dilutes), in units of the channel's median on held-back windows, so a channel the
  model rebuilds closely weighs as much as one it never rebuilds well. The term is the log of the
  mean over channels, centred on its held-back median and divided by its robust spread; faults
  multiply errors, hence the log. It is split over channels by their share of the error.
- ``CriticTerm``: the window critic's output, centred and scaled the same way, in absolute value (as
  TadGAN's critic score counts either direction), times ``weight``; split like the error.
- ``FlatTerm``: stuck sensors, which a model that cannot rebuild sensor noise does not see. Per
  channel, how many robust spreads the window's step-to-step variation (log std of first
  differences) falls below a tenth (``margin``) of the flattest training window's; zero otherwise.
- ``NoiseTerm``: a channel that turns noisy or oscillates (a sticking valve, a loose bearing), which
  a model that cannot rebuild noise does not see either: the mirror of the flat term. Per channel,
  how many robust spreads the window's variation rises above 1.2 times (``margin``) the roughest
  training window's; zero otherwise.
- ``PeakTerm``: short spikes, which a window's mean error dilutes (3 rows of 32). Per channel, how
  far the log of the largest squared row residual (relative, as the error) rises above ten times
  (``margin``) the highest held-back value, in robust spreads of the channel's held-back log error.
- ``SeasonTerm``: departures from the time of day or week (``detector.season``), which a window
  of a few hours cannot see. Per channel, how far the window's mean departure from the seasonal
  profile (absolute) rises above its held-back median, in robust spreads, times ``weight``; zero
  below it, and absent unless training found a daily or weekly cycle.

The flat, noise and peak terms are zero on anything near what training has seen, so the threshold
fitted on held-back scores keeps its meaning. Nothing here depends on the batch: each window is
scored on statistics frozen at training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.score import ScoreBatch, shares

LOG10 = float(np.log(10.0))
LOG12 = float(np.log(1.2))
LOG15 = float(np.log(1.5))  # the noise margin of artifacts that do not store one
# float32 rounding moves an output by about 1e-7 of its size: spreads stay 100 x above that
RESOLUTION = 1e-5
NORMALISER_KEYS = ("rec_center", "rec_scale", "bias_weight", "channel_scale", "critic_center",
                   "critic_scale", "critic_weight", "flat_floor", "flat_scale", "flat_weight",
                   "flat_margin", "noise_ceiling", "noise_scale", "noise_weight", "noise_margin",
                   "peak_ceiling", "peak_scale", "peak_weight", "peak_margin", "season_center",
                   "season_scale", "season_weight")


def robust_spread(x: np.ndarray) -> float:
    """IQR / 1.349 (the standard deviation for Gaussian data), falling back to the standard
    deviation, never below ``RESOLUTION`` x the values' size (at least 1): the network computes in
    float32, so on constant data the spread is rounding, which must not read as a departure."""
    q25, q75 = np.percentile(x, [25, 75])
    spread = (q75 - q25) / 1.349
    if not spread > 0:
        spread = float(np.std(x))
    return float(max(spread, RESOLUTION * max(1.0, float(np.median(np.abs(x))))))


def channel_spreads(x: np.ndarray) -> tuple[float, ...]:
    """``robust_spread`` of each column of (n, C) values."""
    return tuple(robust_spread(x[:, c]) for c in range(x.shape[1]))


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, 1e-12))


@dataclass(frozen=True, slots=True)
class Parts:
    """What one forward pass gives per window: everything the terms read."""

    window: int
    msq: np.ndarray  # (B, C) mean squared residual
    mres: np.ndarray  # (B, C) mean residual
    peak: np.ndarray  # (B, C) largest squared residual of a row
    variation: np.ndarray  # (B, C) log std of first differences of the scaled window
    critic: np.ndarray | None  # (B,) window critic output; None for an autoencoder
    season: np.ndarray | None = None  # (B, C) mean departure from the seasonal profile, if any

    @classmethod
    def concat(cls, parts: list["Parts"], window: int, n_channels: int) -> "Parts":
        empty = np.empty((0, n_channels))
        pick = lambda name: np.concatenate([getattr(p, name) for p in parts]) if parts else empty
        critic = None
        if parts and parts[0].critic is not None:
            critic = np.concatenate([p.critic for p in parts])
        season = None
        if parts and parts[0].season is not None:
            season = np.concatenate([p.season for p in parts])
        return cls(window, pick("msq"), pick("mres"), pick("peak"), pick("variation"), critic,
                   season)


@dataclass(frozen=True)
class ErrorTerm:
    center: float  # of the log mean relative error on held-back windows
    scale: float
    channel_scale: tuple[float, ...] = ()  # per channel: median held-back error (empty: as is)
    bias_weight: float = 0.0

    def error(self, parts: Parts) -> np.ndarray:
        err = parts.msq
        if self.bias_weight > 0:
            err = err + self.bias_weight * parts.window * parts.mres**2
        return err

    def relative(self, parts: Parts) -> np.ndarray:
        err = self.error(parts)
        return err / np.asarray(self.channel_scale) if self.channel_scale else err

    def values(self, parts: Parts) -> np.ndarray:
        return (_log(self.relative(parts).mean(axis=1)) - self.center) / self.scale

    def contribution(self, parts: Parts, basis: np.ndarray) -> np.ndarray:
        return self.values(parts)[:, None] * basis

    @classmethod
    def fit(cls, held: Parts, bias_weight: float, channel_norm: bool) -> "ErrorTerm":
        scale: tuple[float, ...] = ()
        if channel_norm:
            raw = cls(0.0, 1.0, (), bias_weight).error(held)
            scale = tuple(float(max(v, 1e-12)) for v in np.median(raw, axis=0))
        term = cls(0.0, 1.0, scale, bias_weight)
        log_rec = _log(term.relative(held).mean(axis=1))
        return cls(float(np.median(log_rec)), robust_spread(log_rec), scale, bias_weight)


@dataclass(frozen=True)
class CriticTerm:
    center: float
    scale: float
    weight: float

    def contribution(self, parts: Parts, basis: np.ndarray) -> np.ndarray:
        if parts.critic is None:
            return np.zeros_like(basis)
        value = self.weight * np.abs(parts.critic - self.center) / self.scale
        return value[:, None] * basis

    @classmethod
    def fit(cls, held: Parts, weight: float) -> "CriticTerm":
        return cls(float(np.median(held.critic)), robust_spread(held.critic), weight)


@dataclass(frozen=True)
class FlatTerm:
    floor: tuple[float, ...]  # per channel: lowest log variation of any training window
    scale: tuple[float, ...]  # per channel: robust spread of that log variation
    weight: float = 1.0
    margin: float = LOG10  # only variation under a tenth of the floor counts

    def contribution(self, parts: Parts, basis: np.ndarray) -> np.ndarray:
        below = (np.asarray(self.floor) - self.margin - parts.variation) / np.asarray(self.scale)
        return self.weight * np.maximum(below, 0.0)

    @classmethod
    def fit(cls, seen: Parts, weight: float) -> "FlatTerm":
        """``seen``: every training window, fitting and held-back alike."""
        var = seen.variation
        return cls(tuple(float(v) for v in var.min(axis=0)), channel_spreads(var), weight)


@dataclass(frozen=True)
class NoiseTerm:
    ceiling: tuple[float, ...]  # per channel: highest log variation of any training window
    scale: tuple[float, ...]  # per channel: robust spread of that log variation
    weight: float = 1.0
    margin: float = LOG12  # only variation over 1.2 x the ceiling counts

    def contribution(self, parts: Parts, basis: np.ndarray) -> np.ndarray:
        above = (parts.variation - np.asarray(self.ceiling) - self.margin) / np.asarray(self.scale)
        return self.weight * np.maximum(above, 0.0)

    @classmethod
    def fit(cls, seen: Parts, weight: float, margin: float) -> "NoiseTerm":
        """``seen``: every training window, fitting and held-back alike."""
        var = seen.variation
        return cls(tuple(float(v) for v in var.max(axis=0)), channel_spreads(var), weight, margin)


@dataclass(frozen=True)
class PeakTerm:
    ceiling: tuple[float, ...]  # per channel: highest log relative row peak on held-back windows
    scale: tuple[float, ...]  # per channel: robust spread of its held-back log relative error
    channel_scale: tuple[float, ...] = ()  # the error term's units
    weight: float = 1.0
    margin: float = LOG10  # only peaks over ten times the held-back highest count

    def contribution(self, parts: Parts, basis: np.ndarray) -> np.ndarray:
        peak = parts.peak / np.asarray(self.channel_scale) if self.channel_scale else parts.peak
        above = (_log(peak) - np.asarray(self.ceiling) - self.margin) / np.asarray(self.scale)
        return self.weight * np.maximum(above, 0.0)

    @classmethod
    def fit(cls, held: Parts, error: ErrorTerm, weight: float, margin: float) -> "PeakTerm":
        units = np.asarray(error.channel_scale) if error.channel_scale else 1.0
        log_peak = _log(held.peak / units)
        return cls(tuple(float(v) for v in log_peak.max(axis=0)),
                   channel_spreads(_log(error.relative(held))), error.channel_scale, weight, margin)


@dataclass(frozen=True)
class SeasonTerm:
    center: tuple[float, ...]  # per channel: median held-back |mean departure|
    scale: tuple[float, ...]  # per channel: its robust spread
    weight: float = 2.0

    def contribution(self, parts: Parts, basis: np.ndarray) -> np.ndarray:
        if parts.season is None:
            raise ValueError("the score has a seasonal term: the windows need their timestamps")
        above = (np.abs(parts.season) - np.asarray(self.center)) / np.asarray(self.scale)
        return self.weight * np.maximum(above, 0.0)

    @classmethod
    def fit(cls, held: Parts, weight: float) -> "SeasonTerm":
        assert held.season is not None
        size = np.abs(held.season)
        return cls(tuple(float(v) for v in np.median(size, axis=0)), channel_spreads(size), weight)


@dataclass(frozen=True)
class WindowScore:
    """The terms of a trained model; ``score`` adds their contributions."""

    error: ErrorTerm
    critic: CriticTerm | None = None
    flat: FlatTerm | None = None
    peak: PeakTerm | None = None
    noise: NoiseTerm | None = None
    season: SeasonTerm | None = None

    def named(self) -> list[tuple[str, Any]]:
        return [(n, t) for n, t in (("error", self.error), ("critic", self.critic),
                                    ("flat", self.flat), ("noise", self.noise),
                                    ("peak", self.peak), ("season", self.season))
                if t is not None]

    def terms(self) -> list[Any]:
        return [t for _, t in self.named()]

    def contributions(self, parts: Parts, basis: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
        """Each term's (B, C) contribution, by name; ``basis`` is each channel's share of the
        relative error, which splits the window-level terms over channels."""
        if basis is None:
            basis = shares(self.error.relative(parts))
        return {n: t.contribution(parts, basis) for n, t in self.named()}

    def score(self, parts: Parts) -> ScoreBatch:
        basis = shares(self.error.relative(parts))
        total = sum(self.contributions(parts, basis).values())
        # attribution: each channel's positive part of the sum; the error's split where none is
        positive = np.maximum(total, 0.0)
        contributions = np.where(positive.any(axis=1, keepdims=True), shares(positive), basis)
        return ScoreBatch(scores=total.sum(axis=1), contributions=contributions)

    def check(self, n_channels: int) -> None:
        for name, values in (("channel_scale", self.error.channel_scale),
                             ("flat_floor", self.flat.floor if self.flat else ()),
                             ("noise_ceiling", self.noise.ceiling if self.noise else ()),
                             ("peak_ceiling", self.peak.ceiling if self.peak else ()),
                             ("season_center", self.season.center if self.season else ())):
            if len(values) not in (0, n_channels):
                raise ValueError(f"score normaliser {name} needs one value per channel")

    def to_dict(self) -> dict:
        """The artifact's ``score_normaliser`` object (its field names predate the terms)."""
        e, c, f, p = self.error, self.critic, self.flat, self.peak
        noise = {}
        if self.noise is not None:  # absent when off: artifacts without it read as before
            n = self.noise
            noise = {"noise_ceiling": list(n.ceiling), "noise_scale": list(n.scale),
                     "noise_weight": n.weight, "noise_margin": n.margin}
        if self.season is not None:  # absent when off, as the noise term's
            sn = self.season
            noise.update({"season_center": list(sn.center), "season_scale": list(sn.scale),
                          "season_weight": sn.weight})
        return {**noise,
            "rec_center": e.center, "rec_scale": e.scale, "bias_weight": e.bias_weight,
            "channel_scale": list(e.channel_scale),
            "critic_center": c.center if c else 0.0, "critic_scale": c.scale if c else 1.0,
            "critic_weight": c.weight if c else 0.0,
            "flat_floor": list(f.floor) if f else [], "flat_scale": list(f.scale) if f else [],
            "flat_weight": f.weight if f else 0.0, "flat_margin": f.margin if f else LOG10,
            "peak_ceiling": list(p.ceiling) if p else [], "peak_scale": list(p.scale) if p else [],
            "peak_weight": p.weight if p else 0.0, "peak_margin": p.margin if p else LOG10,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "WindowScore":
        """Strict: unknown keys, non-positive scales or mismatched lengths are refused."""
        unknown = sorted(set(data) - set(NORMALISER_KEYS))
        if unknown:
            raise ValueError(f"score normaliser has unknown fields {unknown}")
        num = lambda key, default: float(data.get(key, default))
        vec = lambda key: tuple(float(v) for v in data.get(key, ()))
        channel, floor, flat_scale = vec("channel_scale"), vec("flat_floor"), vec("flat_scale")
        ceiling, peak_scale = vec("peak_ceiling"), vec("peak_scale")
        noise_ceiling, noise_scale = vec("noise_ceiling"), vec("noise_scale")
        season_center, season_scale = vec("season_center"), vec("season_scale")
        if (not num("rec_scale", 0) > 0 or not num("critic_scale", 1) > 0
                or not all(v > 0 and np.isfinite(v) for v in
                           flat_scale + channel + peak_scale + noise_scale + season_scale)):
            raise ValueError("score normaliser scales must be positive")
        if len(floor) != len(flat_scale):
            raise ValueError("flat_floor and flat_scale must have one value per channel")
        if len(ceiling) != len(peak_scale) or not all(np.isfinite(v) for v in ceiling):
            raise ValueError("peak_ceiling and peak_scale must have one finite value per channel")
        if len(noise_ceiling) != len(noise_scale) or not all(np.isfinite(v) for v in noise_ceiling):
            raise ValueError("noise_ceiling and noise_scale must have one finite value per channel")
        if len(season_center) != len(season_scale) or not all(np.isfinite(season_center)):
            raise ValueError("season_center and season_scale must have one finite value per channel")
        error = ErrorTerm(num("rec_center", 0), num("rec_scale", 0), channel,
                          num("bias_weight", 0))
        critic = None
        if num("critic_weight", 0) > 0:
            critic = CriticTerm(num("critic_center", 0), num("critic_scale", 1),
                                num("critic_weight", 0))
        flat = FlatTerm(floor, flat_scale, num("flat_weight", 1), num("flat_margin", LOG10)) \
            if floor and num("flat_weight", 1) > 0 else None
        peak = PeakTerm(ceiling, peak_scale, channel, num("peak_weight", 1),
                        num("peak_margin", LOG10)) if ceiling and num("peak_weight", 1) > 0 else None
        noise = NoiseTerm(noise_ceiling, noise_scale, num("noise_weight", 1),
                          num("noise_margin", LOG15)) \
            if noise_ceiling and num("noise_weight", 1) > 0 else None
        season = SeasonTerm(season_center, season_scale, num("season_weight", 2)) \
            if season_center and num("season_weight", 2) > 0 else None
        return cls(error, critic, flat, peak, noise, season)
