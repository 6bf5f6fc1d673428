"""Per-channel scaling, fitted on training rows only and stored in the artifact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StandardScaler:
    """(x - mean) / scale per channel; ``scale`` is never zero."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> "StandardScaler":
        values = np.asarray(values, dtype=np.float64)
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        # a channel that never moved in training still needs a finite unit: use a tiny fraction of
        # its magnitude so any real movement later stands out instead of dividing by zero
        floor = np.maximum(1e-6, 1e-3 * np.abs(mean))
        return cls(mean=mean, scale=np.maximum(std, floor))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale raw readings (any leading shape, channels last) to float32."""
        return ((np.asarray(values, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": "standard", "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "StandardScaler":
        if data.get("kind") != "standard":
            raise ValueError(f"unknown scaler kind {data.get('kind')!r}")
        mean = np.asarray(data["mean"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        if mean.shape != scale.shape or mean.ndim != 1 or not (scale > 0).all():
            raise ValueError("scaler mean/scale must be equal-length vectors with positive scale")
        return cls(mean=mean, scale=scale)
