"""Process-wide setup of the ``ganwatch`` command: log handler and format, torch's CPU threads, the
garbage collector.

``configure_logging`` installs one stderr handler on the root logger (replacing the one it installed
before, so ``serve`` can re-apply the level and format from its settings) and masks the given secrets
in every line it writes, whatever logged them. ``log_format="json"`` writes one JSON object per line:
``{"time", "level", "logger", "message"}`` plus ``"exc"`` when an exception is attached.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Iterable
from urllib.parse import unquote

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRET_MASK = "***"
_OURS = "_ganwatch_handler"  # marks the handler configure_logging installed

log = logging.getLogger(__name__)


class LineFormatter(logging.Formatter):
    """Text or JSON lines with every occurrence of a secret replaced by ``***``."""

    def __init__(self, log_format: str = "text", secrets: Iterable[str] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        if log_format not in ("text", "json"):
            raise ValueError(f"log format must be 'text' or 'json', got {log_format!r}")
        self.json = log_format == "json"
        found = {s for secret in secrets if secret for s in (secret, unquote(secret))}
        self.secrets = sorted(found, key=len, reverse=True)  # longest first: no partial leftovers

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, SECRET_MASK)
        return text

    def format(self, record: logging.LogRecord) -> str:
        if not self.json:
            return self.mask(super().format(record))
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.mask(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = self.mask(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack"] = self.mask(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", log_format: str = "text",
                      secrets: Iterable[str] = ()) -> bool:
    """Install (or replace) the ganwatch stderr handler on the root logger; return True if done.

    When the root logger already has handlers that this function did not install (pytest, or an
    application embedding ganwatch), they own the output and nothing is changed.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _OURS, False)]
    if root.handlers and not ours:
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(log_format, secrets))
    setattr(handler, _OURS, True)
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # warnings become log lines too, in the same format
    return True


def apply_torch_threads(threads: int) -> int:
    """``torch.set_num_threads(threads)`` unless ``threads`` is 0 (torch's default); return the
    count before, so a caller that runs a worker in-process can put it back.

    torch's default is one intra-op thread per core (or ``OMP_NUM_THREADS``); the LSTM's many tiny
    parallel regions then wait on threads descheduled by the Kafka client's own threads.
    """
    import torch  # deferred: the CLI's other commands and --help do not need it

    if threads < 0:
        raise ValueError(f"torch threads must be >= 0, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    count = torch.get_num_threads()
    log.info("torch uses %d CPU thread%s%s", count, "" if count == 1 else "s",
             "" if threads else " (its default)")
    return before


def restore_torch_threads(count: int) -> None:
    """Put back a thread count ``apply_torch_threads`` returned."""
    import torch

    torch.set_num_threads(count)


# Collect the youngest generation every 10,000 net allocations instead of 700: a poll batch of 4096
# readings allocates a few hundred thousand objects (messages, parsed JSON, windows), and each
# collection walked whatever else was young. Older generations: every 50th and 100th time.
SERVE_GC_THRESHOLDS = (10_000, 50, 100)


def tune_gc(thresholds: tuple[int, int, int] = SERVE_GC_THRESHOLDS) -> tuple[int, int, int]:
    """For a long-running worker: freeze what is alive after start-up (model, clients, modules) out
    of every later collection, and collect less often; return the thresholds before.

    On the streaming benchmark this takes the worker from about 30,000 to 36,000 windows/s at
    stride 1: the garbage collector cost as much as advancing the windows five times over.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    log.info("gc: start-up objects frozen, thresholds %s", thresholds)
    return before


def restore_gc(thresholds: tuple[int, int, int]) -> None:
    """Undo ``tune_gc`` (thresholds it returned), for callers that run a worker in-process."""
    gc.unfreeze()
    gc.set_threshold(*thresholds)
