"""Training time with and without a concurrent training process beside it (``load``).

Two measurements, both with ``ganwatch train``'s defaults: one SKAB valve1 file (its first 400
rows), and issue #9's budget file, a synthetic 20,000-row, 8-channel series (8 noisy sines,
1 s apart) that should train in at most ``TARGET_SECONDS`` on 2 CPU cores. Each one trains
alone, then again while a second process trains the same rows in a loop."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from bench import skab
from bench.quality import config_for, fit
from training.trainer import TrainConfig, train

BUDGET_ROWS, BUDGET_CHANNELS = 20_000, 8
TARGET_SECONDS = 60.0  # issue #9: a 20,000-row, 8-channel file on 2 CPU cores

Rows = tuple[np.ndarray, np.ndarray, list[str]]


def skab_rows(path: Path) -> Rows:
    """The rows one SKAB file's model trains on in the quality bench (its first 400)."""
    table = skab.read_file(path)
    n = skab.TRAIN_ROWS
    return table.row_ts_ms()[:n], table.values[:n], table.channels


def budget_rows(rows: int) -> Rows:
    """``rows`` readings, 1 s apart, of 8 sines (periods 40-180 s) with Gaussian noise."""
    rng = np.random.default_rng(0)
    t = np.arange(rows, dtype=np.float64)
    periods = np.linspace(40.0, 180.0, BUDGET_CHANNELS)
    phases = rng.uniform(0, 2 * np.pi, BUDGET_CHANNELS)
    values = np.sin(2 * np.pi * t[:, None] / periods + phases)
    values += 0.1 * rng.standard_normal(values.shape)
    ts_ms = 1_767_225_600_000 + 1000 * np.arange(rows, dtype=np.int64)  # 2026-01-01, 1 s apart
    return ts_ms, values, [f"c{i}" for i in range(BUDGET_CHANNELS)]


def _train_forever(rows: Rows, config: TrainConfig, started, stop) -> None:
    """Background load: train the same rows again and again until ``stop`` is set."""
    started.set()
    while not stop.is_set():
        train(*rows, config)


def alone_and_loaded(rows: Rows, config: TrainConfig) -> dict:
    """Seconds of ``train`` on ``rows`` alone, then beside a second process training the same
    rows; ``epoch_seconds_*`` is the networks' part (``train_seconds`` in the artifact)."""
    alone, alone_s = fit(*rows, config)
    ctx = mp.get_context("spawn")
    started, stop = ctx.Event(), ctx.Event()
    worker = ctx.Process(target=_train_forever, args=(rows, config, started, stop))
    worker.start()
    try:
        if not started.wait(timeout=120):
            raise RuntimeError("the load process did not start training within 120 s")
        loaded, loaded_s = fit(*rows, config)
    finally:
        stop.set()
        worker.join(timeout=300)
        if worker.is_alive():
            worker.terminate()
            worker.join()
    return {"torch_threads": config.torch_threads, "epochs": alone.metrics["epochs"],
            "windows_per_epoch": alone.metrics["windows_per_epoch"],
            "train_seconds_alone": round(alone_s, 2), "train_seconds_loaded": round(loaded_s, 2),
            "epoch_seconds_alone": alone.metrics["train_seconds"],
            "epoch_seconds_loaded": loaded.metrics["train_seconds"],
            "slowdown": round(loaded_s / alone_s, 2) if alone_s else None}


def run(skab_file: Path, budget_size: int = BUDGET_ROWS, kind: str = "lstm-gan",
        overrides: dict | None = None) -> dict:
    """The SKAB file's figures at the top level; under ``budget``, those of a budget file of
    ``budget_size`` rows."""
    config = config_for(kind, overrides)
    out = {"file": f"{skab_file.parent.name}/{skab_file.name}", "model": kind,
           **alone_and_loaded(skab_rows(skab_file), config)}
    budget = alone_and_loaded(budget_rows(budget_size), config)
    out["budget"] = {"rows": budget_size, "channels": BUDGET_CHANNELS,
                     "target_seconds": TARGET_SECONDS, **budget,
                     "within_target": max(budget["train_seconds_alone"],
                                          budget["train_seconds_loaded"]) <= TARGET_SECONDS}
    return out
