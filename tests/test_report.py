"""The PNG reports are written, valid, and have the size the module promises."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from training.report import (
    evaluation_size, plot_evaluation, plot_training_report, training_report_size,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_training_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = plot_training_report(
        tmp_path / "report.png", {"critic": [1.0, 0.5, 0.3], "generator": [2.0, 1.0, 0.8]},
        rng.gamma(2.0, size=500), np.r_[rng.gamma(2.0, size=100), np.nan], threshold=6.0,
    )
    assert out == tmp_path / "report.png"
    assert out.stat().st_size > 10_000  # more than an empty canvas
    assert png_size(out) == training_report_size() == (1200, 400)


def test_training_report_without_history(tmp_path: Path) -> None:
    out = plot_training_report(tmp_path / "r.png", {}, np.array([1.0, 2.0]), np.array([]), 1.5)
    assert png_size(out) == training_report_size()


def test_evaluation_plot_with_timestamps(tmp_path: Path) -> None:
    n, channels = 300, ["a", "b", "c"]
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, 3))
    labels = np.zeros(n, dtype=int)
    labels[200:240] = 1
    scores = np.abs(rng.normal(size=n))
    scores[:20] = np.nan
    scores[205:230] += 5
    flags = np.where(np.nan_to_num(scores) > 3, 1, 0)
    x = (1_600_000_000_000 + 1000 * np.arange(n)).astype("datetime64[ms]")
    out = plot_evaluation(tmp_path / "eval.png", x, values, channels, scores, 3.0,
                          labels=labels, flags=flags)
    assert png_size(out) == evaluation_size(3)
    assert out.stat().st_size > 10_000


def test_evaluation_plot_caps_the_channel_panels(tmp_path: Path) -> None:
    n, c = 50, 12
    out = plot_evaluation(tmp_path / "many.png", np.arange(n), np.zeros((n, c)),
                          [f"ch{i}" for i in range(c)], np.linspace(0, 1, n), 0.5, max_channels=4)
    assert png_size(out) == evaluation_size(c, max_channels=4) == evaluation_size(4)
    assert evaluation_size(4)[1] < evaluation_size(8)[1]
