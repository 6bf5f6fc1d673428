"""Detection metrics against 0/1 labels, in plain numpy.

Point-wise metrics count rows; a row without a score (NaN: no complete window yet) counts as not
flagged there and is left out of ``pr_auc``. An *event* is a contiguous run of label-1 rows; it is
detected when any row inside it is flagged, and its detection delay is the number of rows (and
seconds, given timestamps) from its first row to its first flagged row. A ratio whose denominator
is zero (e.g. precision with no flags) is ``None``: undefined, not zero.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def events(labels: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges (stop exclusive) of each contiguous run of label 1."""
    edges = np.diff(np.concatenate([[0], np.asarray(labels, dtype=np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as a step sum, higher score = more anomalous.

    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds (tied scores enter
    together); ``None`` when there is no positive label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie group
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def evaluate(
    labels: np.ndarray, flags: np.ndarray, scores: np.ndarray, ts_ms: np.ndarray | None = None,
) -> dict:
    """Point-wise, event-wise and ranking metrics of ``flags``/``scores`` against ``labels``.

    Returns precision, recall, f1, far (FP/(FP+TN)) and far_pct, mar (FN/(FN+TP)) and mar_pct,
    tp/fp/fn/tn, n_events, n_detected_events, event_recall, pr_auc, mean_delay_rows and
    mean_delay_s (``None`` without timestamps or without a detected event).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    flags = np.asarray(flags)
    n = len(labels)
    if len(flags) != n or len(scores) != n or (ts_ms is not None and len(ts_ms) != n):
        raise ValueError(f"lengths differ: {n} labels, {len(flags)} flags, {len(scores)} scores"
                         + (f", {len(ts_ms)} timestamps" if ts_ms is not None else ""))
    if not np.isin(labels, (0, 1)).all() or not np.isin(flags, (0, 1)).all():
        raise ValueError("labels and flags must be 0 or 1")
    y = labels.astype(bool)
    scored = ~np.isnan(scores)
    hit = flags.astype(bool) & scored
    tp, fp = int((hit & y).sum()), int((hit & ~y).sum())
    fn, tn = int((~hit & y).sum()), int((~hit & ~y).sum())
    far, mar = _ratio(fp, fp + tn), _ratio(fn, fn + tp)

    runs = events(y)
    delays_rows: list[int] = []
    delays_s: list[float] = []
    for start, stop in runs:
        inside = np.flatnonzero(hit[start:stop])
        if inside.size:
            first = start + int(inside[0])
            delays_rows.append(first - start)
            if ts_ms is not None:
                delays_s.append((int(ts_ms[first]) - int(ts_ms[start])) / 1000.0)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "far": far,
        "far_pct": None if far is None else 100.0 * far,
        "mar": mar,
        "mar_pct": None if mar is None else 100.0 * mar,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "n_events": len(runs),
        "n_detected_events": len(delays_rows),
        "event_recall": _ratio(len(delays_rows), len(runs)),
        "pr_auc": average_precision(labels[scored], scores[scored]),
        "scored_rows": int(scored.sum()),
        "mean_delay_rows": float(np.mean(delays_rows)) if delays_rows else None,
        "mean_delay_s": float(np.mean(delays_s)) if delays_s else None,
    }


def skab_summary(confusions: Sequence[Mapping[str, int]]) -> dict:
    """SKAB outlier-detection scores from per-file ``tp/fp/fn/tn`` counts, summed over files.

    ``F1 = 2TP/(2TP+FP+FN)``, ``FAR = 100·FP/(FP+TN)`` %, ``MAR = 100·FN/(FN+TP)`` %, each rounded
    to 2 decimals (``None`` where the denominator is zero), plus the summed counts.
    """
    total = {k: sum(int(c[k]) for c in confusions) for k in ("tp", "fp", "fn", "tn")}
    tp, fp, fn, tn = total["tp"], total["fp"], total["fn"], total["tn"]

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    far, mar = _ratio(100 * fp, fp + tn), _ratio(100 * fn, fn + tp)
    return {"f1": rounded(_ratio(2 * tp, 2 * tp + fp + fn)), "far_pct": rounded(far),
            "mar_pct": rounded(mar), **total}
