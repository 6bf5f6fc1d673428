"""The seasonal profile and term (``detector.season``, ``detector.term.SeasonTerm``): fitted only
where training sees a daily or weekly cycle, stored strictly in the artifact, and fed each
reading's timestamp on every path that scores (offline, worker, child process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.artifact import load_artifact
from detector.memory import InMemorySink, InMemorySource, InMemoryStateStore
from detector.metric import InMemoryMetrics
from detector.offline import score_series
from detector.process import ProcessDetector
from detector.protocol import Message
from detector.season import DAY_MS, WEEK_MS, SeasonProfile
from detector.stream import StreamConfig
from detector.term import Parts, SeasonTerm
from detector.worker import Worker, WorkerConfig
from training.trainer import TrainConfig, train

T0 = 1_420_070_400_000  # 2015-01-01 00:00 UTC, a Thursday
STEP = 30 * 60_000


def daily(days: float, step_ms: int = STEP, noise: float = 0.05, seed: int = 0):
    """A channel that follows the hour of the day, and one that is only noise."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(int(days * DAY_MS / step_ms), dtype=np.int64) * step_ms
    hour = (ts % DAY_MS) / 3_600_000
    cycle = np.sin(2 * np.pi * hour / 24) + noise * rng.normal(size=len(ts))
    return ts, np.column_stack([cycle, rng.normal(size=len(ts))])


def split(ts, values, fraction=0.75):
    n = int(len(ts) * fraction)
    return ts[:n], values[:n], ts[n:], values[n:]


def test_a_daily_cycle_gets_a_daily_profile_on_the_channel_it_explains():
    profile = SeasonProfile.fit(*split(*daily(12)))
    assert profile is not None and profile.period_ms == DAY_MS
    assert profile.active.tolist() == [True, False]  # the noise channel has no cycle
    assert profile.bins == 48  # one bin per 30-minute step


def test_no_profile_from_fewer_than_three_cycles_or_from_noise():
    assert SeasonProfile.fit(*split(*daily(3.5))) is None  # 2.6 days fitted
    ts, values = daily(12)
    noise = np.random.default_rng(1).normal(size=values.shape)
    assert SeasonProfile.fit(*split(ts, noise)) is None
    # a plant run of an hour at 1 s steps (SKAB's shape) never gets one
    assert SeasonProfile.fit(*split(*daily(1 / 24, step_ms=1000))) is None


