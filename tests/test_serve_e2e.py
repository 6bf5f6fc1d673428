"""``ganwatch serve`` end to end: the real CLI in a subprocess, a real trained model, the real
broker and Redis. Files are replayed with ``ganwatch.replay.publish``; the output topics are read
back and compared with offline scoring (``ganwatch score``) and the alert rules applied to it.

Every wait has a deadline; every subprocess is stopped in a finally block; topics, groups and Redis
prefixes are unique per test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from kafka import KafkaConsumer, TopicPartition

from connectors.embedded import free_port
from connectors.file import Table, read_table
from detector.alert import AlertContext, Verdict, make_alerts
from detector.artifact import Artifact, load_artifact
from detector.message import iso_ms
from detector.offline import score_series
from detector.stream import StreamConfig
from ganwatch import cli
from ganwatch.replay import publish
from tests.contract import TOPIC_SCHEMA, check
from training.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["flow", "pressure", "temp"]
T0 = 1_583_748_873_000
ROWS = 300
FAULTS = {"flow": range(120, 126), "pressure": range(220, 226)}  # +15 and +8: far outside normal
END_WINDOWS = 3
MAX_GAP_MS = 300_000  # the serve default (--max-gap-s 300)
WAIT_S = 90
ENTITY = "pump-1"


def normal_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = np.sin(2 * np.pi * t / 4)
    values = np.stack([10 + 2 * load + 0.3 * rng.normal(size=n),
                       5 - load + 0.2 * rng.normal(size=n),
                       60 + 0.01 * t + 0.05 * rng.normal(size=n)], axis=1)  # temp drifts: slow
    return T0 + 1000 * t.astype(np.int64), values


def train_model(directory: Path, seed: int) -> Path:
    ts, values = normal_data(400, seed=0)
    config = TrainConfig(window=8, epochs=2, hidden=8, latent=4, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only contends on a 2-core box
    try:
        result = train(ts, values, CHANNELS, config)
    finally:
        torch.set_num_threads(threads)
    result.save(directory, {"timestamp_column": "timestamp"})
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return train_model(tmp_path_factory.mktemp("model-a"), seed=0)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    return train_model(tmp_path_factory.mktemp("model-b"), seed=1)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    """Normal readings with a flow spike and a pressure step injected."""
    ts, values = normal_data(ROWS, seed=5)
    values[FAULTS["flow"], 0] += 15
    values[FAULTS["pressure"], 1] += 8
    frame = pd.DataFrame(values, columns=CHANNELS)
    frame.insert(0, "timestamp", [iso_ms(t) for t in ts])
    path = tmp_path_factory.mktemp("data") / "faults.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def table(data_csv) -> Table:
    return read_table(data_csv, timestamp_column="timestamp", channels=CHANNELS)


def offline(artifact: Artifact, table: Table, stride: int = 1):
    return score_series(artifact.detector, artifact.threshold, table.ts_ms, table.values,
                        StreamConfig(artifact.detector.window, stride, artifact.max_gap_ms()))


def expected_alerts(artifact: Artifact, table: Table, from_row: int = 0) -> list[dict]:
    """The alerts of an uninterrupted run: offline scores through the episode rules."""
    ctx = AlertContext(CHANNELS, artifact.threshold.value, artifact.meta["model_version"], 0)
    scored, episode, out = offline(artifact, table), {}, []
    for i in np.flatnonzero(~np.isnan(scored.scores)):
        if i >= from_row:
            verdict = Verdict(ENTITY, int(table.ts_ms[i]), 0, float(scored.scores[i]),
                              bool(scored.flags[i]), scored.contributions[i])
            out.extend(make_alerts(verdict, episode, "episode", END_WINDOWS, ctx))
    return out


def rows(table: Table, start: int, stop: int | None = None) -> Table:
    part = slice(start, stop)
    return dataclasses.replace(table, values=table.values[part], ts_ms=table.ts_ms[part],
                               timestamps=table.timestamps[part])


# kafka-python logs a socket error on a broker connection with its traceback, then reconnects
KAFKA_SOCKET_ERROR = ("kafka.net.transport", "Error receiving network data")


def tracebacks(log: str) -> list[str]:
    """The records of a ``serve`` log (text or JSON lines) that carry a traceback, except
    kafka-python's own report of a broker socket error, which it handles by reconnecting."""
    records = re.split(r"\n(?=\{|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log)
    return [r for r in records
            if "Traceback" in r and not all(part in r for part in KAFKA_SOCKET_ERROR)]


def wait_until(check: Callable[[], bool], what: str, *procs: "Serve", timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while not check():
        for p in procs:
            assert p.running, f"serve exited ({p.proc.returncode}) waiting for {what}:\n{p.tail()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n"
                                 + "\n".join(p.tail() for p in procs))
        time.sleep(0.1)


class TopicReader:
    """A whole one-partition topic from the beginning: no group, assign + seek_to_beginning.
    Every record read must satisfy ``schema`` (``ganwatch schema NAME``)."""

    def __init__(self, bootstrap: str, topic: str, schema: str) -> None:
        self.schema = schema
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                       enable_auto_commit=False, fetch_max_wait_ms=100)
        tp = TopicPartition(topic, 0)
        self._consumer.assign([tp])
        self._consumer.seek_to_beginning(tp)
        self.records: list = []

    def poll(self) -> list[dict]:
        for batch in self._consumer.poll(timeout_ms=200).values():
            self.records.extend(batch)
        return [check(json.loads(r.value), self.schema) for r in self.records]

    def settle(self) -> list[dict]:
        for _ in range(5):  # anything extra (a duplicate) would show up now
            self.poll()
        return self.poll()

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class Serve:
    """``python -m ganwatch serve`` as a child process, output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ganwatch", "serve", *args],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, cwd=REPO)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def serve_env(fast_consumer_config: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANWATCH_")}
    env.update({f"GANWATCH_{k.upper()}": str(v) for k, v in fast_consumer_config.items()})
    env["OMP_NUM_THREADS"] = "1"  # keep the 2-core test box responsive
    return env


@dataclasses.dataclass
class Rig:
    """Fresh topics, group and Redis prefix for one test; ``start`` runs serve on them."""

    bootstrap: str
    redis_url: str
    topics: dict[str, str]
    env: dict[str, str]
    tmp: Path
    group: str = dataclasses.field(default_factory=lambda: f"g-{uuid.uuid4().hex}")
    prefix: str = dataclasses.field(default_factory=lambda: f"e2e-{uuid.uuid4().hex}")
    started: list[Serve] = dataclasses.field(default_factory=list)
    readers: list[TopicReader] = dataclasses.field(default_factory=list)

    def start(self, model: Path, *extra: str, env: dict[str, str] | None = None) -> Serve:
        args = ["--model", str(model), "--bootstrap-servers", self.bootstrap,
                "--input-topic", self.topics["readings"], "--group-id", self.group,
                "--alerts-topic", self.topics["alerts"], "--dead-letter-topic", self.topics["dead"],
                "--redis-url", self.redis_url, "--state-prefix", self.prefix, "--device", "cpu",
                "--episode-end-windows", str(END_WINDOWS), "--metrics-port", "0",
                "--metrics-host", "127.0.0.1", "--reload-poll-s", "0", "--max-batch", "50", *extra]
        serve = Serve(args, {**self.env, **(env or {})}, self.tmp / f"serve-{len(self.started)}.log")
        self.started.append(serve)
        return serve

    def reader(self, name: str) -> TopicReader:
        self.readers.append(TopicReader(self.bootstrap, self.topics[name], TOPIC_SCHEMA[name]))
        return self.readers[-1]

    def publish(self, table: Table, **kw) -> int:
        return publish(table, ENTITY, self.bootstrap, self.topics["readings"], **kw)


@contextlib.contextmanager
def running_rig(bootstrap: str, redis_url: str, topic_factory, consumer_config: dict,
                tmp_path: Path, prefix: str) -> Iterator[Rig]:
    """A ``Rig`` on fresh topics; every ``serve`` it started is stopped and its readers closed."""
    topics = {name: topic_factory(prefix=f"{prefix}-{name}")
              for name in ("readings", "alerts", "dead", "scores")}
    made = Rig(bootstrap, redis_url, topics, serve_env(consumer_config), tmp_path)
    try:
        yield made
    finally:
        for serve in made.started:
            serve.stop()
        for reader in made.readers:
            reader.close()


@pytest.fixture
def rig(kafka_bootstrap, redis_url, topic_factory, fast_consumer_config, tmp_path):
    with running_rig(kafka_bootstrap, redis_url, topic_factory, fast_consumer_config, tmp_path,
                     "e2e") as made:
        yield made


CONTRACT = {"alert_id", "type", "entity", "ts", "ts_ms", "window_start", "score", "threshold",
            "channels", "model_version", "detected_at"}


def test_replayed_faults_become_alerts_with_every_contract_field(rig, model_dir, data_csv, table):
    artifact = load_artifact(model_dir, device="cpu")
    want = expected_alerts(artifact, table)
    assert [a["type"] for a in want] == ["anomaly_start", "anomaly_end"] * 2
    assert rig.publish(table) == ROWS
    reader = rig.reader("alerts")
    serve = rig.start(model_dir)
    wait_until(lambda: len(reader.poll()) >= len(want), "the alerts", serve)
    got = reader.settle()
    assert [(a["alert_id"], a["type"], a["ts_ms"]) for a in got] == [
        (a["alert_id"], a["type"], a["ts_ms"]) for a in want]
    assert {r.key for r in reader.records} == {ENTITY.encode()}
    for alert in got:
        assert CONTRACT <= set(alert), CONTRACT - set(alert)
        assert alert["entity"] == ENTITY and alert["ts"] == iso_ms(alert["ts_ms"])
        assert alert["window_start"] == iso_ms(alert["ts_ms"] - 7000)  # window of 8, 1 s apart
        assert alert["threshold"] == pytest.approx(artifact.threshold.value)
        assert alert["model_version"] == artifact.meta["model_version"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", alert["detected_at"])
        shares = [c["contribution"] for c in alert["channels"]]
        assert sorted(c["name"] for c in alert["channels"]) == sorted(CHANNELS)
        assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0)
    starts = [a for a in got if a["type"] == "anomaly_start"]
    assert all(a["score"] >= a["threshold"] for a in starts)
    for start, (channel, fault) in zip(starts, FAULTS.items()):
        assert table.ts_ms[fault.start] <= start["ts_ms"] <= table.ts_ms[fault.stop - 1] + 7000
        assert start["channels"][0]["name"] == channel  # the faulty channel leads
    assert_score_episodes_match(got, rig.tmp, model_dir, data_csv, table)


def assert_score_episodes_match(got: list[dict], tmp: Path, model_dir: Path, data_csv: Path,
                                table: Table) -> None:
    """``ganwatch score --episodes`` on the same rows gives serve's episodes, row for row."""
    scores, episodes = tmp / "scores.csv", tmp / "episodes.csv"
    assert cli.main(["score", "--model", str(model_dir), "--data", str(data_csv), "--out",
                     str(scores), "--episodes", str(episodes), "--episode-end-windows",
                     str(END_WINDOWS), "--device", "cpu"]) == 0
    frame = pd.read_csv(episodes)
    starts = [a for a in got if a["type"] == "anomaly_start"]
    ends = [a for a in got if a["type"] == "anomaly_end"]
    assert frame["start"].tolist() == [a["ts"] for a in starts]
    assert frame["end"].tolist() == [a["ts"] for a in ends]
    assert frame["peak_ts"].tolist() == [a["peak_ts"] for a in ends]
    assert frame["peak_score"].to_numpy() == pytest.approx([a["peak_score"] for a in ends])
    assert [t.split("=")[0] for t in frame["top_channels"].str.split(";").str[0]] == [
        a["channels"][0]["name"] for a in ends]
    # is_anomaly is 1 from the window that opened each episode to the one that closed it
    flagged = pd.read_csv(scores)["is_anomaly"].to_numpy()
    ts = table.ts_ms
    want = np.zeros(len(ts), dtype=int)
    for start, end in zip(starts, ends):
        want[(ts >= start["ts_ms"]) & (ts <= end["ts_ms"])] = 1
    assert flagged.tolist() == want.tolist()


