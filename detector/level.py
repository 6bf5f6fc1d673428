"""Where a slow channel's level should be, judged from the other channels.

A slow channel (see ``training.trainer.slow_channels``) drifts over many windows, so the model
judges its shape and not its level. When the plant ties that drift to the other channels (flow,
pressure and current all follow the pump's load), the level still carries information: a
``LevelModel`` fitted at training time predicts each such channel's window mean from the other
channels' window means (ridge regression on scaled values), and the reconstruction target keeps
the channel's departure from that prediction. A sensor offset or a flow that stops following the
load then shows as reconstruction error, while a common drift of all channels does not. Slow
channels the others do not explain well enough (a temperature that follows the weather) keep
being judged by shape alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGE = 1e-3


@dataclass(frozen=True)
class LevelModel:
    """``predicted mean = means @ coef + intercept`` for the ``explained`` channels."""

    coef: np.ndarray  # (C, C), column c predicts channel c; zero diagonal
    intercept: np.ndarray  # (C,)
    explained: np.ndarray  # (C,) bool
    r2: np.ndarray  # (C,) in-sample R^2 of each fitted channel, NaN where not fitted

    @classmethod
    def fit(cls, means: np.ndarray, slow: np.ndarray, min_r2: float) -> "LevelModel":
        """Fit one regression per slow channel on window means (N, C); keep those with R^2 >= min_r2."""
        n, c = means.shape
        coef, intercept = np.zeros((c, c)), np.zeros(c)
        r2 = np.full(c, np.nan)
        explained = np.zeros(c, dtype=bool)
        for j in np.flatnonzero(slow):
            if c < 2 or n < c + 2:
                continue
            others = [k for k in range(c) if k != j]
            x = np.c_[means[:, others], np.ones(n)]
            y = means[:, j]
            beta = np.linalg.solve(x.T @ x + RIDGE * n * np.eye(x.shape[1]), x.T @ y)
            total = ((y - y.mean()) ** 2).sum()
            r2[j] = 1.0 - ((y - x @ beta) ** 2).sum() / total if total > 0 else 0.0
            if r2[j] >= min_r2:
                coef[others, j], intercept[j] = beta[:-1], beta[-1]
                explained[j] = True
        return cls(coef, intercept, explained, r2)

    def predict(self, means: np.ndarray) -> np.ndarray:
        """Predicted window means (..., C); meaningful only for ``explained`` channels."""
        return means @ self.coef + self.intercept

    def to_dict(self) -> dict:
        return {
            "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
            "explained": self.explained.tolist(),
            "r2": [None if np.isnan(v) else float(v) for v in self.r2],
        }

    @classmethod
    def from_dict(cls, data: dict, n_channels: int) -> "LevelModel":
        coef = np.asarray(data["coef"], dtype=np.float64)
        intercept = np.asarray(data["intercept"], dtype=np.float64)
        explained = np.asarray(data["explained"], dtype=bool)
        r2 = np.asarray([np.nan if v is None else v for v in data.get("r2", [None] * n_channels)],
                        dtype=np.float64)
        if coef.shape != (n_channels, n_channels) or intercept.shape != (n_channels,) \
                or explained.shape != (n_channels,) or r2.shape != (n_channels,):
            raise ValueError(f"level model does not fit {n_channels} channels")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError("level model has non-finite coefficients")
        return cls(coef, intercept, explained, r2)
