"""Helpers for end-to-end tests with several entities: what offline scoring says each one's alerts
and stored window must be, publishing one table under many entity names, reading state back."""

from __future__ import annotations

import numpy as np

from connectors.file import Table
from connectors.redis_store import RedisClient, RedisStateStore
from detector.alert import AlertContext, Verdict, make_alerts
from detector.artifact import Artifact
from detector.offline import score_series
from detector.stream import EntityState, StreamConfig
from ganwatch.replay import publish
from ganwatch.serve import state_namespace


def expected_alerts(artifact: Artifact, table: Table, entity: str, end_windows: int) -> list[dict]:
    """The alerts of an uninterrupted run of ``table`` as ``entity``: offline scores through the
    episode rules."""
    channels = list(artifact.detector.channels)
    ctx = AlertContext(channels, artifact.threshold.value, artifact.meta["model_version"], 0)
    scored = score_series(artifact.detector, artifact.threshold, table.ts_ms, table.values,
                          StreamConfig(artifact.detector.window, 1, artifact.max_gap_ms()))
    episode: dict = {}
    out = []
    for i in np.flatnonzero(~np.isnan(scored.scores)):
        verdict = Verdict(entity, int(table.ts_ms[i]), 0, float(scored.scores[i]),
                          bool(scored.flags[i]), scored.contributions[i])
        out.extend(make_alerts(verdict, episode, "episode", end_windows, ctx))
    return out


def publish_all(table: Table, entities: list[str], bootstrap: str, topic: str) -> int:
    """Publish ``table`` once per entity (each entity's readings in order); return the count."""
    return sum(publish(table, entity, bootstrap, topic) for entity in entities)


def stored_states(client: RedisClient, artifact: Artifact, prefix: str,
                  entities: list[str]) -> dict[str, EntityState]:
    """What ``serve`` stored for ``entities`` under ``--state-prefix prefix``."""
    channels = list(artifact.detector.channels)
    store = RedisStateStore(client, len(channels), prefix=prefix,
                            namespace=state_namespace(channels, artifact.detector.window))
    return store.load(entities)


def assert_window_is_the_last_readings(state: EntityState, table: Table, window: int) -> None:
    """The stored window holds the entity's last ``window`` readings, bit for bit (``table`` has
    no gap that would restart it)."""
    assert state.last_ts_ms == int(table.ts_ms[-1]), state.entity
    n = len(state.ts)
    assert n == window, (state.entity, n)
    assert state.ts.tolist() == table.ts_ms[-n:].tolist(), state.entity
    assert np.array_equal(state.values, table.values[-n:]), state.entity
