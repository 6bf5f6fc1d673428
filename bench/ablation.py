"""Ablation of the score's terms: the same trained model with one term left out at a time.

Each variant refits the score on the same held-back windows with ``training.calibration`` (the
product's own calibration, not a copy), then the threshold by the same rule, so a variant is what
``ganwatch train`` would have written with that term turned off. Training is not repeated: the
terms only change how a trained model's reconstruction is scored, never the networks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from detector.model import LstmGanDetector
from detector.score import Threshold
from training.calibration import calibrate_parts
from training.trainer import TrainConfig, TrainResult, make_windows

# name -> TrainConfig fields that turn one part of the score off
VARIANTS: dict[str, dict] = {
    "all terms": {},
    "no critic": {"critic_weight": 0.0},
    "no stuck-sensor term": {"flat_weight": 0.0},
    "no noise term": {"noise_weight": 0.0},
    "no spike term": {"peak_weight": 0.0},
    "no sustained-offset part": {"bias_weight": 0.0},
    "no per-channel units": {"channel_norm": False},
    "no seasonal term": {"season_weight": 0.0},
}


def variants(result: TrainResult, config: TrainConfig, ts_ms: np.ndarray, values: np.ndarray,
             names: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, tuple[LstmGanDetector, Threshold]]:
    """(detector, threshold) per variant for a model trained on these rows with ``config``."""
    detector = result.detector(version="ablation", device="cpu")
    windows, ends, _, times = make_windows(ts_ms, values, config.window, result.max_gap_ms)
    n_fit = int(round(len(values) * (1 - config.calib_fraction)))
    fit, held = ends < n_fit, ends >= n_fit
    fit_parts = detector.parts(windows[fit], times[fit])
    held_parts = detector.parts(windows[held], times[held])
    out = {}
    for name in names:
        changed = replace(config, **VARIANTS[name])
        score, threshold, _, _ = calibrate_parts(fit_parts, held_parts, changed,
                                                 len(detector.channels))
        # with the seasonal term off the model no longer reads the time of day or week
        season = result.spec.season if score.season is not None else None
        spec = replace(result.spec, score=score, season=season)
        out[name] = (LstmGanDetector(result.networks, spec, name, "cpu"), threshold)
    return out
