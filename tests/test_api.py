"""The Python API (``ganwatch.fit`` / ``load`` / ``Model.score`` / ``OnlineScorer``) against the
CLI and the worker's alert rules it shares its code with."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

import ganwatch
from detector.offline import score_series, series_alerts
from detector.stream import StreamConfig
from ganwatch.cli import build_parser, main
from tests.test_cli import write_series
from tests.test_install import subparsers

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(window=8, epochs=2, hidden=8, latent=4)
SMALL_FLAGS = ["--window", "8", "--epochs", "2", "--hidden", "8", "--latent", "4", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same rows trained by the CLI and by ``fit`` on a DataFrame of them."""
    tmp = tmp_path_factory.mktemp("api")
    data = write_series(tmp / "normal.csv", n=200)
    cli_dir, api_dir = tmp / "cli", tmp / "api"
    assert main(["train", "--data", str(data), "--out", str(cli_dir), "--timestamp-column", "time",
                 "--exclude-columns", "label", "--train-rows", "180", "--seed", "3",
                 *SMALL_FLAGS]) == 0
    model = ganwatch.fit(pd.read_csv(data), timestamp="time", exclude=["label"], train_rows=180,
                         seed=3, no_progress=True, **SMALL)
    assert model.save(api_dir) == api_dir
    return data, cli_dir, api_dir, model


def test_fit_gives_the_model_train_gives(trained):
    _, cli_dir, api_dir, model = trained
    cli, api = (json.loads((d / "model.json").read_text()) for d in (cli_dir, api_dir))
    assert api["threshold"] == cli["threshold"]
    for key in ("channels", "scaler", "score_normaliser", "hyperparameters", "timestamp_column",
                "max_gap_ms", "slow_channels"):
        assert api[key] == cli[key], key
    assert api["training_data"]["fingerprint"] == cli["training_data"]["fingerprint"]
    assert api["training_data"]["rows"] == 180 and api["training_data"]["path"] is None
    cli_w, api_w = (load_file(str(d / "model.safetensors")) for d in (cli_dir, api_dir))
    assert sorted(cli_w) == sorted(api_w) and len(cli_w) > 4
    for name, tensor in cli_w.items():
        assert (api_w[name] == tensor).all(), name
    assert sorted(p.name for p in api_dir.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    assert (model.channels, model.window) == (["flow", "pressure"], 8)
    assert model.threshold == cli["threshold"]["value"]
    assert model.model_version == api["model_version"]  # known before the save, as after it


def test_fit_takes_a_path_as_the_cli_does(trained):
    data, _, _, model = trained
    again = ganwatch.fit(str(data), timestamp="time", exclude="label", train_rows=180, seed=3,
                         no_progress=True, **SMALL)
    assert again.threshold == model.threshold
    assert again.meta["training_data"]["path"] == str(data)
    assert again.meta["timestamp_column"] == "time"


def test_load_is_the_saved_model(trained, tmp_path):
    data, _, api_dir, model = trained
    loaded = ganwatch.load(api_dir)
    assert (loaded.channels, loaded.window, loaded.threshold, loaded.model_version) == (
        model.channels, model.window, model.threshold, model.model_version)
    frame = pd.read_csv(data)
    pd.testing.assert_frame_equal(loaded.score(frame), model.score(frame))
    copy = loaded.save(tmp_path / "copy")  # a loaded model saves its files unchanged
    assert (copy / "model.json").read_bytes() == (api_dir / "model.json").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.pt").write_bytes(b"x")
    with pytest.raises(ganwatch.ArtifactError, match="refusing model.pt"):
        ganwatch.load(tmp_path / "bad")


@pytest.mark.parametrize("options, flags", [
    ({}, []),
    ({"stride": 2, "alert_mode": "window", "max_gap_s": 3.5},
     ["--stride", "2", "--alert-mode", "window", "--max-gap-s", "3.5"]),
    ({"episode_end_windows": 2}, ["--episode-end-windows", "2"]),
])
def test_score_gives_the_values_score_writes(trained, tmp_path, options, flags):
    _, cli_dir, _, _ = trained
    live = write_series(tmp_path / "live.csv", n=160, seed=5, spike_at=60)
    frame = pd.read_csv(live).drop(index=range(100, 105))  # a gap: 6 s
    frame.to_csv(live, index=False)
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(cli_dir), "--data", str(live), "--out", str(out),
                 "--contributions", *flags]) == 0
    want = pd.read_csv(out)
    got = ganwatch.load(cli_dir).score(frame, contributions=True, **options)
    assert list(got.columns) == list(want.columns[1:])
    assert got.index.equals(frame.index)  # the input's, gaps in it included
    assert got["is_anomaly"].sum() > 0  # the spike
    np.testing.assert_allclose(got.to_numpy(float), want.iloc[:, 1:].to_numpy(float), rtol=0,
                               atol=1e-9, equal_nan=True)


