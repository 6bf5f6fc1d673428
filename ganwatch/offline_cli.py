"""``ganwatch train``, ``score`` and ``evaluate``: files in, artifact / CSV / JSON out."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from detector.alert import ALERT_MODES, DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS, EPISODE
from detector.stream import GAP_STEPS
from ganwatch.extra import require
from training.config import TrainConfig

# ganwatch.api (pandas), torch and matplotlib (training.report) are imported inside the
# commands: `ganwatch train --help` needs none of them. The commands are a thin layer over the API.

log = logging.getLogger("ganwatch")
DEFAULTS = TrainConfig()


def add_data_arguments(p: argparse.ArgumentParser, channels: bool = True) -> None:
    p.add_argument("--data", required=True, help="CSV (any delimiter) or Parquet file")
    p.add_argument("--sep", default=None, help="CSV delimiter (default: detected from the header)")
    p.add_argument("--timestamp-column", default=None,
                   help="timestamp column, ISO-8601 or epoch (default: none; score and evaluate: "
                        "the model's)")
    p.add_argument("--entity-column", default=None,
                   help="column naming each row's asset in a fleet file: each entity's rows form "
                        "their own windows and the model keeps each trained entity's operating "
                        "point (default: none, one asset; score and evaluate: the model's, where "
                        "the file has it)")
    if channels:
        p.add_argument("--channels", default=None,
                       help="comma-separated channel columns (default: every numeric column)")
        p.add_argument("--exclude-columns", default=None,
                       help="comma-separated columns to leave out when channels are not given "
                            "(default: none)")


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stride", type=int, default=1,
                   help="score every k-th reading, as `ganwatch serve --stride` (default 1)")
    p.add_argument("--max-gap-s", type=float, default=None,
                   help="restart the window after a gap longer than this (default: the gap rule "
                        "stored in the model, learned from its training data; 0 = never), as "
                        "`ganwatch serve`")


def add_alert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alert-mode", choices=ALERT_MODES, default=DEFAULT_ALERT_MODE,
                   help=f"as `ganwatch serve`: `episode` flags every row from the window that "
                        f"opened an episode to the one that closed it, `window` each anomalous "
                        f"window's row (default {DEFAULT_ALERT_MODE})")
    p.add_argument("--episode-end-windows", type=int, default=DEFAULT_END_WINDOWS,
                   help=f"consecutive normal windows that end an episode, as `ganwatch serve` "
                        f"(default {DEFAULT_END_WINDOWS})")


def add_offline_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit a model on normal readings and write an artifact")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--train-rows", type=int, default=None,
                   help="train on the first N rows only (default: all rows)")
    p.add_argument("--window", type=int, default=DEFAULTS.window,
                   help="readings per window (default %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs,
                   help="passes over the training windows (default %(default)s)")
    p.add_argument("--model", choices=["lstm-gan", "lstm-ae"], default=DEFAULTS.model,
                   help="lstm-gan, or lstm-ae: the same networks without critics "
                        "(default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=DEFAULTS.device,
                   help="auto picks CUDA when present (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="seed of the weights and batches (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"windows per training step (default {DEFAULTS.batch_size}, or "
                        f"{DEFAULTS.long_batch_size} where the sample budget cuts epochs)")
    p.add_argument("--hidden", type=int, default=DEFAULTS.hidden,
                   help="LSTM hidden units (default %(default)s)")
    p.add_argument("--latent", type=int, default=DEFAULTS.latent,
                   help="size of the latent code z (default %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr,
                   help="Adam learning rate (default %(default)s)")
    p.add_argument("--max-gap-s", type=float, default=None,
                   help=f"no window spans a gap longer than this (default: {GAP_STEPS} times the "
                        f"data's median step; 0 = never); stored in the model for `ganwatch "
                        f"score` and `serve`")
    p.add_argument("--torch-threads", type=int, default=DEFAULTS.torch_threads,
                   help=f"torch CPU threads while training and calibrating (default "
                        f"{DEFAULTS.torch_threads}, 0 = torch's default); more threads spin "
                        f"against each other when another process holds a core")
    p.add_argument("--sample-budget", type=int, default=DEFAULTS.sample_budget,
                   help=f"windows visited over all epochs (default {DEFAULTS.sample_budget}); a "
                        f"long history gets fewer epochs, so training time follows this budget")
    p.add_argument("--false-alarm-target", type=float, default=DEFAULTS.false_alarm_target,
                   help=f"share of normal windows allowed at or above the threshold (default "
                        f"{DEFAULTS.false_alarm_target:g}); higher flags weaker faults and raises "
                        f"false alarms")
    p.add_argument("--threshold-margin", type=float, default=DEFAULTS.threshold_margin,
                   help="instead of --false-alarm-target: threshold = highest held-back score + "
                        "this many robust spreads of them (default: unset, the target rules)")
    p.add_argument("--contamination", type=float, default=DEFAULTS.contamination,
                   help=f"share of the held-back stretches that may hold incidents (default "
                        f"{DEFAULTS.contamination:g}; 0 = the training rows are all normal); their "
                        f"peaks are set aside unless the fitted windows score as high")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on a terminal, log lines otherwise)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score a file with a trained model")
    p.add_argument("--model", required=True, help="artifact directory")
    add_data_arguments(p, channels=False)
    add_stream_arguments(p)
    p.add_argument("--out", required=True, help="CSV to write: timestamp,score,is_anomaly")
    p.add_argument("--contributions", action="store_true",
                   help="add one contrib_<channel> column per channel (default: off)")
    add_alert_arguments(p)
    p.add_argument("--episodes", default=None, metavar="PATH",
                   help="also write one CSV row per episode: start, end, peak score and time, top "
                        "channels (default: none; episode mode)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="torch device for scoring (default %(default)s)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="score a labelled file and print metrics as JSON")
    p.add_argument("--model", required=True, help="artifact directory")
    add_data_arguments(p, channels=False)
    add_stream_arguments(p)
    p.add_argument("--label-column", required=True, help="0/1 column marking anomalous rows")
    p.add_argument("--from-row", type=int, default=0,
                   help="evaluate rows from this one on, e.g. after the training rows "
                        "(default %(default)s)")
    add_alert_arguments(p)
    p.add_argument("--plot", default=None,
                   help="PNG with channels, score, threshold, anomalies (default: none; needs "
                        "the plots extra)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="torch device for scoring (default %(default)s)")
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    from ganwatch.api import fit, write_artifact

    model = fit(
        args.data, timestamp=args.timestamp_column, channels=args.channels,
        exclude=args.exclude_columns, sep=args.sep, entity=args.entity_column,
        **{name: getattr(args, name) for name in TRAIN_OPTIONS},
    )
    meta, report = write_artifact(model, args.out)
    result, config = model.training.result, model.training.config
    summary = {
        "model": str(args.out), "model_version": meta["model_version"], "kind": config.model,
        "channels": model.channels, "slow_channels": meta["slow_channels"],
        "rows": model.training.rows, "window": config.window,
        "threshold": round(result.threshold.value, 4),
        "train_seconds": result.metrics["train_seconds"], "epochs": result.metrics["epochs"],
        "max_gap_s": None if result.max_gap_ms is None else result.max_gap_ms / 1000,
        "skipped_rows": result.metrics["skipped_rows"],
        "calibration_false_alarm_rate": round(result.metrics["calibration_false_alarm_rate"], 4),
        "false_alarm_target": float(f"{result.threshold.false_alarm_target:.3g}"),
        "report": str(report) if report else None,
    }
    if model.entity_column:
        summary.update(entity_column=model.entity_column, entities=len(model.entities),
                       skipped_entities=result.metrics["skipped_entities"])
    print(json.dumps(summary, indent=2))
    return 0


# the train flags that are `ganwatch.fit` keywords of the same name (the data flags are renamed)
TRAIN_OPTIONS = ("train_rows", "window", "epochs", "model", "device", "seed", "batch_size",
                 "hidden", "latent", "lr", "max_gap_s", "torch_threads", "sample_budget",
                 "threshold_margin", "false_alarm_target", "contamination", "no_progress")


def load_scored(args: argparse.Namespace, label_column: str | None = None):
    """Load the model and the file with the model's channels; score every row."""
    from ganwatch.api import load
    from ganwatch.option import check_score_options

    check_score_options(args.stride, args.max_gap_s, args.alert_mode, args.episode_end_windows)
    model = load(args.model, device=args.device)
    table = model.read(args.data, sep=args.sep, timestamp=args.timestamp_column,
                       label_column=label_column, entity=args.entity_column)
    scored, alerts = model.run(table, stride=args.stride, max_gap_s=args.max_gap_s,
                               alert_mode=args.alert_mode,
                               episode_end_windows=args.episode_end_windows)
    return model.artifact, table, scored, alerts


