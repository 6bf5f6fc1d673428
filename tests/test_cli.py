"""``ganwatch train / score / evaluate`` end to end on small files, and their one-line errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganwatch.cli import main

ROOT = Path(__file__).resolve().parents[1]

SKAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "skab" / "valve1" / "0.csv"


def write_series(path: Path, n: int = 300, seed: int = 0, spike_at: int | None = None) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = np.sin(2 * np.pi * t / 6)
    frame = pd.DataFrame({
        "time": pd.date_range("2024-01-01", periods=n, freq="s").strftime("%Y-%m-%dT%H:%M:%SZ"),
        "flow": 10 + 2 * load + 0.2 * rng.normal(size=n),
        "pressure": 5 - load + 0.2 * rng.normal(size=n),
        "label": 0,
    })
    if spike_at is not None:
        frame.loc[spike_at : spike_at + 20, "flow"] += 8.0
        frame.loc[spike_at : spike_at + 20, "label"] = 1
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = write_series(tmp / "normal.csv")
    out = tmp / "model"
    code = main(["train", "--data", str(data), "--out", str(out), "--timestamp-column", "time",
                 "--exclude-columns", "label", "--window", "8", "--epochs", "3", "--no-progress"])
    assert code == 0
    return out


def test_train_writes_artifact_and_report(model_dir):
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["channels"] == ["flow", "pressure"] and meta["window"] == 8
    assert meta["timestamp_column"] == "time"
    assert meta["training_data"]["fingerprint"].startswith("sha256:")
    assert meta["threshold"]["value"] > 0 and "held-back" in meta["threshold"]["rule"]
    assert (model_dir / "model.safetensors").stat().st_size > 1000
    assert (model_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def retrained(model_dir, out, *flags) -> tuple[dict, dict]:
    """``model.json`` of a model trained as ``model_dir``'s with ``flags`` added, and the default's."""
    assert main(["train", "--data", str(model_dir.parent / "normal.csv"), "--out", str(out),
                 "--timestamp-column", "time", "--exclude-columns", "label", "--window", "8",
                 "--epochs", "3", "--no-progress", *flags]) == 0
    return tuple(json.loads((d / "model.json").read_text()) for d in (out, model_dir))


def test_threshold_margin_sets_the_calibrated_threshold(model_dir, tmp_path):
    """A lower margin gives a lower threshold on the same data and seed; the rule says which."""
    low, default = retrained(model_dir, tmp_path / "low", "--threshold-margin", "1")
    assert low["threshold"]["value"] < default["threshold"]["value"]
    assert "+ 1.0 x" in low["threshold"]["rule"]
    assert "ln(1 / (0.001 x" in default["threshold"]["rule"]
    assert low["hyperparameters"]["threshold_margin"] == 1.0
    # the default rule keeps the default target; the margin states the target it implies
    assert default["threshold"]["false_alarm_target"] == pytest.approx(0.001)
    assert default["hyperparameters"]["false_alarm_target"] == 0.001
    assert 0.001 < low["threshold"]["false_alarm_target"] < 1
    assert "false-alarm target" in low["threshold"]["rule"]


def test_false_alarm_target_sets_the_threshold(model_dir, tmp_path):
    """A higher target gives a lower threshold on the same data and seed, and is kept."""
    loose, default = retrained(model_dir, tmp_path / "loose", "--false-alarm-target", "0.02")
    assert loose["threshold"]["value"] < default["threshold"]["value"]
    assert loose["threshold"]["false_alarm_target"] == pytest.approx(0.02)


def test_contamination_is_a_train_flag_stored_in_the_artifact(model_dir, tmp_path):
    """``--contamination 0`` (nothing set aside) never gives a lower threshold than the default."""
    off, default = retrained(model_dir, tmp_path / "off", "--contamination", "0")
    assert off["hyperparameters"]["contamination"] == 0.0
    assert default["hyperparameters"]["contamination"] == pytest.approx(0.1)
    assert off["threshold"]["value"] >= default["threshold"]["value"]
    assert "set aside" not in off["threshold"]["rule"]


def test_score_gives_one_row_per_input_row(model_dir, tmp_path):
    data = write_series(tmp_path / "live.csv", n=120, seed=5, spike_at=60)
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(out),
                 "--contributions"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 120
    assert list(rows[0]) == ["timestamp", "score", "is_anomaly", "contrib_flow", "contrib_pressure"]
    assert rows[0]["timestamp"] == "2024-01-01T00:00:00Z"  # as in the input
    assert all(r["score"] == "" and r["is_anomaly"] == "0" for r in rows[:7])
    assert all(r["score"] != "" for r in rows[7:])
    flagged = [i for i, r in enumerate(rows) if r["is_anomaly"] == "1"]
    assert flagged and min(flagged) >= 60  # the spike, not the normal start
    assert float(rows[70]["contrib_flow"]) > float(rows[70]["contrib_pressure"])


def test_score_alert_modes_and_the_episodes_file(model_dir, tmp_path):
    data = write_series(tmp_path / "live.csv", n=160, seed=5, spike_at=60)
    flags = {}
    for mode in ("window", "episode"):
        out = tmp_path / f"{mode}.csv"
        assert main(["score", "--model", str(model_dir), "--data", str(data), "--out", str(out),
                     "--alert-mode", mode, "--episode-end-windows", "4"]) == 0
        flags[mode] = pd.read_csv(out)["is_anomaly"].to_numpy()
    window, episode = flags["window"], flags["episode"]
    assert window.any() and (episode >= window).all()  # an episode covers its anomalous windows
    # and runs on through the normal windows that close it
    assert episode.sum() >= window.sum() + 4 - 1
    episodes = tmp_path / "episodes.csv"
    assert main(["score", "--model", str(model_dir), "--data", str(data), "--out",
                 str(tmp_path / "e.csv"), "--episodes", str(episodes),
                 "--episode-end-windows", "4"]) == 0
    frame = pd.read_csv(episodes)
    assert list(frame.columns) == ["start", "end", "peak_score", "peak_ts", "top_channels"]
    edges = np.diff(np.concatenate([[0], episode, [0]]))
    assert len(frame) == int((edges == 1).sum())  # one row per flagged run
    assert frame["top_channels"].str.startswith("flow=").all()  # the spike is in flow
    proc = run_cli("score", "--model", str(model_dir), "--data", str(data), "--out",
                   str(tmp_path / "x.csv"), "--alert-mode", "window", "--episodes", str(episodes))
    assert proc.returncode == 2 and "--episodes needs --alert-mode episode" in proc.stderr


def test_evaluate_prints_metrics_json(model_dir, tmp_path, capsys):
    data = write_series(tmp_path / "labelled.csv", n=160, seed=6, spike_at=90)
    plot = tmp_path / "eval.png"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data),
                 "--label-column", "label", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("precision", "recall", "f1", "far", "event_recall", "pr_auc", "mean_delay_rows"):
        assert key in result
    assert result["event_recall"] == 1.0 and result["recall"] > 0.5
    assert plot.read_bytes()[:4] == b"\x89PNG"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ganwatch", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--data", "nowhere.csv", "--out", "x"], "nowhere.csv"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--channels", "flow,nope"], "nope"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--window", "0"], "--window"),
        (["train", "--data", "{short}", "--out", "{tmp}/m", "--window", "16"], "rows"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--max-gap-s", "-1"], "--max-gap-s"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--threshold-margin", "-1"],
         "--threshold-margin"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--timestamp-column", "nope"], "nope"),
        (["score", "--model", "{tmp}/missing", "--data", "{normal}", "--out", "{tmp}/s.csv"],
         "missing"),
        (["score", "--model", "{model}", "--data", "{normal}", "--out", "{tmp}/s.csv",
          "--stride", "0"], "--stride"),
        (["score", "--model", "{model}", "--data", "{normal}", "--out", "{tmp}/s.csv",
          "--max-gap-s", "-5"], "--max-gap-s"),
        (["evaluate", "--model", "{model}", "--data", "{normal}", "--label-column", "nope"],
         "nope"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--false-alarm-target", "0"],
         "--false-alarm-target"),
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--contamination", "0.5"],
         "--contamination must lie in [0, 0.5)"),
        # argparse's own errors: a value of the wrong type, a missing flag, an unknown command
        (["train", "--data", "{normal}", "--out", "{tmp}/m", "--false-alarm-target", "abc"],
         "--false-alarm-target: invalid float value: 'abc'"),
        (["train", "--data", "{normal}"], "--out"),
        (["score", "--model", "{model}", "--data", "{normal}", "--stride", "x"], "--stride"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args, needle, tmp_path, model_dir):
    normal = write_series(tmp_path / "normal.csv", n=200)
    short = write_series(tmp_path / "short.csv", n=20)
    fill = {"normal": str(normal), "short": str(short), "tmp": str(tmp_path), "model": str(model_dir)}
    proc = run_cli(*[a.format(**fill) for a in args])
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0]


def test_repeated_timestamps_are_skipped_in_training_as_in_scoring(tmp_path, capsys):
    """The stream rules decide in train as in score and serve: skipped, counted, one warning."""
    path = write_series(tmp_path / "dup.csv", n=200)
    frame = pd.read_csv(path)
    frame.loc[50, "time"] = frame.loc[49, "time"]  # repeated
    frame.loc[120, "time"] = frame.loc[10, "time"]  # goes back
    frame.to_csv(path, index=False)
    proc = run_cli("train", "--data", str(path), "--out", str(tmp_path / "m"),
                   "--timestamp-column", "time", "--epochs", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "skipped 2 of 200 rows" in line]
    assert len(warnings) == 1, proc.stderr
    assert json.loads(proc.stdout)["skipped_rows"] == 2
    assert main(["score", "--model", str(tmp_path / "m"), "--data", str(path),
                 "--out", str(tmp_path / "s.csv")]) == 0
    scores = pd.read_csv(tmp_path / "s.csv")["score"]
    assert scores[[50, 120]].isna().all() and scores[[49, 51, 119, 121]].notna().all()


@pytest.mark.parametrize("freq, step_s", [("h", 3600), ("D", 86400), ("100ms", 0.1)])
def test_any_sampling_rate_trains_and_scores_with_its_learned_gap_rule(tmp_path, freq, step_s):
    path = write_series(tmp_path / "series.csv", n=200)
    frame = pd.read_csv(path)
    stamps = pd.date_range("2024-01-01", periods=len(frame), freq=freq)
    frame["time"] = stamps.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    frame = frame.drop(index=range(150, 153))  # a gap of 4 steps: below the rule's 10
    frame.to_csv(path, index=False)
    out = tmp_path / "m"
    proc = run_cli("train", "--data", str(path), "--out", str(out), "--timestamp-column", "time",
                   "--epochs", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["max_gap_ms"] == int(10 * step_s * 1000)  # GAP_STEPS median steps, stored
    assert json.loads(proc.stdout)["max_gap_s"] == pytest.approx(10 * step_s)
    assert main(["score", "--model", str(out), "--data", str(path), "--out",
                 str(tmp_path / "s.csv")]) == 0
    scores = pd.read_csv(tmp_path / "s.csv")["score"]
    assert scores.iloc[31:].notna().all()  # the 4-step gap did not restart the window
    # the stored rule is what score uses unless told otherwise: 2 steps restarts it at the gap
    assert main(["score", "--model", str(out), "--data", str(path), "--out",
                 str(tmp_path / "s2.csv"), "--max-gap-s", str(2 * step_s)]) == 0
    cut = pd.read_csv(tmp_path / "s2.csv")["score"]
    assert cut.iloc[150:150 + 31].isna().all() and cut.iloc[150 + 31:].notna().all()


def test_a_gap_rule_that_splits_every_step_names_the_flag(tmp_path):
    path = write_series(tmp_path / "hourly.csv", n=120)
    frame = pd.read_csv(path)
    frame["time"] = pd.date_range("2024-01-01", periods=len(frame), freq="h").strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(path, index=False)
    proc = run_cli("train", "--data", str(path), "--out", str(tmp_path / "m"),
                   "--timestamp-column", "time", "--max-gap-s", "300", "--no-progress")
    assert proc.returncode == 2
    assert "--max-gap-s" in proc.stderr and "300 s" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not SKAB.exists(), reason=f"benchmark data missing: {SKAB}")
def test_train_and_evaluate_on_a_skab_file(tmp_path, capsys):
    out = tmp_path / "skab"
    assert main(["train", "--data", str(SKAB), "--out", str(out), "--timestamp-column",
                 "datetime", "--exclude-columns", "anomaly,changepoint", "--train-rows", "400",
                 "--epochs", "4", "--no-progress"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert len(meta["channels"]) == 8 and meta["training_data"]["rows"] == 400
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(SKAB), "--label-column",
                 "anomaly", "--from-row", "400"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == len(pd.read_csv(SKAB, sep=";")) - 400
    assert 0.0 <= result["f1"] <= 1.0 and result["pr_auc"] > 0.5


def test_python_m_exits_130_after_an_interrupt_inside_exec(tmp_path):
    # A SIGTERM during `demo` training can land inside an exec() of source text (a lazily built
    # dataclass); `python -m` then ended the process by SIGINT (-2) although main() returned 130
    probe = tmp_path / "interrupt_probe.py"
    probe.write_text(
        "import runpy\n"
        "import ganwatch.cli\n"
        "def main():\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "ganwatch.cli.main = main\n"
        "runpy.run_module('ganwatch', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-m", "interrupt_probe"], cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert done.returncode == 130


def test_batch_size_given_is_used_for_long_histories_too():
    from ganwatch.option import train_config
    from training.config import TrainConfig

    common = dict(window=32, epochs=15, model="lstm-gan", device="cpu", seed=0, hidden=32,
                  latent=16, lr=1e-3, max_gap_s=None, torch_threads=1, sample_budget=40_000,
                  threshold_margin=None, false_alarm_target=1e-3, train_rows=None,
                  contamination=0.1)
    given = train_config(batch_size=16, **common)
    assert (given.batch_size, given.long_batch_size) == (16, 16)
    default = train_config(batch_size=None, **common)
    assert (default.batch_size, default.long_batch_size) == (TrainConfig().batch_size,
                                                              TrainConfig().long_batch_size)
    with pytest.raises(ValueError, match="--batch-size"):
        train_config(batch_size=0, **common)
