"""The Python API: ``fit``, ``load`` and ``Model.score``, the code ``ganwatch train`` and ``score``
run (``ganwatch.offline_cli`` is a thin layer over it).

Every option of ``ganwatch train`` is a keyword argument of ``fit`` with the same name (underscores
for dashes) and the same default, taken from ``TrainConfig``; the data options are ``timestamp``,
``channels``, ``exclude`` and ``entity`` (the entity column of a fleet file, see
``ganwatch.fleet``). Bad input raises ``connectors.file.DataError`` with the CLI's message.
torch is imported only when a model is trained or loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from connectors.file import DataError, Table
from detector.alert import DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS
from detector.offline import SeriesAlerts, SeriesScores, score_series, series_alerts
from detector.stream import StreamConfig
from ganwatch.extra import installed
from ganwatch.fleet import fleet_training_rows, run_fleet
from ganwatch.option import (
    check_score_options, data_name, read_data, split_names, train_config,
)
from training.config import TrainConfig

if TYPE_CHECKING:
    from detector.artifact import Artifact
    from training.trainer import TrainResult

__all__ = ["DataError", "Model", "fit", "load"]

log = logging.getLogger("ganwatch")  # the CLI's logger: its lines read as before
DEFAULTS = TrainConfig()
Progress = Callable[[int, dict[str, float]], None]


@dataclass
class Training:
    """What only a freshly trained model has: the result, its config and the artifact metadata."""

    result: TrainResult
    config: TrainConfig
    extra: dict[str, Any]
    rows: int


class Model:
    """A trained model, as the artifact of ``ganwatch train`` loads (strictly)."""

    def __init__(self, artifact: Artifact, training: Training | None = None,
                 source: Path | None = None) -> None:
        self.artifact = artifact
        self.training = training
        self._source = source  # the directory it was loaded from

    @property
    def channels(self) -> list[str]:
        return list(self.artifact.detector.channels)

    @property
    def window(self) -> int:
        return int(self.artifact.detector.window)

    @property
    def threshold(self) -> float:
        return float(self.artifact.threshold.value)

    @property
    def false_alarm_target(self) -> float | None:
        """The share of normal windows its threshold rule allows above the threshold (``None``
        for artifacts written before the rule stated it)."""
        return self.artifact.threshold.false_alarm_target

    @property
    def model_version(self) -> str:
        return str(self.artifact.meta["model_version"])

    @property
    def meta(self) -> dict[str, Any]:
        return self.artifact.meta

    @property
    def entity_column(self) -> str | None:
        """The entity column it was trained with (a fleet model), else None."""
        return self.meta.get("entity_column")

    @property
    def entities(self) -> list[str]:
        """The entities it was trained on, each judged against its own baseline; empty for a
        model trained without an entity column."""
        baselines = self.artifact.detector.baselines
        return [] if baselines is None else list(baselines.names)

    def __repr__(self) -> str:
        return (f"Model({self.model_version}, channels={self.channels}, window={self.window}, "
                f"threshold={self.threshold:.4g})")

    def read(self, data: Any, *, sep: str | None = None, timestamp: str | None = None,
             label_column: str | None = None, entity: str | None = None) -> Table:
        """The model's channels from ``data``; the timestamp from ``timestamp``, else the model's
        timestamp column, else a DataFrame's DatetimeIndex; the entity column ``entity``, else the
        model's where ``data`` has it."""
        column = timestamp or self.meta.get("timestamp_column")
        if isinstance(data, pd.DataFrame) and not timestamp and (
                column not in map(str, data.columns)) and isinstance(data.index, pd.DatetimeIndex):
            column = None
        table, _ = read_data(data, sep=sep, timestamp=column, channels=self.channels,
                             label_column=label_column, entity=entity,
                             default_entity=self.entity_column)
        if len(table.values) < self.window:
            raise DataError(f"{data_name(data)}: {len(table.values)} rows, fewer than the window "
                            f"of {self.window}")
        return table

    def run(self, table: Table, *, stride: int = 1, max_gap_s: float | None = None,
            alert_mode: str = DEFAULT_ALERT_MODE,
            episode_end_windows: int = DEFAULT_END_WINDOWS) -> tuple[SeriesScores, SeriesAlerts]:
        """Score a table's rows and run the verdicts through the worker's alert rules."""
        detector, threshold = self.artifact.detector, self.artifact.threshold
        stream = StreamConfig(self.window, stride, self.artifact.max_gap_ms(max_gap_s))
        if table.entities is not None:
            return run_fleet(self.artifact, table, stream, alert_mode, episode_end_windows)
        if detector.baselines is not None:
            log.warning("the model was trained on a fleet (entity column %r) but these rows have "
                        "no entity column: they are scored as one entity it has not seen, by "
                        "shape only", self.entity_column)
        ts_ms = table.row_ts_ms()
        scored = score_series(detector, threshold, ts_ms, table.values, stream)
        if scored.stats.duplicates:
            log.warning("skipped %d of %d rows whose timestamp repeats or goes back (no score)",
                        scored.stats.duplicates, len(ts_ms))
        alerts = series_alerts(scored, ts_ms, self.channels, threshold, self.model_version,
                               alert_mode, episode_end_windows)
        return scored, alerts

    def score(self, data: Any, *, timestamp: str | None = None, sep: str | None = None,
              stride: int = 1, contributions: bool = False, alert_mode: str = DEFAULT_ALERT_MODE,
              episode_end_windows: int = DEFAULT_END_WINDOWS,
              max_gap_s: float | None = None, entity: str | None = None) -> pd.DataFrame:
        """One row per input row, indexed as the input: ``score`` (NaN where no window ends),
        ``is_anomaly`` (0/1, as ``ganwatch score`` writes it), and ``contrib_<channel>`` when
        ``contributions``. With an entity column (``entity``, else the model's where the data
        has it) each entity's rows are scored alone, as the worker scores them."""
        check_score_options(stride, max_gap_s, alert_mode, episode_end_windows)
        table = self.read(data, sep=sep, timestamp=timestamp, entity=entity)
        scored, alerts = self.run(table, stride=stride, max_gap_s=max_gap_s, alert_mode=alert_mode,
                                  episode_end_windows=episode_end_windows)
        has = ~np.isnan(scored.scores)
        out = pd.DataFrame({"score": scored.scores,
                            "is_anomaly": np.where(has, alerts.flags, 0).astype(np.int64)},
                           index=data.index if isinstance(data, pd.DataFrame) else None)
        if contributions:
            for j, ch in enumerate(self.channels):
                out[f"contrib_{ch}"] = np.where(has, scored.contributions[:, j], np.nan)
        return out

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the artifact ``ganwatch train --out`` writes (with ``report.png`` when the plots
        extra is installed); a loaded model copies its files."""
        write_artifact(self, directory)
        return Path(directory)


def write_artifact(model: Model, directory: str | os.PathLike[str]
                   ) -> tuple[dict[str, Any], Path | None]:
    """Save ``model``; return its metadata and the training report written, if any."""
    target = Path(directory)
    if model.training is None:
        from detector.artifact import META, WEIGHTS

        if model._source is None:
            raise ValueError("this model has neither training results nor a directory to copy")
        target.mkdir(parents=True, exist_ok=True)
        names = [WEIGHTS, META] + (["report.png"] if (model._source / "report.png").is_file() else [])
        for name in names:  # weights before model.json, as a reload watcher expects
            if (model._source / name).resolve() != (target / name).resolve():
                shutil.copyfile(model._source / name, target / name)
        return model.meta, target / "report.png" if "report.png" in names else None
    t = model.training
    meta = t.result.save(target, t.extra)
    if not installed("plots"):
        log.info("no report.png: plotting needs the plots extra (pip install 'ganwatch[plots]')")
        return meta, None
    from training.report import plot_training_report

    report = target / "report.png"
    plot_training_report(report, t.result.history, t.result.train_scores, t.result.calib_scores,
                         t.result.threshold.value)
    return meta, report


def load(directory: str | os.PathLike[str], device: str = "auto") -> Model:
    """Load an artifact as strictly as ``ganwatch score``: ``detector.artifact.ArtifactError``
    (a ``ValueError``) on anything missing, unexpected or mis-shaped."""
    from detector.artifact import load_artifact

    return Model(load_artifact(directory, device=device), source=Path(directory))


def fit(
    data: Any, *, timestamp: str | None = None, channels: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None, sep: str | None = None,
    train_rows: int | None = None, window: int = DEFAULTS.window, epochs: int = DEFAULTS.epochs,
    model: str = DEFAULTS.model, device: str = DEFAULTS.device, seed: int = DEFAULTS.seed,
    batch_size: int | None = None, hidden: int = DEFAULTS.hidden,
    latent: int = DEFAULTS.latent, lr: float = DEFAULTS.lr, max_gap_s: float | None = None,
    torch_threads: int = DEFAULTS.torch_threads, sample_budget: int = DEFAULTS.sample_budget,
    false_alarm_target: float = DEFAULTS.false_alarm_target,
    threshold_margin: float | None = DEFAULTS.threshold_margin,
    contamination: float = DEFAULTS.contamination, no_progress: bool = False,
    entity: str | None = None, progress: Progress | None = None,
) -> Model:
    """Train on normal rows of ``data`` (a DataFrame, or a CSV/Parquet path) exactly as
    ``ganwatch train`` does; the same rows, options and seed give the same model.

    The timestamp is the ``timestamp`` column, else a DataFrame's DatetimeIndex, else none (rows
    1 s apart). Channels are ``channels``, else every numeric column not in ``exclude``.
    ``entity`` names the column that says which asset each row is from (a fleet): ``train_rows``
    then counts per entity and each entity keeps its own operating point (``detector.baseline``).
    ``progress``, when given, is called after every epoch instead of the bar. ``batch_size``:
    None gives ``TrainConfig``'s (32, or 64 where the sample budget cuts epochs); a number is used
    for every history.
    """
    config = train_config(window=window, epochs=epochs, model=model, device=device, seed=seed,
                          batch_size=batch_size, hidden=hidden, latent=latent, lr=lr,
                          max_gap_s=max_gap_s, torch_threads=torch_threads,
                          sample_budget=sample_budget, threshold_margin=threshold_margin,
                          false_alarm_target=false_alarm_target, train_rows=train_rows,
                          contamination=contamination)
    if entity is not None and not str(entity).strip():
        raise DataError("--entity-column must name a column, got an empty name")
    table, ts_column = read_data(data, sep=sep, timestamp=timestamp,
                                 channels=split_names(channels), exclude=split_names(exclude) or (),
                                 entity=entity)
    need = 2 * window + 8
    if table.entities is None:
        n = len(table.values)
        rows = n if train_rows is None else min(train_rows, n)
        keep, entities = slice(0, rows), None
    else:
        keep, rows = fleet_training_rows(table.entities, train_rows, need, data_name(data))
        entities = table.entities[keep]
    if rows < need:
        raise DataError(
            f"{data_name(data)}: {rows} training rows, need at least {need} for a window of "
            f"{window} (fitting plus held-back calibration windows)"
        )
    from detector.artifact import load_artifact
    from training.trainer import train

    ts_ms = table.row_ts_ms()[keep]
    values = table.values[keep]
    with progress_bar(config, no_progress) as bar:
        result = train(ts_ms, values, table.channels, config, progress=progress or bar,
                       entities=entities)
    training_data = {"path": None if isinstance(data, pd.DataFrame) else str(data),
                     "rows": rows, "fingerprint": fingerprint(ts_ms, values, entities)}
    extra = {"timestamp_column": ts_column, "hyperparameters": config.to_dict(),
             "training_data": training_data, "training_metrics": result.metrics}
    if entities is not None:
        extra["entity_column"] = entity
        training_data["train_rows_per_entity"] = train_rows
    with tempfile.TemporaryDirectory(prefix="ganwatch-") as tmp:
        # loaded back from its own artifact: scored exactly as `ganwatch score` will score it
        result.save(tmp, extra)
        artifact = load_artifact(tmp, device=device)
    return Model(artifact, Training(result, config, extra, rows))


@contextlib.contextmanager
def progress_bar(config: TrainConfig, no_progress: bool = False) -> Iterator[Progress]:
    """A bar on a terminal, else a log line per epoch; at most ``config.epochs`` (the sample
    budget may end training sooner, and the bar closes then)."""
    if no_progress or not sys.stderr.isatty():
        yield lambda epoch, losses: log.info("epoch %d (at most %d) %s", epoch, config.epochs,
                                             losses)
        return
    from tqdm import tqdm

    with tqdm(total=config.epochs, desc=f"training {config.model}", unit="epoch") as bar:
        def update(epoch: int, losses: dict[str, float]) -> None:
            bar.set_postfix({k[:6]: f"{v:.3g}" for k, v in losses.items()})
            bar.update(1)

        yield update


def fingerprint(ts_ms: np.ndarray, values: np.ndarray, entities: np.ndarray | None = None) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(ts_ms, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    if entities is not None:
        digest.update("\n".join(entities.tolist()).encode("utf-8"))
    return "sha256:" + digest.hexdigest()
