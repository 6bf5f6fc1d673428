"""Calibration fitted once at training time and stored with the model.

Each term of the score (``detector.term``) fits its own statistics on the held-back normal windows
(the stuck-sensor and noise terms on every training window): ``WindowScore`` adds them.

The threshold is set by a false-alarm target: the share ``a`` of normal windows, like the held-back
ones, that may score at or above it. A new window beats the highest of ``k`` independent stretches
of held-back windows with probability ``1 / (k + 1)`` (the windows overlap, so ``k`` counts
stretches of one window length). Past that highest score the tail is taken as exponential, so
the threshold lies ``tail_scale x ln(1 / (a (k + 1)))`` above it. The scale is fitted on the upper
half of the stretch peaks when there are at least ``PEAK_TAIL_STRETCHES`` stretches (the peaks
follow the far tail), else on the upper half of the window scores (too few peaks to fit).
``threshold_margin``, when set, replaces the target: the highest held-back score plus that many
robust spreads, with the target it implies stored.

Incidents in the training rows (``contamination``): up to that share of the held-back stretches
may hold them, and their peaks would lift the threshold above the incidents themselves. The rule
also anchors at the ``m + 1``-th highest stretch peak, ``m = floor(contamination x k)``, and takes
the lower threshold, but never one at or below the second-highest stretch peak of the windows the
model was fitted on. Those rows may hold an incident too (its highest peak is let go), but a
held-back peak that recurs there (a daily cycle's hardest hour) is normal, so it is not set aside.
With fewer than ``1 / contamination`` stretches ``m`` is 0.
"""

from __future__ import annotations

import math

import numpy as np

from detector.model import LstmGanDetector
from detector.score import Threshold
from detector.term import (
    CriticTerm, ErrorTerm, FlatTerm, NoiseTerm, Parts, PeakTerm, SeasonTerm, WindowScore,
    robust_spread,
)
from training.config import TrainConfig

# a lowered threshold stays this many tail scales above the fitted windows' stretch peak number
# FIT_SET_ASIDE + 1, so windows scoring the same (noise-free periodic data) stay below it
FLOOR_STEP = 0.1
FIT_SET_ASIDE = 1  # the fitted rows' highest stretch peaks that may be an incident
PEAK_TAIL_STRETCHES = 20  # from this many held-back stretches on, the tail is fitted on their peaks
# the smallest tail scale, in score units (robust spreads): closer scores differ by rounding only
MIN_TAIL = 0.01


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
    season = None
    if held.season is not None and config.season_weight > 0:
        season = SeasonTerm.fit(held, config.season_weight)
    return WindowScore(error, critic, flat, peak, noise, season)


def tail_scale(scores: np.ndarray, window: int = 1, set_aside: int = 0) -> float:
    """Scale of the exponential tail past ``scores``: the median excess of their upper half over
    their median, divided by ln 2 (the median of an exponential). With ``PEAK_TAIL_STRETCHES`` or
    more stretches of ``window``, fitted on the stretch peaks (less the ``set_aside`` highest,
    which may be incidents): they follow the far tail, where the threshold lies, while the window
    scores' upper half follows the body, which light tails (a Gaussian's) make too wide. With fewer
    stretches there are too few peaks to fit. Never below ``MIN_TAIL`` score units."""
    scores = np.asarray(scores, dtype=np.float64)
    k = stretches(len(scores), window)
    if k >= PEAK_TAIL_STRETCHES:
        scores = stretch_peaks(scores, window, k)[set_aside:]
    median = np.median(scores)
    excess = scores[scores > median] - median
    scale = float(np.median(excess)) / math.log(2) if len(excess) else 0.0
    return max(scale, MIN_TAIL)


def _tail(calib_scores: np.ndarray, window: int, contamination: float) -> float:
    """``tail_scale`` of held-back scores, the stretches ``contamination`` allows set aside."""
    k = stretches(len(calib_scores), window)
    return tail_scale(calib_scores, window, int(math.floor(contamination * k)))


