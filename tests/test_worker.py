"""The worker loop against the in-memory protocols: alerts, stream rules, faults, crashes, reloads."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, replace

import numpy as np
import pytest

from detector.alert import alert_id
from detector.memory import InMemorySink, InMemorySource, InMemoryStateStore
from detector.metric import InMemoryMetrics
from detector.protocol import Message
from detector.reload import watch_file
from detector.score import Threshold, ZScoreDetector
from detector.stream import StreamConfig
from detector.worker import Worker, WorkerConfig

CHANNELS = ["a", "b"]
W = 4
T0 = 1583748873000
NOW = 1_700_000_000.0
THRESHOLD = Threshold(9.0)  # ZScoreDetector: mean of the last reading's squared z-scores


def zscore(version: str = "z1", mean: float = 0.0) -> ZScoreDetector:
    return ZScoreDetector(CHANNELS, W, mean=np.full(2, mean), std=np.ones(2), version=version)


def messages(rows: list[tuple]) -> list[Message]:
    """Rows of (entity, t seconds, a, b) (None drops a channel) or raw bytes, numbered as offsets."""
    out = []
    for offset, row in enumerate(rows):
        if isinstance(row, bytes):
            out.append(Message("readings", 0, offset, b"junk", row, T0))
            continue
        entity, t, a, b = row
        values = {k: v for k, v in (("a", a), ("b", b)) if v is not None}
        body = json.dumps({"entity": entity, "ts": T0 + t * 1000, "values": values}).encode()
        out.append(Message("readings", 0, offset, entity.encode(), body, T0 + t * 1000))
    return out


def scenario() -> list[Message]:
    """Three interleaved entities, 30 s each; e1 anomalous at t=10..12 (peak 11), e2 at t=20."""
    spikes = {("e1", 10): (6, 0.1), ("e1", 11): (8, 0.1), ("e1", 12): (7, 0.1), ("e2", 20): (0.1, 7)}
    return messages([(e, t, *spikes.get((e, t), (0.1, 0.1))) for t in range(30) for e in ("e1", "e2", "e3")])


@dataclass
class Rig:
    source: InMemorySource
    sink: InMemorySink
    store: InMemoryStateStore
    metrics: InMemoryMetrics
    worker: Worker


LOOP = {"pipeline": True}


@pytest.fixture(autouse=True, params=["depth-1", "depth-0"])
def loop_mode(request):
    """Every test runs the one loop at both pipeline depths: 1 (``run``'s default) and 0."""
    LOOP["pipeline"] = request.param == "depth-1"
    yield request.param
    LOOP["pipeline"] = True


def config(**overrides) -> WorkerConfig:
    stream = StreamConfig(W, overrides.pop("stride", 1), overrides.pop("max_gap_ms", None))
    defaults = dict(max_batch=7, max_wait_ms=0, backoff_initial_s=0.001, backoff_max_s=0.004,
                    episode_end_windows=2, lag_interval_s=0, pipeline=LOOP["pipeline"])
    return WorkerConfig(stream=stream, **{**defaults, **overrides})


def rig(msgs: list[Message], loader=None, **overrides) -> Rig:
    source, sink, store, metrics = InMemorySource(msgs), InMemorySink(), InMemoryStateStore(2), InMemoryMetrics()
    loader = loader or (lambda: (zscore(), THRESHOLD))
    return Rig(source, sink, store, metrics,
               Worker(source, sink, store, loader, config(**overrides), metrics, clock=lambda: NOW))


def step(worker: Worker) -> int:
    """One turn of the loop ``run`` would use."""
    return worker.step()


def drain(worker: Worker) -> int:
    batches = 0
    while step(worker):
        batches += 1
    worker.drain()
    return batches


def renumber(msgs: list[Message]) -> list[Message]:
    return [replace(m, offset=i) for i, m in enumerate(msgs)]


def alerts(sink: InMemorySink, topic: str = "ganwatch.alerts") -> list[dict]:
    return [json.loads(v) for _, v in sink.records.get(topic, [])]


def test_window_mode_alerts_end_to_end():
    r = rig(scenario(), alert_mode="window")
    assert not r.worker.ready
    drain(r.worker)
    got = alerts(r.sink)
    assert [(a["entity"], a["ts_ms"]) for a in got] == [
        ("e1", T0 + 10_000), ("e1", T0 + 11_000), ("e1", T0 + 12_000), ("e2", T0 + 20_000)]
    first = got[0]
    assert first["type"] == "anomaly" and first["alert_id"] == alert_id("e1", T0 + 10_000, "anomaly", "z1")
    assert first["ts"] == "2020-03-09T10:14:43.000Z" and first["window_start_ms"] == T0 + 7_000
    assert first["score"] == pytest.approx((36 + 0.01) / 2) and first["threshold"] == 9.0
    assert [c["name"] for c in first["channels"]] == ["a", "b"] and first["model_version"] == "z1"
    assert [k for k, _ in r.sink.records["ganwatch.alerts"]] == [b"e1", b"e1", b"e1", b"e2"]
    assert r.source.committed == 90 and r.worker.ready
    assert r.metrics.count("readings_total") == 90 and r.metrics.count("windows_scored_total") == 81
    assert r.metrics.count("alerts_total", type="anomaly") == 4
    assert r.metrics.observations["event_to_alert_seconds"] == [NOW - a["ts_ms"] / 1000 for a in got]
    assert sum(r.metrics.observations["batch_size"]) == 90 and r.metrics.gauges["consumer_lag"] == 0


def test_episode_mode_start_end_and_peak_across_batches():
    r = rig(scenario(), scores_topic="ganwatch.scores")
    drain(r.worker)
    got = [(a["entity"], a["type"], a["ts_ms"]) for a in alerts(r.sink)]
    assert got == [("e1", "anomaly_start", T0 + 10_000), ("e1", "anomaly_end", T0 + 14_000),
                   ("e2", "anomaly_start", T0 + 20_000), ("e2", "anomaly_end", T0 + 22_000)]
    end = alerts(r.sink)[1]
    assert end["peak_ts_ms"] == T0 + 11_000 and end["peak_score"] == pytest.approx((64 + 0.01) / 2)
    assert end["episode_start_ms"] == T0 + 10_000 and end["episode_start"] == "2020-03-09T10:14:43.000Z"
    scores = alerts(r.sink, "ganwatch.scores")
    assert len(scores) == 81 and sum(s["is_anomaly"] for s in scores) == 4
    assert r.store.load(["e1"])["e1"].episode == {}


def test_open_episode_is_persisted_in_the_state():
    r = rig(scenario()[: 3 * 12])  # stops right after e1's anomalies began
    drain(r.worker)
    episode = r.store.load(["e1"])["e1"].episode
    assert episode["active"] and episode["start_ms"] == T0 + 10_000 and episode["peak_ts_ms"] == T0 + 11_000


def test_replay_skips_duplicates_and_publishes_nothing_new():
    r = rig(scenario())
    drain(r.worker)
    before = len(alerts(r.sink))
    replay = Worker(InMemorySource(scenario()), r.sink, r.store, lambda: (zscore(), THRESHOLD), config(), r.metrics)
    drain(replay)
    assert len(alerts(r.sink)) == before == 4
    assert r.metrics.count("duplicates_total") == 90


def test_gap_restarts_the_window_but_not_the_episode():
    rows = [("e1", t, 5.0 if t == 5 else 0.1, 0.1) for t in list(range(6)) + list(range(20, 26))]
    r = rig(messages(rows), max_gap_ms=5000)
    drain(r.worker)
    assert r.metrics.count("gaps_total") == 1
    assert r.metrics.count("windows_scored_total") == 6  # t3..t5, then t23..t25 after the restart
    assert [(a["type"], a["ts_ms"]) for a in alerts(r.sink)] == [
        ("anomaly_start", T0 + 5_000), ("anomaly_end", T0 + 24_000)]


def test_stride_scores_every_nth_reading():
    rows = [("e1", t, 5.0 if t in (5, 6) else 0.1, 0.1) for t in range(12)]
    r = rig(messages(rows), stride=3, alert_mode="window")
    drain(r.worker)
    assert r.metrics.count("windows_scored_total") == 3  # t3, t6, t9
    assert [a["ts_ms"] for a in alerts(r.sink)] == [T0 + 6_000]  # t5 completes no window


class SpyDetector:
    """A ZScoreDetector that records every batch it is asked to score."""

    def __init__(self, inner: ZScoreDetector) -> None:
        self.inner, self.calls = inner, []
        self.channels, self.window, self.version = inner.channels, inner.window, inner.version

    def score(self, windows: np.ndarray):
        self.calls.append(windows.copy())
        return self.inner.score(windows)


def test_missing_channel_is_carried_from_the_last_value():
    rows = [("e1", 0, 0.1, None), ("e1", 1, 0.1, 0.1), ("e1", 2, 0.1, 0.5), ("e1", 3, 0.2, None),
            ("e1", 4, 0.3, None)]
    spy = SpyDetector(zscore())
    r = rig(messages(rows), loader=lambda: (spy, THRESHOLD))
    drain(r.worker)
    [window] = spy.calls[0]  # first reading was dead-lettered, so t1..t4 form the only window
    assert window.tolist() == [[0.1, 0.1], [0.1, 0.5], [0.2, 0.5], [0.3, 0.5]]
    [dead] = alerts(r.sink, "ganwatch.dead-letter")
    assert dead["reason"] == "missing_channel" and dead["source"]["offset"] == 0


def test_missing_channel_dead_letter_policy():
    rows = [("e1", t, 0.1, None if t == 2 else 0.1) for t in range(6)]
    r = rig(messages(rows), missing_channel="dead-letter")
    drain(r.worker)
    assert [d["source"]["offset"] for d in alerts(r.sink, "ganwatch.dead-letter")] == [2]
    assert r.metrics.count("windows_scored_total") == 2 and r.source.committed == 6


def test_malformed_messages_are_dead_lettered_and_the_loop_goes_on():
    junk = messages([b"\xff\x00not json", b"{}", b'{"entity": "e1", "ts": 1, "values": {"a": NaN}}'])
    msgs = renumber(scenario()[:20] + junk + scenario()[20:])
    r = rig(msgs, alert_mode="window")
    drain(r.worker)
    dead = alerts(r.sink, "ganwatch.dead-letter")
    assert [(d["reason"], d["source"]["offset"]) for d in dead] == [
        ("not_json", 20), ("missing_field", 21), ("non_finite", 22)]
    assert base64.b64decode(dead[0]["value_b64"]) == b"\xff\x00not json"
    assert [k for k, _ in r.sink.records["ganwatch.dead-letter"]] == [b"junk"] * 3
    assert r.metrics.count("dead_letters_total", reason="not_json") == 1
    assert len(alerts(r.sink)) == 4 and r.source.committed == len(msgs)


def test_all_windows_of_a_batch_are_scored_in_one_call():
    spy = SpyDetector(zscore())
    r = rig(scenario(), loader=lambda: (spy, THRESHOLD))
    batches = drain(r.worker)
    assert len(spy.calls) == batches - 1  # the first batch completes no window yet
    assert sum(len(c) for c in spy.calls) == 81
    assert any(len(c) > 2 for c in spy.calls)  # several entities' windows in one call


def test_reload_swaps_the_model_between_batches_and_a_failed_reload_keeps_it():
    models = iter([(zscore("v1"), THRESHOLD), (zscore("v2", mean=0.05), THRESHOLD)])
    r = rig(scenario(), loader=lambda: next(models), alert_mode="window")
    for _ in range(4):
        r.worker.step()
    r.worker.request_reload()
    drain(r.worker)
    versions = [(a["ts_ms"], a["model_version"]) for a in alerts(r.sink)]
    assert {v for _, v in versions} == {"v2"} and len(versions) == 4
    r.worker.request_reload()  # the iterator is exhausted: the loader raises
    r.worker.step()
    assert r.worker.detector.version == "v2"
    assert r.metrics.count("model_reloads_total", result="ok") == 1
    assert r.metrics.count("model_reloads_total", result="error") == 1


def test_reload_refuses_a_model_with_another_window():
    models = iter([(zscore("v1"), THRESHOLD), (ZScoreDetector(CHANNELS, 5, [0, 0], [1, 1], "v9"), THRESHOLD)])
    r = rig(scenario(), loader=lambda: next(models))
    r.worker.request_reload()
    r.worker.step()
    assert r.worker.detector.version == "v1"


def test_a_refused_save_is_never_committed_past_and_its_partition_is_read_again():
    r = rig(scenario())
    save, seeks, commits = r.store.save, [], []
    seek, commit = r.source.seek, r.source.commit
    r.source.seek = lambda offsets: (seeks.append(dict(offsets)), seek(offsets))[1]
    r.source.commit = lambda offsets=None: (commits.append(offsets[("readings", 0)]),
                                            commit(offsets))[1]

    def other_worker_moved_e2_on(states):
        if len(commits) == 3 and not seeks:  # during batch 4: e2 was saved elsewhere meanwhile
            r.store._states["e2"].version += 1
        return save(states)

    r.store.save = other_worker_moved_e2_on
    drain(r.worker)
    assert r.metrics.count("store_conflicts_total") >= 1 and len(seeks) == 1
    [rewind] = seeks
    assert rewind == {("readings", 0): 21}  # batch 4's first offset: read again from there
    assert commits == sorted(commits) and commits[:3] == [7, 14, 21]  # never past, never back
    assert commits[3] > 21 and r.source.committed == 90
    assert {a["alert_id"] for a in alerts(r.sink)} == {a["alert_id"] for a in alerts(
        crash_run("none", 0, "episode")[1])}  # nothing lost; batch 4's e2 alerts may come twice
    state, clean = r.store.load(["e2"])["e2"], crash_run("none", 0, "episode")[2].load(["e2"])["e2"]
    assert (state.last_ts_ms, state.count, state.episode) == (clean.last_ts_ms, clean.count,
                                                              clean.episode)


def test_revoked_partitions_finish_their_batch_and_are_never_committed_again():
    r = rig(scenario(), max_batch=4)  # a backlog: the pipelined loop keeps a batch in flight
    commits = []
    commit = r.source.commit
    r.source.commit = lambda offsets=None: (commits.append(dict(offsets)), commit(offsets))[1]
    for _ in range(3):
        step(r.worker)
    in_flight = r.worker._pending
    r.worker.on_revoked([("readings", 0)])
    assert r.worker._pending is None
    done = r.source.committed
    assert done == 12  # three batches of 4, the third finished and committed by the callback
    assert (in_flight is not None) == r.worker.config.pipeline
    step(r.worker)
    step(r.worker)
    r.worker.drain()
    assert r.source.committed == done and commits[-1][("readings", 0)] == done  # lost: no commits
    r.worker.on_assigned([("readings", 0)])
    drain(r.worker)
    assert r.source.committed == 90 and all(
        a[("readings", 0)] < b[("readings", 0)] for a, b in zip(commits, commits[1:]))


def test_commit_failure_is_counted_not_fatal():
    r = rig(scenario()[:21])
    commit, failed = r.source.commit, []

    def flaky_commit(offsets=None):
        if not failed:
            failed.append(r.source.position if offsets is None else offsets[("readings", 0)])
            raise RuntimeError("CommitFailedError: group rebalanced")
        commit(offsets)

    r.source.commit = flaky_commit
    drain(r.worker)
    assert failed == [7] and r.metrics.count("commit_failures_total") == 1 and r.source.committed == 21


def test_run_loop_stops_with_a_final_commit_and_closes_the_source():
    r = rig(scenario())
    stop, closed = threading.Event(), []
    poll, calls = r.source.poll, []

    def polling(n, timeout_ms):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("broker away")
        batch = poll(n, timeout_ms)
        if not batch:
            stop.set()
        return batch

    r.source.poll, r.source.close = polling, lambda: closed.append(True)
    r.worker.run(stop)
    assert r.source.committed == 90 and closed == [True] and not r.worker.alive
    assert r.metrics.count("retries_total", stage="poll") == 1 and len(alerts(r.sink)) == 4


class Crash(BaseException):
    """A process death: not an ``Exception``, so the worker cannot catch and retry it."""


class Tripwire:
    """Raises ``Crash`` the ``at``-th time ``stage`` is reached (never when ``at`` is 0)."""

    def __init__(self, stage: str, at: int) -> None:
        self.stage, self.at, self.seen = stage, at, 0

    def hit(self, stage: str) -> None:
        if stage == self.stage:
            self.seen += 1
            if self.seen == self.at:
                raise Crash(stage)


class Tripped:
    """Wraps a source, sink, store or detector; calls ``trip.hit`` around the real method."""

    AFTER = {"poll": "after_poll", "load": "after_load", "save": "after_save", "send": "after_send", "flush": "after_flush",
             "score": "after_score"}

    def __init__(self, inner, trip: Tripwire) -> None:
        self._inner, self._trip = inner, trip

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name == "commit":
            return lambda *a: (self._trip.hit("before_commit"), attr(*a))[1]
        if name in self.AFTER:
            return lambda *a: (attr(*a), self._trip.hit(self.AFTER[name]))[0]
        return attr


def crash_run(stage: str, at: int, mode: str) -> tuple[Tripwire, InMemorySink, InMemoryStateStore, list[int]]:
    """Run the scenario, crash at the ``at``-th ``stage``, restart a fresh worker from the commit."""
    source, sink, store = InMemorySource(scenario()), InMemorySink(), InMemoryStateStore(2)
    trip = Tripwire(stage, at)
    cfg = config(alert_mode=mode, scores_topic="ganwatch.scores")
    worker = Worker(Tripped(source, trip), Tripped(sink, trip), Tripped(store, trip),
                    lambda: (Tripped(zscore(), trip), THRESHOLD), cfg, clock=lambda: NOW)
    per_batch = []
    try:
        while step(worker):
            per_batch.append(len(sink.records.get("ganwatch.alerts", [])))
        worker.drain()
    except Crash:
        sink.pending.clear()  # the producer's buffer dies with the process
        source.position = source.committed
        drain(Worker(source, sink, store, lambda: (zscore(), THRESHOLD), cfg, clock=lambda: NOW))
    return trip, sink, store, per_batch


STAGES = ["after_poll", "after_load", "after_score", "after_send", "after_flush", "after_save", "before_commit"]


@pytest.mark.parametrize("mode", ["episode", "window"])
@pytest.mark.parametrize("stage", STAGES)
def test_crash_at_any_stage_loses_no_alert_and_duplicates_at_most_one_batch(stage, mode):
    trip, clean, clean_store, per_batch = crash_run(stage, 0, mode)
    expected = {a["alert_id"]: {**a, "detected_at": None} for a in alerts(clean)}
    largest_batch = max(np.diff([0] + per_batch))
    entities = ["e1", "e2", "e3"]
    step = 4 if stage == "after_send" else 1
    for at in range(1, trip.seen + 1, step):  # every point the stage is reached in a run
        crashed, sink, store, _ = crash_run(stage, at, mode)
        got = [{**a, "detected_at": None} for a in alerts(sink)]
        assert crashed.seen == at and {a["alert_id"] for a in got} == set(expected), at
        assert all(a == expected[a["alert_id"]] for a in got)
        assert len(got) - len(expected) <= largest_batch
        for e, s in store.load(entities).items():
            c = clean_store.load([e])[e]
            assert (s.last_ts_ms, s.count, s.episode) == (c.last_ts_ms, c.count, c.episode)
            assert np.array_equal(s.values, c.values)


class Flaky:
    """Wraps a store or sink: the listed (1-based) calls of a method raise; records what was seen."""

    def __init__(self, inner, worker_ref: list, source: InMemorySource, **fail_on: set[int]) -> None:
        self._inner, self._worker, self._source, self._fail = inner, worker_ref, source, fail_on
        self.calls: dict[str, int] = {}
        self.failures: list[tuple[str, int, bool]] = []  # (method, committed offset, ready)

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name not in self._fail:
            return attr

        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] in self._fail[name]:
                self.failures.append((name, self._source.committed, self._worker[0].ready))
                raise ConnectionError(f"{name} failed")
            return attr(*args)

        return call


