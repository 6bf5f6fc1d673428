"""The loop at pipeline depth 1 (``Worker.step``, what ``run`` uses by default): batch N scores on a
background thread while N+1 is polled and prepared from N's in-memory states. The behaviour both
depths share is tested in ``test_worker.py`` at depth 0 and 1; this is what only depth 1 does."""

from __future__ import annotations

import threading

import numpy as np

from detector.memory import InMemoryStateStore
from tests.test_worker import THRESHOLD, SpyDetector, alerts, drain, rig, scenario, zscore


class GatedDetector(SpyDetector):
    """Scores only once ``ready()`` holds (or after 5 s); notes whether it held and the thread."""

    def __init__(self, ready) -> None:
        super().__init__(zscore())
        self.ready, self.waited, self.threads = ready, [], []

    def score(self, windows: np.ndarray):
        deadline = threading.Event()
        held = False
        for _ in range(500):
            if self.ready():
                held = True
                break
            deadline.wait(0.01)
        self.waited.append(held)
        self.threads.append(threading.current_thread().name)
        return super().score(windows)


def test_the_next_batch_is_polled_while_the_previous_one_scores_off_the_main_thread():
    # batches of 7; the first completes no window, so call k scores batch k + 2 and may only
    # start once batch k + 3 has been polled (or everything has)
    spy = GatedDetector(lambda: r.source.position >= 7 * (len(spy.waited) + 3)
                        or r.source.position == len(r.source.messages))
    r = rig(scenario(), loader=lambda: (spy, THRESHOLD), pipeline=True)
    drain(r.worker)
    r.worker.close()
    assert all(spy.waited) and len(spy.waited) == 12
    assert set(spy.threads) != {"MainThread"} and all(t.startswith("ganwatch-score") for t in spy.threads)
    assert r.source.committed == 90 and len(alerts(r.sink)) == 4


def test_a_batch_commits_and_saves_only_its_own_readings():
    r = rig(scenario(), pipeline=True)
    assert r.worker.step() == 7 and r.source.committed == 0  # batch 1 scoring
    assert r.worker.step() == 7  # batch 2 polled and prepared, then batch 1 finished
    assert r.source.position == 14 and r.source.committed == 7
    stored = r.store.load(["e1", "e2", "e3"])
    # batch 1 is t=0,1 of e1..e3 and t=2 of e1: the store has exactly that, not batch 2's readings
    assert {e: s.last_ts_ms for e, s in stored.items()} == {
        "e1": 1583748873000 + 2000, "e2": 1583748873000 + 1000, "e3": 1583748873000 + 1000}
    assert all(len(s.ts) == (3 if e == "e1" else 2) for e, s in stored.items())
    drain(r.worker)
    r.worker.close()
    assert r.source.committed == 90 and len(alerts(r.sink)) == 4


def test_an_entity_another_worker_saved_is_loaded_again_not_carried():
    r = rig(scenario(), pipeline=True)
    store: InMemoryStateStore = r.store
    loads: list[list[str]] = []
    load = store.load
    store.load = lambda entities: (loads.append(list(entities)), load(entities))[1]
    r.worker.step()
    r.worker.step()  # batch 1 saved
    other = load(["e1"])["e1"]  # another worker (after a rebalance) writes e1
    assert store.save([other]) == [True]
    r.worker.step()
    # batch 2 (carried from 1) loses e1: it is not committed; batch 3, in flight on batch 2's
    # states, is dropped, and both are read again from batch 2's start, loading afresh
    assert r.metrics.count("store_conflicts_total") == 1
    assert r.source.committed == 7 and r.source.position == 7 and r.worker._pending is None
    for _ in range(3):
        r.worker.step()
    assert [sorted(entities) for entities in loads] == [["e1", "e2", "e3"]] * 2
    drain(r.worker)
    r.worker.close()
    assert r.metrics.count("store_conflicts_total") == 1 and r.source.committed == 90


def test_a_refused_save_rewinds_only_its_partition_to_its_batch_and_the_next_batch_to_its_own():
    from detector.commit import reread
    from detector.message import ParsedReading, Rejection
    from detector.protocol import Message

    def reading(entity, partition, offset):
        return ParsedReading(entity, 0, (0.0,), (), Message("t", partition, offset, None, b"", 0))

    batch = [reading("a", 0, 10), reading("b", 1, 20), reading("a", 0, 11),
             Rejection("not_json", "", Message("t", 2, 5, None, b"", 0))]
    following = [reading("b", 1, 21), reading("c", 3, 40), reading("a", 0, 12)]
    commit, rewind, refused = reread({"a"}, {("t", 0): 12, ("t", 1): 21, ("t", 2): 6}, batch,
                                     following, revoked={("t", 3)})
    assert refused == {("t", 0)} and commit == {("t", 1): 21, ("t", 2): 6}
    assert rewind == {("t", 0): 10, ("t", 1): 21}  # not 20: batch N's part of it is committed
    commit, rewind, _ = reread({"a"}, {("t", 0): 12, ("t", 1): 21}, batch, None, set())
    assert rewind == {("t", 0): 10} and commit == {("t", 1): 21}
