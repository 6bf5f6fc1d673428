"""``ganwatch train``, ``score`` and ``evaluate``: files in, artifact / CSV / JSON out."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

from detector.alert import ALERT_MODES, DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS, EPISODE
from detector.stream import GAP_STEPS, StreamConfig
from ganwatch.extra import installed, require
from training.config import TrainConfig

# pandas (connectors.file), torch (detector.artifact, training.trainer) and matplotlib
# (training.report) are imported inside the commands: `ganwatch train --help` needs none of them

log = logging.getLogger("ganwatch")
DEFAULTS = TrainConfig()


def add_data_arguments(p: argparse.ArgumentParser, channels: bool = True) -> None:
    p.add_argument("--data", required=True, help="CSV (any delimiter) or Parquet file")
    p.add_argument("--sep", default=None, help="CSV delimiter (default: detected from the header)")
    p.add_argument("--timestamp-column", default=None,
                   help="timestamp column, ISO-8601 or epoch (default: none; score and evaluate: "
                        "the model's)")
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
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help="windows per training step (default %(default)s)")
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
                   help=f"torch CPU threads while training (default {DEFAULTS.torch_threads}, "
                        f"0 = torch's default); more threads spin against each other when "
                        f"another process holds a core")
    p.add_argument("--sample-budget", type=int, default=DEFAULTS.sample_budget,
                   help=f"windows visited over all epochs (default {DEFAULTS.sample_budget}); a "
                        f"long history gets fewer epochs, so training time follows this budget")
    p.add_argument("--threshold-margin", type=float, default=DEFAULTS.threshold_margin,
                   help=f"threshold = highest held-back score + this many robust spreads of "
                        f"them (default {DEFAULTS.threshold_margin:g}); lower flags weaker faults "
                        f"and raises false alarms")
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


def split_names(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def positive(name: str, value: float | None) -> None:
    from connectors.file import DataError

    if value is not None and value <= 0:
        raise DataError(f"{name} must be positive, got {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from connectors.file import DataError, read_table
    from training.trainer import train

    for name in ("--window", "--epochs", "--batch-size", "--hidden", "--latent", "--lr"):
        positive(name, getattr(args, name[2:].replace("-", "_")))
    positive("--train-rows", args.train_rows)
    positive("--sample-budget", args.sample_budget)
    check_max_gap(args.max_gap_s)
    if args.torch_threads < 0:
        raise DataError(f"--torch-threads must be 0 (torch's default) or more, got "
                        f"{args.torch_threads}")
    if not args.threshold_margin >= 0:
        raise DataError(f"--threshold-margin must be 0 or more, got {args.threshold_margin}")
    table = read_table(
        args.data, sep=args.sep, timestamp_column=args.timestamp_column,
        channels=split_names(args.channels), exclude_columns=split_names(args.exclude_columns) or (),
    )
    rows = len(table.values) if args.train_rows is None else min(args.train_rows, len(table.values))
    need = 2 * args.window + 8
    if rows < need:
        raise DataError(
            f"{args.data}: {rows} training rows, need at least {need} for a window of {args.window} "
            f"(fitting plus held-back calibration windows)"
        )
    config = TrainConfig(
        model=args.model, window=args.window, epochs=args.epochs, device=args.device, seed=args.seed,
        batch_size=args.batch_size, hidden=args.hidden, latent=args.latent, lr=args.lr,
        max_gap_ms=None if args.max_gap_s is None else int(args.max_gap_s * 1000),
        threshold_margin=args.threshold_margin, torch_threads=args.torch_threads,
        sample_budget=args.sample_budget,
    )
    ts_ms = table.row_ts_ms()[:rows]
    values = table.values[:rows]
    with progress_bar(config, args) as progress:
        result = train(ts_ms, values, table.channels, config, progress=progress)
    meta = result.save(args.out, {
        "timestamp_column": args.timestamp_column,
        "hyperparameters": config.to_dict(),
        "training_data": {"path": str(args.data), "rows": rows,
                          "fingerprint": fingerprint(ts_ms, values)},
        "training_metrics": result.metrics,
    })
    report: Path | None = Path(args.out) / "report.png"
    if installed("plots"):
        from training.report import plot_training_report

        plot_training_report(report, result.history, result.train_scores, result.calib_scores,
                             result.threshold.value)
    else:
        log.info("no report.png: plotting needs the plots extra (pip install 'ganwatch[plots]')")
        report = None
    summary = {
        "model": str(args.out), "model_version": meta["model_version"], "kind": config.model,
        "channels": table.channels, "slow_channels": meta["slow_channels"], "rows": rows,
        "window": config.window, "threshold": round(result.threshold.value, 4),
        "train_seconds": result.metrics["train_seconds"], "epochs": result.metrics["epochs"],
        "max_gap_s": None if result.max_gap_ms is None else result.max_gap_ms / 1000,
        "skipped_rows": result.metrics["skipped_rows"],
        "calibration_false_alarm_rate": round(result.metrics["calibration_false_alarm_rate"], 4),
        "report": str(report) if report else None,
    }
    print(json.dumps(summary, indent=2))
    return 0


@contextlib.contextmanager
def progress_bar(config: TrainConfig, args: argparse.Namespace):
    """A bar on a terminal, else a log line per epoch; at most ``config.epochs`` (the sample
    budget may end training sooner, and the bar closes then)."""
    if args.no_progress or not sys.stderr.isatty():
        yield lambda epoch, losses: log.info("epoch %d (at most %d) %s", epoch, config.epochs,
                                             losses)
        return
    from tqdm import tqdm

    with tqdm(total=config.epochs, desc=f"training {config.model}", unit="epoch") as bar:
        def update(epoch: int, losses: dict[str, float]) -> None:
            bar.set_postfix({k[:6]: f"{v:.3g}" for k, v in losses.items()})
            bar.update(1)

        yield update


def fingerprint(ts_ms: np.ndarray, values: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(ts_ms, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return "sha256:" + digest.hexdigest()


def load_scored(args: argparse.Namespace, label_column: str | None = None):
    """Load the model and the file with the model's channels; score every row."""
    from connectors.file import DataError, read_table
    from detector.artifact import load_artifact
    from detector.offline import score_series, series_alerts

    if args.stride < 1:
        raise DataError(f"--stride must be at least 1, got {args.stride}")
    check_max_gap(args.max_gap_s)
    if args.episode_end_windows < 1:
        raise DataError(f"--episode-end-windows must be at least 1, got {args.episode_end_windows}")
    artifact = load_artifact(args.model, device=args.device)
    meta = artifact.meta
    ts_col = args.timestamp_column or meta.get("timestamp_column")
    table = read_table(args.data, sep=args.sep, timestamp_column=ts_col,
                       channels=meta["channels"], label_column=label_column)
    window = artifact.detector.window
    if len(table.values) < window:
        raise DataError(f"{args.data}: {len(table.values)} rows, fewer than the window of {window}")
    stream = StreamConfig(window, args.stride, artifact.max_gap_ms(args.max_gap_s))
    ts_ms = table.row_ts_ms()
    scored = score_series(artifact.detector, artifact.threshold, ts_ms, table.values, stream)
    if scored.stats.duplicates:
        log.warning("skipped %d of %d rows whose timestamp repeats or goes back (no score)",
                    scored.stats.duplicates, len(ts_ms))
    alerts = series_alerts(scored, ts_ms, artifact.detector.channels, artifact.threshold,
                           artifact.meta["model_version"], args.alert_mode,
                           args.episode_end_windows)
    return artifact, table, scored, alerts


