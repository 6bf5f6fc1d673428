"""``ganwatch demo``: broker, Redis, simulated pumps, a trained model and the worker on one machine.

It starts a memory-only Kafka-protocol broker (tansu) and Redis on free loopback ports, simulates
pumps with injected faults, trains one ``lstm-gan`` on every pump's fault-free prefix (one fleet
file with an entity column, through ``ganwatch.fit``, as an operator would train), runs the
worker in a thread, replays the rest of the telemetry interleaved, prints alerts as they arrive and
ends with a summary (faults detected or missed, false alarms, delays, throughput), a JSON file and a
PNG. Everything it started is stopped on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from detector.stream import DEFAULT_MAX_GAP_S
from ganwatch import demo_report as report
from ganwatch import demo_stream as live
from ganwatch.demo_stream import say
from ganwatch.extra import require
from training.config import TrainConfig

if TYPE_CHECKING:  # pandas and torch: imported when the demo runs, not for `demo --help`
    from connectors.file import Table
    from training.trainer import TrainResult

TOPICS = {"input": "ganwatch.readings", "alerts": "ganwatch.alerts",
          "dead_letter": "ganwatch.dead-letter", "scores": "ganwatch.scores"}
INPUT_PARTITIONS = 4
DEFAULT_ENTITIES, DEFAULT_ROWS, DEFAULT_EPOCHS, DEFAULT_SPEEDUP = 3, 2400, 10, 30.0
DAYS = 4  # simulated days in a run, so that training sees almost two of them
TRAIN_SHARE = 0.75  # of each pump's fault-free prefix; the rest is replayed as unseen normal data
WORKER_TIMEOUT_S = 120.0  # for the worker to catch up once everything is published
FLEET_FILE, ENTITY_COLUMN = "fleet.csv", "entity"  # every pump's readings, one table


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on simulated pumps with injected faults")
    p.add_argument("--entities", type=int, default=DEFAULT_ENTITIES, help="number of pumps (default %(default)s)")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                   help=f"readings per pump, 1 s apart, a simulated day being 1/{DAYS} of them "
                        f"(default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the simulation and the training (default %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs (default %(default)s)")
    p.add_argument("--out", default="demo-out", help="output directory: model, data, report (default %(default)s)")
    p.add_argument("--speedup", type=float, default=DEFAULT_SPEEDUP,
                   help="replay X times faster than the readings' timing, 0 = as fast as "
                        "possible (default %(default)s)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave broker, Redis and worker up afterwards, until Ctrl-C "
                        "(default: stop at the end)")
    p.set_defaults(func=cmd_demo)


@dataclass(frozen=True)
class DemoOptions:
    entities: int = DEFAULT_ENTITIES
    rows: int = DEFAULT_ROWS
    seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    out: str = "demo-out"
    speedup: float = DEFAULT_SPEEDUP
    keep_running: bool = False

    def check(self) -> None:
        if not 1 <= self.entities <= 50:
            raise ValueError(f"--entities must be between 1 and 50, got {self.entities}")
        if self.rows < 400:
            raise ValueError(f"--rows must be at least 400, got {self.rows}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.speedup < 0:
            raise ValueError(f"--speedup must be 0 (as fast as possible) or more, got {self.speedup}")


def cmd_demo(args: argparse.Namespace) -> int:
    opts = DemoOptions(args.entities, args.rows, args.seed, args.epochs, args.out, args.speedup,
                       args.keep_running)
    opts.check()
    require("ganwatch demo", "embedded", "plots")
    run_demo(opts)
    return 0


@dataclass
class Scenario:
    """The simulated pumps: telemetry with its faults, the CSV files (one per pump, and the fleet
    file of all of them) and where each pump's training rows end."""

    telemetry: Any
    tables: dict[str, Table]
    paths: list[Path]
    train_rows: int
    fleet: Path | None = None


