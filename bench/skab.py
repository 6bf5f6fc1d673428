"""SKAB valve1 protocol: one model per file, trained on its first 400 rows, flags for rows 400 on.

Confusion counts are summed over files (micro average), as ../shared/datasets/skab/SOURCE.md
prescribes. Training uses the defaults of ``ganwatch train`` (``TrainConfig()``), so a user who
passes no hyper-parameters gets these numbers. PCA T² and Q (``bench.reference``) are fitted on the
same 400 rows.

The anomaly-free check cuts ``anomaly-free/anomaly-free.csv`` into consecutive segments of 1,150
rows, trains one model on the first 400 rows of each and scores the rest of that segment: every
flag there is a false alarm.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from connectors.file import Table, read_table
from bench.quality import (
    ABLATED, DATASETS, MODELS, REFERENCES, ablation_flags, config_for, fit, flags_of, model_scored,
    stream_for, target_check,
)
from bench.reference import PcaReference
from detector.offline import score_series
from training.evaluate import skab_summary
from training.trainer import TrainConfig

SKAB = DATASETS / "skab"
TRAIN_ROWS = 400
SEGMENT_ROWS = 1150
SEGMENTS = 8


def skab_files(group: str = "valve1") -> list[Path]:
    files = sorted((SKAB / group).glob("*.csv"), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"no SKAB files under {SKAB / group}")
    return files


def read_file(path: Path) -> Table:
    """One SKAB file: its sensors, ``anomaly`` as the labels, ``changepoint`` left out."""
    return read_table(path, timestamp_column="datetime", label_column="anomaly",
                      exclude_columns=("changepoint",))


def run_file(path: Path, config: TrainConfig, ablate: bool = False) -> dict:
    table = read_file(path)
    ts, values = table.row_ts_ms(), table.values
    result, train_s = fit(ts[:TRAIN_ROWS], values[:TRAIN_ROWS], table.channels, config)
    detector = result.detector("bench", device="cpu")
    started = time.perf_counter()
    scored = score_series(detector, result.threshold, ts, values, stream_for(result, config))
    score_s = time.perf_counter() - started
    labels = table.labels[TRAIN_ROWS:]
    row = {
        "file": f"{path.parent.name}/{path.name}",
        **confusion(flags_of(scored, ts, detector, result.threshold)[TRAIN_ROWS:], labels),
        "train_seconds": round(train_s, 2),
        "windows_per_second": round(int((~np.isnan(scored.scores)).sum()) / score_s, 1),
    }
    if ablate:
        variants = ablation_flags(result, config, ts[:TRAIN_ROWS], values[:TRAIN_ROWS],
                                  [(ts, values)])
        row["ablation"] = {name: confusion(f[0][TRAIN_ROWS:], labels)
                           for name, f in variants.items()}
    return row


def confusion(flags: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """tp/fp/fn/tn of 0/1 row flags against 0/1 labels."""
    flags, labels = np.asarray(flags), np.asarray(labels)
    return {"tp": int(((flags == 1) & (labels == 1)).sum()),
            "fp": int(((flags == 1) & (labels == 0)).sum()),
            "fn": int(((flags == 0) & (labels == 1)).sum()),
            "tn": int(((flags == 0) & (labels == 0)).sum())}


def reference_file(path: Path) -> dict[str, dict]:
    """PCA T² and Q fitted on the file's first 400 rows: counts on the rest, per reference."""
    table = read_file(path)
    pca = PcaReference.fit(table.values[:TRAIN_ROWS])
    return {name: confusion(flags[TRAIN_ROWS:], table.labels[TRAIN_ROWS:])
            for name, flags in pca.flags(table.values).items()}


def segments(n_rows: int, count: int = SEGMENTS, length: int = SEGMENT_ROWS) -> list[tuple[int, int]]:
    """``count`` consecutive ``(start, stop)`` row ranges of ``length`` rows from row 0."""
    if count * length > n_rows:
        raise ValueError(f"{count} segments of {length} rows need {count * length} rows, "
                         f"have {n_rows}")
    return [(i * length, (i + 1) * length) for i in range(count)]


