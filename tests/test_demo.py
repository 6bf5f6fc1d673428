"""``ganwatch demo`` end to end on its own broker and Redis, its summary rules, and its cleanup.

The end-to-end runs are small (2 pumps, 800 readings, 1-2 epochs) and seeded; every wait has a
deadline and no assertion is about how long something took.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ganwatch import demo_report as report
from ganwatch.cli import main
from ganwatch.demo import DemoOptions, simulate_pumps
from ganwatch.simulator import KINDS, Fault

ROOT = Path(__file__).resolve().parents[1]
# seed 4 trains a 2-epoch model that flags the spike, level shift and drift with a clear margin
SMALL = ["--entities", "2", "--rows", "800", "--epochs", "2", "--seed", "4", "--speedup", "0"]
WAIT_S = 240


def server_alive(pid: int) -> bool:
    """True while a tansu or redis-server process has ``pid`` (a reused PID does not count)."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state != "Z" and (b"tansu" in cmdline or b"redis-server" in cmdline)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_leftover(pid: int) -> None:
    """Cleanup for a failed test only: stop a server the demo should have stopped."""
    if server_alive(pid):
        os.kill(pid, signal.SIGKILL)


# --- the whole demo, in process -------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["demo", *SMALL, "--out", str(out)])
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    yield rc, out, summary, stdout.getvalue()
    for server in (summary or {}).get("servers", {}).values():
        kill_leftover(server["pid"])


def test_demo_exits_zero_and_writes_the_summary(demo_run):
    rc, out, summary, _ = demo_run
    assert rc == 0
    assert summary is not None, "no summary.json"
    assert sorted(f["kind"] for f in summary["faults"]) == sorted(KINDS)
    assert {f["entity"] for f in summary["faults"]} == {"pump-1", "pump-2"}
    assert summary["detected"] == sum(f["detected"] for f in summary["faults"])
    assert summary["caught_up"] is True
    assert summary["readings"] == summary["published"] == 2 * summary["replayed_rows_per_entity"]


def test_demo_detects_at_least_one_fault_and_shows_its_alert(demo_run):
    _, _, summary, stdout = demo_run
    detected = [f for f in summary["faults"] if f["detected"]]
    assert detected, f"no fault detected: {summary['faults']}"
    assert all(f["delay_s"] is not None and f["delay_s"] >= 0 for f in detected)
    assert report.TABLE_HEADER in stdout
    shown = [line for line in stdout.splitlines() if "anomaly_start" in line]
    assert any(f["entity"] in line and f["first_alert"][11:19] in line
               for f in detected for line in shown)


