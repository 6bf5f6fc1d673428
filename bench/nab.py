"""NAB under Orion 0.7.1's unsupervised protocol (../shared/tools/NAB_ORION_PROTOCOL.md).

For each signal of realKnownCause and artificialNoAnomaly: fit on the whole signal (incidents
included), detect on the same signal, turn each maximal run of flagged rows into one interval, and
count with ``nab_eval.overlap_counts`` against the signal's ``combined_windows.json`` windows:
TP/FP/FN summed per dataset, F1 = 2TP/(2TP+FP+FN). artificialNoAnomaly has no windows, so it
reports false alarms per signal. Every detector is reported as raw intervals and with each run
widened by 100 rows on both sides (``nab_eval --pad-rows 100``).

A signal whose training (or reading) fails counts tp = fp = 0, fn = its windows, as Orion counts a
failed run, and is listed with its error. ``max_rows`` trains on the first rows only and
``epochs`` caps training: both are for quick runs, they break the whole-signal rule and the
output says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.quality import (
    ABLATED, DATASETS, MODELS, ablation_flags, config_for, fit, model_scored, target_check,
)
from bench.reference import rolling_z_flags
from connectors.file import read_table

log = logging.getLogger(__name__)

NAB = DATASETS / "nab"
WIDEN_ROWS = 100
Z_WINDOW, Z_SIGMAS = 288, 4.0


def signal_path(dataset: str, signal: str) -> Path:
    return NAB / "data" / dataset / f"{signal}.csv"


def signal_counts(truth: Sequence[tuple[float, float]], t_s: np.ndarray, flags: np.ndarray,
                  pad_rows: int = 0) -> dict[str, int]:
    """tp/fp/fn of one signal's 0/1 row flags (rows in time order, ``t_s`` epoch seconds)."""
    nab_eval = _nab_eval()
    detected = nab_eval.rows_to_intervals(t_s, flags, pad_rows=pad_rows)
    tp, fp, fn = nab_eval.overlap_counts(list(truth), detected)
    return {"tp": tp, "fp": fp, "fn": fn, "detections": len(detected)}


def dataset_total(records: Iterable[dict]) -> dict:
    """Counts summed over signals with F1 = 2TP/(2TP+FP+FN) (``None`` when all are 0)."""
    records = list(records)
    tp, fp, fn = (sum(int(r[k]) for r in records) for k in ("tp", "fp", "fn"))
    den = 2 * tp + fp + fn
    return {"tp": tp, "fp": fp, "fn": fn, "f1": round(2 * tp / den, 3) if den else None,
            "false_alarms_per_signal": round(fp / len(records), 2) if records else None}


_MODULE = None


def _nab_eval():
    global _MODULE
    if _MODULE is None:
        from bench.quality import load_nab_eval

        _MODULE = load_nab_eval()
    return _MODULE


def _timestamps(path: Path) -> np.ndarray:
    """Epoch seconds of NAB's naive timestamps (UTC), repeats allowed, as nab_eval reads them."""
    return _nab_eval().to_epoch_seconds(pd.read_csv(path, usecols=["timestamp"])["timestamp"])


def _ganwatch_signal(path: Path, config, max_rows: int | None, ablate: bool = False
                     ) -> tuple[np.ndarray, float, dict[str, np.ndarray], dict]:
    """Train on the signal (its first ``max_rows`` rows if given), score all of it; with
    ``ablate``, also the flags of every score variant. The last item is the threshold's
    false-alarm target and whether each window scored over it (``bench.quality.target_check``)."""
    table = read_table(path, timestamp_column="timestamp")
    ts, values = table.row_ts_ms(), table.values
    rows = len(values) if max_rows is None else min(max_rows, len(values))
    result, train_s = fit(ts[:rows], values[:rows], table.channels, config)
    variants = {}
    if ablate:
        variants = {name: f[0] for name, f in ablation_flags(
            result, config, ts[:rows], values[:rows], [(ts, values)]).items()}
    flags, over = model_scored(result, config, ts, values)
    target = {"target": result.threshold.false_alarm_target, "over": over}
    return flags, train_s, variants, target


