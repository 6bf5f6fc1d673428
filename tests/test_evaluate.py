"""Detection metrics on small examples computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import average_precision, evaluate, events, skab_summary

# rows:          0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0])
FLAGS = np.array([0, 1, 0, 1, 1, 0, 0, 0, 0, 1])


def test_point_metrics_by_hand() -> None:
    # tp: rows 3,4; fp: 1,9; fn: 2,7,8; tn: 0,5,6
    r = evaluate(LABELS, FLAGS, np.linspace(0, 1, 10))
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 2, 3, 3)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.4)
    assert r["f1"] == pytest.approx(4 / 9)
    assert r["far"] == pytest.approx(0.4) and r["far_pct"] == pytest.approx(40.0)
    assert r["mar"] == pytest.approx(0.6) and r["mar_pct"] == pytest.approx(60.0)


def test_events_and_delay_by_hand() -> None:
    assert events(LABELS) == [(2, 5), (7, 9)]
    r = evaluate(LABELS, FLAGS, np.ones(10), ts_ms=np.arange(10) * 2000)
    assert r["n_events"] == 2 and r["n_detected_events"] == 1
    assert r["event_recall"] == pytest.approx(0.5)
    assert r["mean_delay_rows"] == pytest.approx(1.0)  # event at row 2, first flag at row 3
    assert r["mean_delay_s"] == pytest.approx(2.0)


def test_delay_is_averaged_over_detected_events_only() -> None:
    labels = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1])
    flags = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    ts = np.array([0, 1, 2, 3, 4, 5, 9, 10, 11, 12]) * 1000
    r = evaluate(labels, flags, np.zeros(10), ts_ms=ts)
    assert r["n_events"] == 3 and r["n_detected_events"] == 2
    assert r["mean_delay_rows"] == pytest.approx(1.0)  # (0 + 2) / 2
    assert r["mean_delay_s"] == pytest.approx(2.5)  # (0 + 5 s) / 2
    assert evaluate(labels, flags, np.zeros(10))["mean_delay_s"] is None


def test_no_detected_event_gives_no_delay() -> None:
    r = evaluate(np.array([0, 1, 1, 0]), np.array([1, 0, 0, 0]), np.zeros(4))
    assert r["event_recall"] == 0.0 and r["mean_delay_rows"] is None and r["mean_delay_s"] is None


def test_unscored_rows_count_as_not_flagged_and_leave_pr_auc() -> None:
    labels = np.array([0, 1, 0, 1])
    flags = np.array([1, 1, 0, 0])
    scores = np.array([np.nan, 0.9, 0.2, 0.1])  # the flag on row 0 has no score behind it
    r = evaluate(labels, flags, scores)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 0, 1, 2)
    assert r["scored_rows"] == 3
    # scored rows only: [1:0.9, 0:0.2, 1:0.1] -> AP = 0.5*1 + 0.5*(2/3)
    assert r["pr_auc"] == pytest.approx(0.5 + 1 / 3)


def test_perfect_ranking_has_pr_auc_one() -> None:
    assert average_precision(np.array([0, 1, 0, 1, 0]), np.array([0.1, 0.9, 0.2, 0.8, 0.3])) == 1.0


def test_mixed_ranking_pr_auc_by_hand() -> None:
    # ranked: 1 (P=1, R=.5), 0, 1 (P=2/3, R=1), 0 -> 0.5*1 + 0.5*2/3
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) \
        == pytest.approx(5 / 6)
    # worst ranking: positives last
    assert average_precision(np.array([1, 0, 0]), np.array([0.1, 0.5, 0.9])) == pytest.approx(1 / 3)


def test_tied_scores_enter_together() -> None:
    assert average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert average_precision(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_undefined_ratios_are_none() -> None:
    r = evaluate(np.zeros(4, dtype=int), np.zeros(4, dtype=int), np.zeros(4))
    assert r["precision"] is None and r["recall"] is None and r["f1"] is None
    assert r["mar"] is None and r["event_recall"] is None and r["pr_auc"] is None
    assert r["far"] == 0.0 and r["n_events"] == 0


def test_mismatched_or_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        evaluate(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="0 or 1"):
        evaluate(np.array([0, 2]), np.zeros(2), np.zeros(2))


def test_skab_summary_sums_counts_over_files() -> None:
    files = [{"tp": 2, "fp": 1, "fn": 1, "tn": 6, "file": "a"},
             {"tp": 1, "fp": 0, "fn": 2, "tn": 3}]
    s = skab_summary(files)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (3, 1, 3, 9)
    assert s["f1"] == 0.6  # 6 / (6 + 1 + 3)
    assert s["far_pct"] == 10.0  # 100 * 1 / 10
    assert s["mar_pct"] == 50.0  # 100 * 3 / 6


def test_skab_summary_rounds_to_two_decimals() -> None:
    s = skab_summary([{"tp": 1, "fp": 2, "fn": 0, "tn": 1}])
    assert (s["f1"], s["far_pct"], s["mar_pct"]) == (0.5, 66.67, 0.0)