def test_transient_store_and_sink_failures_are_retried_with_nothing_committed_between():
    source, metrics, ref = InMemorySource(scenario()), InMemoryMetrics(), []
    store = Flaky(InMemoryStateStore(2), ref, source, load={3, 4}, save={5})
    sink = Flaky(InMemorySink(), ref, source, flush={9})
    commits = []
    commit = source.commit
    source.commit = lambda *a: (commit(*a), commits.append(source.committed))
    worker = Worker(source, sink, store, lambda: (zscore(), THRESHOLD), config(), metrics, clock=lambda: NOW)
    ref.append(worker)
    drain(worker)
    assert commits == list(range(7, 90, 7)) + [90]  # exactly once per batch, after it succeeded
    if worker.config.pipeline:
        # from batch 2 on each batch takes its states over from the one before, so the 5th save
        # (batch 5) fails first; batches 5 and 6 are redone from the store: batch 5's load is the
        # 2nd and works, batch 6's fail twice; then batch 8 fails at flush (the 9th, with the
        # retry). Each time nothing of the failing batch was committed.
        assert store.failures == [("save", 28, True), ("load", 35, True), ("load", 35, False)]
        assert sink.failures == [("flush", 49, True)]
    else:
        # batch 3 failed twice at load, batch 5 at save (after its flush), batch 8 at flush (the
        # 9th, counting batch 5's retry); each time nothing after the previous batch was committed
        assert store.failures == [("load", 14, True), ("load", 14, False), ("save", 28, True)]
        assert sink.failures == [("flush", 49, True)]
    assert metrics.count("retries_total", stage="load") == 2
    assert metrics.count("retries_total", stage="save") == 1
    assert metrics.count("retries_total", stage="flush") == 1
    assert metrics.gauges["ready"] == 1 and worker.ready
    _, clean, _, _ = crash_run("none", 0, "episode")
    assert {a["alert_id"] for a in alerts(sink._inner)} == {a["alert_id"] for a in alerts(clean)}