def check_max_gap(max_gap_s: float | None) -> None:
    from connectors.file import DataError

    if max_gap_s is not None and not max_gap_s >= 0:
        raise DataError(f"--max-gap-s must be 0 (never) or positive, got {max_gap_s}")


def cmd_score(args: argparse.Namespace) -> int:
    from connectors.file import DataError, write_episodes_csv, write_scores_csv
    from detector.offline import episode_rows

    if args.episodes and args.alert_mode != EPISODE:
        raise DataError("--episodes needs --alert-mode episode")
    artifact, table, scored, alerts = load_scored(args)
    write_scores_csv(
        args.out, table.timestamps, scored.scores, alerts.flags,
        contributions=scored.contributions if args.contributions else None,
        channels=table.channels,
    )
    log.info("wrote %d rows to %s (%d anomalous)", len(scored.scores), args.out,
             int(alerts.flags.sum()))
    if args.episodes:
        episodes = episode_rows(alerts)
        write_episodes_csv(args.episodes, episodes)
        log.info("wrote %d episodes to %s", len(episodes), args.episodes)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    if args.plot:
        require("--plot", "plots")  # before the scoring, not after it
    artifact, table, scored, alerts = load_scored(args, label_column=args.label_column)
    part = slice(args.from_row, None)
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
