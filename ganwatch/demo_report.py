"""The demo's verdict on itself: injected faults detected or missed, false alarms, delays, the PNG.

A fault counts as detected when an ``anomaly_start`` (or ``anomaly``) alert of its entity falls
between the fault's first reading and ``window`` readings after its last one: a window keeps a
fault in view for that long. Alert episodes (start to end, or to the last reading while still open)
that overlap no fault span, slack included, are false alarms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from detector.alert import ANOMALY, ANOMALY_END, ANOMALY_START

OPENING = (ANOMALY_START, ANOMALY)
TABLE_HEADER = f"{'ENTITY':<10} {'SIMULATED TIME':<19}  {'ALERT':<13} {'SCORE':>7}  TOP CHANNELS"


@dataclass(frozen=True)
class Span:
    """One injected fault in time: readings ``start_ms`` to ``end_ms``, detectable until ``slack_ms``."""

    entity: str
    kind: str
    channel: str
    start_ms: int
    end_ms: int
    slack_ms: int


def fault_spans(faults: Iterable[Any], ts_ms: Mapping[str, np.ndarray], window: int) -> list[Span]:
    """Row-based faults (``entity, kind, channel, start, end``) as time spans of the replayed rows."""
    spans = []
    for f in faults:
        ts = ts_ms[f.entity]
        last = min(f.end - 1, len(ts) - 1)
        spans.append(Span(f.entity, f.kind, f.channel, int(ts[f.start]), int(ts[last]),
                          int(ts[min(last + window, len(ts) - 1)])))
    return spans


def unique_alerts(alerts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Alerts without redelivered copies (same ``alert_id``), oldest reading first."""
    seen: dict[str, dict[str, Any]] = {}
    for a in alerts:
        seen.setdefault(str(a.get("alert_id")), dict(a))
    return sorted(seen.values(), key=lambda a: (a["ts_ms"], a["entity"]))


def episodes(alerts: Sequence[Mapping[str, Any]], last_ms: Mapping[str, int]) -> list[dict[str, Any]]:
    """Alert episodes per entity: ``anomaly_start`` to ``anomaly_end``; a window alert is its own."""
    out: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for a in alerts:
        entity, kind = a["entity"], a["type"]
        if kind == ANOMALY:
            out.append({"entity": entity, "start_ms": a["ts_ms"], "end_ms": a["ts_ms"],
                        "peak_score": a.get("score"), "open": False})
        elif kind == ANOMALY_START:
            open_[entity] = {"entity": entity, "start_ms": a["ts_ms"], "end_ms": None,
                             "peak_score": a.get("score"), "open": True}
            out.append(open_[entity])
        elif kind == ANOMALY_END and entity in open_:
            episode = open_.pop(entity)
            episode.update(end_ms=a["ts_ms"], peak_score=a.get("peak_score"), open=False)
    for episode in out:
        if episode["end_ms"] is None:  # still open when the stream ended
            episode["end_ms"] = int(last_ms.get(episode["entity"], episode["start_ms"]))
    return out


def summarise(spans: Sequence[Span], alerts: Sequence[Mapping[str, Any]],
              last_ms: Mapping[str, int]) -> dict[str, Any]:
    """Per fault: detected, first alert and delay; plus the false-alarm episodes."""
    alerts = unique_alerts(alerts)
    faults = []
    for s in spans:
        hits = [a["ts_ms"] for a in alerts if a["entity"] == s.entity and a["type"] in OPENING
                and s.start_ms <= a["ts_ms"] <= s.slack_ms]
        first = min(hits) if hits else None
        faults.append({
            "entity": s.entity, "kind": s.kind, "channel": s.channel,
            "start": iso(s.start_ms), "end": iso(s.end_ms), "detected": first is not None,
            "first_alert": iso(first) if first is not None else None,
            "delay_s": (first - s.start_ms) / 1000.0 if first is not None else None,
        })
    false_alarms = []
    for e in episodes(alerts, last_ms):
        if not any(e["entity"] == s.entity and e["start_ms"] <= s.slack_ms and e["end_ms"] >= s.start_ms
                   for s in spans):
            false_alarms.append({"entity": e["entity"], "start": iso(e["start_ms"]),
                                 "end": iso(e["end_ms"]), "peak_score": e["peak_score"],
                                 "open": e["open"]})
    detected = sum(f["detected"] for f in faults)
    delays = [f["delay_s"] for f in faults if f["delay_s"] is not None]
    return {
        "faults": faults, "detected": detected, "missed": len(faults) - detected,
        "mean_delay_s": float(np.mean(delays)) if delays else None,
        "false_alarms": false_alarms,
    }


def iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return str(np.datetime64(int(ts_ms), "ms")) + "Z"