def test_stop_during_retries_exits_without_commit():
    stop, closed = threading.Event(), []
    source = InMemorySource(scenario())
    source.close = lambda: closed.append(True)
    store = InMemoryStateStore(2)
    calls = {"load": 0, "save": 0}

    def failing(name, method):
        def call(arg):
            calls[name] += 1
            if calls[name] > 1:  # the first batch works, then the store is gone for good
                if sum(calls.values()) == 5:
                    stop.set()
                raise ConnectionError("store down")
            return method(arg)
        return call

    store.load, store.save = failing("load", store.load), failing("save", store.save)
    worker = Worker(source, InMemorySink(), store, lambda: (zscore(), THRESHOLD), config(), clock=lambda: NOW)
    worker.run(stop)
    # pipelined, batch 3 is polled (and takes batch 2's states over) before batch 2 saves
    polled = 21 if worker.config.pipeline else 14
    assert source.committed == 7 and source.position == polled and closed == [True]
    assert not worker.ready and worker.step() == 0 and source.position == polled


def test_a_scoring_failure_is_retried_not_fatal():
    spy, failures = SpyDetector(zscore()), []
    score = spy.score

    def failing_once(windows):
        if not failures:
            failures.append(len(spy.calls))
            raise FloatingPointError("model blew up")
        return score(windows)

    spy.score = failing_once
    r = rig(scenario(), loader=lambda: (spy, THRESHOLD))
    drain(r.worker)
    assert failures == [0] and r.metrics.count("retries_total", stage="score") == 1
    assert len(alerts(r.sink)) == 4 and r.source.committed == 90 and r.worker.ready


