"""Poison isolation and deadlines over both loops: bounded retries, records set aside as dead
letters, dead letters cut to fit or held with their offsets, liveness, failures outside stages."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

import detector.batch as batch_module
import detector.worker as worker_module
from detector.memory import InMemorySink, InMemorySource, InMemoryStateStore
from detector.metric import InMemoryMetrics
from detector.worker import Worker
from tests.test_worker import (  # noqa: F401  (loop_mode: every test over both loops)
    NOW, THRESHOLD, alerts, config, crash_run, drain, loop_mode, messages, renumber, rig,
    scenario, zscore,
)

WAIT_S = 30


def wait_until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def clean_ids(mode: str = "episode") -> set[str]:
    _, sink, _, _ = crash_run("none", 0, mode)
    return {a["alert_id"] for a in alerts(sink)}


class Foreign(InMemoryStateStore):
    """A store in which one entity's key holds something that is not a state."""

    def __init__(self, poisoned: str) -> None:
        super().__init__(2)
        self.poisoned, self.loads = poisoned, 0

    def load(self, entities):
        self.loads += 1
        if self.poisoned in entities:
            raise ValueError(f"state of {self.poisoned!r} is corrupt")
        return super().load(entities)


def test_an_entity_whose_state_cannot_be_read_is_set_aside_and_the_rest_goes_on():
    r = rig(scenario(), max_retries=2)
    r.worker.store = store = Foreign("e2")
    drain(r.worker)
    dead = alerts(r.sink, "ganwatch.dead-letter")
    assert {d["reason"] for d in dead} == {"failed_load"} and len(dead) == 30
    assert sorted(d["source"]["offset"] for d in dead) == [m.offset for m in scenario()
                                                           if m.key == b"e2"]
    assert all("corrupt" in d["detail"] and d["source"]["topic"] == "readings" for d in dead)
    got = [(a["entity"], a["type"]) for a in alerts(r.sink)]
    assert got == [("e1", "anomaly_start"), ("e1", "anomaly_end")]  # e2's alerts never came
    assert r.source.committed == 90 and r.worker.ready
    assert r.metrics.count("set_aside_total", stage="load") == 30
    assert r.metrics.count("dead_letters_total", reason="failed_load") == 30
    batches = -(-90 // 7)
    assert r.metrics.count("retries_total", stage="load") == 3 * batches  # bounded: 2 retries
    assert store.load(["e1", "e3"])["e1"].count == 30


def test_a_store_refusing_every_write_sets_the_batch_aside_instead_of_stalling():
    r = rig(scenario()[:21], max_retries=1)

    def full(states):
        raise RuntimeError("OOM command not allowed when used memory > 'maxmemory'")

    r.store.save = full
    drain(r.worker)
    dead = alerts(r.sink, "ganwatch.dead-letter")
    assert sorted(d["source"]["offset"] for d in dead) == list(range(21))  # none lost
    assert {d["reason"] for d in dead} == {"failed_save"} and "OOM" in dead[0]["detail"]
    assert r.source.committed == 21 and r.metrics.count("set_aside_total", stage="save") == 21


def test_an_outage_is_waited_out_and_never_sets_records_aside():
    r = rig(scenario(), max_retries=0)
    load, calls = r.store.load, []

    def flaky(entities):
        calls.append(1)
        if len(calls) <= 7:
            raise ConnectionError("redis away")
        return load(entities)

    r.store.load = flaky
    drain(r.worker)
    assert "ganwatch.dead-letter" not in r.sink.records
    assert {a["alert_id"] for a in alerts(r.sink)} == clean_ids()
    assert r.metrics.count("retries_total", stage="load") == 7 and r.source.committed == 90


def test_a_model_failing_on_one_entity_sets_only_that_entity_aside():
    class Picky:
        def __init__(self, inner):
            self.inner, self.channels, self.window = inner, inner.channels, inner.window
            self.version = inner.version

        def score(self, windows):
            if (np.asarray(windows)[:, :, 1] > 5).any():  # e2's spike
                raise FloatingPointError("model blew up")
            return self.inner.score(windows)

    r = rig(scenario(), loader=lambda: (Picky(zscore()), THRESHOLD), max_retries=1)
    drain(r.worker)
    dead = alerts(r.sink, "ganwatch.dead-letter")
    assert {d["reason"] for d in dead} == {"failed_score"}
    assert {d["value_text"] and d["key_b64"] for d in dead} == {"ZTI="}  # e2 only
    assert [a["entity"] for a in alerts(r.sink)] == ["e1", "e1"]
    assert r.source.committed == 90


def test_a_huge_rejected_value_is_dead_lettered_cut_to_fit():
    big = b'{"entity": "e1", "ts": "soon", "pad": "' + b"x" * 3_000_000 + b'"}'
    msgs = renumber(scenario()[:10] + messages([big]) + scenario()[10:20])
    r = rig(msgs, max_dead_letter_bytes=1_000_000)
    drain(r.worker)
    [(key, value)] = r.sink.records["ganwatch.dead-letter"]
    assert len(value) + len(key or b"") <= 1_000_000
    assert b'"truncated": true' in value and b'"value_bytes": %d' % len(big) in value
    assert r.metrics.count("dead_letters_truncated_total") == 1 and r.source.committed == 21


class Refusing(InMemorySink):
    """A broker on which the dead-letter topic does not exist (until ``create``)."""

    def __init__(self) -> None:
        super().__init__()
        self.missing = True

    def send(self, topic, key, value):
        if self.missing and topic == "ganwatch.dead-letter":
            raise LookupError("UnknownTopicOrPartitionError: ganwatch.dead-letter")
        super().send(topic, key, value)


def test_dead_letters_that_cannot_be_sent_hold_the_offsets_and_say_why(caplog):
    msgs = renumber(scenario()[:14] + messages([b"junk"]) + scenario()[14:40])
    r = rig(msgs, max_retries=1)
    r.worker.sink = sink = Refusing()
    stop = threading.Event()
    thread = threading.Thread(target=r.worker.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.ERROR, logger="detector.worker"):
        thread.start()
        try:
            wait_until(lambda: r.metrics.count("retries_total", stage="dead-letter") >= 3,
                       "the dead letters retried")
            assert not r.worker.ready and r.source.committed == 14  # the junk's batch: held
            said = [rec.getMessage() for rec in caplog.records]
            assert said and "cannot send" in said[0] and "UnknownTopicOrPartition" in said[0]
            assert "uncommitted" in said[0] and len(said[0].splitlines()) == 1
            sink.missing = False  # the topic is created
            wait_until(lambda: r.source.committed == len(msgs), "everything committed")
        finally:
            stop.set()
            thread.join(WAIT_S)
    [dead] = alerts(sink, "ganwatch.dead-letter")
    assert dead["reason"] == "not_json" and dead["source"]["offset"] == 14
    assert r.worker.ready and r.metrics.count("dead_letters_total", reason="not_json") == 1


def test_liveness_fails_when_stuck_on_one_batch_and_holds_when_idle():
    now = [NOW]
    source, store = InMemorySource(scenario()[:7]), InMemoryStateStore(2)
    metrics = InMemoryMetrics()

    def down(entities):
        raise ConnectionError("redis away")

    store.load = down
    worker = Worker(source, InMemorySink(), store, lambda: (zscore(), THRESHOLD),
                    config(live_timeout_s=120), metrics, clock=lambda: now[0])
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: metrics.count("retries_total", stage="load") >= 2, "retries")
        assert worker.alive  # retrying, but not for long yet
        now[0] += 121
        seen = metrics.count("retries_total", stage="load")
        wait_until(lambda: metrics.count("retries_total", stage="load") > seen + 1, "more retries")
        assert not worker.alive and not worker.ready  # however many retries that took
    finally:
        stop.set()
        thread.join(WAIT_S)
    idle = Worker(InMemorySource([]), InMemorySink(), InMemoryStateStore(2),
                  lambda: (zscore(), THRESHOLD), config(live_timeout_s=120), metrics,
                  clock=lambda: now[0])
    polls, poll = [], idle.source.poll
    idle.source.poll = lambda n, t: (polls.append(1), poll(n, t))[1]
    stop = threading.Event()
    thread = threading.Thread(target=idle.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(polls) >= 2, "idle polls")
        now[0] += 10_000
        seen = len(polls)
        wait_until(lambda: len(polls) > seen + 1, "more idle polls")
        assert idle.alive
    finally:
        stop.set()
        thread.join(WAIT_S)


