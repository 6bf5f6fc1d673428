"""What every quality benchmark shares: config, training, scoring, flags and the summary table.

``stream_for`` and ``flags_of`` are the two places where the benchmark decides how a trained model
turns a series into row flags; every dataset goes through them, so a change of gap rule or alert
mode changes every table at once.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.offline import SeriesScores, score_series
from detector.stream import StreamConfig
from training.trainer import TrainConfig, TrainResult, train

log = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"
MODELS = ("lstm-gan", "lstm-ae")
REFERENCES = ("pca-t2", "pca-q")


def config_for(kind: str, overrides: dict | None = None) -> TrainConfig:
    """``TrainConfig()`` defaults (what ``ganwatch train`` uses) with ``overrides``, on the CPU."""
    return replace(TrainConfig(), **(overrides or {}), model=kind, device="cpu")


def stream_for(result: TrainResult, config: TrainConfig) -> StreamConfig:
    """The stream rules the trained artifact scores with: its window, stride 1, its gap limit."""
    return StreamConfig(config.window, 1, getattr(result, "max_gap_ms", config.max_gap_ms))


def flags_of(scored: SeriesScores) -> np.ndarray:
    """Row flags of a scored series (0/1 per row; unscored rows are 0)."""
    return np.asarray(scored.flags, dtype=np.int64)


def fit(ts_ms: np.ndarray, values: np.ndarray, channels: list[str],
        config: TrainConfig) -> tuple[TrainResult, float]:
    """Train on these rows; returns the result and the training seconds."""
    started = time.perf_counter()
    result = train(ts_ms, values, channels, config)
    return result, time.perf_counter() - started


def model_flags(result: TrainResult, config: TrainConfig, channels: list[str],
                ts_ms: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Flags of one series scored on its own, from a fresh stream state."""
    detector = result.detector(channels, "bench", "cpu")
    return flags_of(score_series(detector, result.threshold, ts_ms, values,
                                 stream_for(result, config)))


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


# ---------------------------------------------------------------- training under load

def _skab_rows(path: Path):
    from connectors.file import read_table

    table = read_table(path, timestamp_column="datetime", label_column="anomaly",
                       exclude_columns=("changepoint",))
    return table.row_ts_ms()[:400], table.values[:400], table.channels


def _train_forever(path: str, config: TrainConfig, started, stop) -> None:
    """Background load: train the same file again and again until ``stop`` is set."""
    ts, values, channels = _skab_rows(Path(path))
    started.set()
    while not stop.is_set():
        train(ts, values, channels, config)


def train_under_load(path: Path, kind: str = "lstm-gan", overrides: dict | None = None) -> dict:
    """Seconds to train on one SKAB file alone, then while a second process trains it too.

    Both use the process's default torch settings (``TrainConfig.torch_threads`` if the lead's
    version has it is left at its default)."""
    config = config_for(kind, overrides)
    ts, values, channels = _skab_rows(path)
    _, alone = fit(ts, values, channels, config)
    ctx = mp.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_train_forever, args=(str(path), config, started, stop))
    worker.start()
    try:
        if not started.wait(timeout=120):
            raise RuntimeError("the load process did not start training within 120 s")
        _, loaded = fit(ts, values, channels, config)
    finally:
        stop.set()
        worker.join(timeout=300)
        if worker.is_alive():
            worker.terminate()
            worker.join()
    return {"file": f"{path.parent.name}/{path.name}", "model": kind,
            "torch_threads": getattr(config, "torch_threads", None),
            "train_seconds_alone": round(alone, 2), "train_seconds_loaded": round(loaded, 2),
            "slowdown": round(loaded / alone, 2) if alone else None}


# ---------------------------------------------------------------- the summary table

def summary(out: dict) -> list[dict]:
    """One compact row per dataset x detector with its headline measure and training seconds."""
    rows: list[dict] = []
    for kind, s in out.get("skab", {}).get("valve1", {}).items():
        rows.append({"dataset": "skab/valve1", "detector": kind, "f1": s.get("f1"),
                     "far_pct": s.get("far_pct"), "train_seconds": s.get("train_seconds_per_file")})
    for kind, s in out.get("skab", {}).get("anomaly_free", {}).items():
        if isinstance(s, dict):
            rows.append({"dataset": "skab/anomaly-free", "detector": kind,
                         "far_pct": s.get("far_pct"), "train_seconds": s.get("train_seconds")})
    for kind, s in out.get("tep", {}).get("detectors", {}).items():
        rows.append({"dataset": "tep", "detector": kind, "far_pct": s.get("far_pct"),
                     "mean_fdr_pct": s.get("mean_fdr_pct"),
                     "mean_fdr_pct_without_3_9_15": s.get("mean_fdr_pct_without_3_9_15"),
                     "train_seconds": s.get("train_seconds")})
    nab = out.get("nab", {})
    for kind, s in nab.get("realKnownCause", {}).items():
        rows.append({"dataset": "nab/realKnownCause", "detector": kind, "f1": s.get("f1"),
                     "f1_widened_100": s.get("widened_100", {}).get("f1"),
                     "failed_signals": len(s.get("errors", [])),
                     "train_seconds": s.get("train_seconds")})
    for kind, s in nab.get("artificialNoAnomaly", {}).items():
        rows.append({"dataset": "nab/artificialNoAnomaly", "detector": kind,
                     "false_alarms_per_signal": s.get("false_alarms_per_signal"),
                     "failed_signals": len(s.get("errors", [])),
                     "train_seconds": s.get("train_seconds")})
    return rows