def test_watch_file_requests_a_reload_when_the_artifact_changes(tmp_path):
    path, changed, stop = tmp_path / "model.json", threading.Event(), threading.Event()
    path.write_text("{}")
    thread = watch_file(path, changed.set, stop, interval_s=0.01)
    try:
        assert not changed.wait(0.1)  # nothing changed yet
        path.write_text('{"model_version": "v2"}')
        assert changed.wait(10)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_reading_from_the_future_is_dead_lettered_and_does_not_blind_its_entity():
    year_ahead = (NOW + 365 * 86400) * 1000 - T0  # ms after T0, as ``messages`` counts seconds
    rows = [("e1", t, 6.0 if t == 8 else 0.1, 0.1) for t in range(4)]
    rows += [("e1", year_ahead / 1000, 0.1, 0.1)] + [("e1", t, 6.0 if t == 8 else 0.1, 0.1)
                                                     for t in range(4, 10)]
    r = rig(messages(rows), alert_mode="window")
    drain(r.worker)
    [dead] = alerts(r.sink, "ganwatch.dead-letter")
    assert dead["reason"] == "future_ts" and dead["source"]["offset"] == 4
    assert [a["ts_ms"] for a in alerts(r.sink)] == [T0 + 8_000]  # the later readings still count
    assert r.metrics.count("duplicates_total") == 0 and r.source.committed == len(rows)
    assert r.metrics.count("dead_letters_total", reason="future_ts") == 1
    off = rig(messages(rows), alert_mode="window", max_future_s=0)  # 0: no clock check
    drain(off.worker)
    assert alerts(off.sink) == [] and off.metrics.count("duplicates_total") == 6


