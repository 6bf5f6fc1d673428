"""Relative levels of slow channels (detector.level): fitting, storage, and what they catch."""

import numpy as np
import pytest

from detector.artifact import load_artifact
from detector.level import LevelModel
from detector.offline import score_series
from detector.stream import StreamConfig
from training.trainer import TrainConfig, train

CHANNELS = ["flow", "current", "temperature"]


def windows(n=600, w=8, seed=0):
    """Windows (N, w, 3) whose means: channel 1 follows channel 0, channel 2 wanders alone."""
    rng = np.random.default_rng(seed)
    load = np.repeat(rng.normal(size=n), w).reshape(n, w)
    own = np.repeat(rng.normal(size=n), w).reshape(n, w)
    noise = 0.05 * rng.normal(size=(n, w))
    return np.stack([load, 2 * load + noise, own], axis=-1)


def test_fits_only_slow_channels_the_others_explain_on_later_windows():
    x = windows()
    level = LevelModel.fit(x, np.array([True, True, True]), min_r2=0.95)
    assert list(level.explained) == [True, True, False]
    assert level.r2[1] > 0.99 and level.r2[2] < 0.1
    assert np.allclose(level.coef[[1, 4], 1], 0)  # a channel never predicts itself
    np.testing.assert_allclose(level.predict(x)[:, 1], x[:, :, 1].mean(axis=1), atol=0.2)
    only_fast = LevelModel.fit(x, np.array([False, False, False]), min_r2=0.95)
    assert not only_fast.explained.any() and np.isnan(only_fast.r2).all()


def test_a_relation_that_breaks_later_in_training_is_not_trusted():
    x = windows()
    x[400:, :, 1] = -x[400:, :, 1]  # channel 1 stops following channel 0 in the latest windows
    assert not LevelModel.fit(x, np.array([True, True, False]), min_r2=0.95).explained[1]


def test_a_short_history_is_fitted_on_twice_as_many_windows_as_the_regression_has_inputs():
    # 3 channels: 6 inputs. 27 windows: fitted on 18 (>= 12), judged on the latest 9
    level = LevelModel.fit(windows(n=27), np.array([True, True, True]), min_r2=0.95)
    assert list(level.explained) == [True, True, False]
    assert level.r2[1] > 0.99
    # 19 windows: fitted on 13, judged on 6; 16 windows: fitted on 11 < 12, so not fitted at all
    assert not np.isnan(LevelModel.fit(windows(n=19), np.array([False, True, False]), 0.95).r2[1])
    short = LevelModel.fit(windows(n=16), np.array([True, True, True]), min_r2=0.95)
    assert not short.explained.any() and np.isnan(short.r2).all()


def test_round_trips_and_refuses_the_wrong_size():
    level = LevelModel.fit(windows(), np.array([True, True, False]), min_r2=0.9)
    again = LevelModel.from_dict(level.to_dict(), 3)
    x = windows(50, seed=1)
    np.testing.assert_array_equal(again.predict(x), level.predict(x))
    np.testing.assert_array_equal(again.explained, level.explained)
    with pytest.raises(ValueError, match="4 channels"):
        LevelModel.from_dict(level.to_dict(), 4)


def plant(n, seed, start=0):
    """Flow and current follow one slow load; the bearing temperature wanders on its own."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + n)
    load = np.sin(2 * np.pi * t / 300) + 0.2 * np.sin(2 * np.pi * t / 77)
    weather = np.cumsum(rng.normal(scale=0.05, size=n))
    return np.stack([100 + 30 * load + rng.normal(size=n),
                     20 + 8 * load + 0.3 * rng.normal(size=n),
                     50 + weather + 0.05 * rng.normal(size=n)], axis=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    values = plant(1200, seed=0)
    config = TrainConfig(window=16, epochs=4, hidden=16, latent=8, seed=1)
    result = train(1000 * np.arange(1200, dtype=np.int64), values, CHANNELS, config)
    out = tmp_path_factory.mktemp("level")
    result.save(out)
    return out, result, config, values


def test_training_keeps_the_level_of_slow_channels_that_follow_the_load(model):
    out, result, _, _ = model
    assert list(result.spec.slow) == [True, True, True]
    assert list(result.spec.level.explained) == [True, True, False]
    loaded = load_artifact(out, device="cpu").detector
    np.testing.assert_array_equal(loaded.level.explained, result.spec.level.explained)


def test_an_offset_on_one_load_channel_is_flagged_and_named(model):
    out, result, config, train_values = model
    loaded = load_artifact(out, device="cpu")
    live = plant(600, seed=5, start=1200)
    live[300:450, 1] += 2 * train_values[:, 1].std()  # current reads high: a sensor offset
    ts = 1000 * np.arange(1200, 1800, dtype=np.int64)
    scored = score_series(loaded.detector, loaded.threshold, ts, live, StreamConfig(config.window))
    inside = scored.flags[300 + config.window : 450]
    assert inside.mean() > 0.8, f"only {inside.mean():.2f} of the offset windows flagged"
    assert scored.flags[config.window : 300].mean() < 0.05
    rows = np.flatnonzero(scored.flags[300:450]) + 300
    named = scored.contributions[rows].argmax(axis=1)
    assert np.isin(named, [0, 1]).mean() > 0.9  # the load channels, not the temperature
    fresh = score_series(result.detector(), loaded.threshold, ts, live,
                         StreamConfig(config.window))
    np.testing.assert_allclose(fresh.scores, scored.scores, atol=1e-6)
