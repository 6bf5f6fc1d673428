"""The output contract: alerts (per window or per episode) and optional per-window score records.

Alerts are keyed by entity. ``alert_id`` is derived from (entity, ts_ms, type, model_version) only,
so a batch replayed after a crash re-publishes the same ids and consumers can drop the copies.

In ``episode`` mode an entity's first anomalous window opens an episode (``anomaly_start``) and
``end_windows`` consecutive normal windows close it (``anomaly_end``, with the peak). The episode
lives in ``EntityState.episode`` as a JSON-able dict, so it survives restarts with the window.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from detector.message import iso_ms
from detector.metric import Metrics
from detector.score import Detector, Threshold, score_windows
from detector.stream import WindowRef

WINDOW, EPISODE = "window", "episode"
ALERT_MODES = (WINDOW, EPISODE)
DEFAULT_ALERT_MODE = EPISODE  # serve's --alert-mode and score's, defined once
DEFAULT_END_WINDOWS = 5  # consecutive normal windows that end an episode (--episode-end-windows)
ANOMALY, ANOMALY_START, ANOMALY_END = "anomaly", "anomaly_start", "anomaly_end"
# A fixed namespace makes ids stable across processes and releases; never change it.
ALERT_NAMESPACE = uuid.UUID("6f1c2a8e-3b5d-5e47-9a0c-1d2e3f405162")


@dataclass(slots=True)  # not frozen: one per scored window, and frozen ones build slowly
class Verdict:
    """One scored window of one entity."""

    entity: str
    ts_ms: int  # the reading that completed the window
    start_ms: int  # the window's first reading
    score: float
    is_anomaly: bool
    contributions: np.ndarray  # (n_channels,), in the model's channel order


@dataclass(frozen=True, slots=True)
class AlertContext:
    """What every alert of a batch shares."""

    channels: Sequence[str]
    threshold: float
    model_version: str
    now_ms: int


def stack(windows: Sequence[WindowRef]) -> np.ndarray:
    """The windows' values as one (n, window, channels) array, what ``score_stacked`` takes."""
    return np.stack([w.values for w in windows])


def stack_ts(windows: Sequence[WindowRef]) -> np.ndarray:
    """The windows' reading timestamps, (n, window) int64, for a detector that ``needs_time``."""
    return np.stack([w.row_ts for w in windows]).astype(np.int64)


def score_stacked(
    detector: Detector, stacked: np.ndarray, chunk: int, metrics: Metrics,
    ts_ms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n,) and contributions (n, channels) of stacked windows, ``chunk`` per call;
    ``ts_ms`` (n, window): the readings' timestamps, for a detector that ``needs_time``."""
    scores, contributions = [], []
    for i in range(0, len(stacked), chunk):
        part = stacked[i : i + chunk]
        started = time.perf_counter()
        result = score_windows(detector, part, None if ts_ms is None else ts_ms[i : i + chunk])
        metrics.observe("scoring_seconds", time.perf_counter() - started)
        if np.shape(result.scores) != (len(part),):
            raise ValueError(f"detector returned {np.shape(result.scores)} scores for {len(part)}")
        scores.append(np.asarray(result.scores, dtype=np.float64))
        contributions.append(np.asarray(result.contributions, dtype=np.float64))
    if not scores:
        return np.empty(0), np.empty((0, 0))
    return np.concatenate(scores), np.concatenate(contributions)


def verdicts(
    windows: Sequence[WindowRef], threshold: Threshold, scores: np.ndarray,
    contributions: np.ndarray,
) -> list[Verdict]:
    """One ``Verdict`` per window from its score and contributions."""
    flags = threshold.is_anomaly(scores) if len(scores) else []
    return [
        Verdict(w.entity, w.ts_ms, w.start_ms, float(s), bool(a), c)
        for w, s, a, c in zip(windows, scores, flags, contributions)
    ]


def alert_id(entity: str, ts_ms: int, alert_type: str, model_version: str) -> str:
    """Deterministic id: the same window judged by the same model always gets the same id."""
    return str(uuid.uuid5(ALERT_NAMESPACE, json.dumps([entity, int(ts_ms), alert_type, model_version])))