def test_a_weekday_pattern_gets_a_weekly_profile():
    ts = T0 + np.arange(6 * 7 * 48, dtype=np.int64) * STEP
    weekday = ((ts // DAY_MS) + 4) % 7  # 0 = Monday
    rng = np.random.default_rng(2)
    values = np.where(weekday >= 5, 0.0, 1.0)[:, None] + 0.05 * rng.normal(size=(len(ts), 1))
    profile = SeasonProfile.fit(*split(ts, values))
    assert profile is not None and profile.period_ms == WEEK_MS


def test_departure_is_zero_on_the_profile_and_large_half_a_day_off():
    profile = SeasonProfile.fit(*split(*daily(12, noise=0.02)))
    ts, values = daily(1, noise=0.0, seed=5)
    ts = ts + 20 * DAY_MS  # a day the profile has not seen
    w = 8
    windows = np.stack([values[i : i + w] for i in range(0, 40, 8)])
    times = np.stack([ts[i : i + w] for i in range(0, 40, 8)])
    on_time = np.abs(profile.residual(times, windows)[:, 0])
    shifted = np.abs(profile.residual(times + DAY_MS // 2, windows)[:, 0])
    assert on_time.max() < 3 and shifted.min() > 5 * on_time.max()
    assert (profile.residual(times, windows)[:, 1] == 0).all()  # inactive channel
    with pytest.raises(ValueError, match="one timestamp per reading"):
        profile.residual(times[:, :-1], windows)


def test_profile_round_trips_and_loading_is_strict():
    profile = SeasonProfile.fit(*split(*daily(12)))
    data = json.loads(json.dumps(profile.to_dict()))
    again = SeasonProfile.from_dict(data, 2)
    np.testing.assert_array_equal(again.profile, profile.profile)
    assert again.active.tolist() == profile.active.tolist()
    with pytest.raises(ValueError, match="unknown fields"):
        SeasonProfile.from_dict({**data, "phase": 1}, 2)
    with pytest.raises(ValueError, match="lacks"):
        SeasonProfile.from_dict({k: v for k, v in data.items() if k != "spread"}, 2)
    with pytest.raises(ValueError, match="disagree"):
        SeasonProfile.from_dict(data, 3)
    with pytest.raises(ValueError, match="positive"):
        SeasonProfile.from_dict({**data, "spread": [0.0, 1.0]}, 2)


def _parts(season: np.ndarray | None) -> Parts:
    n = 4 if season is None else len(season)
    z = np.zeros((n, 1))
    return Parts(4, z, z, z, z, None, season)


def test_season_term_counts_only_departures_above_its_held_back_median():
    held = np.random.default_rng(3).normal(size=(500, 1))
    term = SeasonTerm.fit(_parts(held), 2.0)
    typical = term.center[0]
    got = term.contribution(_parts(np.array([[0.0], [typical], [-typical - 4 * term.scale[0]]])),
                            np.ones((3, 1)))
    assert got[0, 0] == 0 and got[1, 0] == 0
    assert got[2, 0] == pytest.approx(8.0)  # 4 spreads above, weight 2; either sign counts
    with pytest.raises(ValueError, match="timestamps"):
        term.contribution(_parts(None), np.ones((4, 1)))


# ---------------------------------------------------------------- a trained seasonal model

@pytest.fixture(scope="module")
def seasonal(tmp_path_factory):
    ts, values = daily(14)
    config = TrainConfig(window=8, epochs=2, hidden=8, latent=4, seed=1, max_gap_ms=0)
    result = train(ts, values, ["cycle", "noise"], config)
    out = tmp_path_factory.mktemp("seasonal")
    result.save(out)
    return out, result, ts, values


def windows_and_times(ts, values, w):
    idx = np.arange(w - 1, len(values))
    return (np.stack([values[i - w + 1 : i + 1] for i in idx]),
            np.stack([ts[i - w + 1 : i + 1] for i in idx]))


def test_training_on_a_cycle_stores_the_profile_and_the_term(seasonal):
    out, result, _, _ = seasonal
    meta = json.loads((out / "model.json").read_text())
    assert meta["season_profile"]["period_ms"] == DAY_MS
    assert meta["score_normaliser"]["season_weight"] == 2.0
    assert result.metrics["season_period_h"] == 24
    loaded = load_artifact(out, device="cpu").detector
    assert loaded.uses_time and loaded.spec.season.active.tolist() == [True, False]


def test_an_artifact_with_the_term_but_no_profile_is_refused(seasonal, tmp_path):
    out, _, _, _ = seasonal
    for name in ("model.json", "model.safetensors"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["season_profile"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="season"):
        load_artifact(tmp_path, device="cpu")


def test_the_model_needs_timestamps_and_reads_the_hour_from_them(seasonal):
    out, _, ts, values = seasonal
    det = load_artifact(out, device="cpu").detector
    windows, times = windows_and_times(ts[-200:], values[-200:], det.window)
    with pytest.raises(ValueError, match="timestamp"):
        det.score(windows)
    on_time = det.score(windows, ts_ms=times).scores
    off = det.score(windows, ts_ms=times + DAY_MS // 2).scores  # the same readings at night
    assert np.median(off) > np.median(on_time) + 5


def test_offline_worker_and_child_process_give_the_same_scores(seasonal):
    out, result, ts, values = seasonal
    det = load_artifact(out, device="cpu").detector
    stream = StreamConfig(det.window, 1, None)
    offline = score_series(det, result.threshold, ts[-120:], values[-120:], stream)

    msgs = [Message("readings", 0, i, b"pump", json.dumps(
        {"entity": "pump", "ts": int(t), "values": {"cycle": v[0], "noise": v[1]}}).encode(), int(t))
        for i, (t, v) in enumerate(zip(ts[-120:], values[-120:].tolist()))]
    sink = InMemorySink()
    worker = Worker(InMemorySource(msgs), sink, InMemoryStateStore(2),
                    lambda: (det, result.threshold),
                    WorkerConfig(stream=stream, max_batch=50, max_wait_ms=0, lag_interval_s=0,
                                 scores_topic="scores"),
                    InMemoryMetrics(), clock=lambda: 1_700_000_000.0)
    while worker.step():
        pass
    worker.drain()
    streamed = {r["ts_ms"]: r["score"] for r in
                (json.loads(v) for _, v in sink.records["scores"])}
    want = {int(t): s for t, s in zip(ts[-120:], offline.scores) if not np.isnan(s)}
    assert len(streamed) == len(want) == 120 - det.window + 1
    for t, s in want.items():
        assert streamed[t] == pytest.approx(s, rel=1e-6)  # float32 kernels per batch size

    windows, times = windows_and_times(ts[-120:], values[-120:], det.window)
    child = ProcessDetector(out, det, "cpu", 1, inline_below=8)
    try:
        got = child.score(windows, ts_ms=times)
    finally:
        child.close()
    np.testing.assert_array_equal(got.scores, det.score(windows, ts_ms=times).scores)
