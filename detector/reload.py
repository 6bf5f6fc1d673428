"""Model hot reload: notice that the artifact on disk changed, and swap the model safely."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from detector.config import describe
from detector.metric import Metrics
from detector.score import Detector, Threshold

log = logging.getLogger(__name__)

ModelLoader = Callable[[], tuple[Detector, Threshold]]


def check_model(detector: Detector, current: Detector | None, window: int) -> None:
    """Raise ValueError unless ``detector`` fits the stream (and keeps ``current``'s channels)."""
    if detector.window != window:
        raise ValueError(f"model window {detector.window} != stream window {window}")
    if current is not None and list(detector.channels) != list(current.channels):
        raise ValueError("a reloaded model must keep the channels (the stored windows use them)")


def swap_model(loader: ModelLoader, current: Detector, window: int,
               metrics: Metrics) -> tuple[Detector, Threshold] | None:
    """Load a new model to replace ``current`` (closed once replaced); None if that failed, and
    the old one stays. Counted in ``model_reloads_total{result}``."""
    try:
        detector, threshold = loader()
        try:
            check_model(detector, current, window)
        except Exception:
            getattr(detector, "close", lambda: None)()  # a scoring process it started
            raise
    except Exception as exc:
        metrics.inc("model_reloads_total", result="error")
        log.error("model reload failed, keeping %s: %s", current.version, describe(exc))
        return None
    log.info("model reloaded: %s -> %s", current.version, detector.version)
    metrics.inc("model_reloads_total", result="ok")
    close = getattr(current, "close", None)  # a scoring process, say
    if close is not None:
        try:
            close()
        except Exception as exc:
            log.warning("closing the old model failed: %s", describe(exc))
    return detector, threshold


def watch_file(
    path: str | os.PathLike[str], on_change: Callable[[], None], stop: threading.Event,
    interval_s: float = 2.0,
) -> threading.Thread:
    """Call ``on_change`` (e.g. ``Worker.request_reload``) whenever ``path`` changes; polls its stat.

    Point it at the file written last when an artifact is replaced (``model.json``), so a reload
    never sees half a model; the loader still validates whatever it reads.
    """

    def signature() -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def loop() -> None:
        seen = signature()
        while not stop.wait(interval_s):
            now = signature()
            if now != seen and now is not None:
                log.info("%s changed; requesting a model reload", path)
                on_change()
            seen = now

    thread = threading.Thread(target=loop, name="ganwatch-model-watch", daemon=True)
    thread.start()
    return thread
