"""One model for a fleet (issue #11): an entity column on train, score, evaluate and replay, and the
operating-point rule of ``detector.baseline``, tried on simulated pumps at different loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ganwatch
from connectors.file import DataError, frame_table
from detector.artifact import ArtifactError, load_artifact
from detector.baseline import EntityBaselines
from detector.batch import Routing, finish, prepare, score_batch
from detector.memory import InMemorySink, InMemoryStateStore
from detector.message import parse_reading
from detector.metric import NullMetrics
from detector.protocol import Message
from detector.stream import StreamConfig
from ganwatch.cli import build_parser, main
from ganwatch.fleet import fleet_training_rows
from ganwatch.replay import messages
from ganwatch.simulator import Fault, fleet_frame, simulate
from training.config import TrainConfig
from training.fleet import fleet_windows

ROOT = Path(__file__).resolve().parents[1]
LOADS = {"low": 0.45, "mid": 0.65, "high": 0.85, "new": 0.55}  # "new" is kept out of training
TRAINED = ("low", "mid", "high")
ROWS, NORMAL, TRAIN_ROWS = 2200, 1400, 1200
FAULTS = [Fault("mid", "level_shift", "current", 1500, 1620),
          Fault("mid", "spike", "vibration", 1800, 1803),
          Fault("new", "spike", "vibration", 1500, 1503),
          Fault("new", "level_shift", "current", 1800, 1920)]
FIT = dict(window=16, hidden=16, latent=8, epochs=6, sample_budget=12_000, seed=0,
           no_progress=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Four pumps at different loads in one table; a model trained on three of them."""
    tmp = tmp_path_factory.mktemp("fleet")
    telemetry = simulate(list(LOADS), ROWS, seed=1, period=600, faults=FAULTS, loads=LOADS,
                         normal_rows=NORMAL)
    frame = fleet_frame(telemetry, "pump")
    path = tmp / "fleet.csv"
    frame.to_csv(path, index=False)
    model = ganwatch.fit(frame[frame["pump"] != "new"], timestamp="ts", entity="pump",
                         exclude=["anomaly"], train_rows=TRAIN_ROWS, **FIT)
    model.save(tmp / "model")
    return frame, path, model, tmp


def rows_of(frame: pd.DataFrame, pump: str) -> pd.DataFrame:
    return frame[frame["pump"] == pump].reset_index(drop=True)


def flags_of(model, frame: pd.DataFrame, pump: str) -> np.ndarray:
    return model.score(rows_of(frame, pump), entity="pump")["is_anomaly"].to_numpy()


def fault_rows(fault: Fault, window: int) -> slice:
    """The rows whose window holds part of the fault."""
    return slice(fault.start, fault.end + window - 1)


# --- windows, split, stream rules: per entity -----------------------------------------------