def simulate_pumps(opts: DemoOptions, directory: Path) -> Scenario:
    from connectors.file import read_table
    from ganwatch.simulator import fleet_frame, simulate, write_csv

    names = [f"pump-{i + 1}" for i in range(opts.entities)]
    telemetry = simulate(names, opts.rows, opts.seed, period=opts.rows // DAYS)
    paths = write_csv(telemetry, directory)
    fleet = directory / FLEET_FILE
    fleet_frame(telemetry, ENTITY_COLUMN).to_csv(fleet, index=False)
    # read back through the file reader, as `ganwatch train` and `replay` would read them
    tables = {e: read_table(p, timestamp_column="ts", channels=list(telemetry.channels))
              for e, p in zip(names, paths)}
    train_rows = int(telemetry.normal_rows * TRAIN_SHARE)
    return Scenario(telemetry, tables, paths, train_rows, fleet)


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo end to end; return the summary (also written to ``<out>/summary.json``)."""
    from connectors.embedded import EmbeddedKafka, EmbeddedRedis
    from connectors.kafka import create_topics

    started = time.monotonic()
    out = Path(opts.out)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_libraries())
        stack.enter_context(_terminate_as_interrupt())
        say(f"ganwatch demo: {opts.entities} pumps x {opts.rows} readings, output in {out}/")
        stage("[1/6] starting the Kafka-protocol broker (tansu) and Redis on 127.0.0.1")
        kafka = stack.enter_context(EmbeddedKafka())
        redis = stack.enter_context(EmbeddedRedis())
        servers = {"kafka": {"pid": kafka.pid, "bootstrap": kafka.bootstrap},
                   "redis": {"pid": redis.pid, "url": redis.url}}
        create_topics(kafka.bootstrap, [TOPICS["input"]], partitions=INPUT_PARTITIONS)
        create_topics(kafka.bootstrap, [TOPICS["alerts"], TOPICS["dead_letter"], TOPICS["scores"]])
        say(f"      broker {kafka.bootstrap} (pid {kafka.pid}), Redis {redis.url} (pid {redis.pid})")
        say(f"      topics {TOPICS['input']} ({INPUT_PARTITIONS} partitions), "
            + ", ".join(TOPICS[k] for k in ("alerts", "dead_letter", "scores")))

        stage("[2/6] simulating pump telemetry with injected faults")
        sim = simulate_pumps(opts, out / "data")
        say(f"      channels {', '.join(sim.telemetry.channels)}; CSV files in {out / 'data'}/")
        for f in sim.telemetry.faults:
            ts = sim.tables[f.entity].ts_ms
            say(f"      fault: {f.entity:<8} {f.kind:<17} on {f.channel:<11} "
                f"{report.iso(ts[f.start])[11:19]} to {report.iso(ts[f.end - 1])[11:19]}")

        config = TrainConfig(epochs=opts.epochs, seed=opts.seed, max_gap_ms=DEFAULT_MAX_GAP_S * 1000)
        stage(f"[3/6] training {config.model} on {sim.fleet.name}, the first {sim.train_rows} "
              f"fault-free readings of each pump ({config.epochs} epochs)")
        model_dir = out / "model"
        meta, result = train_model(sim.fleet, list(sim.telemetry.channels), sim.train_rows, config,
                                   model_dir)
        say(f"      model {meta['model_version']} in {model_dir}/ (threshold "
            f"{result.threshold.value:.2f}, {result.metrics['train_seconds']:.0f} s)")

        stage("[4/6] starting the worker")
        running, metrics_port, alerts, scores = _start_worker(stack, kafka.bootstrap, redis.url,
                                                              model_dir)
        say(f"      metrics and health on http://127.0.0.1:{metrics_port}/metrics")

        replayed = {e: live.rows_from(t, sim.train_rows) for e, t in sim.tables.items()}
        n_live = len(next(iter(replayed.values())).values)
        pace = f"{opts.speedup:g}x real time" if opts.speedup else "as fast as possible"
        stage(f"[5/6] replaying the next {n_live} readings of each pump, interleaved, {pace}; "
            f"alerts as they arrive:")
        say("      " + report.TABLE_HEADER)
        replay_started = time.monotonic()
        published = live.replay_interleaved(replayed, kafka.bootstrap, TOPICS["input"], opts.speedup)
        windows = sum(max(0, len(t.values) - config.window + 1) for t in replayed.values())
        caught_up = live.wait_for_worker(running, windows, alerts, scores, WORKER_TIMEOUT_S)
        stream_s = time.monotonic() - replay_started

        stage("[6/6] summary")
        spans = report.fault_spans(sim.telemetry.faults,
                                   {e: t.ts_ms for e, t in sim.tables.items()}, config.window)
        summary = report.summarise(spans, alerts.records(),
                                   {e: int(t.ts_ms[-1]) for e, t in sim.tables.items()})
        summary.update(live.throughput(running, published, stream_s, caught_up))
        for line in report.summary_lines(summary):
            say("  " + line)
        png = report.plot_demo_report(
            out / "demo-report.png", {e: (t.ts_ms, t.values) for e, t in replayed.items()},
            list(sim.telemetry.channels), live.score_series(scores.records()),
            result.threshold.value, spans, report.unique_alerts(alerts.records()))
        summary.update(
            options=asdict(opts), model=str(model_dir), model_version=meta["model_version"],
            threshold=result.threshold.value, train_seconds=result.metrics["train_seconds"],
            train_rows_per_entity=sim.train_rows, replayed_rows_per_entity=n_live, topics=TOPICS,
            servers=servers, report=str(png), data=[str(p) for p in sim.paths],
            fleet_data=str(sim.fleet),
            wall_seconds=round(time.monotonic() - started, 1))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(f"  Report: {png}")
        say(f"  Summary JSON: {out / 'summary.json'}")
        if opts.keep_running:
            first = next(iter(sim.tables))
            say(live.keep_running_help(kafka.bootstrap, redis.url, metrics_port, TOPICS,
                                       sim.tables[first], sim.paths[0], config.window))
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
                    _stop_if_terminated()  # a Ctrl-C a finaliser swallowed
        say("stopping the worker, the broker and Redis")
    say(f"done in {time.monotonic() - started:.0f} s")
    return summary


def _start_worker(stack: contextlib.ExitStack, bootstrap: str, redis_url: str, model_dir: Path
                  ) -> tuple[Any, int, live.TopicTail, live.TopicTail]:
    """The worker in a thread, with fast consumer settings, plus readers of alerts and scores."""
    from connectors.embedded import free_port
    from ganwatch.serve import start_worker
    from ganwatch.settings import Settings

    settings = Settings.load({
        "model": str(model_dir), "bootstrap_servers": bootstrap, "input_topics": [TOPICS["input"]],
        "group_id": "ganwatch-demo", "alerts_topic": TOPICS["alerts"],
        "dead_letter_topic": TOPICS["dead_letter"], "scores_topic": TOPICS["scores"],
        "redis_url": redis_url, "metrics_host": "127.0.0.1", "metrics_port": free_port(),
        # tansu holds a group join for about session_timeout / 2
        "session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "fetch_max_wait_ms": 100,
    }, env={})  # the demo's own servers, whatever GANWATCH_* says
    alerts = stack.enter_context(live.TopicTail(bootstrap, TOPICS["alerts"],
                                                on_record=live.show_alert))
    scores = stack.enter_context(live.TopicTail(bootstrap, TOPICS["scores"]))
    running = start_worker(settings)
    stack.callback(live.stop_worker, running)
    return running, settings.metrics_port, alerts, scores


def train_model(fleet: Path, channels: list[str], rows: int, config: TrainConfig,
                model_dir: Path) -> tuple[dict[str, Any], TrainResult]:
    """Train one model on the fleet file's first ``rows`` readings of each pump, in one call as an
    operator would (``ganwatch train --entity-column entity``); write artifact and training PNG."""
    from ganwatch.api import fit, write_artifact

    with _progress(config.epochs) as progress:
        model = fit(fleet, timestamp="ts", entity=ENTITY_COLUMN, channels=channels,
                    train_rows=rows, epochs=config.epochs, seed=config.seed,
                    max_gap_s=None if config.max_gap_ms is None else config.max_gap_ms / 1000,
                    progress=progress, no_progress=True)
    model.training.extra["training_data"].update(source="ganwatch demo simulator",
                                                 seed=config.seed)
    meta, _ = write_artifact(model, model_dir)
    return meta, model.training.result


@contextlib.contextmanager
def _progress(epochs: int) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A progress bar on a terminal, else one line per epoch."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=epochs, desc="      training", unit="epoch") as bar:
            def update(epoch: int, losses: dict[str, float]) -> None:
                _stop_if_terminated()
                bar.set_postfix({k[:6]: f"{v:.3g}" for k, v in losses.items()})
                bar.update(1)
            yield update
        return
    started = time.monotonic()
    yield lambda epoch, losses: stage(
        f"      epoch {epoch}/{epochs}: reconstruction {losses['reconstruction']:.4f} "
        f"({time.monotonic() - started:.0f} s)")


_TERMINATED = threading.Event()


def _stop_if_terminated() -> None:
    """Re-raise a SIGTERM or Ctrl-C whose KeyboardInterrupt was swallowed: Python drops an
    exception raised while a finaliser runs, and under load the signal can land in one (a
    tensor's, a generator's, a client socket's)."""
    if _TERMINATED.is_set():
        raise KeyboardInterrupt


def stage(text: str) -> None:
    """A step line of the demo; also where a lost SIGTERM is noticed."""
    _stop_if_terminated()
    say(text)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the exit stack stops every server it started; both are
    remembered (``_stop_if_terminated``) in case a finaliser swallows the KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _TERMINATED.clear()

    def interrupt(signum: int, frame: object) -> None:
        _TERMINATED.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """At the default INFO level the clients' connection chatter would bury the alert table."""
    if logging.getLogger().getEffectiveLevel() != logging.INFO:
        yield
        return
    quiet = {"kafka": logging.ERROR, "connectors": logging.WARNING, "detector": logging.WARNING,
             "ganwatch": logging.WARNING, "training": logging.WARNING}
    previous = {name: logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