def test_new_and_known_entities_are_counted():
    r = rig(scenario()[:30])
    drain(r.worker)
    assert r.metrics.count("entities_new_total") == 3 and r.metrics.gauges["entities_known"] == 3
    again = Worker(InMemorySource(renumber(scenario()[30:60])), r.sink, r.store,
                   lambda: (zscore(), THRESHOLD), config(), r.metrics, clock=lambda: NOW)
    drain(again)
    assert r.metrics.count("entities_new_total") == 3  # stored before: not new
    bad = messages([("e\n4", 0, 0.1, 0.1), ("x" * 257, 0, 0.1, 0.1)])
    r2 = rig(bad)
    drain(r2.worker)
    assert [d["reason"] for d in alerts(r2.sink, "ganwatch.dead-letter")] == ["bad_entity"] * 2
    assert r2.metrics.count("entities_new_total") == 0


def test_the_known_entities_gauge_is_bounded(monkeypatch):
    import detector.metric as metric_module

    monkeypatch.setattr(metric_module, "MAX_KNOWN", 2)
    r = rig(scenario()[:9])
    drain(r.worker)
    assert r.metrics.gauges["entities_known"] == 2 and len(r.worker._known.names) == 2
    assert r.metrics.count("entities_new_total") == 3  # the counter still counts every one


def test_readiness_follows_the_sources_view_of_its_broker():
    r = rig(scenario())
    reachable = [True]
    r.source.reachable = lambda: reachable[0]
    drain(r.worker)
    assert r.worker.ready
    reachable[0] = False  # a lost broker shows at once, even in the middle of a batch
    assert not r.worker.ready
    assert step(r.worker) == 0  # idle: the gauge follows between batches too
    assert r.metrics.gauges["ready"] == 0
    reachable[0] = True
    assert step(r.worker) == 0 and r.worker.ready and r.metrics.gauges["ready"] == 1
    r.source.reachable = lambda: 1 / 0  # a source that cannot tell is not ready
    assert not r.worker.ready
