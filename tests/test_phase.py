"""A batch's phase (``detector/phase.py``): every move the diagram allows, none other, and the
loop's answer to an illegal one (redo from the store, nothing published or committed twice)."""

from __future__ import annotations

import pytest

import detector.worker as worker_module
from detector.phase import NEXT, Batch, IllegalTransition, Phase
from tests.test_worker import (  # noqa: F401  (loop_mode: every test at both depths)
    alerts, crash_run, drain, loop_mode, rig, scenario,
)

PATHS = [
    [Phase.PREPARED, Phase.SCORING, Phase.FINISHED, Phase.COMMITTED],
    [Phase.PREPARED, Phase.SCORING, Phase.REDOING, Phase.FINISHED, Phase.COMMITTED],
    [Phase.REDOING, Phase.ABANDONED],
    [Phase.PREPARED, Phase.SCORING, Phase.DROPPED],
    [Phase.PREPARED, Phase.SCORING, Phase.FINISHED, Phase.REDOING, Phase.FINISHED,
     Phase.COMMITTED],
]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(x.value for x in p))
def test_the_paths_of_the_diagram_are_allowed(path):
    batch = Batch([], {})
    for phase in path:
        batch.move(phase)
    assert batch.phase is path[-1]


def test_every_move_outside_the_diagram_is_refused():
    refused = 0
    for start in Phase:
        for to in Phase:
            batch = Batch([], {}, phase=start)
            if to in NEXT[start]:
                batch.move(to)
                assert batch.phase is to
            else:
                with pytest.raises(IllegalTransition, match=f"{start.value}.*{to.value}"):
                    batch.move(to)
                assert batch.phase is start
                refused += 1
    assert refused == len(Phase) ** 2 - sum(len(v) for v in NEXT.values())
    # terminal phases lead nowhere: a committed batch is never published or committed again
    assert not NEXT[Phase.COMMITTED] and not NEXT[Phase.ABANDONED] and not NEXT[Phase.DROPPED]


def test_a_batch_the_loop_mishandles_is_redone_from_the_store(monkeypatch):
    """A bug that leaves a batch out of ``scoring`` (here: ``start`` forgets to move it) makes its
    finish an illegal move; the loop counts it as ``internal`` and redoes the batch from the
    store, so the alerts, offsets and states are those of a clean run, each alert once."""
    real_start, broken = Batch.start, []

    def start(self, future):
        if len(broken) < 1 and len(self.parsed) == 7 and not broken:
            broken.append(self)
            self.future = future  # the bug: no move to SCORING
            return
        real_start(self, future)

    monkeypatch.setattr(Batch, "start", start)
    r = rig(scenario())
    drain(r.worker)
    assert broken and broken[0].phase is Phase.COMMITTED
    assert r.metrics.count("retries_total", stage="internal") == 1
    _, clean, clean_store, _ = crash_run("none", 0, "episode")
    got = [a["alert_id"] for a in alerts(r.sink)]
    assert len(got) == len(set(got)) and set(got) == {a["alert_id"] for a in alerts(clean)}
    assert r.source.committed == 90
    for e in ("e1", "e2", "e3"):
        s, c = r.store.load([e])[e], clean_store.load([e])[e]
        assert (s.last_ts_ms, s.count, s.episode) == (c.last_ts_ms, c.count, c.episode)


def test_the_loop_has_one_step_for_both_depths():
    r0, r1 = rig(scenario(), pipeline=False), rig(scenario(), pipeline=True)
    assert (r0.worker.depth, r1.worker.depth) == (0, 1)
    assert not hasattr(worker_module.Worker, "pump") and not hasattr(worker_module.Worker, "run_once")
    drain(r0.worker), drain(r1.worker)
    assert [a["alert_id"] for a in alerts(r0.sink)] == [a["alert_id"] for a in alerts(r1.sink)]
