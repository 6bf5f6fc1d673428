"""The rules of the API's and the CLI's options (the CLI's messages, as ``DataError``), and how
data reaches the API: a file, or a DataFrame."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from connectors.file import DataError, Table, frame_table, read_frame
from detector.alert import ALERT_MODES
from training.config import TrainConfig

FRAME = "frame"  # stands for the file name in the messages about a DataFrame


def split_names(names: str | Sequence[str] | None) -> list[str] | None:
    """Column names from a list, or from comma-separated text as the CLI takes them."""
    if isinstance(names, str):
        names = names.split(",")
    found = [str(c).strip() for c in names or () if str(c).strip()]
    return found or None


def positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise DataError(f"{name} must be positive, got {value}")


def check_max_gap(max_gap_s: float | None) -> None:
    if max_gap_s is not None and not max_gap_s >= 0:
        raise DataError(f"--max-gap-s must be 0 (never) or positive, got {max_gap_s}")


def check_score_options(stride: int, max_gap_s: float | None, alert_mode: str,
                        episode_end_windows: int) -> None:
    """The scoring options' rules, before any model or data is read."""
    if stride < 1:
        raise DataError(f"--stride must be at least 1, got {stride}")
    check_max_gap(max_gap_s)
    if episode_end_windows < 1:
        raise DataError(f"--episode-end-windows must be at least 1, got {episode_end_windows}")
    if alert_mode not in ALERT_MODES:
        raise DataError(f"--alert-mode must be one of {', '.join(ALERT_MODES)}, got {alert_mode!r}")


def read_data(data: Any, *, sep: str | None = None, timestamp: str | None = None,
              channels: Sequence[str] | None = None, exclude: Sequence[str] = (),
              label_column: str | None = None, entity: str | None = None,
              default_entity: str | None = None) -> tuple[Table, str | None]:
    """A file (CSV or Parquet, as the CLI reads it) or a DataFrame as a ``Table``, and the
    timestamp column it used. A DataFrame without ``timestamp`` takes its DatetimeIndex. The
    entity column is ``entity``, else ``default_entity`` where the data has that column."""
    if isinstance(data, pd.DataFrame):
        frame = data
    else:
        frame = read_frame(data, sep=sep, timestamp_column=timestamp,
                           entity_column=entity or default_entity)
    if not entity and default_entity and default_entity in map(str, frame.columns):
        entity = default_entity
    options = dict(channels=channels, exclude_columns=exclude, label_column=label_column,
                   entity_column=entity)
    if not isinstance(data, pd.DataFrame):
        return frame_table(frame, str(data), timestamp_column=timestamp, **options), timestamp
    if timestamp is None and isinstance(frame.index, pd.DatetimeIndex):
        timestamp = frame.index.name
        column = "timestamp" if timestamp is None else str(timestamp)
        if column in map(str, frame.columns):
            raise DataError(f"{FRAME}: the DatetimeIndex {column!r} is also a column; pass "
                            f"timestamp={column!r} or rename one")
        frame = frame.reset_index(names=column)
        return frame_table(frame, FRAME, timestamp_column=column, **options), timestamp
    return frame_table(frame, FRAME, timestamp_column=timestamp, **options), timestamp


def data_name(data: Any) -> str:
    return FRAME if isinstance(data, pd.DataFrame) else str(data)


def train_config(*, window: int, epochs: int, model: str, device: str, seed: int,
                 batch_size: int | None, hidden: int, latent: int, lr: float,
                 max_gap_s: float | None, torch_threads: int,
                 sample_budget: int, threshold_margin: float | None, false_alarm_target: float,
                 train_rows: int | None, contamination: float) -> TrainConfig:
    """The options' rules (the CLI's messages), then the ``TrainConfig`` they make. A given
    ``batch_size`` is used for short and long histories alike; None keeps both defaults."""
    for name, value in (("--window", window), ("--epochs", epochs), ("--batch-size", batch_size),
                        ("--hidden", hidden), ("--latent", latent), ("--lr", lr)):
        positive(name, value)
    positive("--train-rows", train_rows)
    positive("--sample-budget", sample_budget)
    check_max_gap(max_gap_s)
    if torch_threads < 0:
        raise DataError(f"--torch-threads must be 0 (torch's default) or more, got {torch_threads}")
    if threshold_margin is not None and not threshold_margin >= 0:
        raise DataError(f"--threshold-margin must be 0 or more, got {threshold_margin}")
    if not 0 < false_alarm_target < 1:
        raise DataError(f"--false-alarm-target must lie between 0 and 1 (a share of normal "
                        f"windows, e.g. 0.001), got {false_alarm_target}")
    if not 0 <= contamination < 0.5:
        raise DataError(f"--contamination must lie in [0, 0.5) (a share of held-back stretches "
                        f"that may hold incidents, 0 = none), got {contamination}")
    batches = {} if batch_size is None else {"batch_size": batch_size,
                                             "long_batch_size": batch_size}
    return TrainConfig(
        model=model, window=window, epochs=epochs, device=device, seed=seed, **batches,
        hidden=hidden, latent=latent, lr=lr,
        max_gap_ms=None if max_gap_s is None else int(max_gap_s * 1000),
        threshold_margin=threshold_margin, false_alarm_target=false_alarm_target,
        contamination=contamination, torch_threads=torch_threads, sample_budget=sample_budget,
    )
