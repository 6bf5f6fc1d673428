"""Model hot reload: notice that the artifact on disk changed."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

log = logging.getLogger(__name__)


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
