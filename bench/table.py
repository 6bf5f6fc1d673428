"""``python -m bench.table BENCH.json``: the README's quality tables from one ``make bench`` run.

One table per dataset (every detector side by side, with training seconds), the ablation table
(``bench.ablation``: ``lstm-gan`` with one part of its score left out at a time) and the seed
spread (``bench.seed``), as Markdown.
"""

from __future__ import annotations

import json
import sys
from typing import Any

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "skab/valve1": [("f1", "F1"), ("far_pct", "FAR %"), ("train_seconds", "train s / file")],
    "skab/anomaly-free": [("far_pct", "FAR %"), ("false_alarm_target_pct", "window FA target %"),
                          ("window_far_pct", "window FA achieved %"),
                          ("train_seconds", "train s / segment")],
    "tep": [("far_pct", "FAR %"), ("false_alarm_target_pct", "window FA target %"),
            ("window_far_pct", "window FA achieved %"), ("mean_fdr_pct", "mean FDR %"),
            ("mean_fdr_pct_without_3_9_15", "FDR % without 3, 9, 15"),
            ("train_seconds", "train s")],
    "nab/realKnownCause": [("f1", "F1"), ("tp", "TP"), ("fp", "FP"), ("fn", "FN"),
                           ("f1_widened_100", "F1, runs widened by 100 rows"),
                           ("failed_signals", "signals failed"), ("train_seconds", "train s, all")],
    "nab/artificialNoAnomaly": [("false_alarms_per_signal", "false alarms / signal"),
                                ("false_alarm_target_pct", "window FA target %"),
                                ("window_far_pct", "window FA achieved %"),
                                ("failed_signals", "signals failed"),
                                ("train_seconds", "train s, all")],
}
# the one measure per dataset that the ablation table shows
ABLATION = {"skab/valve1": [("f1", "valve1 F1"), ("far_pct", "valve1 FAR %")],
            "skab/anomaly-free": [("far_pct", "anomaly-free FAR %")],
            "tep": [("far_pct", "TEP FAR %"), ("mean_fdr_pct_without_3_9_15", "TEP FDR % (8)")],
            "nab/realKnownCause": [("f1", "NAB real F1")],
            "nab/artificialNoAnomaly": [("false_alarms_per_signal", "NAB art. FA / signal")]}
SEED = [("valve1_f1", "valve1 F1"), ("valve1_far_pct", "valve1 FAR %"),
        ("anomaly_free_far_pct", "anomaly-free FAR %"), ("tep_far_pct", "TEP FAR %"),
        ("tep_fdr_pct_without_3_9_15", "TEP FDR % (8)")]


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tables(bench: dict) -> str:
    out = []
    for dataset, columns in COLUMNS.items():
        rows = [r for r in bench.get("quality", []) if r["dataset"] == dataset]
        if rows:
            out.append(f"**{dataset}**\n\n" + markdown(
                ["detector"] + [c[1] for c in columns],
                [[r["detector"]] + [cell(r.get(k)) for k, _ in columns] for r in rows]))
    ablation = bench.get("ablation", [])
    variants = list(dict.fromkeys(r["variant"] for r in ablation))
    if variants:
        header = ["lstm-gan score"] + [name for cols in ABLATION.values() for _, name in cols]
        rows = []
        for variant in variants:
            by = {r["dataset"]: r for r in ablation if r["variant"] == variant}
            rows.append([variant] + [cell(by.get(d, {}).get(k)) for d, cols in ABLATION.items()
                                     for k, _ in cols])
        out.append("**ablation**\n\n" + markdown(header, rows))
    seeds = bench.get("seed", {})
    if seeds.get("seeds"):
        rows = [[seed] + [cell(f.get(k)) for k, _ in SEED] for seed, f in seeds["seeds"].items()]
        spread = seeds.get("spread", {})
        rows.append(["lowest – highest"] + [
            f"{cell(spread[k]['min'])} – {cell(spread[k]['max'])}" if k in spread else "–"
            for k, _ in SEED])
        out.append(f"**seed spread ({seeds.get('model', 'lstm-gan')})**\n\n"
                   + markdown(["seed"] + [name for _, name in SEED], rows))
    return "\n\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.table BENCH.json", file=sys.stderr)
        return 2
    with open(args[0]) as fh:
        sys.stdout.write(tables(json.load(fh)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
