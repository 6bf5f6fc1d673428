"""PNG reports: training curves and score histogram; channels, scores and anomalies of a file.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot, so
importing or calling this module changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
WIDTH_IN = 12.0
TRAINING_HEIGHT_IN = 4.0
CHANNEL_PANEL_IN = 1.1
SCORE_PANEL_IN = 2.0
MARGIN_IN = 0.8  # suptitle and the x-axis labels of the last panel


def training_report_size() -> tuple[int, int]:
    """Pixel size of ``plot_training_report``'s PNG."""
    return round(WIDTH_IN * DPI), round(TRAINING_HEIGHT_IN * DPI)


def evaluation_size(n_channels: int, max_channels: int = 8) -> tuple[int, int]:
    """Pixel size of ``plot_evaluation``'s PNG for ``n_channels`` channels."""
    shown = min(n_channels, max_channels)
    return round(WIDTH_IN * DPI), round(_evaluation_height(shown) * DPI)


def _evaluation_height(shown: int) -> float:
    return shown * CHANNEL_PANEL_IN + SCORE_PANEL_IN + MARGIN_IN


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": the PNG keeps the size the figure was given.
    fig.savefig(target, dpi=DPI, format="png")
    return target


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def plot_training_report(
    path: str | os.PathLike, history: Mapping[str, Sequence[float]], train_scores: np.ndarray,
    calib_scores: np.ndarray, threshold: float,
) -> Path:
    """Loss curves per epoch (one line per ``history`` key) beside a histogram of the
    training and calibration scores with the threshold as a vertical line."""
    fig = Figure(figsize=(WIDTH_IN, TRAINING_HEIGHT_IN), dpi=DPI, layout="constrained")
    loss_ax, hist_ax = fig.subplots(1, 2)
    for key, losses in history.items():
        losses = np.asarray(losses, dtype=np.float64)
        marker = "o" if len(losses) < 30 else None
        loss_ax.plot(np.arange(1, len(losses) + 1), losses, marker=marker, markersize=3, label=key)
    if history:
        loss_ax.legend(fontsize="small")
    else:
        loss_ax.text(0.5, 0.5, "no training history", ha="center", va="center",
                     transform=loss_ax.transAxes)
    loss_ax.set(title="losses per epoch", xlabel="epoch", ylabel="loss")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.grid(alpha=0.3)

    train, calib = _finite(train_scores), _finite(calib_scores)
    both = np.concatenate([train, calib, [float(threshold)]])
    bins = np.histogram_bin_edges(both, bins=50)
    if train.size:
        hist_ax.hist(train, bins=bins, alpha=0.6, label=f"training ({train.size})")
    if calib.size:
        hist_ax.hist(calib, bins=bins, alpha=0.6, label=f"calibration ({calib.size})")
    hist_ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    hist_ax.set(title="window scores", xlabel="score", ylabel="windows")
    hist_ax.legend(fontsize="small")
    return _save(fig, path)


def _shade(ax: Axes, x: np.ndarray, mask: np.ndarray, **style) -> None:
    """Shade the x-ranges where ``mask`` is true across the whole height of ``ax``."""
    if mask.any():
        ax.fill_between(x, 0, 1, where=mask, step="mid", transform=ax.get_xaxis_transform(),
                        linewidth=0, **style)


def plot_evaluation(
    path: str | os.PathLike, x: np.ndarray, values: np.ndarray, channels: Sequence[str],
    scores: np.ndarray, threshold: float, labels: np.ndarray | None = None,
    flags: np.ndarray | None = None, max_channels: int = 8,
) -> Path:
    """One small panel per channel (true anomalies shaded), then the score panel with the
    threshold and the flagged rows marked. ``x`` is datetime64 timestamps or row numbers."""
    x = np.asarray(x)
    values = np.asarray(values, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(channels):
        raise ValueError(f"values of shape {values.shape} need one column per channel "
                         f"({len(channels)})")
    if not len(x) == len(values) == len(scores):
        raise ValueError(f"lengths differ: {len(x)} x, {len(values)} rows, {len(scores)} scores")
    shown = min(len(channels), max_channels)
    fig = Figure(figsize=(WIDTH_IN, _evaluation_height(shown)), dpi=DPI, layout="constrained")
    axes = fig.subplots(shown + 1, 1, sharex=True,
                        height_ratios=[CHANNEL_PANEL_IN] * shown + [SCORE_PANEL_IN],
                        squeeze=False)[:, 0]
    truth = np.asarray(labels).astype(bool) if labels is not None else None
    for j in range(shown):
        ax = axes[j]
        ax.plot(x, values[:, j], linewidth=0.8)
        if truth is not None:
            _shade(ax, x, truth, color="orange", alpha=0.25)
        ax.set_ylabel(channels[j], rotation=0, ha="right", va="center", fontsize="small")
        ax.tick_params(labelsize="x-small")
    title = "channels, score and anomalies"
    if shown < len(channels):
        title += f" (first {shown} of {len(channels)} channels)"
    fig.suptitle(title)

    ax = axes[-1]
    ax.plot(x, scores, linewidth=0.8, color="black", label="score")
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1,
               label=f"threshold {threshold:.4g}")
    if truth is not None:
        _shade(ax, x, truth, color="orange", alpha=0.25, label="true anomaly")
    if flags is not None:
        hit = np.asarray(flags).astype(bool) & ~np.isnan(scores)
        if hit.any():
            ax.scatter(x[hit], scores[hit], s=8, color="red", zorder=3, label="flagged")
    ax.set_ylabel("score")
    ax.legend(fontsize="x-small", loc="upper left")
    return _save(fig, path)
