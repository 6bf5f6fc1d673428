"""A model artifact scored in a child process, behind the ``Detector`` contract.

Why: a torch model scored on a thread of the worker process needs the GIL back after every torch
operation, so while the main thread parses the next batch in Python, the scoring thread crawls
(27x slower measured). In its own process the model keeps its speed, and the worker's pipelined
loop overlaps polling and parsing with scoring for real.

The child (``python -m detector.process``) loads the same artifact directory (``load_artifact``:
safetensors and JSON, strictly) and answers one request at a time over its stdin and stdout.
Frames are a 4-byte length and a JSON header; the windows, scores and contributions
travel as float64 through a memory-mapped file both processes share (``_Shared``). Nothing else
crosses the pipe (the child's own prints go to stderr). A child that dies is started again on
the next call, which fails first (the worker retries the batch). So is one that does not answer
within ``timeout_s``: it is killed, the call raises ``ScoringTimeout``.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

from detector.score import ScoreBatch, needs_time, score_windows

log = logging.getLogger(__name__)

INLINE_BELOW = 256  # windows; smaller batches score in the parent (a few ms of round trip saved)
_SHARED_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None  # memory, not disk, where it can
_CHILD_ENV = {"OMP_NUM_THREADS": "1"}  # torch_threads is applied explicitly; no OpenMP surprises


def _send(out: IO[bytes], header: dict[str, Any]) -> None:
    payload = json.dumps(header).encode()
    out.write(struct.pack("<I", len(payload)) + payload)
    out.flush()


def _recv(inp: IO[bytes]) -> dict[str, Any]:
    def exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = inp.read(left)
            if not chunk:
                raise EOFError("pipe closed")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack("<I", exactly(4))
    return json.loads(exactly(size))


def main(argv: list[str]) -> int:
    """The child: load the artifact, then score each request until told to stop or stdin closes."""
    model_dir, device, torch_threads = argv[0], argv[1], int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent stops us
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
    inp = sys.stdin.buffer
    import gc

    import torch

    from detector.artifact import load_artifact

    try:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        detector = load_artifact(model_dir, device=device).detector
        gc.collect()
        gc.freeze()
        _send(out, {"ok": True, "version": detector.version})
    except Exception as exc:
        _send(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    c, shared = len(detector.channels), _Shared()
    while True:
        try:
            header = _recv(inp)
        except (EOFError, OSError):
            return 0
        if header.get("op") != "score":
            return 0
        try:
            n = int(header["n"])
            buf = shared.attach(header["path"], int(header["size"]))
            out_at = n * detector.window * c
            windows = buf[:out_at].reshape(n, detector.window, c)
            if header.get("ts"):  # the readings' timestamps follow the windows (exact in float64)
                ts_ms = buf[out_at : out_at + n * detector.window].astype(np.int64)
                result = detector.score(windows, ts_ms=ts_ms.reshape(n, detector.window))
                out_at += n * detector.window
            else:
                result = detector.score(windows)
            buf[out_at : out_at + n] = result.scores
            buf[out_at + n : out_at + n * (1 + c)] = np.asarray(result.contributions).ravel()
            del windows, buf, result  # no views of the map outlive the request
            reply = {"ok": True}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        _send(out, reply)


class ScoringTimeout(RuntimeError):
    """The child did not answer within ``ProcessDetector.timeout_s`` and was killed."""


class _Shared:
    """The float64 buffer both processes map: windows in, scores and contributions out. Only
    small headers cross the pipe, so the parent's thread needs the GIL a few times per batch, not
    once per 64 KiB of pipe (which, with the main thread busy, cost milliseconds each)."""

    def __init__(self) -> None:
        self.path, self.size, self._map, self.array = "", 0, None, np.empty(0)

    def attach(self, path: str, size: int) -> np.ndarray:
        if (path, size) != (self.path, self.size):
            self.close()
            with open(path, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), size * 8)
            self.path, self.size = path, size
            self.array = np.frombuffer(self._map, dtype=np.float64)
        return self.array

    def close(self) -> None:
        self.array = np.empty(0)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still alive somewhere: unmapped when it goes
                pass
            self._map = None


class ProcessDetector:
    """Scores with the artifact in ``model_dir`` in a child process; same results, same contract.

    ``inline`` is the same model loaded in this process (what the parent loaded from the same
    directory): batches under ``inline_below`` windows score there, as a round trip to the child
    costs more than they do. The child must load the same model version, or starting it fails.
    """

    def __init__(self, model_dir: str | Path, inline: Any, device: str = "cpu",
                 torch_threads: int = 1, inline_below: int = INLINE_BELOW,
                 timeout_s: float | None = None) -> None:
        """``timeout_s``: the longest one call may wait for the child; past it the child is
        killed (the call raises ``ScoringTimeout``) and started again on the next call."""
        # absolute: the child runs from the package's root, not from this process's directory
        self.model_dir = str(Path(model_dir).resolve())
        self.device, self.torch_threads = device, torch_threads
        self.inline, self.inline_below = inline, inline_below
        self.timeout_s = timeout_s
        self.channels, self.window = list(inline.channels), inline.window
        self.version = inline.version
        self.baselines = getattr(inline, "baselines", None)  # windows arrive centred by them
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._shared = _Shared()
        self._start()

    @property
    def uses_time(self) -> bool:
        return needs_time(self.inline)

    def score(self, windows: np.ndarray, ts_ms: np.ndarray | None = None) -> ScoreBatch:
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, len(self.channels)):
            raise ValueError(f"windows must have shape (batch, {self.window}, "
                             f"{len(self.channels)}), got {windows.shape}")
        if len(windows) < self.inline_below:
            return score_windows(self.inline, windows, ts_ms)
        n, c = len(windows), len(self.channels)
        n_ts = 0 if ts_ms is None else n * self.window
        need = n * (self.window * c + 1 + c) + n_ts
        with self._lock:
            if self._proc is None:
                self._start()
            assert self._proc is not None and self._proc.stdin and self._proc.stdout
            if need > self._shared.size:
                self._grow(need)
            buf = self._shared.array
            at = n * self.window * c
            buf[:at] = windows.ravel()
            if ts_ms is not None:
                buf[at : at + n_ts] = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
                at += n_ts
            proc, expired = self._proc, threading.Event()
            # the deadline: a hung child (deadlocked, stopped, swapping) is killed, which ends
            # the read below; holding the lock with no deadline would stall every later batch
            timer = None if self.timeout_s is None else threading.Timer(
                self.timeout_s, lambda: (expired.set(), proc.kill()))
            try:
                if timer is not None:
                    timer.daemon = True
                    timer.start()
                _send(proc.stdin, {"op": "score", "n": n, "path": self._shared.path,
                                   "size": self._shared.size, "ts": ts_ms is not None})
                header = _recv(proc.stdout)
            except (EOFError, OSError, ValueError) as exc:
                self._stop()  # started again on the next call
                if expired.is_set():
                    log.warning("scoring process %d took over %g s; killed, restarts on the next "
                                "call", proc.pid, self.timeout_s)
                    raise ScoringTimeout(f"no scores within {self.timeout_s:g} s; the scoring "
                                         "process was killed") from None
                raise RuntimeError(f"scoring process died: {type(exc).__name__}: {exc}") from None
            finally:
                if timer is not None:
                    timer.cancel()
            if not header.get("ok"):
                raise RuntimeError(f"scoring process: {header.get('error')}")
            return ScoreBatch(scores=buf[at : at + n].copy(),
                              contributions=buf[at + n : at + n * (1 + c)].reshape(n, c).copy())

    def _grow(self, need: int) -> None:
        """A bigger shared file (room for 1.5x the request); the child maps it on its next call."""
        self._shared.close()
        if self._shared.path:
            os.unlink(self._shared.path)
        size = need * 3 // 2
        where = _SHARED_DIR
        if where and shutil.disk_usage(where).free < 2 * size * 8:  # a small /dev/shm (containers
            where = None  # get 64 MB) would SIGBUS when full: the page-cached temp dir instead
        fd, path = tempfile.mkstemp(prefix="ganwatch-scorer-", dir=where)
        with os.fdopen(fd, "r+b") as f:
            f.truncate(size * 8)
        self._shared.attach(path, size)

    def close(self) -> None:
        """Stop the child and remove the shared file (idempotent)."""
        with self._lock:
            self._stop()
            self._shared.close()
            if self._shared.path:
                os.unlink(self._shared.path)
                self._shared.path, self._shared.size = "", 0

    def _start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector.process", self.model_dir, self.device,
             str(self.torch_threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **_CHILD_ENV},
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        assert proc.stdin and proc.stdout
        try:
            header = _recv(proc.stdout)  # blocks until the model is loaded
        except (EOFError, OSError, ValueError) as exc:
            _end(proc)
            raise RuntimeError(f"scoring process failed to start: {exc}") from None
        if not header.get("ok") or header.get("version") != self.version:
            _end(proc)
            why = (header.get("error")
                   or f"it loaded model {header.get('version')}, not {self.version}")
            raise RuntimeError(f"scoring process failed to start: {why}")
        self._proc = proc
        log.info("scoring process %d serves model %s", proc.pid, self.version)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (the child's signal to exit), wait briefly, then kill."""
    for pipe in (proc.stdin, proc.stdout):
        try:
            if pipe:
                pipe.close()
        except OSError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