def _score(truth, t_s, flags) -> dict:
    return {"raw": signal_counts(truth, t_s, flags),
            "widened": signal_counts(truth, t_s, flags, WIDEN_ROWS)}


def _failed(truth, exc: Exception) -> dict:
    miss = {"tp": 0, "fp": 0, "fn": len(truth), "detections": 0}
    return {"raw": miss, "widened": dict(miss), "error": f"{type(exc).__name__}: {exc}"}


def aggregate(records: dict[str, dict], normal: bool = False) -> dict:
    """Per-dataset figures of one detector from its per-signal records; on a ``normal`` dataset
    (no incidents) also its threshold's false-alarm target beside the achieved window rate."""
    raw = dataset_total(r["raw"] for r in records.values())
    target = {}
    if normal and any("target" in r for r in records.values()):
        with_target = [r["target"] for r in records.values() if "target" in r]
        target = target_check([t["target"] for t in with_target], [t["over"] for t in with_target])
    widened = dataset_total(r["widened"] for r in records.values())
    seconds = [r["train_seconds"] for r in records.values() if r.get("train_seconds") is not None]
    return {**raw, **target, f"widened_{WIDEN_ROWS}": widened,
            "train_seconds": round(float(np.sum(seconds)), 2) if seconds else None,
            "errors": [f"{name}: {r['error']}" for name, r in records.items() if "error" in r],
            "signals": {name: {"tp": r["raw"]["tp"], "fp": r["raw"]["fp"], "fn": r["raw"]["fn"],
                               f"widened_{WIDEN_ROWS}": [r["widened"][k] for k in ("tp", "fp", "fn")],
                               "train_seconds": r.get("train_seconds")}
                        for name, r in records.items()}}


def run(models: tuple[str, ...] = MODELS, overrides: dict | None = None,
        max_rows: int | None = None, epochs: int | None = None,
        signals: Sequence[str] | None = None) -> dict:
    """The NAB development table: rolling z-score and ganwatch's models per dataset."""
    nab_eval = _nab_eval()
    truth_all = nab_eval.load_truth(NAB)
    out: dict = {"protocol": "orion-0.7.1: fit+detect whole signal, combined_windows, "
                             "overlap-segment counts summed per dataset",
                 "limits": {"max_rows": max_rows, "epochs": epochs,
                            "whole_signal": max_rows is None}}
    for dataset, names in nab_eval.DEV_DATASETS.items():
        names = [s for s in names if signals is None or s in signals]
        if not names:
            continue
        per: dict[str, dict[str, dict]] = {"rolling-z": {}, **{k: {} for k in models}}
        ablated: dict[str, dict[str, dict]] = {}
        for name in names:
            path, truth = signal_path(dataset, name), truth_all[name]
            t_s = _timestamps(path)
            started = time.perf_counter()
            flags = rolling_z_flags(read_table(path, channels=["value"]).values[:, 0],
                                    Z_WINDOW, Z_SIGMAS)
            per["rolling-z"][name] = {**_score(truth, t_s, flags),
                                      "train_seconds": round(time.perf_counter() - started, 3)}
            for kind in models:
                config = config_for(kind, overrides)
                if epochs is not None:
                    config = replace(config, epochs=epochs)
                try:
                    flags, train_s, variants, target = _ganwatch_signal(
                        path, config, max_rows, ablate=kind == ABLATED)
                    per[kind][name] = {**_score(truth, t_s, flags), "target": target,
                                       "train_seconds": round(train_s, 2)}
                    for variant, f in variants.items():
                        ablated.setdefault(variant, {})[name] = _score(truth, t_s, f)
                except Exception as exc:  # a failed run is counted, as Orion counts it
                    log.warning("nab %s %s/%s failed: %s", kind, dataset, name, exc)
                    per[kind][name] = _failed(truth, exc)
        normal = not any(truth_all[name] for name in names)
        out[dataset] = {kind: aggregate(records, normal) for kind, records in per.items()}
        if ablated:
            out[dataset]["ablation"] = {v: aggregate(r) for v, r in ablated.items()}
    return out
