"""The telemetry simulator: deterministic, labelled, and each fault kind visible where it should be."""

import numpy as np
import pandas as pd
import pytest

from connectors.file import read_table
from ganwatch.simulator import (
    CHANNELS,
    DRIFT_SD,
    KINDS,
    SHIFT_SD,
    SPIKE_SD,
    Fault,
    default_faults,
    simulate,
    write_csv,
)

ENTITIES = ("pump-1", "pump-2")
ROWS, NORMAL = 2400, 1200


@pytest.fixture(scope="module")
def pair():
    """(faulty, clean) telemetry from the same seed: faults are the only difference."""
    return (simulate(ENTITIES, ROWS, seed=3, normal_rows=NORMAL),
            simulate(ENTITIES, ROWS, seed=3, faults=None))


def fault_of(telemetry, kind) -> Fault:
    (fault,) = [f for f in telemetry.faults if f.kind == kind]
    return fault


def series(telemetry, fault):
    return telemetry.frames[fault.entity][fault.channel].to_numpy()


def deviation(pair, kind):
    """(fault, faulty - clean in clean-sd units, clean series) for one fault kind."""
    faulty, clean = pair
    fault = fault_of(faulty, kind)
    clean_values = series(clean, fault)
    return fault, (series(faulty, fault) - clean_values) / clean_values.std(), clean_values


def test_same_seed_same_data_other_seed_other_data():
    a, b = simulate(ENTITIES, 500, seed=1), simulate(ENTITIES, 500, seed=1)
    c = simulate(ENTITIES, 500, seed=2)
    for entity in ENTITIES:
        pd.testing.assert_frame_equal(a.frames[entity], b.frames[entity])
        assert not np.allclose(a.frames[entity]["flow"], c.frames[entity]["flow"])
    assert a.faults == b.faults


def test_an_entity_does_not_depend_on_the_others():
    alone = simulate(("pump-2",), 500, seed=1, faults=None)
    together = simulate(("pump-1", "pump-2"), 500, seed=1, faults=None)
    pd.testing.assert_frame_equal(alone.frames["pump-2"], together.frames["pump-2"])
    assert not np.allclose(together.frames["pump-1"]["flow"], together.frames["pump-2"]["flow"])


def test_each_pump_runs_at_its_own_operating_point():
    """``loads`` moves a pump's level (flow ~ n, current ~ n**3); a pump not named keeps 0.65."""
    t = simulate(("low", "mid", "high"), 1200, seed=1, faults=None,
                 loads={"low": 0.45, "high": 0.85})
    mean = {e: t.load[e].mean() for e in t.frames}
    assert abs(mean["low"] - 0.45) < 0.05 and abs(mean["mid"] - 0.65) < 0.05
    assert abs(mean["high"] - 0.85) < 0.05
    flow = {e: f["flow"].mean() for e, f in t.frames.items()}
    current = {e: f["current"].mean() for e, f in t.frames.items()}
    assert flow["low"] < 0.8 * flow["mid"] < 0.8 ** 2 * flow["high"]
    assert current["low"] < current["mid"] < current["high"]


def test_frame_layout_and_timestamps():
    t = simulate(("p",), 100, seed=0, faults=None, start_ts_ms=1_600_000_000_000, step_ms=500)
    frame = t.frames["p"]
    assert list(frame.columns) == ["ts", *CHANNELS, "anomaly"]
    assert frame["ts"].iloc[0] == "2020-09-13T12:26:40.000Z"
    ts = pd.to_datetime(frame["ts"], utc=True)
    assert (ts.diff().dropna() == pd.Timedelta(milliseconds=500)).all()
    assert frame["anomaly"].sum() == 0 and t.faults == []


def test_default_faults_one_of_each_kind_after_the_normal_prefix(pair):
    faulty, _ = pair
    assert sorted(f.kind for f in faulty.faults) == sorted(KINDS)
    for f in faulty.faults:
        assert NORMAL <= f.start < f.end <= ROWS
    spans = sorted((f.start, f.end) for f in faulty.faults)
    assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert {f.entity for f in faulty.faults} == set(ENTITIES)
    assert faulty.normal_rows == NORMAL


def test_labels_match_fault_spans(pair):
    faulty, _ = pair
    for entity, frame in faulty.frames.items():
        expected = np.zeros(ROWS, dtype=int)
        for f in faulty.faults:
            if f.entity == entity:
                expected[f.start:f.end] = 1
        assert (frame["anomaly"].to_numpy() == expected).all()
        assert frame["anomaly"].iloc[:NORMAL].sum() == 0


