"""``ProcessDetector``: the artifact scored in a child process gives the in-process scores, starts
again after the child dies, refuses another model version and cleans up after itself."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from detector.artifact import load_artifact
from detector.process import ProcessDetector, ScoringTimeout
from tests.test_model import normal_data, trained, windows_of  # noqa: F401  (fixture)


@pytest.fixture
def scorer(trained):  # noqa: F811
    out, _, _ = trained
    inline = load_artifact(out, device="cpu").detector
    made = ProcessDetector(out, inline, "cpu", 1, inline_below=8)
    yield made, inline
    made.close()


def test_child_scores_equal_in_process_scores(scorer, trained):  # noqa: F811
    made, inline = scorer
    _, values = normal_data(300, seed=4)
    w = windows_of(values, inline.window)
    assert len(w) >= made.inline_below
    got, want = made.score(w), inline.score(w)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.contributions, want.contributions)
    small = made.score(w[:3])  # under inline_below: scored in this process
    np.testing.assert_array_equal(small.scores, inline.score(w[:3]).scores)
    assert made._shared.path and os.path.exists(made._shared.path)


def test_a_dead_child_fails_one_call_then_is_started_again(scorer):
    made, inline = scorer
    w = np.random.default_rng(0).normal(size=(20, inline.window, len(inline.channels)))
    first = made.score(w).scores
    pid = made._proc.pid
    os.kill(pid, signal.SIGKILL)
    made._proc.wait(10)
    with pytest.raises(RuntimeError, match="scoring process died"):
        made.score(w)
    np.testing.assert_array_equal(made.score(w).scores, first)
    assert made._proc.pid != pid


def test_another_model_version_refuses_to_start(trained):  # noqa: F811
    out, _, _ = trained
    inline = load_artifact(out, device="cpu").detector
    inline.version = "not-this-one"
    with pytest.raises(RuntimeError, match="loaded model .* not not-this-one"):
        ProcessDetector(out, inline, "cpu", 1)


def test_a_missing_artifact_refuses_to_start(trained, tmp_path):  # noqa: F811
    out, _, _ = trained
    inline = load_artifact(out, device="cpu").detector
    with pytest.raises(RuntimeError, match="failed to start"):
        ProcessDetector(tmp_path / "nothing", inline, "cpu", 1)


def test_close_stops_the_child_and_removes_the_shared_file(scorer):
    made, inline = scorer
    made.score(np.zeros((10, inline.window, len(inline.channels))))
    proc, path = made._proc, made._shared.path
    made.close()
    made.close()  # idempotent
    assert proc.poll() is not None and not os.path.exists(path)


def test_a_full_dev_shm_falls_back_to_the_temp_dir(scorer, monkeypatch, tmp_path):
    import collections
    import tempfile

    import detector.process as process

    made, inline = scorer
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(process, "_SHARED_DIR", str(shm))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(process.shutil, "disk_usage", lambda path: usage(1 << 20, 1 << 20, 0))
    made.score(np.zeros((20, inline.window, len(inline.channels))))
    assert not list(shm.iterdir())
    assert os.path.dirname(made._shared.path) == tempfile.gettempdir()


def test_a_relative_model_directory_is_the_callers(trained, monkeypatch):  # noqa: F811
    out, _, _ = trained
    inline = load_artifact(out, device="cpu").detector
    monkeypatch.chdir(out.parent)
    made = ProcessDetector(out.name, inline, "cpu", 1, inline_below=1)
    try:
        assert made.model_dir == str(out.resolve())
        w = np.zeros((2, inline.window, len(inline.channels)))
        np.testing.assert_array_equal(made.score(w).scores, inline.score(w).scores)
    finally:
        made.close()


def test_a_hung_child_is_killed_at_the_deadline_and_started_again(trained):  # noqa: F811
    out, _, _ = trained
    inline = load_artifact(out, device="cpu").detector
    made = ProcessDetector(out, inline, "cpu", 1, inline_below=8, timeout_s=2.0)
    try:
        w = np.random.default_rng(0).normal(size=(20, inline.window, len(inline.channels)))
        first = made.score(w).scores
        hung = made._proc
        os.kill(hung.pid, signal.SIGSTOP)  # alive but never answering, as a deadlock would be
        with pytest.raises(ScoringTimeout, match="killed"):
            made.score(w)
        assert hung.wait(10) == -signal.SIGKILL and made._proc is None
        np.testing.assert_array_equal(made.score(w).scores, first)  # a new child
        assert made._proc.pid != hung.pid
    finally:
        made.close()