def free_far(flags_per_segment: list[np.ndarray], train_rows: int = TRAIN_ROWS) -> dict:
    """False alarms over the scored part (rows >= ``train_rows``) of each segment, summed."""
    fp = sum(int(np.asarray(f)[train_rows:].sum()) for f in flags_per_segment)
    rows = sum(len(np.asarray(f)[train_rows:]) for f in flags_per_segment)
    return {"false_alarms": fp, "scored_rows": rows,
            "far_pct": round(100.0 * fp / rows, 2) if rows else None,
            "false_alarms_per_segment": [int(np.asarray(f)[train_rows:].sum())
                                         for f in flags_per_segment]}


def run_free(models: tuple[str, ...] = MODELS, overrides: dict | None = None,
             count: int = SEGMENTS, ablate: bool = True) -> dict:
    """The anomaly-free check for ganwatch's models and PCA T²/Q: FAR over ``count`` segments
    (with ``ablate``, also for each ablation variant of ``ABLATED``)."""
    table = read_table(SKAB / "anomaly-free" / "anomaly-free.csv", sep=";",
                       timestamp_column="datetime")
    ts, values = table.row_ts_ms(), table.values
    bounds = segments(len(values), count)
    ref: dict[str, list[np.ndarray]] = {name: [] for name in REFERENCES}
    started = time.perf_counter()
    for a, b in bounds:
        for name, flags in PcaReference.fit(values[a:a + TRAIN_ROWS]).flags(values[a:b]).items():
            ref[name].append(flags)
    seconds = round((time.perf_counter() - started) / len(bounds), 3)
    out: dict = {name: {**free_far(flags), "train_seconds": seconds} for name, flags in ref.items()}
    ablated: dict[str, list[np.ndarray]] = {}
    for kind in models:
        config = config_for(kind, overrides)
        flags, seconds, targets, over = [], [], [], []
        for a, b in bounds:
            result, train_s = fit(ts[a:a + TRAIN_ROWS], values[a:a + TRAIN_ROWS], table.channels,
                                  config)
            segment_flags, segment_over = model_scored(result, config, ts[a:b], values[a:b])
            flags.append(segment_flags)
            over.append(segment_over[TRAIN_ROWS:])
            targets.append(result.threshold.false_alarm_target)
            seconds.append(train_s)
            if ablate and kind == ABLATED:
                for name, f in ablation_flags(result, config, ts[a:a + TRAIN_ROWS],
                                              values[a:a + TRAIN_ROWS],
                                              [(ts[a:b], values[a:b])]).items():
                    ablated.setdefault(name, []).append(f[0])
        out[kind] = {**free_far(flags), **target_check(targets, over),
                     "train_seconds": round(float(np.mean(seconds)), 2)}
    if ablated:
        out["ablation"] = {name: free_far(f) for name, f in ablated.items()}
    return {"segments": len(bounds), "segment_rows": SEGMENT_ROWS, "train_rows": TRAIN_ROWS, **out}


def run(models: tuple[str, ...] = MODELS, group: str = "valve1",
        limit: int | None = None, overrides: dict | None = None, ablate: bool = True) -> dict:
    """The valve1 table: F1, FAR and MAR per model, with training seconds and scoring rate,
    then PCA T² and Q. ``overrides`` changes ``TrainConfig`` fields (the published table uses
    none); ``ablate`` adds the ablation table of ``ABLATED``."""
    out = {}
    files = skab_files(group)[:limit]
    for kind in models:
        config = config_for(kind, overrides)
        rows = [run_file(p, config, ablate=ablate and kind == ABLATED) for p in files]
        summary = skab_summary(rows)
        if ablate and kind == ABLATED:
            out["ablation"] = {name: skab_summary([r["ablation"][name] for r in rows])
                               for name in rows[0]["ablation"]}
        summary.update(
            files=len(rows),
            train_seconds_per_file=round(float(np.mean([r["train_seconds"] for r in rows])), 2),
            train_seconds_max=round(float(np.max([r["train_seconds"] for r in rows])), 2),
            offline_windows_per_second=round(float(np.median([r["windows_per_second"]
                                                              for r in rows])), 1),
        )
        out[kind] = summary
    started = time.perf_counter()
    refs = [reference_file(p) for p in files]
    seconds = (time.perf_counter() - started) / len(files)
    for name in REFERENCES:
        out[name] = {**skab_summary([r[name] for r in refs]), "files": len(files),
                     "train_seconds_per_file": round(seconds, 3)}
    return out
