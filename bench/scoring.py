"""Pure batched model scoring rate (windows/s) at several batch sizes, on the default model shape."""

from __future__ import annotations

import time

import numpy as np
import torch

from detector.level import LevelModel
from detector.model import LstmGanDetector, ModelSpec, resolve_device
from detector.network import Networks, NetworkShape
from detector.scaler import StandardScaler
from detector.term import CriticTerm, ErrorTerm, FlatTerm, WindowScore
from training.trainer import TrainConfig

N_CHANNELS = 8


def default_detector(device: str = "cpu") -> LstmGanDetector:
    """A detector with the default architecture; scoring speed does not depend on the weights."""
    cfg = TrainConfig()
    torch.manual_seed(0)
    nets = Networks(NetworkShape(cfg.model, N_CHANNELS, cfg.window, cfg.hidden, cfg.latent))
    scaler = StandardScaler(np.zeros(N_CHANNELS), np.ones(N_CHANNELS))
    slow = np.zeros(N_CHANNELS, dtype=bool)
    slow[:2] = True  # one explained by the others, one on its own: every scoring path is exercised
    coef = np.zeros((2 * N_CHANNELS, N_CHANNELS))
    coef[2, 0] = 1.0
    level = LevelModel(coef, np.zeros(N_CHANNELS), np.array([True] + [False] * (N_CHANNELS - 1)),
                       np.full(N_CHANNELS, np.nan))
    score = WindowScore(ErrorTerm(0.0, 1.0, bias_weight=cfg.bias_weight),
                        CriticTerm(0.0, 1.0, cfg.critic_weight),
                        FlatTerm((-1.0,) * N_CHANNELS, (0.1,) * N_CHANNELS, cfg.flat_weight))
    spec = ModelSpec([f"c{i}" for i in range(N_CHANNELS)], nets.shape, scaler, slow, True, level,
                     score)
    return LstmGanDetector(nets, spec, "bench", device=device)


def rate(detector: LstmGanDetector, batch: int, seconds: float = 2.0) -> float:
    windows = np.random.default_rng(0).normal(size=(batch, detector.window, N_CHANNELS))
    detector.score(windows)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        detector.score(windows)
        done += batch
    return done / (time.perf_counter() - started)


def run(batches: tuple[int, ...] = (1, 64, 512, 4096), device: str = "auto") -> dict:
    dev = resolve_device(device)
    detector = default_detector(str(dev))
    out = {"device": str(dev), "torch_threads": torch.get_num_threads(), "window": detector.window,
           "channels": N_CHANNELS, "windows_per_second": {}}
    for b in batches:
        out["windows_per_second"][str(b)] = round(rate(detector, b), 1)
    best = max(out["windows_per_second"].items(), key=lambda kv: kv[1])
    out["best"] = {"batch": int(best[0]), "windows_per_second": best[1]}
    return out
