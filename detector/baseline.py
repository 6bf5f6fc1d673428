"""Operating points of a fleet: the level each trained entity's windows are judged against.

A model trained with an entity column (``ganwatch train --entity-column``) stores, for every entity
it was trained on, a baseline: the per-channel median of that entity's fitting rows, in raw units.
Before a window of a *trained* entity reaches the network, its baseline is subtracted, so an asset
running at its own normal operating point reads as the fleet's common zero; the shared scaler
(fitted on the baseline-subtracted rows of every entity) sets the spread. A level that leaves the
baseline, as a sensor offset, a worn impeller or a heating bearing does, still reads as a level
change and is judged as the single-asset model judges one.

An entity the model was *not* trained on (a new pump) has no baseline: each of its windows is
shifted by the window's own per-channel mean, so it is judged by shape alone - spikes, stuck
sensors, steps inside a window, channels that stop moving together - and never for its level,
neither for the level it runs at nor for a slow departure from it, until a retrain includes it.
The rule depends only on the window and the entity's name, so ``score``, ``OnlineScorer`` and the
worker apply it identically, and the worker keeps no extra state for it.

A model trained without an entity column has no baselines: windows reach it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from detector.message import MAX_ENTITY

KEY = "entity_baselines"  # the model.json key


def check_entity_name(name: Any) -> str | None:
    """Why ``name`` cannot name an entity (the worker's own rules), or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "a missing or empty entity name"
    if len(name) > MAX_ENTITY:
        return f"an entity name longer than {MAX_ENTITY} characters"
    if not name.isprintable():
        return f"an entity name with unprintable characters: {name[:40]!r}"
    return None


@dataclass(frozen=True)
class EntityBaselines:
    """Per trained entity, the per-channel level (raw units) its windows are centred on."""

    names: tuple[str, ...]
    values: np.ndarray  # (len(names), C) float64
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "values", values)
        if values.ndim != 2 or values.shape[0] != len(self.names):
            raise ValueError(f"baselines of shape {values.shape} for {len(self.names)} entities")
        if len(set(self.names)) != len(self.names):
            raise ValueError("an entity has two baselines")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, entity: object) -> bool:
        return entity in self._index

    def of(self, entity: str | None) -> np.ndarray | None:
        """The entity's baseline, None for an entity the model was not trained on."""
        i = self._index.get(entity) if entity is not None else None
        return None if i is None else self.values[i]

    def centre(self, windows: np.ndarray, entities: Sequence[str | None] | str | None
               ) -> np.ndarray:
        """Raw windows (B, W, C) as the network judges them: minus their entity's baseline, or,
        for an entity without one, minus each window's own mean. ``entities``: one name per
        window, or one for all (None: an entity not trained on)."""
        windows = np.asarray(windows, dtype=np.float64)
        if not len(windows):
            return windows
        if entities is None or isinstance(entities, str):
            base = self.of(entities)
            if base is not None:
                return windows - base
            return windows - np.median(windows, axis=1, keepdims=True)
        idx = np.fromiter((self._index.get(e, -1) for e in entities), dtype=np.int64,
                          count=len(windows))
        out = windows - self.values[np.maximum(idx, 0)][:, None, :]
        new = idx < 0
        if new.any():
            out[new] = windows[new] - np.median(windows[new], axis=1, keepdims=True)
        return out

    def to_dict(self) -> dict[str, list[float]]:
        return {n: [float(v) for v in row] for n, row in zip(self.names, self.values)}

    @classmethod
    def from_dict(cls, data: Any, n_channels: int) -> "EntityBaselines":
        """Strict: a non-empty mapping of entity name -> ``n_channels`` finite numbers."""
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{KEY} must map entity names to baselines, got {type(data).__name__}")
        rows = []
        for name, row in data.items():
            problem = check_entity_name(name)
            if problem:
                raise ValueError(f"{KEY} has {problem}")
            if (not isinstance(row, list) or len(row) != n_channels
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in row)):
                raise ValueError(f"{KEY}[{name!r}] must be a list of {n_channels} numbers")
            if not np.isfinite(np.asarray(row, dtype=np.float64)).all():
                raise ValueError(f"{KEY}[{name!r}] has a non-finite value")
            rows.append(row)
        return cls(tuple(data), np.asarray(rows, dtype=np.float64))


def centre_windows(detector: Any, windows: np.ndarray, entities: Sequence[str | None] | str | None
                   ) -> np.ndarray:
    """``windows`` as ``detector`` scores them: centred by its baselines when it has any (a fleet
    model), else unchanged (a single-asset model, the test detectors)."""
    baselines: EntityBaselines | None = getattr(detector, "baselines", None)
    if baselines is None or not len(windows):
        return windows
    return baselines.centre(windows, entities)