def ranked_channels(channels: Sequence[str], contributions: np.ndarray) -> list[dict[str, Any]]:
    """Channels with their share of the score, largest first (ties keep the model's order)."""
    pairs = [(name, _num(c)) for name, c in zip(channels, np.asarray(contributions).tolist())]
    pairs.sort(key=lambda p: -(p[1] or 0.0))
    return [{"name": name, "contribution": c} for name, c in pairs]


def make_alerts(
    verdict: Verdict, episode: dict[str, Any], mode: str, end_windows: int, ctx: AlertContext
) -> list[dict[str, Any]]:
    """Alerts for one window, updating ``episode`` in place (episode mode)."""
    if mode == WINDOW:
        return [_alert(ANOMALY, verdict, ctx)] if verdict.is_anomaly else []
    if mode != EPISODE:
        raise ValueError(f"unknown alert mode {mode!r}")
    if verdict.is_anomaly:
        if not episode.get("active"):
            episode.clear()
            episode.update(active=True, start_ms=verdict.ts_ms, peak_score=None, normal_run=0)
            _update_peak(episode, verdict, ctx)
            return [_alert(ANOMALY_START, verdict, ctx)]
        episode["normal_run"] = 0
        _update_peak(episode, verdict, ctx)
        return []
    if not episode.get("active"):
        return []
    episode["normal_run"] = int(episode.get("normal_run", 0)) + 1
    if episode["normal_run"] < end_windows:
        return []
    alert = _alert(ANOMALY_END, verdict, ctx)
    alert["channels"] = episode.get("peak_channels", [])
    alert["peak_score"] = episode.get("peak_score")
    alert["peak_ts_ms"] = episode.get("peak_ts_ms")
    alert["peak_ts"] = iso_ms(alert["peak_ts_ms"]) if alert["peak_ts_ms"] is not None else None
    alert["episode_start_ms"] = int(episode["start_ms"])
    alert["episode_start"] = iso_ms(episode["start_ms"])
    episode.clear()
    return [alert]


def _update_peak(episode: dict[str, Any], verdict: Verdict, ctx: AlertContext) -> None:
    score = _num(verdict.score)
    if score is None:
        return
    if episode.get("peak_score") is None or score > episode["peak_score"]:
        episode["peak_score"] = score
        episode["peak_ts_ms"] = verdict.ts_ms
        episode["peak_channels"] = ranked_channels(ctx.channels, verdict.contributions)


def _alert(alert_type: str, verdict: Verdict, ctx: AlertContext) -> dict[str, Any]:
    return {
        "alert_id": alert_id(verdict.entity, verdict.ts_ms, alert_type, ctx.model_version),
        "type": alert_type,
        "entity": verdict.entity,
        "ts": iso_ms(verdict.ts_ms),
        "ts_ms": verdict.ts_ms,
        "window_start": iso_ms(verdict.start_ms),
        "window_start_ms": verdict.start_ms,
        "score": _num(verdict.score),
        "threshold": _num(ctx.threshold),
        "channels": ranked_channels(ctx.channels, verdict.contributions),
        "model_version": ctx.model_version,
        "detected_at": iso_ms(ctx.now_ms),
    }


def score_record(verdict: Verdict, ctx: AlertContext) -> dict[str, Any]:
    """The optional per-window record for the scores topic."""
    return {
        "entity": verdict.entity,
        "ts": iso_ms(verdict.ts_ms),
        "ts_ms": verdict.ts_ms,
        "score": _num(verdict.score),
        "threshold": _num(ctx.threshold),
        "is_anomaly": bool(verdict.is_anomaly),
        "model_version": ctx.model_version,
    }


def encode(doc: dict[str, Any]) -> bytes:
    """Strict JSON (no NaN), UTF-8."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _num(x: Any) -> float | None:
    """A finite float, or None: strict JSON has no NaN and a broken score must not block alerts."""
    x = float(x)
    return x if math.isfinite(x) else None
