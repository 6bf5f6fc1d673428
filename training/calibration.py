"""Calibration fitted once at training time and stored with the model.

Each term of the score (``detector.term``) fits its own statistics on the held-back normal windows
(the stuck-sensor and noise terms on every training window): ``WindowScore`` adds them.

The threshold is set by a false-alarm target: the share ``a`` of normal windows, like the held-back
ones, that may score at or above it. A new window beats the highest of ``k`` independent stretches
of held-back windows with probability ``1 / (k + 1)`` (the windows overlap, so ``k`` counts
stretches of one window length). Past that highest score the tail is taken as exponential, with
the scale of the held-back scores' upper half, so the threshold lies
``tail_scale x ln(1 / (a (k + 1)))`` above it. ``threshold_margin``, when set, replaces the target:
the highest held-back score plus that many robust spreads, with the target it implies stored.
"""

from __future__ import annotations

import math

import numpy as np

from detector.model import LstmGanDetector
from detector.score import Threshold
from detector.term import (
    CriticTerm, ErrorTerm, FlatTerm, NoiseTerm, Parts, PeakTerm, WindowScore, robust_spread,
)
from training.config import TrainConfig


def fit_score(held: Parts, seen: Parts, config: TrainConfig) -> WindowScore:
    """The terms ``config`` turns on, each fitted on held-back windows (``seen``: all training
    windows, for the stuck-sensor floor and the noise ceiling)."""
    error = ErrorTerm.fit(held, config.bias_weight, config.channel_norm)
    critic = None
    if held.critic is not None and config.critic_weight > 0:
        critic = CriticTerm.fit(held, config.critic_weight)
    flat = FlatTerm.fit(seen, config.flat_weight) if config.flat_weight > 0 else None
    noise = None
    if config.noise_weight > 0:
        noise = NoiseTerm.fit(seen, config.noise_weight, config.noise_margin)
    peak = None
    if config.peak_weight > 0:
        peak = PeakTerm.fit(held, error, config.peak_weight, config.peak_margin)
    return WindowScore(error, critic, flat, peak, noise)


def tail_scale(scores: np.ndarray) -> float:
    """Scale of an exponential tail fitted to the upper half of ``scores``: the median excess
    over their median, divided by ln 2 (the median of an exponential); never below a tiny value."""
    scores = np.asarray(scores, dtype=np.float64)
    excess = scores[scores > np.median(scores)] - np.median(scores)
    scale = float(np.median(excess)) / math.log(2) if len(excess) else 0.0
    return max(scale, 1e-9)


def stretches(n_windows: int, window: int) -> int:
    """How many independent stretches ``n_windows`` overlapping windows of ``window`` rows are."""
    return max(1, -(-n_windows // max(window, 1)))


def false_alarm_target(calib_scores: np.ndarray, value: float, window: int) -> float:
    """The share of normal windows like the held-back ones that may score ``value`` or more."""
    calib_scores = np.asarray(calib_scores, dtype=np.float64)
    beyond = max(float(value - calib_scores.max()), 0.0)
    return math.exp(-beyond / tail_scale(calib_scores)) / (stretches(len(calib_scores), window) + 1)


def fit_threshold(calib_scores: np.ndarray, window: int, target: float,
                  margin: float | None = None) -> Threshold:
    """The threshold for false-alarm target ``target`` (or, with ``margin``, the highest held-back
    score plus ``margin`` robust spreads), with the target it keeps and its rule in words."""
    calib_scores = np.asarray(calib_scores, dtype=np.float64)
    n, top = len(calib_scores), float(calib_scores.max())
    k = stretches(n, window)
    if margin is None:
        value = top + tail_scale(calib_scores) * max(math.log(1.0 / (target * (k + 1))), 0.0)
        how = f"+ tail scale x ln(1 / ({target:g} x {k + 1}))"
    else:
        value = top + margin * robust_spread(calib_scores)
        how = f"+ {margin} x their robust spread (IQR/1.349)"
    kept = false_alarm_target(calib_scores, value, window)
    rule = (f"max of {n} held-back normal window scores ({k} stretches of {window}) {how}; "
            f"false-alarm target {kept:.2g} of normal windows")
    return Threshold(value, rule, kept)


def calibrate(
    detector: LstmGanDetector, fit_windows: np.ndarray, calib_windows: np.ndarray,
    config: TrainConfig,
) -> tuple[WindowScore, Threshold, np.ndarray, np.ndarray]:
    """Return the fitted score, the threshold, and the scores of the fitting and held-back
    windows (one forward pass over each)."""
    fit_parts, held = detector.parts(fit_windows), detector.parts(calib_windows)
    seen = Parts.concat([fit_parts, held], detector.window, len(detector.channels))
    score = fit_score(held, seen, config)
    calib_scores = score.score(held).scores
    train_scores = score.score(fit_parts).scores
    threshold = fit_threshold(calib_scores, config.window, config.false_alarm_target,
                              config.threshold_margin)
    return score, threshold, train_scores, calib_scores
