"""ganwatch.runtime: the log handler (text or JSON lines, secrets masked) and torch's thread count."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import sys
from typing import Iterator

import pytest

from ganwatch.runtime import (
    SERVE_GC_THRESHOLDS, LineFormatter, apply_torch_threads, configure_logging, restore_gc,
    restore_torch_threads, tune_gc,
)


def record(message: str, *args: object, level: int = logging.INFO,
           exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom with hunter2 inside")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("ganwatch.serve", level, __file__, 1, message, args, exc_info)


def test_json_lines_have_time_level_logger_and_message():
    line = LineFormatter("json").format(record("batch of %d failed", 7, level=logging.WARNING))
    assert "\n" not in line
    doc = json.loads(line)
    assert set(doc) == {"time", "level", "logger", "message"}
    assert (doc["level"], doc["logger"], doc["message"]) == ("WARNING", "ganwatch.serve",
                                                             "batch of 7 failed")
    assert doc["time"].endswith("Z") and doc["time"][10] == "T" and len(doc["time"]) == 24


def test_json_line_carries_the_exception_on_the_same_line():
    line = LineFormatter("json").format(record("failed", exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert "RuntimeError: boom" in doc["exc"] and "Traceback" in doc["exc"]


def test_text_lines_are_the_usual_format():
    line = LineFormatter("text").format(record("worker stopped"))
    assert line.endswith(" INFO ganwatch.serve: worker stopped")
    with pytest.raises(ValueError, match="'text' or 'json'"):
        LineFormatter("xml")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_are_masked_wherever_they_appear(log_format):
    formatter = LineFormatter(log_format, secrets=["hunter2", "p%40ss", ""])
    for rec in (record("connecting with %s and p@ss and p%%40ss", "hunter2"), record("x", exc=True)):
        line = formatter.format(rec)
        assert "hunter2" not in line and "p@ss" not in line and "p%40ss" not in line
        assert "***" in line


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's capture handlers (entered in the test body: pytest adds
    them again for each phase), all restored afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield root
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_configure_logging_replaces_its_own_handler(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    with bare_root() as root:
        monkeypatch.setattr(sys, "stderr", first)
        assert configure_logging("INFO") is True
        logging.getLogger("ganwatch.test").info("as text")
        monkeypatch.setattr(sys, "stderr", second)
        assert configure_logging("WARNING", "json", secrets=["s3cret"]) is True
        assert len(root.handlers) == 1  # replaced, not added
        logging.getLogger("ganwatch.test").info("dropped: below WARNING")
        logging.getLogger("ganwatch.test").warning("token s3cret")
    assert first.getvalue().endswith("INFO ganwatch.test: as text\n")
    lines = second.getvalue().splitlines()
    assert [json.loads(x)["message"] for x in lines] == ["token ***"]


def test_configure_logging_leaves_someone_elses_handlers_alone():
    theirs = logging.NullHandler()
    with bare_root() as root:
        root.addHandler(theirs)
        root.setLevel(logging.ERROR)
        assert configure_logging("DEBUG", "json") is False
        assert root.handlers == [theirs] and root.level == logging.ERROR


def test_torch_threads_are_applied_and_zero_leaves_them():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert apply_torch_threads(0) == 2 and torch.get_num_threads() == 2
        assert apply_torch_threads(1) == 2 and torch.get_num_threads() == 1
        restore_torch_threads(2)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match=">= 0"):
            apply_torch_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_tune_gc_freezes_start_up_objects_and_restore_undoes_it():
    before = gc.get_threshold()
    kept = [object() for _ in range(10)]  # alive at "start-up"
    try:
        assert tune_gc() == before
        assert gc.get_threshold() == SERVE_GC_THRESHOLDS and gc.get_freeze_count() > len(kept)
    finally:
        restore_gc(before)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