@pytest.mark.parametrize("where", ["stack", "verdicts", "follow_versions"])
def test_an_exception_outside_the_stage_guards_redoes_the_work(where, monkeypatch):
    module = worker_module if where == "follow_versions" else batch_module
    real, calls = getattr(module, where), []

    def once(*args):
        calls.append(1)
        if len(calls) == 3:
            raise IndexError(f"bug in {where}")
        return real(*args)

    monkeypatch.setattr(module, where, once)
    r = rig(scenario())
    drain(r.worker)
    if where == "follow_versions" and not r.worker.config.pipeline:
        assert len(calls) == 0  # the one-at-a-time loop carries nothing over
        return
    assert len(calls) > 3
    stage = {"stack": "window", "verdicts": "judge", "follow_versions": "internal"}[where]
    assert r.metrics.count("retries_total", stage=stage) == 1
    assert [a["alert_id"] for a in alerts(r.sink)] == sorted(clean_ids(), key=[
        a["alert_id"] for a in alerts(crash_run("none", 0, "episode")[1])].index)
    assert r.source.committed == 90
    clean_store = crash_run("none", 0, "episode")[2]
    for e in ("e1", "e2", "e3"):
        got, want = r.store.load([e])[e], clean_store.load([e])[e]
        assert (got.last_ts_ms, got.count, got.episode) == (want.last_ts_ms, want.count,
                                                            want.episode)


def test_a_scoring_call_past_its_deadline_is_retried_with_the_worker_not_ready():
    release, ref, seen = threading.Event(), [], []

    class Hanging:
        def __init__(self, inner):
            self.inner, self.channels, self.window = inner, inner.channels, inner.window
            self.version = inner.version

        def score(self, windows):
            seen.append(ref[0].ready)
            if len(seen) == 2:
                release.wait(2)  # hangs once, for longer than the deadline
            return self.inner.score(windows)

    r = rig(scenario(), loader=lambda: (Hanging(zscore()), THRESHOLD), score_timeout_s=0.1)
    ref.append(r.worker)
    try:
        drain(r.worker)
    finally:
        release.set()
    assert {a["alert_id"] for a in alerts(r.sink)} == clean_ids() and r.source.committed == 90
    if r.worker.config.pipeline:  # the scores are waited for on the background thread
        assert r.metrics.count("retries_total", stage="score") == 1
        assert seen[2] is False  # the retry ran while the worker was not ready
    assert r.worker.ready