def test_demo_writes_report_model_and_data(demo_run):
    _, out, summary, stdout = demo_run
    png = Path(summary["report"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in stdout
    assert (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "model" / "model.json").read_text())["model_version"] == \
        summary["model_version"]
    assert sorted(Path(p).name for p in summary["data"]) == ["pump-1.csv", "pump-2.csv"]


def test_demo_stops_the_servers_it_started(demo_run):
    _, _, summary, _ = demo_run
    pids = [s["pid"] for s in summary["servers"].values()]
    assert len(pids) == 2 and all(isinstance(p, int) for p in pids)
    assert [p for p in pids if server_alive(p)] == []


def test_bad_options_fail_before_starting_anything(capsys):
    assert main(["demo", "--rows", "100"]) == 2
    assert "--rows" in capsys.readouterr().err


# --- signals, in a child process -----------------------------------------------------------

class Child:
    """``python -m ganwatch demo ...`` with its output collected line by line."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ganwatch", "demo", *args], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{''.join(self.lines)}")

    def exit_code(self) -> int:
        """The exit status, waited for at most ``WAIT_S``; on a timeout the output says why."""
        try:
            return self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {WAIT_S} s; output:\n{''.join(self.lines)}"
                                 ) from None

    def pids(self) -> list[int]:
        found = self.wait_for(r"broker \S+ \(pid (\d+)\), Redis \S+ \(pid (\d+)\)")
        return [int(found.group(1)), int(found.group(2))]

    def close(self, pids: list[int]) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in pids:
            kill_leftover(pid)


def test_sigterm_during_training_stops_everything(tmp_path):
    child = Child([*SMALL, "--epochs", "50", "--out", str(tmp_path / "out")])
    pids: list[int] = []
    try:
        pids = child.pids()
        child.wait_for(r"\[3/6\] training")
        assert all(server_alive(p) for p in pids)
        child.proc.send_signal(signal.SIGTERM)
        assert child.exit_code() == 130
        assert [p for p in pids if server_alive(p)] == []
        assert not (tmp_path / "out" / "summary.json").exists()
    finally:
        child.close(pids)


def test_keep_running_serves_until_ctrl_c(tmp_path):
    from kafka import KafkaConsumer

    child = Child([*SMALL, "--epochs", "1", "--out", str(tmp_path / "out"), "--keep-running"])
    pids: list[int] = []
    try:
        pids = child.pids()
        child.wait_for(r"Press Ctrl-C")
        bootstrap = child.wait_for(r"bootstrap servers\s+(\S+)").group(1)
        assert all(server_alive(p) for p in pids)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            assert {"ganwatch.readings", "ganwatch.alerts"} <= consumer.topics()
        finally:
            consumer.close()
        child.proc.send_signal(signal.SIGINT)
        assert child.exit_code() == 0
        assert [p for p in pids if server_alive(p)] == []
    finally:
        child.close(pids)


# --- the summary rules and helpers, without servers ------------------------------------------

T0 = 1_704_067_200_000


def alert(entity: str, kind: str, ts_s: int, **extra) -> dict:
    return {"alert_id": f"{entity}-{kind}-{ts_s}", "entity": entity, "type": kind,
            "ts_ms": T0 + 1000 * ts_s, "score": 9.0, **extra}


@pytest.fixture
def spans() -> list[report.Span]:
    ts = {"e1": T0 + 1000 * np.arange(200), "e2": T0 + 1000 * np.arange(200)}
    faults = [Fault("e1", "spike", "flow", 50, 53), Fault("e1", "drift", "flow", 120, 150),
              Fault("e2", "stuck", "flow", 60, 90)]
    return report.fault_spans(faults, ts, window=10)


def test_fault_spans_give_a_window_of_slack(spans):
    assert (spans[0].start_ms, spans[0].end_ms, spans[0].slack_ms) == (
        T0 + 50_000, T0 + 52_000, T0 + 62_000)


def test_summary_detection_delay_and_false_alarms(spans):
    alerts = [
        alert("e1", "anomaly_start", 60),  # within the spike's slack: detected after 10 s
        alert("e1", "anomaly_start", 60),  # a redelivered copy
        alert("e1", "anomaly_end", 66, peak_score=12.0),
        alert("e2", "anomaly_start", 125),  # inside e1's drift, but another entity: false alarm
        alert("e2", "anomaly_end", 131, peak_score=7.0),
        alert("e1", "anomaly_start", 180),  # still open at the end, overlaps nothing
    ]
    summary = report.summarise(spans, alerts, {"e1": T0 + 199_000, "e2": T0 + 199_000})
    by_kind = {f["kind"]: f for f in summary["faults"]}
    assert by_kind["spike"]["detected"] and by_kind["spike"]["delay_s"] == 10.0
    assert not by_kind["drift"]["detected"] and by_kind["drift"]["delay_s"] is None
    assert not by_kind["stuck"]["detected"]
    assert (summary["detected"], summary["missed"]) == (1, 2)
    assert [(a["entity"], a["open"]) for a in summary["false_alarms"]] == [("e2", False),
                                                                          ("e1", True)]
    assert summary["false_alarms"][0]["peak_score"] == 7.0


def test_an_episode_open_before_a_fault_is_not_a_detection_nor_a_false_alarm(spans):
    alerts = [alert("e2", "anomaly_start", 40), alert("e2", "anomaly_end", 70)]
    summary = report.summarise(spans, alerts, {"e1": T0 + 199_000, "e2": T0 + 199_000})
    assert not any(f["detected"] for f in summary["faults"])
    assert summary["false_alarms"] == []


def test_alert_line_shows_entity_time_type_score_and_top_channels():
    line = report.alert_line({
        "entity": "pump-2", "ts": "2024-01-01T00:27:40.000Z", "type": "anomaly_start",
        "score": 5.678, "channels": [{"name": "current", "contribution": 0.67},
                                     {"name": "flow", "contribution": 0.2},
                                     {"name": "speed", "contribution": 0.1},
                                     {"name": "pressure", "contribution": 0.03}]})
    assert re.fullmatch(r"pump-2 +2024-01-01 00:27:40 +anomaly_start +5\.68 +"
                        r"current 67%, flow 20%, speed 10%", line)


def test_the_demo_trains_on_one_fleet_file_without_artificial_gaps(tmp_path):
    """Every pump's readings in one table, interleaved in time; each pump's own rows stay 1 s
    apart, so nothing but the entity column keeps windows from spanning two pumps."""
    import pandas as pd

    sim = simulate_pumps(DemoOptions(entities=3, rows=400), tmp_path)
    fleet = pd.read_csv(sim.fleet)
    assert list(fleet.columns[:2]) == ["ts", "entity"]
    assert fleet["entity"].tolist()[:3] == ["pump-1", "pump-2", "pump-3"]
    for entity, table in sim.tables.items():
        rows = fleet[fleet["entity"] == entity]
        assert len(rows) == len(table.values) == 400
        np.testing.assert_allclose(rows[list(table.channels)].to_numpy(), table.values)
        steps = np.diff(pd.to_datetime(rows["ts"]).dt.tz_convert(None).to_numpy()
                        .astype("datetime64[ms]")
                        .astype(np.int64))
        assert (steps == 1000).all()
    assert sim.train_rows == int(sim.telemetry.normal_rows * 0.75)


def test_a_swallowed_sigterm_still_stops_at_the_next_step(capsys):
    """Python drops an exception raised inside a finaliser; the flag makes the next step raise."""
    from ganwatch import demo

    demo._TERMINATED.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            demo.stage("[4/6] starting the worker")
        assert "[4/6]" not in capsys.readouterr().out
    finally:
        demo._TERMINATED.clear()
    demo.stage("[4/6] starting the worker")
    assert "[4/6]" in capsys.readouterr().out
