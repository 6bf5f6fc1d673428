"""Calibration fitted once at training time and stored with the model.

Each term of the score (``detector.term``) fits its own statistics on the held-back normal windows
(the stuck-sensor and noise terms on every training window): ``WindowScore`` adds them. The threshold is the
highest held-back score plus ``threshold_margin`` times the held-back scores' robust spread
(IQR / 1.349): normal data the model never saw stays below it, with a margin for the slow drift
that real plants show.
"""

from __future__ import annotations

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


def fit_threshold(calib_scores: np.ndarray, margin: float) -> Threshold:
    value = float(calib_scores.max() + margin * robust_spread(calib_scores))
    rule = (f"max of {len(calib_scores)} held-back normal window scores + {margin} x their "
            f"robust spread (IQR/1.349)")
    return Threshold(value, rule)


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
    return score, fit_threshold(calib_scores, config.threshold_margin), train_scores, calib_scores
