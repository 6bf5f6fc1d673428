"""The fleet side of the API: a table whose entity column says which asset each row is from.

Training takes the first ``train_rows`` rows *of each entity* (``fleet_training_rows``);
``training.fleet`` then builds each entity's windows apart and stores each entity's baseline.
Scoring runs each entity's rows alone through the worker's stream and alert rules
(``detector.fleet``) and returns them in input order. How a fleet model judges an entity it was
trained on, and one it was not, is ``detector.baseline``'s rule.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from connectors.file import DataError, Table
from detector.fleet import entity_alerts, group_rows, score_entities
from detector.offline import SeriesAlerts, SeriesScores
from detector.stream import StreamConfig

if TYPE_CHECKING:
    from detector.artifact import Artifact

log = logging.getLogger("ganwatch")


def fleet_training_rows(entities: np.ndarray, train_rows: int | None, need: int, name: str
                        ) -> tuple[np.ndarray, int]:
    """(mask of the rows to train on, their count): each entity's first ``train_rows`` rows,
    in input order. Refuses a fleet in which no entity has ``need`` rows."""
    keep = np.zeros(len(entities), dtype=bool)
    longest = 0
    for rows in group_rows(entities).values():
        chosen = rows if train_rows is None else rows[:train_rows]
        keep[chosen] = True
        longest = max(longest, len(chosen))
    if longest < need:
        raise DataError(f"{name}: no entity has {need} training rows (the most is {longest}), "
                        f"needed for fitting plus held-back calibration windows")
    return keep, int(keep.sum())


def run_fleet(artifact: Artifact, table: Table, stream: StreamConfig, alert_mode: str,
              episode_end_windows: int) -> tuple[SeriesScores, SeriesAlerts]:
    """Score each entity's rows alone, as the worker does; scores and flags in input order."""
    assert table.entities is not None
    detector, threshold = artifact.detector, artifact.threshold
    ts_ms = table.row_ts_ms()
    scored, groups = score_entities(detector, threshold, ts_ms, table.values, table.entities,
                                    stream)
    if scored.stats.duplicates:
        log.warning("skipped %d of %d rows whose timestamp repeats or goes back within their "
                    "entity (no score)", scored.stats.duplicates, len(ts_ms))
    baselines = detector.baselines
    if baselines is not None:
        new = [e for e in groups if e not in baselines]
        if new:
            log.info("%d of %d entities are not among the model's trained ones and are judged by "
                     "shape only: %s", len(new), len(groups), ", ".join(new[:10]))
    alerts = entity_alerts(scored, ts_ms, groups, list(detector.channels), threshold,
                           str(artifact.meta["model_version"]), alert_mode, episode_end_windows)
    return scored, alerts
