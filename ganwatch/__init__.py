"""ganwatch: the command line (``ganwatch.cli``) and the Python API over the same code.

    import ganwatch
    model = ganwatch.fit(frame, timestamp="ts", exclude=["anomaly"])
    out = model.score(frame)                       # score, is_anomaly per row
    scorer = ganwatch.OnlineScorer(model)          # serve's stream rules and alerts, no Kafka
    alerts = scorer.update("pump-7", ts, {"flow": 95.1, ...})

The names load on first use (``__getattr__``): ``import ganwatch`` imports neither torch nor
pandas, so the CLI stays fast; torch comes with the first model trained or loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_LAZY = {
    "fit": "ganwatch.api",
    "load": "ganwatch.api",
    "Model": "ganwatch.api",
    "OnlineScorer": "ganwatch.online",
    "DataError": "connectors.file",
    "ArtifactError": "detector.artifact",  # imports torch
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ganwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