def cmd_score(args: argparse.Namespace) -> int:
    from connectors.file import DataError
    from connectors.writer import write_episodes_csv, write_scores_csv
    from detector.fleet import entity_episode_rows
    from detector.offline import episode_rows

    if args.episodes and args.alert_mode != EPISODE:
        raise DataError("--episodes needs --alert-mode episode")
    artifact, table, scored, alerts = load_scored(args)
    write_scores_csv(
        args.out, table.timestamps, scored.scores, alerts.flags,
        contributions=scored.contributions if args.contributions else None,
        channels=table.channels, entities=table.entities,
        entity_column=model_entity(args, artifact),
    )
    log.info("wrote %d rows to %s (%d anomalous)", len(scored.scores), args.out,
             int(alerts.flags.sum()))
    if args.episodes:
        fleet = alerts.by_entity is not None
        episodes = entity_episode_rows(alerts.by_entity) if fleet else episode_rows(alerts)
        write_episodes_csv(args.episodes, episodes, entity_column=model_entity(args, artifact)
                           if fleet else None)
        log.info("wrote %d episodes to %s", len(episodes), args.episodes)
    return 0


def model_entity(args: argparse.Namespace, artifact) -> str:
    """The entity column's name as the output files write it."""
    return args.entity_column or artifact.meta.get("entity_column") or "entity"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    if args.plot:
        require("--plot", "plots")  # before the scoring, not after it
    artifact, table, scored, alerts = load_scored(args, label_column=args.label_column)
    part: slice | np.ndarray = slice(args.from_row, None)
    if table.entities is not None:  # each entity's rows together: events never mix entities
        from detector.fleet import group_rows

        part = np.concatenate([rows[rows >= args.from_row]
                               for rows in group_rows(table.entities).values()])
    result = evaluate(table.labels[part], alerts.flags[part], scored.scores[part],
                      ts_ms=table.ts_ms[part] if table.ts_ms is not None else None)
    result.update(model_version=artifact.meta["model_version"], threshold=artifact.threshold.value,
                  alert_mode=args.alert_mode,
                  rows=int(len(table.values[part])))
    if args.plot:
        from training.report import plot_evaluation

        x = (table.ts_ms.astype("datetime64[ms]") if table.ts_ms is not None
             else np.arange(len(table.values)))
        plot_evaluation(args.plot, x, table.values, table.channels, scored.scores,
                        artifact.threshold.value, labels=table.labels, flags=alerts.flags)
        result["plot"] = args.plot
    print(json.dumps(result, indent=2, default=float))
    return 0