def test_a_datetime_index_is_the_timestamp(trained):
    data, _, _, model = trained
    frame = pd.read_csv(data)
    indexed = frame.drop(columns="time").set_index(
        pd.DatetimeIndex(pd.to_datetime(frame["time"]), name="time"))
    again = ganwatch.fit(indexed, exclude="label", train_rows=180, seed=3, no_progress=True,
                         **SMALL)
    assert again.threshold == model.threshold
    assert again.meta["timestamp_column"] == "time"
    assert again.meta["training_data"]["fingerprint"] == model.meta["training_data"]["fingerprint"]
    scores = model.score(indexed.iloc[:40])
    assert scores.index.equals(indexed.index[:40])
    np.testing.assert_array_equal(scores["score"], model.score(frame.iloc[:40])["score"])


def test_every_train_flag_is_a_fit_keyword_with_its_default():
    params = inspect.signature(ganwatch.fit).parameters
    renamed = {"timestamp_column": "timestamp", "exclude_columns": "exclude",
               "entity_column": "entity"}
    train = subparsers(build_parser())["train"]
    dests = [a.dest for a in train._actions if a.option_strings and a.dest not in ("help", "out")]
    assert len(dests) > 15
    for dest in dests:
        if dest == "data":
            continue
        name = renamed.get(dest, dest)
        assert name in params, dest
        assert params[name].default == train.get_default(dest), dest


