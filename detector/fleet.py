"""A fleet file offline: rows of many entities, each entity scored alone, as the worker would.

The rows of each entity keep their file order and go through the stream rules on their own
(duplicates, out-of-order rows and gaps are judged per entity), so no window spans two entities and
an entity scores exactly as a file of its rows alone would. Results come back in input order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from detector.alert import EPISODE
from detector.offline import (
    SeriesAlerts, SeriesScores, episode_rows, score_series, series_alerts,
)
from detector.score import Detector, Threshold
from detector.stream import AdvanceStats, StreamConfig


def group_rows(entities: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
    """Row indices per entity, entities in order of first appearance, rows in input order."""
    names, first, codes = np.unique(np.asarray(entities, dtype=object), return_index=True,
                                    return_inverse=True)
    order = np.argsort(codes, kind="stable")
    rows = np.split(order, np.cumsum(np.bincount(codes, minlength=len(names)))[:-1])
    return {str(names[i]): rows[i] for i in np.argsort(first, kind="stable")}


def score_entities(
    detector: Detector, threshold: Threshold, ts_ms: np.ndarray, values: np.ndarray,
    entities: Sequence[str] | np.ndarray, stream: StreamConfig,
) -> tuple[SeriesScores, dict[str, np.ndarray]]:
    """``score_series`` of each entity's rows, put back in input order; also the row groups."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n, c = values.shape
    out = SeriesScores(np.full(n, np.nan), np.zeros(n, dtype=np.int64), np.full((n, c), np.nan),
                       AdvanceStats(), np.full(n, -1, dtype=np.int64))
    groups = group_rows(entities)
    for entity, rows in groups.items():
        part = score_series(detector, threshold, ts_ms[rows], values[rows], stream, entity)
        out.scores[rows], out.flags[rows] = part.scores, part.flags
        out.contributions[rows], out.starts_ms[rows] = part.contributions, part.starts_ms
        out.stats.add(part.stats)
    return out, groups


def entity_alerts(
    scored: SeriesScores, ts_ms: np.ndarray, groups: dict[str, np.ndarray],
    channels: list[str], threshold: Threshold, model_version: str, mode: str = EPISODE,
    end_windows: int = 5,
) -> SeriesAlerts:
    """The worker's alert rules per entity: all alerts (entity by entity) with the row flags in
    input order, each entity's own ``SeriesAlerts`` in ``by_entity``."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    flags = np.zeros(len(scored.scores), dtype=np.int64)
    alerts: list[dict] = []
    parts: dict[str, SeriesAlerts] = {}
    for entity, rows in groups.items():
        part_scores = SeriesScores(scored.scores[rows], scored.flags[rows],
                                   scored.contributions[rows], AdvanceStats(),
                                   scored.starts_ms[rows])
        part = series_alerts(part_scores, ts_ms[rows], channels, threshold, model_version, mode,
                             end_windows, entity=entity)
        flags[rows] = part.flags
        alerts.extend(part.alerts)
        parts[entity] = part
    return SeriesAlerts(alerts, flags, {}, parts)


def entity_episode_rows(parts: dict[str, SeriesAlerts]) -> list[dict]:
    """``episode_rows`` of every entity, each row with its ``entity``."""
    return [{"entity": entity, **row} for entity, part in parts.items()
            for row in episode_rows(part)]