def alert_line(alert: Mapping[str, Any], top: int = 3) -> str:
    """One row of the live table: entity, simulated time, type, score, largest contributions."""
    when = str(alert.get("ts", ""))[:19].replace("T", " ")
    kind = str(alert.get("type", "?"))
    score = alert.get("peak_score") if kind == ANOMALY_END else alert.get("score")
    channels = ", ".join(f"{c['name']} {100 * (c.get('contribution') or 0):.0f}%"
                         for c in (alert.get("channels") or [])[:top])
    if kind == ANOMALY_END and alert.get("episode_start_ms") is not None:
        seconds = (int(alert["ts_ms"]) - int(alert["episode_start_ms"])) / 1000
        channels = f"peak: {channels}  (episode {seconds:.0f} s)"
    shown = f"{score:7.2f}" if isinstance(score, (int, float)) else f"{'-':>7}"
    return f"{str(alert.get('entity', '?')):<10} {when:<19}  {kind:<13} {shown}  {channels}"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The human-readable end of the demo."""
    faults = summary["faults"]
    lines = [f"Injected faults detected: {summary['detected']} of {len(faults)}"]
    for f in faults:
        status = f"detected after {f['delay_s']:.0f} s" if f["detected"] else "MISSED"
        lines.append(f"  {f['entity']:<10} {f['kind']:<18} on {f['channel']:<12} from "
                     f"{f['start'][11:19]} to {f['end'][11:19]}: {status}")
    alarms = summary["false_alarms"]
    lines.append(f"False alarms (episodes overlapping no fault): {len(alarms)}")
    for a in alarms[:10]:
        lines.append(f"  {a['entity']:<10} {a['start'][11:19]} to {a['end'][11:19]}"
                     + ("" if a["peak_score"] is None else f", peak score {a['peak_score']:.2f}"))
    if len(alarms) > 10:
        lines.append(f"  ... and {len(alarms) - 10} more (see the summary JSON)")
    if "readings" in summary:  # the worker's numbers, when the caller added them
        alerts = ", ".join(f"{n} {t}" for t, n in summary["alerts"].items() if n) or "none"
        lines.append(f"Worker: {summary['readings']} readings in {summary['stream_seconds']:.1f} s "
                     f"({summary['readings_per_s']:.0f}/s, as fast as they were replayed); "
                     f"scoring {summary['scoring_windows_per_s']:.0f} windows/s; alerts: {alerts}")
    return lines


def plot_demo_report(
    path: str | os.PathLike, series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    channels: Sequence[str], scores: Mapping[str, tuple[np.ndarray, np.ndarray]],
    threshold: float, spans: Sequence[Span], alerts: Sequence[Mapping[str, Any]],
) -> Path:
    """Two panels per entity: its channels (standardised, stacked) and the worker's scores, with the
    threshold, injected faults shaded and alerts marked. ``series`` and ``scores`` map an entity to
    (ts_ms, values) and (ts_ms, scores)."""
    entities = list(series)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the plots extra, only here
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6 * len(entities) + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(2 * len(entities), 1, squeeze=False,
                        height_ratios=[2.6, 1.6] * len(entities))[:, 0]
    for k, entity in enumerate(entities):
        ch_ax, sc_ax = axes[2 * k], axes[2 * k + 1]
        ts, values = series[entity]
        x = ts.astype("datetime64[ms]")
        z = (values - values.mean(axis=0)) / np.where(values.std(axis=0) > 0, values.std(axis=0), 1)
        offsets = -4.0 * np.arange(len(channels))
        for j, name in enumerate(channels):
            ch_ax.plot(x, z[:, j] + offsets[j], linewidth=0.7)
        ch_ax.set_yticks(offsets, list(channels), fontsize="small")
        ch_ax.set_title(f"{entity}: channels (standardised) and injected faults", fontsize="medium",
                        loc="left")
        ch_ax.sharex(sc_ax)
        ch_ax.tick_params(labelbottom=False)
        s_ts, s_val = scores.get(entity, (np.empty(0), np.empty(0)))
        if len(s_ts):
            sc_ax.plot(s_ts.astype("datetime64[ms]"), s_val, color="black", linewidth=0.7,
                       label="score (from the worker)")
        sc_ax.axhline(threshold, color="red", linestyle="--", linewidth=1,
                      label=f"threshold {threshold:.3g}")
        min_width = max(int(ts[-1] - ts[0]) // 250, 1)  # a 3-reading spike must stay visible
        for s in (s for s in spans if s.entity == entity):
            end = max(s.end_ms, s.start_ms + min_width)
            for ax in (ch_ax, sc_ax):
                ax.axvspan(np.datetime64(s.start_ms, "ms"), np.datetime64(end, "ms"),
                           color="orange", alpha=0.3, linewidth=0)
            ch_ax.text(np.datetime64(s.start_ms, "ms"), 1.01, f"{s.kind} ({s.channel})",
                       transform=ch_ax.get_xaxis_transform(), fontsize="x-small", va="bottom")
        for kinds, style, name in ((OPENING, dict(color="red", marker="v"), "alert start"),
                                   ((ANOMALY_END,), dict(color="grey", marker="^"), "alert end")):
            mine = [a for a in alerts if a["entity"] == entity and a["type"] in kinds]
            if mine:
                sc_ax.scatter([np.datetime64(int(a["ts_ms"]), "ms") for a in mine],
                              [threshold] * len(mine), s=40, zorder=3, label=name, **style)
        sc_ax.set_ylabel("score")
        sc_ax.legend(fontsize="x-small", loc="upper left", ncols=4)
        sc_ax.tick_params(labelsize="x-small")
    fig.suptitle("ganwatch demo: live scores and alerts vs injected faults")
    FigureCanvasAgg(fig)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100, format="png")
    return target
