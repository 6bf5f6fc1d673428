"""The output contract: alert ids, window and episode alerts, score records, batched judging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.alert import (
    AlertContext, Verdict, alert_id, encode, make_alerts, ranked_channels, score_record,
    score_stacked, stack, verdicts,
)
from detector.metric import InMemoryMetrics
from detector.score import Threshold, ZScoreDetector
from detector.stream import WindowRef

T0 = 1583748873000
CTX = AlertContext(channels=["a", "b", "c"], threshold=2.0, model_version="m1", now_ms=T0 + 60_000)


def verdict(t: int, score: float, entity: str = "pump-7", contrib=(0.2, 0.5, 0.3)) -> Verdict:
    return Verdict(entity, T0 + t * 1000, T0 + (t - 3) * 1000, score, score >= CTX.threshold, np.array(contrib))


def test_alert_id_is_deterministic_and_depends_on_every_part():
    base = alert_id("pump-7", T0, "anomaly", "m1")
    assert base == alert_id("pump-7", T0, "anomaly", "m1")
    others = {alert_id("pump-8", T0, "anomaly", "m1"), alert_id("pump-7", T0 + 1, "anomaly", "m1"),
              alert_id("pump-7", T0, "anomaly_start", "m1"), alert_id("pump-7", T0, "anomaly", "m2")}
    assert base not in others and len(others) == 4


def test_window_mode_alert_has_the_contract_fields():
    [alert] = make_alerts(verdict(10, 3.5), {}, "window", 3, CTX)
    assert alert == {
        "alert_id": alert_id("pump-7", T0 + 10_000, "anomaly", "m1"),
        "type": "anomaly",
        "entity": "pump-7",
        "ts": "2020-03-09T10:14:43.000Z",
        "ts_ms": T0 + 10_000,
        "window_start": "2020-03-09T10:14:40.000Z",
        "window_start_ms": T0 + 7_000,
        "score": 3.5,
        "threshold": 2.0,
        "channels": [{"name": "b", "contribution": 0.5}, {"name": "c", "contribution": 0.3},
                     {"name": "a", "contribution": 0.2}],
        "model_version": "m1",
        "detected_at": "2020-03-09T10:15:33.000Z",
    }
    assert make_alerts(verdict(11, 1.0), {}, "window", 3, CTX) == []


def test_episode_start_peak_and_end_after_n_normal_windows():
    episode: dict = {}
    scores = [1, 3, 5, 1, 4, 1, 1, 1, 1, 6]
    emitted = [(t, make_alerts(verdict(t, s), episode, "episode", 3, CTX)) for t, s in enumerate(scores)]
    alerts = [(t, a["type"]) for t, out in emitted for a in out]
    # the normal window at t=3 does not end it: t=4 is anomalous again and resets the run
    assert alerts == [(1, "anomaly_start"), (7, "anomaly_end"), (9, "anomaly_start")]
    end = emitted[7][1][0]
    assert end["peak_score"] == 5 and end["peak_ts_ms"] == T0 + 2000
    assert end["peak_ts"] == "2020-03-09T10:14:35.000Z"
    assert end["episode_start_ms"] == T0 + 1000 and end["episode_start"] == "2020-03-09T10:14:34.000Z"
    assert end["ts_ms"] == T0 + 7000 and end["score"] == 1
    assert end["alert_id"] == alert_id("pump-7", T0 + 7000, "anomaly_end", "m1")
    assert [c["name"] for c in end["channels"]] == ["b", "c", "a"]
    assert episode["active"] and episode["start_ms"] == T0 + 9000
    assert json.loads(json.dumps(episode)) == episode  # the store persists it as JSON


def test_episode_mode_rejects_unknown_mode():
    with pytest.raises(ValueError):
        make_alerts(verdict(1, 3), {}, "sometimes", 3, CTX)


def test_ranked_channels_sort_descending_and_keep_order_on_ties():
    ranked = ranked_channels(["x", "y", "z"], np.array([0.25, 0.5, 0.25]))
    assert [c["name"] for c in ranked] == ["y", "x", "z"]


def test_score_record_and_strict_json_for_broken_scores():
    record = score_record(verdict(4, float("nan")), CTX)
    assert record == {"entity": "pump-7", "ts": "2020-03-09T10:14:37.000Z", "ts_ms": T0 + 4000,
                      "score": None, "threshold": 2.0, "is_anomaly": False, "model_version": "m1"}
    assert json.loads(encode(record)) == record


def windows(n: int) -> list[WindowRef]:
    return [WindowRef(f"e{i}", i, T0 + i, T0, np.full((4, 2), float(i))) for i in range(n)]


def test_windows_are_scored_in_chunks_and_judged():
    det = ZScoreDetector(["a", "b"], 4, mean=[0, 0], std=[1, 1])
    calls = []
    original = det.score
    det.score = lambda w: calls.append(len(w)) or original(w)
    metrics = InMemoryMetrics()
    ws = windows(5)
    out = verdicts(ws, Threshold(4.0), *score_stacked(det, stack(ws), chunk=2, metrics=metrics))
    assert calls == [2, 2, 1]
    assert [v.score for v in out] == [0, 1, 4, 9, 16]
    assert [v.is_anomaly for v in out] == [False, False, True, True, True]
    assert [v.entity for v in out] == ["e0", "e1", "e2", "e3", "e4"]
    assert len(metrics.observations["scoring_seconds"]) == 3
    empty = score_stacked(det, np.empty((0, 4, 2)), 2, metrics)
    assert verdicts([], Threshold(1.0), *empty) == [] and calls == [2, 2, 1]


def test_scoring_refuses_a_detector_that_returns_the_wrong_number_of_scores():
    det = ZScoreDetector(["a", "b"], 4, mean=[0, 0], std=[1, 1])
    original = det.score
    det.score = lambda w: type(original(w))(np.zeros(1), np.zeros((1, 2)))
    with pytest.raises(ValueError):
        score_stacked(det, stack(windows(3)), 10, InMemoryMetrics())