def two_entities(n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of "a" and "b" interleaved at equal timestamps; channel 1 alternates in "a" only."""
    ts = np.repeat(np.arange(n, dtype=np.int64) * 1000, 2)
    entities = np.array(["a", "b"] * n, dtype=object)
    values = np.zeros((2 * n, 2))
    values[0::2, 0] = 100.0 + np.arange(n)
    values[1::2, 0] = 5.0 + np.arange(n)
    values[0::2, 1] = np.arange(n) % 2
    return ts, values, entities


def test_windows_never_span_two_entities_and_the_split_is_per_entity():
    ts, values, entities = two_entities()
    config = TrainConfig(window=4, calib_fraction=0.25)
    data = fleet_windows(ts, values, entities, config)
    for windows in (data.fit, data.calib):
        alternating = np.abs(windows[:, :, 1]) > 0  # rows of "a"
        assert (alternating.all(axis=1) | ~alternating.any(axis=1)).all()
    # each entity: 30 fitting rows give 27 windows, its last 10 rows end 10 held-back ones
    assert (len(data.fit), len(data.calib)) == (2 * 27, 2 * 10)
    assert data.stats.duplicates == 0  # equal timestamps of two entities are no repeats
    assert data.max_gap_ms == 10_000  # 10 x each entity's own 1 s step
    assert data.baselines.names == ("a", "b")
    np.testing.assert_allclose(data.baselines.of("a"), [114.5, 0.5])  # medians of fitting rows
    np.testing.assert_allclose(data.baselines.of("b"), [19.5, 0.0])


def test_an_entity_too_short_for_its_own_windows_is_left_out():
    ts, values, entities = two_entities()
    short = np.r_[np.arange(0, 80), [80, 81]]  # "c": two rows
    ts = np.r_[ts, 100_000, 101_000][short]
    values = np.r_[values, [[1.0, 1.0], [2.0, 2.0]]][short]
    entities = np.r_[entities, ["c", "c"]][short]
    data = fleet_windows(ts, values, entities, TrainConfig(window=4))
    assert data.metrics == {"entities": 2, "skipped_entities": ["c"]}
    assert "c" not in data.baselines


def test_train_rows_are_each_entitys_first_rows():
    entities = np.array(list("aabbbabacc"), dtype=object)
    keep, rows = fleet_training_rows(entities, 2, need=2, name="f")
    assert np.flatnonzero(keep).tolist() == [0, 1, 2, 3, 8, 9] and rows == 6
    with pytest.raises(DataError, match="no entity has 5 training rows"):
        fleet_training_rows(entities, None, need=5, name="f")


def test_the_fleet_model_counts_train_rows_per_entity(fleet):
    _, _, model, _ = fleet
    meta = model.meta
    assert meta["entity_column"] == "pump"
    assert sorted(model.entities) == sorted(TRAINED)
    assert meta["training_data"]["rows"] == len(TRAINED) * TRAIN_ROWS
    metrics = meta["training_metrics"]
    per_entity = int(round(TRAIN_ROWS * 0.75))
    assert metrics["fit_windows"] == len(TRAINED) * (per_entity - FIT["window"] + 1)
    assert metrics["calibration_windows"] == len(TRAINED) * (TRAIN_ROWS - per_entity)


# --- scoring: each entity alone, in input order, as the worker would ------------------------

def test_each_entity_scores_as_its_rows_alone(fleet, tmp_path):
    frame, path, _, tmp = fleet
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(tmp / "model"), "--data", str(path), "--out", str(out),
                 "--entity-column", "pump"]) == 0
    scored = pd.read_csv(out)
    assert list(scored.columns) == ["timestamp", "pump", "score", "is_anomaly"]
    assert scored["pump"].tolist() == frame["pump"].tolist()  # input order
    model = ganwatch.load(tmp / "model")
    for pump in LOADS:
        alone = model.score(rows_of(frame, pump), entity="pump")
        mine = scored[scored["pump"] == pump]
        np.testing.assert_allclose(mine["score"], alone["score"], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(mine["is_anomaly"], alone["is_anomaly"])
        assert alone["score"].isna().sum() == FIT["window"] - 1  # no window spans two pumps
    # the model's entity column is the default, as its timestamp column is
    again = tmp_path / "again.csv"
    assert main(["score", "--model", str(tmp / "model"), "--data", str(path),
                 "--out", str(again)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again), scored)


def worker_scores(model, frame: pd.DataFrame, batch: int) -> dict[tuple[str, int], float]:
    """Score records of the worker's batch stages (prepare, score, finish) for ``frame``'s
    readings, ``batch`` per poll, entities interleaved as they arrive."""
    det, threshold = model.artifact.detector, model.artifact.threshold
    stream = StreamConfig(model.window, 1, model.artifact.max_gap_ms())
    store, sink = InMemoryStateStore(len(model.channels)), InMemorySink()
    routing = Routing("alerts", "dead", "scores", "window", 5)
    parsed = []
    for i, row in enumerate(frame.to_dict("records")):
        value = {"entity": row["pump"], "ts": row["ts"],
                 "values": {c: row[c] for c in model.channels}}
        msg = Message("readings", 0, i, row["pump"].encode(), json.dumps(value).encode(), 0)
        parsed.append(parse_reading(msg, model.channels))
    for start in range(0, len(parsed), batch):
        prepared = prepare(parsed[start:start + batch], store, det, threshold, stream, True)
        finish(prepared, score_batch(prepared, 8192, NullMetrics()), sink, store, routing,
               lambda: 0.0, NullMetrics())
    records = [json.loads(v) for _, v in sink.records["scores"]]
    return {(r["entity"], r["ts_ms"]): r["score"] for r in records}


def test_the_worker_scores_a_fleet_as_score_does(fleet):
    frame, _, model, _ = fleet
    head = frame.iloc[: 4 * 300]  # every pump's first 300 readings, interleaved
    online = worker_scores(model, head, batch=137)
    offline = model.score(head, entity="pump")
    ts_ms = pd.to_datetime(head["ts"]).dt.tz_convert(None).to_numpy().astype("datetime64[ms]")
    ts_ms = ts_ms.astype(np.int64)
    want = {(p, int(t)): s for p, t, s in zip(head["pump"], ts_ms, offline["score"])
            if not np.isnan(s)}
    assert len(want) == 4 * (300 - FIT["window"] + 1)
    assert online.keys() == want.keys()
    for key, score in want.items():  # float32 results of a batch may differ in the last bits
        assert online[key] == pytest.approx(score, rel=1e-6, abs=1e-9), key


# --- operating points ------------------------------------------------------------------------

def test_a_trained_pump_at_its_own_load_is_not_flagged(fleet):
    frame, _, model, _ = fleet
    for pump in TRAINED:  # rows after its training rows, before any fault
        assert flags_of(model, frame, pump)[TRAIN_ROWS:NORMAL].sum() == 0, pump


def test_a_trained_pump_that_leaves_its_level_is_flagged(fleet):
    frame, _, model, _ = fleet
    flags = flags_of(model, frame, "mid")
    for fault in (f for f in FAULTS if f.entity == "mid"):
        assert flags[fault_rows(fault, model.window)].any(), fault.kind


def test_a_new_pump_is_judged_by_shape_not_by_its_level(fleet):
    frame, _, model, _ = fleet
    assert "new" not in model.entities
    flags = flags_of(model, frame, "new")
    assert flags[:NORMAL].sum() == 0  # its own level, never seen in training
    for fault in (f for f in FAULTS if f.entity == "new"):
        assert flags[fault_rows(fault, model.window)].any(), fault.kind
    # shape only: moving every channel of the new pump changes nothing ...
    new = rows_of(frame, "new").iloc[:NORMAL]
    moved = new.assign(**{c: new[c] + 5.0 for c in model.channels})
    np.testing.assert_allclose(model.score(moved, entity="pump")["score"],
                               model.score(new, entity="pump")["score"], atol=1e-3)
    # ... while a trained pump moved as much is judged against its own level
    mid = rows_of(frame, "mid").iloc[:NORMAL]
    moved_mid = mid.assign(**{c: mid[c] + 5.0 for c in model.channels})
    assert model.score(moved_mid, entity="pump")["is_anomaly"].mean() > 0.5


def test_baselines_centre_known_entities_on_their_level_and_new_ones_on_the_window():
    baselines = EntityBaselines(("a",), np.array([[10.0, 20.0]]))
    windows = np.array([[[11.0, 19.0], [13.0, 23.0], [12.0, 21.0]]] * 2)
    out = baselines.centre(windows, ["a", "zz"])
    np.testing.assert_allclose(out[0], windows[0] - [10.0, 20.0])
    np.testing.assert_allclose(out[1], windows[1] - [12.0, 21.0])  # minus the window's median
    np.testing.assert_allclose(baselines.centre(windows[:1], "zz"), out[1:])
    np.testing.assert_allclose(baselines.centre(windows[:1], None), out[1:])


# --- the artifact ----------------------------------------------------------------------------

def test_the_artifact_stores_each_trained_entitys_baseline(fleet):
    _, _, model, tmp = fleet
    meta = json.loads((tmp / "model" / "model.json").read_text())
    assert sorted(meta["entity_baselines"]) == sorted(TRAINED)
    assert all(len(v) == len(model.channels) for v in meta["entity_baselines"].values())
    low, high = (np.array(meta["entity_baselines"][p]) for p in ("low", "high"))
    assert (high > low).all()  # every channel rises with the load


@pytest.mark.parametrize("bad, needle", [
    ({"low": [1.0]}, "list of 6 numbers"),
    ({"low": [1.0, 2.0, 3.0, 4.0, "x", 6.0]}, "list of 6 numbers"),
    ({"low": [1.0, 2.0, 3.0, 4.0, float("nan"), 6.0]}, "non-finite"),
    ({"": [1.0] * 6}, "empty entity name"),
    ([1.0] * 6, "must map entity names"),
    ({}, "must map entity names"),
])
def test_a_malformed_baseline_is_refused_on_load(fleet, tmp_path, bad, needle):
    _, _, _, tmp = fleet
    target = tmp_path / "model"
    shutil.copytree(tmp / "model", target)
    meta = json.loads((target / "model.json").read_text())
    meta["entity_baselines"] = bad
    (target / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=needle):
        load_artifact(target, device="cpu")


def test_a_model_without_an_entity_column_has_no_baselines(fleet):
    frame, _, _, _ = fleet
    one = rows_of(frame, "mid").drop(columns="pump").iloc[:400]
    model = ganwatch.fit(one, timestamp="ts", exclude=["anomaly"], window=8, epochs=1, hidden=8,
                         latent=4, no_progress=True)
    assert "entity_baselines" not in model.meta and "entity_column" not in model.meta
    assert model.entities == [] and model.artifact.detector.baselines is None


# --- input errors, evaluate and replay -------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganwatch.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("edit, needle", [
    (lambda f: f.drop(columns="pump"), "unknown column 'pump'"),
    (lambda f: f.assign(pump=f["pump"].where(f.index != 7, "")), "row 7: a missing or empty"),
])
def test_bad_entity_columns_are_one_line_errors(fleet, tmp_path, edit, needle):
    frame, _, _, _ = fleet
    path = tmp_path / "bad.csv"
    edit(frame.iloc[:200]).to_csv(path, index=False)
    proc = run_cli("train", "--data", str(path), "--out", str(tmp_path / "m"),
                   "--timestamp-column", "ts", "--entity-column", "pump", "--no-progress")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0], proc.stderr
    with pytest.raises(DataError, match=needle.split(":")[0]):
        ganwatch.fit(edit(frame.iloc[:200]), timestamp="ts", entity="pump", no_progress=True)


def test_the_entity_column_is_never_a_channel(fleet):
    frame, _, _, _ = fleet
    numbered = frame.iloc[:20].assign(pump=frame["pump"].iloc[:20].map(
        {"low": 1, "mid": 2, "high": 3, "new": 4}))
    table = frame_table(numbered, "f", timestamp_column="ts", entity_column="pump")
    assert "pump" not in table.channels and table.entities.tolist()[:4] == ["1", "2", "3", "4"]
    with pytest.raises(DataError, match="both a channel and the entity column"):
        frame_table(numbered, "f", entity_column="pump", channels=["pump", "flow"])


def test_evaluate_takes_the_entity_column(fleet, tmp_path, capsys):
    _, path, _, tmp = fleet
    assert main(["evaluate", "--model", str(tmp / "model"), "--data", str(path),
                 "--label-column", "anomaly", "--entity-column", "pump"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_events"] == len(FAULTS)  # each pump's faults, never merged across pumps
    assert result["n_detected_events"] == len(FAULTS)
    assert result["fp"] <= len(FAULTS) * 2 * FIT["window"]  # the windows after a fault ends


def test_replay_keys_each_record_by_its_rows_entity(fleet):
    frame, path, _, _ = fleet
    from connectors.file import read_table

    table = read_table(path, timestamp_column="ts", entity_column="pump",
                       exclude_columns=["anomaly"])
    sent = [json.loads(v)["entity"] for _, v in messages(table, None, "iso", 0)]
    assert sent == frame["pump"].tolist()
    parser = build_parser()
    base = ["replay", "--data", str(path), "--bootstrap-servers", "x:1", "--topic", "t"]
    assert parser.parse_args([*base, "--entity-column", "pump"]).entity_column == "pump"
    for bad in ([], ["--entity", "p", "--entity-column", "pump"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])
