"""A seeded learning test: a model trained on normal telemetry flags injected faults.

Faults (on fast channels; slow channels are judged by shape only, see detector.model):
spike, level shift, slow drift and stuck sensor (caught by the flat term of the score: the model
cannot rebuild sensor noise, so a frozen channel barely changes its reconstruction error). Bounds: every fault is detected (event recall 1),
and point-wise precision and recall, with a window of slack after each fault because a window
keeps a fault in view for ``window`` rows, stay above the stated floors.
"""

import numpy as np
import pytest

from detector.offline import score_series
from detector.stream import StreamConfig
from training.trainer import TrainConfig, train

CHANNELS = ["flow", "pressure", "current", "temperature"]
FAULTS = {  # kind: (start, end) rows in the test part
    "spike": (150, 154),
    "level_shift": (400, 480),
    "drift": (650, 760),
    "stuck": (900, 980),
}
PRECISION_FLOOR, RECALL_FLOOR = 0.8, 0.5


def telemetry(n: int, seed: int, start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + n)
    load = 0.6 * np.sin(2 * np.pi * t / 7) + 0.3 * rng.normal(size=n)
    return np.stack([
        20 + 3 * load + 0.3 * rng.normal(size=n),
        4 - 1.5 * load + 0.2 * rng.normal(size=n),
        10 + 2 * load + 0.4 * rng.normal(size=n),
        60 + 2 * np.sin(2 * np.pi * t / 3000) + 0.02 * rng.normal(size=n),
    ], axis=1)


def inject(values: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, labels = values.copy(), np.zeros(len(values), dtype=int)
    a, b = FAULTS["spike"]
    x[a:b, 0] += 8 * std[0]
    a, b = FAULTS["level_shift"]
    x[a:b, 1] += 3 * std[1]
    a, b = FAULTS["drift"]
    x[a:b, 2] += np.linspace(0, 5 * std[2], b - a)
    a, b = FAULTS["stuck"]
    x[a:b, 0] = x[a, 0]
    for a, b in FAULTS.values():
        labels[a:b] = 1
    return x, labels


@pytest.fixture(scope="module")
def scored():
    normal = telemetry(1500, seed=1)
    config = TrainConfig(epochs=8, seed=7)
    ts = 1000 * np.arange(1500, dtype=np.int64)
    result = train(ts, normal, CHANNELS, config)
    detector = result.detector("test", "cpu")
    live, labels = inject(telemetry(1100, seed=2, start=1500), normal.std(axis=0))
    live_ts = 1000 * np.arange(1500, 2600, dtype=np.int64)
    out = score_series(detector, result.threshold, live_ts, live, StreamConfig(config.window))
    return out, labels, config, result


def test_training_flags_the_slow_channel_only(scored):
    _, _, _, result = scored
    assert list(result.spec.slow) == [False, False, False, True]


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_is_detected(scored, kind):
    out, _, config, _ = scored
    a, b = FAULTS[kind]
    assert out.flags[a : b + config.window].any(), f"{kind} missed"


def test_precision_and_recall_above_floors(scored):
    out, labels, config, _ = scored
    flags = out.flags.astype(bool)
    slack = labels.astype(bool).copy()
    for a, b in FAULTS.values():
        slack[a : b + config.window] = True  # a window still sees the fault for W rows
    precision = (flags & slack).sum() / max(flags.sum(), 1)
    recall = (flags & labels.astype(bool)).sum() / labels.sum()
    assert precision >= PRECISION_FLOOR, f"precision {precision:.2f}"
    assert recall >= RECALL_FLOOR, f"recall {recall:.2f}"


def test_normal_stretch_stays_quiet(scored):
    out, _, config, _ = scored
    quiet = out.flags[config.window : FAULTS["spike"][0]]
    assert quiet.mean() <= 0.05