@pytest.mark.parametrize("stride, max_batch, pipeline", [
    (1, 50, "on"), (3, 50, "on"),
    (1, 300, "on"),  # one batch of 293 windows: scored in the child process (ProcessDetector)
    (1, 300, "off"),  # the same in the worker's own process
])
def test_published_scores_match_offline_scoring(rig, model_dir, data_csv, table, tmp_path, stride,
                                                max_batch, pipeline):
    out = tmp_path / "offline.csv"
    assert cli.main(["score", "--model", str(model_dir), "--data", str(data_csv),
                     "--timestamp-column", "timestamp", "--stride", str(stride), "--out", str(out),
                     "--alert-mode", "window", "--device", "cpu"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == ROWS
    scored = frame["score"].notna().to_numpy()
    want = dict(zip(table.ts_ms[scored].tolist(), frame["score"][scored]))
    want_anomalous = set(table.ts_ms[scored & (frame["is_anomaly"] == 1).to_numpy()].tolist())
    assert want_anomalous  # the faults are found at all
    rig.publish(table)
    scores, alerts = rig.reader("scores"), rig.reader("alerts")
    serve = rig.start(model_dir, "--alert-mode", "window", "--scores-topic", rig.topics["scores"],
                      "--stride", str(stride), "--max-batch", str(max_batch),
                      "--pipeline", pipeline)
    wait_until(lambda: len(scores.poll()) >= len(want)
               and len(alerts.poll()) >= len(want_anomalous), "every score and alert", serve)
    got, got_alerts = scores.settle(), alerts.settle()
    assert len(got) == len(want) and {r["ts_ms"] for r in got} == set(want)
    for record in got:
        assert record["score"] == pytest.approx(want[record["ts_ms"]], abs=1e-5), record
    assert {r["ts_ms"] for r in got if r["is_anomaly"]} == want_anomalous
    assert sorted(a["ts_ms"] for a in got_alerts) == sorted(want_anomalous)
    assert {a["type"] for a in got_alerts} == {"anomaly"}


def test_kill_9_mid_stream_then_restart_loses_no_alert(rig, model_dir, table):
    artifact = load_artifact(model_dir, device="cpu")
    want_ids = {a["alert_id"] for a in expected_alerts(artifact, table)}
    scored = offline(artifact, table)
    want_scores = {int(t): s for t, s in zip(table.ts_ms, scored.scores) if not np.isnan(s)}
    window = artifact.detector.window
    scores, alerts = rig.reader("scores"), rig.reader("alerts")
    extra = ("--scores-topic", rig.topics["scores"], "--max-batch", "10")
    first = rig.start(model_dir, *extra)
    # the normal head first, so that the worker is live (joined, caught up) before the faults
    head = min(FAULTS["flow"]) - 20
    assert rig.publish(rows(table, 0, head)) == head
    wait_until(lambda: {r["ts_ms"] for r in scores.poll()} >= set(table.ts_ms[window - 1:head]),
               "the head's scores", first)
    # then paced, so that the worker is busy with small batches when it is killed: the rest
    # takes (ROWS - head) / 50 = 3.6 s, the first alert comes 0.4 s in
    publisher = threading.Thread(target=publish, args=(rows(table, head), ENTITY, rig.bootstrap,
                                                        rig.topics["readings"]),
                                 kwargs={"rate": 50.0})
    publisher.start()
    try:
        wait_until(lambda: len(alerts.poll()) >= 1, "the first alert", first)
        first.proc.kill()
        assert first.proc.wait(20) == -signal.SIGKILL
        seen_at_kill = {r["ts_ms"] for r in scores.poll()}
        assert len(seen_at_kill) < len(want_scores), "killed after the end: not mid-stream"
        second = rig.start(model_dir, *extra)
        wait_until(lambda: {r["ts_ms"] for r in scores.poll()} >= set(want_scores)
                   and {a["alert_id"] for a in alerts.poll()} >= want_ids, "every score and alert",
                   second)
    finally:
        publisher.join(WAIT_S)
    got_scores, got_alerts = scores.settle(), alerts.settle()
    assert {a["alert_id"] for a in got_alerts} == want_ids  # none lost, none invented
    by_id: dict[str, tuple] = {}
    for a in got_alerts:  # a replayed alert is the same alert
        assert by_id.setdefault(a["alert_id"], (a["type"], a["ts_ms"], a["score"])) == (
            a["type"], a["ts_ms"], a["score"])
    for record in got_scores:  # windows restored from Redis score as the uninterrupted series
        assert record["score"] == pytest.approx(want_scores[record["ts_ms"]], abs=1e-5), record


def test_sigterm_exits_zero_after_committing_everything(rig, model_dir, table):
    n_scores = int((~np.isnan(offline(load_artifact(model_dir, device="cpu"), table).scores)).sum())
    rig.publish(table)
    scores = rig.reader("scores")
    serve = rig.start(model_dir, "--scores-topic", rig.topics["scores"],
                      env={"GANWATCH_LOG_FORMAT": "json"})
    wait_until(lambda: len(scores.poll()) >= n_scores, "every score", serve)
    serve.proc.send_signal(signal.SIGTERM)
    try:
        rc = serve.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve ignored SIGTERM:\n{serve.tail()}") from None
    assert rc == 0, serve.tail()
    assert "worker stopped" in serve.tail() and not tracebacks(serve.tail())
    docs = [json.loads(line) for line in serve.log.read_text().splitlines()]  # JSON lines only
    said = [d["message"] for d in docs if d["logger"].startswith("ganwatch")]
    assert said[-1] == "worker stopped" and "torch uses 1 CPU thread" in said
    # shutdown closed the producer and left the group without any close failing
    assert not [d for d in docs if d["logger"] == "ganwatch.serve" and d["level"] != "INFO"]
    consumer = KafkaConsumer(bootstrap_servers=rig.bootstrap, group_id=rig.group,
                             enable_auto_commit=False)
    try:
        tp = TopicPartition(rig.topics["readings"], 0)
        consumer.assign([tp])
        assert consumer.committed(tp) == ROWS and consumer.position(tp) == ROWS  # lag 0
    finally:
        consumer.close(autocommit=False)


def reloads(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    found = re.findall(r'^ganwatch_model_reloads_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(n) for result, n in found}


def test_sighup_and_a_replaced_model_reload_it(rig, model_dir, other_model_dir, table, tmp_path):
    live = Path(shutil.copytree(model_dir, tmp_path / "live-model"))
    a, b = (load_artifact(d, device="cpu") for d in (model_dir, other_model_dir))
    assert a.meta["model_version"] != b.meta["model_version"]
    port = free_port()
    alerts = rig.reader("alerts")
    serve = rig.start(live, "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                      "--reload-poll-s", "0.2")
    rig.publish(rows(table, 0, 180))  # the flow fault, start to end
    wait_until(lambda: len(alerts.poll()) >= 2, "the first episode", serve)
    assert f"health server on http://127.0.0.1:{port}" in serve.log.read_text()  # loopback only
    serve.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads(port).get("ok", 0) >= 1, "the SIGHUP reload", serve)
    shutil.copyfile(other_model_dir / "model.safetensors", live / "model.safetensors")
    shutil.copyfile(other_model_dir / "model.json", live / ".model.json.tmp")
    os.replace(live / ".model.json.tmp", live / "model.json")  # model.json last, atomically
    wait_until(lambda: reloads(port).get("ok", 0) >= 2, "the reload of the new model", serve)
    rig.publish(rows(table, 180))  # the pressure fault, judged by the new model
    want = expected_alerts(b, table, from_row=180)
    wait_until(lambda: len(alerts.poll()) >= 2 + len(want), "the second episode", serve)
    got = alerts.settle()
    assert {a_["model_version"] for a_ in got[:2]} == {a.meta["model_version"]}
    assert [x["alert_id"] for x in got[2:]] == [x["alert_id"] for x in want]
    assert {x["model_version"] for x in got[2:]} == {b.meta["model_version"]}
    (live / "model.json").write_text("{}")  # a broken replacement is refused, serve goes on
    wait_until(lambda: reloads(port).get("error", 0) >= 1, "the refused reload", serve)
    assert serve.running and reloads(port)["ok"] == 2


VALID = ["--model", "{model}", "--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in",
         "--alerts-topic", "alerts", "--dead-letter-topic", "dead",
         "--redis-url", "redis://127.0.0.1:9/0", "--metrics-host", "127.0.0.1"]


def without(args: list[str], flag: str) -> list[str]:
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def run_serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GANWATCH_")}
    return subprocess.run([sys.executable, "-m", "ganwatch", "serve", *args], cwd=REPO,
                          env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The last stderr line, once sure it is the CLI's one-line error and nothing crashed."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ganwatch serve: error: "), done.stderr
    return last


@pytest.mark.parametrize("change, env, names", [
    (lambda a: without(a, "--model"), {}, "--model"),
    (lambda a: without(a, "--alerts-topic"), {}, "--alerts-topic"),
    (lambda a: a + ["--stride", "0"], {}, "--stride"),
    (lambda a: a, {"GANWATCH_STRIDE": "-2"}, "GANWATCH_STRIDE"),
    (lambda a: a + ["--redis-url", "http://127.0.0.1:6379"], {}, "--redis-url"),
    (lambda a: a + ["--bootstrap-servers", "localhost"], {}, "--bootstrap-servers"),
    (lambda a: a + ["--alert-mode", "sometimes"], {}, "--alert-mode"),
], ids=["no-model", "no-alerts-topic", "stride-0", "env-stride", "redis-url", "bootstrap", "mode"])
def test_bad_serve_input_is_one_line_naming_the_problem(model_dir, change, env, names):
    done = run_serve(change([a.format(model=model_dir) for a in VALID]), env)
    assert len(done.stderr.strip().splitlines()) == 1  # refused before anything else is logged
    assert names in error_line(done)


def test_a_missing_model_directory_is_reported_without_a_traceback(tmp_path):
    line = error_line(run_serve([a.format(model=tmp_path / "nowhere") for a in VALID]))
    assert "nowhere" in line


def test_an_unreachable_broker_is_reported_without_a_traceback(model_dir):
    # kafka-python retries the bootstrap for about 30 s before giving up
    line = error_line(run_serve([a.format(model=model_dir) for a in VALID]))
    assert "Kafka" in line and "127.0.0.1:9" in line


def test_a_taken_metrics_port_is_reported_without_a_traceback(model_dir, kafka_bootstrap,
                                                              redis_url):
    args = [a.format(model=model_dir) for a in VALID]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = error_line(run_serve(args + [
            "--bootstrap-servers", kafka_bootstrap, "--redis-url", redis_url,
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]))
    assert f"127.0.0.1:{port}" in line


def test_tracebacks_finds_ours_and_lets_kafka_python_report_a_socket_error():
    kafka = ("2026-12-02 03:40:01,123 ERROR kafka.net.transport: <conn>: Error receiving network "
             "data closing socket\nTraceback (most recent call last):\n  File \"x\"\n"
             "ConnectionResetError: [Errno 104] Connection reset by peer")
    ours = ("2026-12-02 03:40:02,000 ERROR detector.worker: batch failed\nTraceback (most recent "
            "call last):\n  File \"y\"\nRuntimeError: boom")
    plain = "2026-12-02 03:40:03,000 INFO detector.worker: worker stopped"
    as_json = json.dumps({"logger": "detector.worker", "exc": "Traceback (most recent call last)"})
    assert tracebacks("\n".join([kafka, plain])) == []
    assert tracebacks("\n".join([kafka, ours, plain])) == [ours]
    assert tracebacks("\n".join([plain, as_json])) == [as_json]