def stretches(n_windows: int, window: int) -> int:
    """How many independent stretches ``n_windows`` overlapping windows of ``window`` rows are."""
    return max(1, -(-n_windows // max(window, 1)))


def stretch_peaks(scores: np.ndarray, window: int, count: int) -> np.ndarray:
    """The ``count`` highest peaks of ``scores``, highest first, no two within ``window`` windows
    of each other (one peak per stretch of overlapping windows)."""
    scores = np.asarray(scores, dtype=np.float64)
    taken = np.zeros(len(scores), dtype=bool)
    peaks: list[float] = []
    for i in np.argsort(scores, kind="stable")[::-1]:
        if len(peaks) == count:
            break
        if not taken[max(0, i - window + 1):i + window].any():
            taken[i] = True
            peaks.append(float(scores[i]))
    return np.asarray(peaks)


def false_alarm_target(calib_scores: np.ndarray, value: float, window: int,
                       set_aside: int = 0, scale: float | None = None) -> float:
    """The share of normal windows like the held-back ones that may score ``value`` or more
    (anchored at the highest stretch peak after ``set_aside`` are set aside; the tail scale is
    ``scale``, by default ``tail_scale`` of these scores)."""
    calib_scores = np.asarray(calib_scores, dtype=np.float64)
    anchor = stretch_peaks(calib_scores, window, set_aside + 1)[-1]
    beyond = max(float(value - anchor), 0.0)
    share = (set_aside + 1) / (stretches(len(calib_scores), window) + 1)
    if scale is None:
        scale = tail_scale(calib_scores, window)
    return min(share * math.exp(-beyond / scale), 1.0)


def fit_floor(fit_scores: np.ndarray, window: int) -> float:
    """The fitted windows' stretch peak number ``FIT_SET_ASIDE + 1`` (their highest one when
    there are no more stretches): a peak found once in the fitted rows may be an incident, one
    that recurs is normal."""
    peaks = stretch_peaks(fit_scores, window, FIT_SET_ASIDE + 1)
    return float(peaks[-1])


def _set_aside(calib_scores: np.ndarray, fit_scores: np.ndarray | None, window: int,
               target: float, contamination: float, value: float, scale: float
               ) -> tuple[float, int]:
    """The threshold with the top ``floor(contamination x k)`` stretch peaks set aside, when that
    is lower than ``value``, kept above all but the fitted windows' highest stretch peak
    (``fit_floor``); and how many were set aside."""
    k = stretches(len(calib_scores), window)
    m = int(math.floor(contamination * k))
    if m < 1 or fit_scores is None or len(fit_scores) == 0:
        return value, 0
    peaks = stretch_peaks(calib_scores, window, m + 1)
    if len(peaks) <= m:
        return value, 0
    trimmed = peaks[m] + scale * max(math.log((m + 1) / (target * (k + 1))), 0.0)
    floor = fit_floor(fit_scores, window) + FLOOR_STEP * scale
    lowered = max(trimmed, floor)
    return (lowered, m) if lowered < value else (value, 0)


def fit_threshold(calib_scores: np.ndarray, window: int, target: float,
                  margin: float | None = None, contamination: float = 0.0,
                  fit_scores: np.ndarray | None = None) -> Threshold:
    """The threshold for false-alarm target ``target`` (or, with ``margin``, the highest held-back
    score plus ``margin`` robust spreads), with the target it keeps and its rule in words.
    ``contamination`` > 0 with ``fit_scores`` (the fitted windows' scores) allows for incidents
    in the held-back stretches (module docstring)."""
    calib_scores = np.asarray(calib_scores, dtype=np.float64)
    n, top = len(calib_scores), float(calib_scores.max())
    k = stretches(n, window)
    set_aside = 0
    scale = _tail(calib_scores, window, contamination)  # once: the peaks take a pass over all
    if margin is None:
        value = top + scale * max(math.log(1.0 / (target * (k + 1))), 0.0)
        how = f"max of {n} held-back normal window scores ({k} stretches of {window}) "
        how += f"+ tail scale x ln(1 / ({target:g} x {k + 1}))"
        value, set_aside = _set_aside(calib_scores, fit_scores, window, target, contamination,
                                      value, scale)
        if set_aside:
            how = (f"peak {set_aside + 1} of {k} held-back stretches of {window} ({set_aside} set "
                   f"aside as possible incidents, contamination {contamination:g}) + tail scale x "
                   f"ln({set_aside + 1} / ({target:g} x {k + 1})), above all but the highest "
                   "fitted stretch")
        if k >= PEAK_TAIL_STRETCHES:
            how += ", the tail fitted on the stretch peaks"
    else:
        value = top + margin * robust_spread(calib_scores)
        how = (f"max of {n} held-back normal window scores ({k} stretches of {window}) "
               f"+ {margin} x their robust spread (IQR/1.349)")
    kept = false_alarm_target(calib_scores, value, window, set_aside, scale=scale)
    return Threshold(value, f"{how}; false-alarm target {kept:.2g} of normal windows", kept)


def calibrate(
    detector: LstmGanDetector, fit_windows: np.ndarray, calib_windows: np.ndarray,
    config: TrainConfig, fit_ts: np.ndarray | None = None, calib_ts: np.ndarray | None = None,
) -> tuple[WindowScore, Threshold, np.ndarray, np.ndarray]:
    """Return the fitted score, the threshold, and the scores of the fitting and held-back
    windows (one forward pass over each; ``*_ts``: their readings' timestamps, which a model
    with a seasonal profile needs)."""
    fit_parts, held = detector.parts(fit_windows, fit_ts), detector.parts(calib_windows, calib_ts)
    return calibrate_parts(fit_parts, held, config, len(detector.channels))


def calibrate_parts(fit_parts: Parts, held: Parts, config: TrainConfig, n_channels: int
                    ) -> tuple[WindowScore, Threshold, np.ndarray, np.ndarray]:
    """``calibrate`` on the components of the fitting and held-back windows."""
    seen = Parts.concat([fit_parts, held], config.window, n_channels)
    score = fit_score(held, seen, config)
    calib_scores = score.score(held).scores
    train_scores = score.score(fit_parts).scores
    threshold = fit_threshold(calib_scores, config.window, config.false_alarm_target,
                              config.threshold_margin, config.contamination, train_scores)
    return score, threshold, train_scores, calib_scores
