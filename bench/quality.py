"""What every quality benchmark shares: config, training, scoring, flags and the summary table.

``stream_for`` and ``flags_of`` are the two places where the benchmark decides how a trained model
turns a series into row flags; every dataset goes through them, so a change of gap rule or alert
mode changes every table at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.alert import DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS
from detector.offline import SeriesScores, score_series, series_alerts
from detector.score import Detector, Threshold
from detector.stream import StreamConfig
from training.trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"
MODELS = ("lstm-gan", "lstm-ae")
ABLATED = "lstm-gan"  # the model whose score terms the ablation table takes apart
REFERENCES = ("pca-t2", "pca-q")


def config_for(kind: str, overrides: dict | None = None) -> TrainConfig:
    """``TrainConfig()`` defaults (what ``ganwatch train`` uses) with ``overrides``, on the CPU."""
    return replace(TrainConfig(), **(overrides or {}), model=kind, device="cpu")


def stream_for(result: TrainResult, config: TrainConfig) -> StreamConfig:
    """The stream rules the trained artifact scores with: its window, stride 1, its gap limit."""
    return StreamConfig(config.window, 1, getattr(result, "max_gap_ms", config.max_gap_ms))


def flags_of(scored: SeriesScores, ts_ms: np.ndarray, detector: Detector,
             threshold: Threshold) -> np.ndarray:
    """Row flags of a scored series as alert consumers get them: the worker's alert rules in
    ``serve``'s default mode (episode: every row from the window that opened an episode to the
    one that closed it), exactly as ``ganwatch score`` writes ``is_anomaly``."""
    alerts = series_alerts(scored, ts_ms, list(detector.channels), threshold, detector.version,
                           DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS)
    return np.asarray(alerts.flags, dtype=np.int64)


def series_flags(detector: Detector, threshold: Threshold, stream: StreamConfig,
                 ts_ms: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Score one series on its own, from a fresh stream state, and flag it (``flags_of``)."""
    return flags_of(score_series(detector, threshold, ts_ms, values, stream), ts_ms, detector,
                    threshold)


def fit(ts_ms: np.ndarray, values: np.ndarray, channels: list[str],
        config: TrainConfig) -> tuple[TrainResult, float]:
    """Train on these rows; returns the result and the training seconds."""
    started = time.perf_counter()
    result = train(ts_ms, values, channels, config)
    return result, time.perf_counter() - started


def model_scored(result: TrainResult, config: TrainConfig, ts_ms: np.ndarray,
                 values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row flags (``flags_of``) of one series scored on its own, and per row whether the window
    ending there scored at or above the threshold (1.0 / 0.0; NaN where no window ends)."""
    detector = result.detector("bench", "cpu")
    scored = score_series(detector, result.threshold, ts_ms, values, stream_for(result, config))
    over = np.where(np.isnan(scored.scores), np.nan,
                    (np.nan_to_num(scored.scores, nan=-np.inf) >= result.threshold.value) * 1.0)
    return flags_of(scored, ts_ms, detector, result.threshold), over


def target_check(targets: list[float | None], over: list[np.ndarray]) -> dict:
    """The threshold rule's false-alarm target beside what it achieved on normal data: the mean
    of the models' ``false_alarm_target`` and the share of normal windows (``over``: 1.0 / 0.0,
    NaN where no window) that scored at or above the threshold, both in %."""
    stated = [t for t in targets if t is not None]
    flags = np.concatenate([np.asarray(o, dtype=np.float64) for o in over]) if over else np.empty(0)
    windows = flags[~np.isnan(flags)]
    return {"false_alarm_target_pct": round(100 * float(np.mean(stated)), 3) if stated else None,
            "window_far_pct": round(100 * float(windows.mean()), 3) if len(windows) else None,
            "normal_windows": int(len(windows)), "normal_windows_over": int(windows.sum())}


def ablation_flags(result: TrainResult, config: TrainConfig, train_ts: np.ndarray,
                   train_values: np.ndarray, series: list[tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, list[np.ndarray]]:
    """Per score variant (``bench.ablation.VARIANTS``), the flags of each series, from the model
    trained on ``train_ts``/``train_values``; lstm-gan only (the critic is one of the terms)."""
    from bench.ablation import variants

    stream = stream_for(result, config)
    return {name: [series_flags(det, thr, stream, ts, values) for ts, values in series]
            for name, (det, thr) in variants(result, config, train_ts, train_values).items()}


def load_nab_eval():
    """``shared/tools/nab_eval.py`` as a module (it is a script, not a package)."""
    import importlib.util

    path = SHARED / "tools" / "nab_eval.py"
    if not path.is_file():
        raise FileNotFoundError(f"NAB harness missing: {path}")
    spec = importlib.util.spec_from_file_location("nab_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ---------------------------------------------------------------- the summary table

def _datasets(out: dict) -> dict[str, dict]:
    """Each dataset's per-detector results (the ablation under the key ``ablation``)."""
    nab = out.get("nab", {})
    return {"skab/valve1": out.get("skab", {}).get("valve1", {}),
            "skab/anomaly-free": out.get("skab", {}).get("anomaly_free", {}),
            "tep": out.get("tep", {}).get("detectors", {}),
            "nab/realKnownCause": nab.get("realKnownCause", {}),
            "nab/artificialNoAnomaly": nab.get("artificialNoAnomaly", {})}


def headline(dataset: str, s: dict) -> dict:
    """The measures a dataset is judged by, from one detector's (or variant's) results."""
    if dataset == "skab/valve1":
        return {"f1": s.get("f1"), "far_pct": s.get("far_pct"),
                "train_seconds": s.get("train_seconds_per_file")}
    target = {k: s[k] for k in ("false_alarm_target_pct", "window_far_pct") if k in s}
    if dataset == "skab/anomaly-free":
        return {"far_pct": s.get("far_pct"), **target, "train_seconds": s.get("train_seconds")}
    if dataset == "tep":
        return {"far_pct": s.get("far_pct"), **target, "mean_fdr_pct": s.get("mean_fdr_pct"),
                "mean_fdr_pct_without_3_9_15": s.get("mean_fdr_pct_without_3_9_15"),
                "train_seconds": s.get("train_seconds")}
    out = {"failed_signals": len(s.get("errors", [])), "train_seconds": s.get("train_seconds")}
    if dataset == "nab/realKnownCause":
        return {"f1": s.get("f1"), "tp": s.get("tp"), "fp": s.get("fp"), "fn": s.get("fn"),
                "f1_widened_100": s.get("widened_100", {}).get("f1"), **out}
    return {"false_alarms_per_signal": s.get("false_alarms_per_signal"), **target, **out}


def summary(out: dict) -> list[dict]:
    """One compact row per dataset x detector with its headline measure and training seconds."""
    return [{"dataset": name, "detector": kind, **headline(name, s)}
            for name, results in _datasets(out).items()
            for kind, s in results.items() if kind != "ablation" and isinstance(s, dict)]


def ablation_summary(out: dict) -> list[dict]:
    """One row per dataset x score variant of ``ABLATED`` (``bench.ablation``)."""
    return [{"dataset": name, "variant": variant, **headline(name, s)}
            for name, results in _datasets(out).items()
            for variant, s in results.get("ablation", {}).items()]
