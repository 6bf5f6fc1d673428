"""Calibration fitted once at training time and stored with the model.

Rule (documented in the README): on the held-back normal windows, each channel's median
reconstruction error (mean square plus ``bias_weight`` times the sustained-offset part, see
``detector.model.error``) becomes its unit (``channel_norm``); the log of the mean relative error
and the critic output are each centred on their median and divided by their robust spread
(IQR / 1.349, the standard deviation for Gaussian data). The score is the log-error term plus
``critic_weight`` times the absolute critic term, plus a stuck-sensor term: per channel, how many
robust spreads the window's step-to-step variation (log std of first differences) falls below a
tenth of the flattest training window's (zero for anything near what training has seen); the
largest channel counts; and a spike term: per channel, how far the log of the window's largest
squared row residual (relative to the channel's unit) rises above ``peak_margin`` (ten times) plus
the highest held-back value, in robust spreads of the channel's log error on held-back windows, so
in the units of the log-error term (zero for anything near what calibration has seen); the largest
channel counts. The threshold is the highest held-back score plus ``threshold_margin``
times the scores' robust spread: normal data the model never saw stays below it, with a margin
for the slow drift that real plants show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from detector.model import LstmGanDetector, ScoreNormaliser, variation
from detector.score import Threshold

if TYPE_CHECKING:
    from training.trainer import TrainConfig


def robust_spread(x: np.ndarray) -> float:
    """IQR / 1.349, falling back to the standard deviation, never below a tiny positive value."""
    q25, q75 = np.percentile(x, [25, 75])
    spread = (q75 - q25) / 1.349
    if not spread > 0:
        spread = float(np.std(x))
    return float(max(spread, 1e-9))


def calibrate(
    detector: LstmGanDetector, fit_windows: np.ndarray, calib_windows: np.ndarray,
    config: "TrainConfig",
) -> tuple[ScoreNormaliser, Threshold, np.ndarray, np.ndarray]:
    """Return normaliser, threshold, and the scores of the fitting and held-back windows."""
    rec, critic, peaks = detector.components(calib_windows)
    kwargs: dict = {"bias_weight": detector.normaliser.bias_weight}
    if config.channel_norm:
        kwargs["channel_scale"] = tuple(float(max(v, 1e-12)) for v in np.median(rec, axis=0))
        rec = rec / np.asarray(kwargs["channel_scale"])
    log_rec = np.log(np.maximum(rec.mean(axis=1), 1e-12))
    kwargs.update(rec_center=float(np.median(log_rec)), rec_scale=robust_spread(log_rec))
    if critic is not None:
        kwargs.update(
            critic_center=float(np.median(critic)), critic_scale=robust_spread(critic),
            critic_weight=config.critic_weight,
        )
    if config.flat_weight > 0:
        seen = variation(detector.scaler.transform(np.concatenate([fit_windows, calib_windows])))
        kwargs.update(
            flat_floor=tuple(float(v) for v in seen.min(axis=0)),
            flat_scale=tuple(robust_spread(seen[:, c]) for c in range(seen.shape[1])),
            flat_weight=config.flat_weight,
        )
    if config.peak_weight > 0:
        scale = np.asarray(kwargs.get("channel_scale", np.ones(peaks.shape[1])))
        log_peak = np.log(np.maximum(peaks / scale, 1e-12))
        log_channel = np.log(np.maximum(rec, 1e-12))  # rec is relative here when channel_norm is on
        kwargs.update(
            peak_ceiling=tuple(float(v) for v in log_peak.max(axis=0)),
            peak_scale=tuple(robust_spread(log_channel[:, c]) for c in range(rec.shape[1])),
            peak_weight=config.peak_weight, peak_margin=config.peak_margin,
        )
    normaliser = ScoreNormaliser(**kwargs)
    detector.normaliser = normaliser
    calib_scores = detector.score(calib_windows).scores
    train_scores = detector.score(fit_windows).scores
    value = float(calib_scores.max() + config.threshold_margin * robust_spread(calib_scores))
    rule = (
        f"max of {len(calib_scores)} held-back normal window scores + {config.threshold_margin} x "
        f"their robust spread (IQR/1.349)"
    )
    return normaliser, Threshold(value, rule), train_scores, calib_scores
