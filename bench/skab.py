"""SKAB valve1 protocol: one model per file, trained on its first 400 rows, flags for rows 400 on.

Confusion counts are summed over files (micro average), as ../shared/datasets/skab/SOURCE.md
prescribes. Training uses the defaults of ``ganwatch train`` (``TrainConfig()``), so a user who
passes no hyper-parameters gets these numbers.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from connectors.file import read_table
from detector.offline import score_series
from detector.stream import DEFAULT_MAX_GAP_S, StreamConfig
from training.evaluate import skab_summary
from training.trainer import TrainConfig, train

SKAB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "skab"
TRAIN_ROWS = 400


def skab_files(group: str = "valve1") -> list[Path]:
    files = sorted((SKAB / group).glob("*.csv"), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"no SKAB files under {SKAB / group}")
    return files


def run_file(path: Path, config: TrainConfig) -> dict:
    table = read_table(path, timestamp_column="datetime", label_column="anomaly",
                       exclude_columns=("changepoint",))
    ts, values = table.row_ts_ms(), table.values
    started = time.perf_counter()
    result = train(ts[:TRAIN_ROWS], values[:TRAIN_ROWS], table.channels, config)
    train_s = time.perf_counter() - started
    detector = result.detector(table.channels, "bench", device="cpu")
    stream = StreamConfig(config.window, 1, DEFAULT_MAX_GAP_S * 1000)
    started = time.perf_counter()
    scored = score_series(detector, result.threshold, ts, values, stream)
    score_s = time.perf_counter() - started
    flags, labels = scored.flags[TRAIN_ROWS:], table.labels[TRAIN_ROWS:]
    return {
        "file": f"{path.parent.name}/{path.name}",
        "tp": int(((flags == 1) & (labels == 1)).sum()),
        "fp": int(((flags == 1) & (labels == 0)).sum()),
        "fn": int(((flags == 0) & (labels == 1)).sum()),
        "tn": int(((flags == 0) & (labels == 0)).sum()),
        "train_seconds": round(train_s, 2),
        "windows_per_second": round(int((~np.isnan(scored.scores)).sum()) / score_s, 1),
    }


def run(models: tuple[str, ...] = ("lstm-gan", "lstm-ae"), group: str = "valve1",
        limit: int | None = None, overrides: dict | None = None) -> dict:
    """The valve1 table: F1, FAR and MAR per model, with training seconds and scoring rate.
    ``overrides`` changes ``TrainConfig`` fields (the published table uses none)."""
    out = {}
    for kind in models:
        config = replace(TrainConfig(), **(overrides or {}), model=kind, device="cpu")
        rows = [run_file(p, config) for p in skab_files(group)[:limit]]
        summary = skab_summary(rows)
        summary.update(
            files=len(rows),
            train_seconds_per_file=round(float(np.mean([r["train_seconds"] for r in rows])), 2),
            train_seconds_max=round(float(np.max([r["train_seconds"] for r in rows])), 2),
            offline_windows_per_second=round(float(np.median([r["windows_per_second"]
                                                              for r in rows])), 1),
        )
        out[kind] = summary
    return out