def readings(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.read_csv(path)
    frame.loc[30, "time"] = frame.loc[29, "time"]  # a repeated timestamp: skipped by both
    ts_ms = pd.to_datetime(frame["time"]).dt.tz_convert(None).to_numpy().astype("datetime64[ms]")
    return frame, ts_ms.astype(np.int64)


def offline_alerts(model, ts_ms, values, mode="episode", end_windows=5, stride=1):
    stream = StreamConfig(model.window, stride, model.artifact.max_gap_ms())
    scored = score_series(model.artifact.detector, model.artifact.threshold, ts_ms, values, stream)
    return series_alerts(scored, ts_ms, model.channels, model.artifact.threshold,
                         model.model_version, mode, end_windows, entity="pump-7").alerts


def assert_same_alerts(got, want) -> None:
    """Equal alerts; scores to 1e-6 relative, since a window scored alone and in a batch may
    differ in the last float32 bits (as tests/test_serve_e2e.py allows)."""
    def same(a, b) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return a == pytest.approx(b, rel=1e-6)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert same(a, b), (a, b)


@pytest.mark.parametrize("mode, end_windows, stride", [("episode", 5, 1), ("window", 5, 1),
                                                       ("episode", 3, 2)])
def test_online_alerts_are_the_offline_episode_alerts(trained, tmp_path, mode, end_windows,
                                                      stride):
    _, cli_dir, _, _ = trained
    model = ganwatch.load(cli_dir)
    frame, ts_ms = readings(write_series(tmp_path / "live.csv", n=160, seed=5, spike_at=60))
    values = frame[model.channels].to_numpy(float)
    scorer = ganwatch.OnlineScorer(model, alert_mode=mode, episode_end_windows=end_windows,
                                   stride=stride, clock=lambda: 0.0)
    got = []
    for i, (t, row) in enumerate(zip(ts_ms.tolist(), values)):
        # every accepted way of giving a timestamp and the values
        ts = [t, frame["time"][i], datetime.fromtimestamp(t / 1000, timezone.utc)][i % 3]
        vals = row if i % 2 else dict(zip(model.channels, row.tolist()))
        got.extend(scorer.update("pump-7", ts, vals))
    want = offline_alerts(model, ts_ms, values, mode, end_windows, stride)
    assert len(want) >= (2 if mode == "episode" else 5)
    assert_same_alerts(got, want)
    assert scorer.state("pump-7").last_ts_ms == ts_ms.max()


def test_online_missing_channels_are_carried_as_serve_carries_them(trained, tmp_path):
    _, cli_dir, _, _ = trained
    model = ganwatch.load(cli_dir)
    frame, ts_ms = readings(write_series(tmp_path / "live.csv", n=160, seed=5, spike_at=60))
    values = frame[model.channels].to_numpy(float)
    scorer = ganwatch.OnlineScorer(model, clock=lambda: 0.0)
    with pytest.raises(ganwatch.DataError, match=r"missing pressure, no previous value to carry"):
        scorer.update("pump-7", int(ts_ms[0]), {"flow": 1.0})
    got, last = [], None
    for i, (t, row) in enumerate(zip(ts_ms.tolist(), values)):
        reading = {"flow": row[0], "pressure": None if i % 7 == 3 else row[1], "extra": 1}
        got.extend(scorer.update("pump-7", t, reading))
        if i % 7 == 3:  # what serve carries: the last accepted reading's (not a skipped one's)
            values[i, 1] = last[1]
        if last is None or t > last[0]:
            last = (t, values[i, 1])
    assert got
    assert_same_alerts(got, offline_alerts(model, ts_ms, values))
    strict = ganwatch.OnlineScorer(model, missing_channel="dead-letter")
    with pytest.raises(ganwatch.DataError, match=r"\(missing_channel\): missing pressure$"):
        strict.update("a", 1000, {"flow": 1.0})


@pytest.mark.parametrize("ts, values, message", [
    ("yesterday", [1.0, 2.0], "(bad_ts): not ISO-8601: 'yesterday'"),
    (1000, [1.0], "1 values for the model's 2 channels flow, pressure"),
    (1000, {"flow": "high", "pressure": 1.0}, "(non_numeric): channel 'flow' is a str"),
    (1000, {"flow": float("nan"), "pressure": 1.0}, "(non_finite): channel 'flow' is nan"),
])
def test_online_bad_readings_are_data_errors(trained, ts, values, message):
    scorer = ganwatch.OnlineScorer(ganwatch.load(trained[1]))
    with pytest.raises(ganwatch.DataError) as raised:
        scorer.update("pump-7", ts, values)
    assert str(raised.value).endswith(message)
    assert scorer.state("pump-7").last_ts_ms is None


@pytest.mark.parametrize("call, flags, message", [
    (lambda f, m: ganwatch.fit(f, window=0), ["--window", "0"], "--window must be positive, got 0"),
    (lambda f, m: ganwatch.fit(f, threshold_margin=-1.0), ["--threshold-margin", "-1"],
     "--threshold-margin must be 0 or more, got -1.0"),
    (lambda f, m: ganwatch.fit(f, false_alarm_target=1.0), ["--false-alarm-target", "1"],
     "--false-alarm-target must lie between 0 and 1 (a share of normal windows, e.g. 0.001), "
     "got 1.0"),
    (lambda f, m: ganwatch.fit(f.iloc[:20], timestamp="time", window=16), None,
     "frame: 20 training rows, need at least 40 for a window of 16 (fitting plus held-back "
     "calibration windows)"),
    (lambda f, m: ganwatch.fit(f, channels="flow,nope"), None, "frame: unknown column 'nope'; "
     "available: time, flow, pressure, label"),
    (lambda f, m: m.score(f, stride=0), None, "--stride must be at least 1, got 0"),
    (lambda f, m: m.score(f, alert_mode="all"), None,
     "--alert-mode must be one of window, episode, got 'all'"),
    (lambda f, m: m.score(f.iloc[:5]), None, "frame: 5 rows, fewer than the window of 8"),
])
def test_bad_input_is_a_data_error_with_the_cli_message(trained, capsys, call, flags, message):
    data, _, _, model = trained
    with pytest.raises(ganwatch.DataError) as raised:
        call(pd.read_csv(data), model)
    assert isinstance(raised.value, ValueError) and str(raised.value) == message
    if flags:  # the CLI says the same, in its one line
        capsys.readouterr()
        assert main(["train", "--data", str(data), "--out", "unused", *flags]) == 2
        assert capsys.readouterr().err == f"ganwatch train: error: {message}\n"


def test_import_loads_no_torch_until_a_model_is_loaded(trained):
    code = ("import sys, ganwatch\n"
            "bare = 'torch' in sys.modules or 'pandas' in sys.modules\n"
            "names = (ganwatch.fit, ganwatch.load, ganwatch.OnlineScorer, ganwatch.DataError)\n"
            "before = 'torch' in sys.modules\n"
            "model = ganwatch.load(sys.argv[1])\n"
            "print(bare, before, 'torch' in sys.modules, model.window)\n")
    done = subprocess.run([sys.executable, "-c", code, str(trained[2])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "8"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ganwatch.nope  # noqa: B018


def test_the_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert (tmp_path / "runs" / "pump-1" / "model.json").is_file()
    assert "anomaly_start" in printed  # the example's stream reaches the sample's first fault
