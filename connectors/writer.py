"""Score and episode files out: CSV, written next to the final name and renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def write_scores_csv(
    path: str | os.PathLike, timestamps: Sequence[str] | np.ndarray, scores: np.ndarray,
    flags: np.ndarray, contributions: np.ndarray | None = None,
    channels: Sequence[str] | None = None, entities: np.ndarray | None = None,
    entity_column: str = "entity",
) -> None:
    """Write ``timestamp,score,is_anomaly[,contrib_<channel>...]``, one row per input row; a fleet
    file's (``entities``) has its entity column second, under ``entity_column``.

    A row without a score (NaN: its window was not complete yet) has a blank score and
    ``is_anomaly`` 0. The file is written next to its final name and renamed into place.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    flags = np.asarray(flags)
    if len(timestamps) != n or len(flags) != n:
        raise ValueError(f"lengths differ: {len(timestamps)} timestamps, {n} scores, "
                         f"{len(flags)} flags")
    scored = ~np.isnan(scores)
    out = pd.DataFrame({
        "timestamp": np.asarray(timestamps, dtype=object),
        "score": scores,
        "is_anomaly": np.where(scored, flags, 0).astype(np.int64),
    })
    if entities is not None:
        if len(entities) != n:
            raise ValueError(f"lengths differ: {len(entities)} entities, {n} scores")
        out.insert(1, entity_column, np.asarray(entities, dtype=object))
    if contributions is not None:
        contributions = np.asarray(contributions, dtype=np.float64)
        if channels is None or contributions.shape != (n, len(channels)):
            raise ValueError(f"contributions of shape {contributions.shape} need {n} rows and "
                             "one column per channel name")
        for j, ch in enumerate(channels):
            out[f"contrib_{ch}"] = np.where(scored, contributions[:, j], np.nan)
    _write_atomic(out, Path(path))


def write_episodes_csv(path: str | os.PathLike, episodes: Sequence[dict], top: int = 3,
                       entity_column: str | None = None) -> None:
    """One row per episode: ``start,end,peak_score,peak_ts,top_channels``; ``end`` is blank for an
    episode still open where the data ends; ``top_channels`` lists the ``top`` largest shares of
    the peak window as ``name=share`` separated by ``;``. With ``entity_column`` (a fleet file)
    each episode's ``entity`` comes first, under that name."""
    out = pd.DataFrame({
        "start": [e["start"] for e in episodes],
        "end": [e["end"] or "" for e in episodes],
        "peak_score": [e["peak_score"] for e in episodes],
        "peak_ts": [e["peak_ts"] or "" for e in episodes],
        "top_channels": [";".join(f"{c['name']}={(c['contribution'] or 0.0):.3f}"
                                  for c in e["channels"][:top]) for e in episodes],
    }, columns=["start", "end", "peak_score", "peak_ts", "top_channels"])
    if entity_column is not None:
        out.insert(0, entity_column, [e["entity"] for e in episodes])
    _write_atomic(out, Path(path))


def _write_atomic(frame: pd.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        frame.to_csv(tmp, index=False, na_rep="")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
