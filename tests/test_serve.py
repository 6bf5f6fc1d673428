"""``ganwatch serve`` without servers: Running.shutdown, torch threads, and how serve logs.

The end-to-end runs against the real broker and Redis are in test_serve_e2e.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.memory import InMemorySink, InMemorySource, InMemoryStateStore
from detector.score import Threshold, ZScoreDetector
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig
from ganwatch.cli import build_parser
from ganwatch import serve
from ganwatch.serve import Running, build_worker
from ganwatch.settings import Settings

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"bootstrap_servers": "127.0.0.1:9", "input_topics": ["in"], "alerts_topic": "alerts",
            "dead_letter_topic": "dead", "redis_url": "redis://127.0.0.1:9/0"}


class Source(InMemorySource):
    """A source that counts closes and, like KafkaSource, says whether it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0
        self.closed = False

    def close(self) -> None:
        self.closes += 1
        self.closed = True


class Sink(InMemorySink):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.closes, self.fail = 0, fail

    def close(self) -> None:
        self.closes += 1
        if self.fail:
            raise ConnectionError("broker gone")
        super().close()


class Closable:
    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1

    def stop(self) -> None:  # the health server's name for it
        self.closes += 1


def worker(source: Source, sink: Sink) -> Worker:
    detector = ZScoreDetector(["a"], 2, mean=np.zeros(1), std=np.ones(1), version="z")
    config = WorkerConfig(StreamConfig(2, 1), max_wait_ms=0, backoff_initial_s=0.01)
    return Worker(source, sink, InMemoryStateStore(1), lambda: (detector, Threshold(9.0)), config)


def running(thread_target=None, fail_sink: bool = False) -> tuple[Running, Source, Sink]:
    source, sink = Source(), Sink(fail_sink)
    w, stop = worker(source, sink), threading.Event()
    thread = None
    if thread_target is not None:
        thread = threading.Thread(target=thread_target(w), args=(stop,), daemon=True)
        thread.start()
    return Running(w, stop, thread, Closable(), Closable()), source, sink


def test_shutdown_after_the_loop_closes_the_producer_and_the_consumer_once():
    run, source, sink = running(lambda w: w.run)
    sink.send("alerts", b"k", b"late")  # queued: the producer's close must flush it
    run.shutdown(timeout_s=10)
    assert not run.thread.is_alive() and run.stop.is_set()
    assert (source.closes, sink.closes) == (1, 1)  # the loop closed the source; not again
    assert sink.records == {"alerts": [(b"k", b"late")]}
    assert run.health.closes == 1 and run.store_client.closes == 1
    run.shutdown()  # idempotent
    assert (source.closes, sink.closes, run.store_client.closes) == (1, 1, 1)


def test_shutdown_closes_the_source_when_no_loop_did():
    run, source, sink = running()  # built, never run (serve failed to start, or a test)
    run.shutdown()
    assert (source.closes, sink.closes, run.store_client.closes) == (1, 1, 1)


def test_shutdown_never_closes_the_consumer_under_a_running_loop(caplog):
    release = threading.Event()
    run, source, sink = running(lambda w: (lambda stop: release.wait(10)))  # ignores stop
    try:
        with caplog.at_level(logging.WARNING, logger="ganwatch.serve"):
            run.shutdown(timeout_s=0.2)
        assert source.closes == 0 and sink.closes == 1 and run.store_client.closes == 1
        assert "did not stop within" in caplog.text
    finally:
        release.set()


def test_a_failing_close_is_logged_and_the_rest_still_released(caplog):
    run, source, sink = running(fail_sink=True)
    with caplog.at_level(logging.WARNING, logger="ganwatch.serve"):
        run.shutdown()
    assert "closing the Kafka producer failed: ConnectionError: broker gone" in caplog.text
    assert run.health.closes == 1 and run.store_client.closes == 1 and source.closes == 1


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads, expected", [(1, 1), (0, 2), (3, 3)])
def test_build_worker_applies_torch_threads_before_the_model_loads(
        tmp_path, monkeypatch, two_torch_threads, threads, expected):
    seen: list[int] = []

    def load_artifact(directory, device):
        seen.append(torch.get_num_threads())
        raise FileNotFoundError(f"no model in {directory}")

    monkeypatch.setattr(serve, "load_artifact", load_artifact)
    settings = Settings.load({**REQUIRED, "model": str(tmp_path / "nowhere"),
                              "torch_threads": threads}, env={})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_worker(settings, threading.Event())
    assert seen == [expected]
    assert torch.get_num_threads() == 2  # a failed start leaves torch as it was


def test_shutdown_gives_torch_back_its_thread_count(two_torch_threads):
    run, _, _ = running()
    run.torch_threads_before = 2
    torch.set_num_threads(1)  # as build_worker does with the default torch_threads
    run.shutdown()
    assert torch.get_num_threads() == 2


def test_the_top_level_log_level_is_unset_unless_given():
    assert build_parser().parse_args(["serve"]).log_level is None
    assert build_parser().parse_args(["serve", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert build_parser().parse_args(["--log-level", "ERROR", "serve"]).log_level == "ERROR"


def serve_stderr(env: dict[str, str], *args: str) -> list[str]:
    """stderr of a serve that gets as far as loading a model that does not exist."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GANWATCH_")}
    flags = ["--bootstrap-servers", "127.0.0.1:9", "--input-topic", "in", "--alerts-topic", "a",
             "--dead-letter-topic", "d", "--model", "nowhere-model", "--metrics-host", "127.0.0.1"]
    if "GANWATCH_REDIS_URL" not in env:
        flags += ["--redis-url", "redis://127.0.0.1:9/0"]
    done = subprocess.run([sys.executable, "-m", "ganwatch", *args, "serve", *flags], cwd=REPO,
                          env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("ganwatch serve: error: ") and "nowhere-model" in lines[-1]
    return lines[:-1]


SECRETS = {"GANWATCH_REDIS_URL": "redis://user:urlpass1@127.0.0.1:9/0",
           "GANWATCH_REDIS_PASSWORD": "redispass2", "GANWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "GANWATCH_SASL_MECHANISM": "PLAIN", "GANWATCH_SASL_USERNAME": "u",
           "GANWATCH_SASL_PASSWORD": "saslpass3"}


def test_serve_logs_json_lines_from_the_environment_without_secrets():
    lines = serve_stderr({**SECRETS, "GANWATCH_LOG_FORMAT": "json"})
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert docs and all(set(d) >= {"time", "level", "logger", "message"} for d in docs)
    messages = {d["message"].split(" with ")[0]: d for d in docs}
    assert messages["starting worker"]["level"] == "INFO"
    assert messages["starting worker"]["logger"] == "ganwatch.serve"
    assert "torch uses 1 CPU thread" in messages
    text = "\n".join(lines)
    assert "'sasl_password': '***'" in text and "user:***@127.0.0.1" in text
    for secret in ("urlpass1", "redispass2", "saslpass3"):
        assert secret not in text


def test_serve_takes_its_log_level_from_the_environment_and_the_flag_wins():
    lines = serve_stderr({"GANWATCH_LOG_LEVEL": "warning", "GANWATCH_NO_SUCH": "1"})
    assert len(lines) == 1 and "WARNING ganwatch.serve: ignoring unknown settings variables: "\
        "GANWATCH_NO_SUCH" in lines[0]
    lines = serve_stderr({"GANWATCH_LOG_LEVEL": "warning"}, "--log-level", "INFO")
    assert any("INFO ganwatch.serve: starting worker" in line for line in lines)
