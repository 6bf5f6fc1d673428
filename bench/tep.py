"""Tennessee Eastman, the textbook protocol of ../shared/datasets/tep/SOURCE.md.

Fit on ``train.csv`` only; score ``normal_test.csv`` and every ``fault_NN.csv`` as its own series.
FDR of a fault = share of rows 160..959 flagged; FAR = share of normal rows flagged (all of
``normal_test.csv`` and rows < 160 of every fault file). Rows < 31 of every file are left out for
every detector alike (a 32-row window needs them). Means over all odd faults and without the
nearly invisible faults 3, 9 and 15.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from bench.quality import (
    ABLATED, DATASETS, MODELS, ablation_flags, config_for, fit, model_scored, target_check,
)
from bench.reference import PcaReference
from connectors.file import Table, read_table

log = logging.getLogger(__name__)

TEP = DATASETS / "tep"
ONSET = 160  # first faulty row of a fault file
SKIP = 31  # rows left out of every file
INVISIBLE = (3, 9, 15)


def read(path: Path) -> Table:
    return read_table(path, timestamp_column="datetime", exclude_columns=("fault",))


def fault_files() -> dict[int, Path]:
    files = {int(p.stem.split("_")[1]): p for p in sorted(TEP.glob("fault_*.csv"))}
    if not files or not (TEP / "train.csv").is_file():
        raise FileNotFoundError(f"TEP data missing under {TEP}")
    return files


def _pct(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def tep_rates(normal: np.ndarray, faults: Mapping[int, np.ndarray], onset: int = ONSET,
              skip: int = SKIP, invisible: tuple[int, ...] = INVISIBLE) -> dict:
    """FAR, per-fault FDR and mean FDRs (all %) from the 0/1 row flags of each file."""
    normal = np.asarray(normal)[skip:]
    fa = int(normal.sum()) + sum(int(np.asarray(f)[skip:onset].sum()) for f in faults.values())
    normal_rows = len(normal) + sum(len(np.asarray(f)[skip:onset]) for f in faults.values())
    fdr = {n: _pct(int(np.asarray(f)[onset:].sum()), len(np.asarray(f)[onset:]))
           for n, f in sorted(faults.items())}
    visible = [v for n, v in fdr.items() if n not in invisible and v is not None]
    every = [v for v in fdr.values() if v is not None]
    return {
        "far_pct": _pct(fa, normal_rows), "false_alarms": fa, "normal_rows": normal_rows,
        "mean_fdr_pct": round(float(np.mean(every)), 2) if every else None,
        "mean_fdr_pct_without_3_9_15": round(float(np.mean(visible)), 2) if visible else None,
        "fdr_pct": {f"{n:02d}": v for n, v in fdr.items()},
    }


def run(models: tuple[str, ...] = MODELS, overrides: dict | None = None,
        faults: tuple[int, ...] | None = None, ablate: bool = True) -> dict:
    """The TEP table for ganwatch's models and PCA T²/Q; ``faults`` limits the fault files;
    ``ablate`` adds the ablation table of ``ABLATED``."""
    files = {n: p for n, p in fault_files().items() if faults is None or n in faults}
    train_table = read(TEP / "train.csv")
    tests = {"normal": read(TEP / "normal_test.csv"), **{n: read(p) for n, p in files.items()}}
    out: dict = {}

    started = time.perf_counter()
    pca = PcaReference.fit(train_table.values)
    pca_s = time.perf_counter() - started
    ref = {name: {key: pca.flags(t.values)[name] for key, t in tests.items()}
           for name in ("pca-t2", "pca-q")}
    for name, flags in ref.items():
        out[name] = {**tep_rates(flags["normal"], {n: flags[n] for n in files}),
                     "components": pca.components, "train_seconds": round(pca_s, 3)}

    for kind in models:
        config = config_for(kind, overrides)
        result, train_s = fit(train_table.row_ts_ms(), train_table.values, train_table.channels,
                              config)
        started = time.perf_counter()
        scored = {key: model_scored(result, config, t.row_ts_ms(), t.values)
                  for key, t in tests.items()}
        flags = {key: f for key, (f, _) in scored.items()}
        normal_over = [scored["normal"][1][SKIP:]] + [scored[n][1][SKIP:ONSET] for n in files]
        out[kind] = {**tep_rates(flags["normal"], {n: flags[n] for n in files}),
                     **target_check([result.threshold.false_alarm_target], normal_over),
                     "train_seconds": round(train_s, 2),
                     "score_seconds": round(time.perf_counter() - started, 2)}
        if ablate and kind == ABLATED:
            keys = list(tests)
            variants = ablation_flags(result, config, train_table.row_ts_ms(), train_table.values,
                                      [(tests[k].row_ts_ms(), tests[k].values) for k in keys])
            ablation = {}
            for name, per in variants.items():
                by = dict(zip(keys, per))
                ablation[name] = tep_rates(by["normal"], {n: by[n] for n in files})
            out["ablation"] = ablation
        log.info("tep %s: FAR %s %%, mean FDR %s %%", kind, out[kind]["far_pct"],
                 out[kind]["mean_fdr_pct"])
    return {"protocol": "fit train.csv; FDR rows 160..959; FAR normal_test + rows < 160; "
                        "rows < 31 left out", "faults": sorted(files), "detectors": out}