def test_faults_change_nothing_outside_their_span(pair):
    faulty, clean = pair
    for entity in ENTITIES:
        touched = np.zeros((ROWS, len(CHANNELS)), dtype=bool)
        for f in faulty.faults:
            if f.entity == entity:
                touched[f.start:f.end, CHANNELS.index(f.channel)] = True
        a = faulty.frames[entity][list(CHANNELS)].to_numpy()
        b = clean.frames[entity][list(CHANNELS)].to_numpy()
        assert (a[~touched] == b[~touched]).all()
        assert (a[touched] != b[touched]).mean() > 0.9


def test_spike(pair):
    fault, dev, _ = deviation(pair, "spike")
    assert 1 <= fault.end - fault.start <= 10
    assert np.allclose(dev[fault.start:fault.end], SPIKE_SD, atol=0.05)


def test_level_shift(pair):
    fault, dev, _ = deviation(pair, "level_shift")
    assert abs(dev[fault.start:fault.end].mean() - SHIFT_SD) < 0.05
    faulty, _ = pair
    values = series(faulty, fault)
    sd = values[:NORMAL].std()
    # against the previous stretch of the same length too, not only against the clean series
    before = values[fault.start - (fault.end - fault.start):fault.start]
    assert values[fault.start:fault.end].mean() - before.mean() > 1.5 * sd


def test_drift_grows(pair):
    fault, dev, _ = deviation(pair, "drift")
    span = dev[fault.start:fault.end]
    assert span[-1] == pytest.approx(DRIFT_SD, abs=0.05)
    assert span[0] < 0.2 * DRIFT_SD
    half = len(span) // 2
    assert span[half:].mean() > span[:half].mean() + 1
    assert (np.diff(span) > -0.05).all()  # monotone up to output rounding


def test_stuck_sensor_has_zero_variance(pair):
    faulty, clean = pair
    fault = fault_of(faulty, "stuck")
    values = series(faulty, fault)
    assert np.unique(values[fault.start:fault.end]).size == 1  # frozen: zero variance
    assert values[fault.start] == values[fault.start - 1]
    assert series(clean, fault)[fault.start:fault.end].std() > 0


def test_correlation_break(pair):
    faulty, clean = pair
    fault = fault_of(faulty, "correlation_break")
    load = faulty.load[fault.entity][fault.start:fault.end]
    before = np.corrcoef(series(clean, fault)[fault.start:fault.end], load)[0, 1]
    after = np.corrcoef(series(faulty, fault)[fault.start:fault.end], load)[0, 1]
    assert before > 0.5 and after < -0.5


def test_channels_follow_the_load_in_normal_data(pair):
    _, clean = pair
    for entity, frame in clean.frames.items():
        for channel in CHANNELS:
            r = np.corrcoef(frame[channel], clean.load[entity])[0, 1]
            assert r > 0.8, (entity, channel, r)


@pytest.mark.parametrize("period", [300, 600])
def test_daily_pattern_repeats_with_the_period(period):
    speed = simulate(("p",), 3000, seed=5, faults=None, period=period).frames["p"]["speed"].to_numpy()
    lagged = lambda k: np.corrcoef(speed[:-k], speed[k:])[0, 1]  # noqa: E731
    assert lagged(period) > 0.5 > lagged(period // 2)


def test_custom_faults_and_validation():
    t = simulate(("p",), 200, seed=0, faults=[Fault("p", "stuck", "flow", 50, 80)])
    assert t.frames["p"]["anomaly"].sum() == 30
    with pytest.raises(ValueError, match="outside"):
        simulate(("p",), 200, faults=[Fault("p", "spike", "flow", 190, 210)])
    with pytest.raises(ValueError, match="unknown"):
        simulate(("p",), 200, faults=[Fault("p", "spike", "oil", 10, 20)])
    with pytest.raises(ValueError, match="unknown"):
        simulate(("p",), 200, faults=[Fault("p", "melt", "flow", 10, 20)])
    with pytest.raises(ValueError, match="rows"):
        default_faults(("p",), 100, 90)


def test_channel_subset_gets_faults_on_existing_channels():
    t = simulate(("p",), 1000, seed=0, channels=("flow", "speed"), normal_rows=500)
    assert list(t.frames["p"].columns) == ["ts", "flow", "speed", "anomaly"]
    assert {f.channel for f in t.faults} <= {"flow", "speed"} and len(t.faults) == len(KINDS)


def test_write_csv_round_trip(tmp_path, pair):
    faulty, _ = pair
    paths = write_csv(faulty, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["pump-1.csv", "pump-2.csv"]
    table = read_table(paths[0], timestamp_column="ts", label_column="anomaly")
    frame = faulty.frames["pump-1"]
    assert table.channels == list(CHANNELS)
    assert np.allclose(table.values, frame[list(CHANNELS)].to_numpy())
    assert (table.labels == frame["anomaly"].to_numpy()).all()
    assert table.ts_ms[1] - table.ts_ms[0] == 1000
