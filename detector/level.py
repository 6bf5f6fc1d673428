"""Where a slow channel's level should be, judged from the other channels.

A slow channel (see ``training.trainer.slow_channels``) drifts over many windows, so the model
judges its shape and not its level. When the plant ties that drift to the other channels (flow,
pressure and current all follow the pump's load), the level still carries information: a
``LevelModel`` fitted at training time predicts each such channel's window mean from the other
channels' window means (ridge regression on scaled values, see ``features``), and the
reconstruction target keeps the channel's departure from that prediction. A sensor offset or a
flow that stops following the load then shows as reconstruction error, while a common drift of
all channels does not. Slow channels the others do not explain well enough on later training
windows (a temperature that follows the weather) keep being judged by shape alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGE = 1e-3
VALIDATION = 0.3  # the latest share of training windows that judges each regression
MIN_FIT_PER_INPUT = 2  # windows per regression input that fit it, at least


def features(scaled: np.ndarray) -> np.ndarray:
    """Per window (B, W, C) -> (B, 2C): the channel means over the window and over its first half.

    The first half gives the regression some of each channel's recent past, which channels that
    follow the others with a lag (a bearing temperature following the load) need.
    """
    half = max(scaled.shape[-2] // 2, 1)
    return np.concatenate([scaled.mean(axis=-2), scaled[..., :half, :].mean(axis=-2)], axis=-1)


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.c_[x, np.ones(len(x))]
    return np.linalg.solve(x.T @ x + RIDGE * len(x) * np.eye(x.shape[1]), x.T @ y)


def _r2(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> float:
    total = ((y - y.mean()) ** 2).sum()
    if total <= 0:
        return 0.0
    return float(1.0 - ((y - x @ beta[:-1] - beta[-1]) ** 2).sum() / total)


@dataclass(frozen=True)
class LevelModel:
    """``predicted mean = features @ coef + intercept`` for the ``explained`` channels."""

    coef: np.ndarray  # (2C, C): column c predicts channel c from the other channels' features
    intercept: np.ndarray  # (C,)
    explained: np.ndarray  # (C,) bool
    r2: np.ndarray  # (C,) R^2 on the latest training windows, NaN where not fitted

    @classmethod
    def fit(cls, scaled: np.ndarray, slow: np.ndarray, min_r2: float) -> "LevelModel":
        """Fit one ridge regression per slow channel on scaled training windows (N, W, C), oldest
        first. A channel counts as explained when the regression, fitted on the older windows,
        predicts the latest ``VALIDATION`` share with R^2 >= ``min_r2``; it is then refitted on all.
        Judging on later windows keeps chance relations of a short history out. The regression
        has ``2C`` inputs and is fitted on at least twice as many windows (``MIN_FIT_PER_INPUT``);
        the latest windows that judge it are then at least 0.85 times as many as its inputs."""
        n, _, c = scaled.shape
        feats = features(scaled)
        coef, intercept = np.zeros((2 * c, c)), np.zeros(c)
        r2 = np.full(c, np.nan)
        explained = np.zeros(c, dtype=bool)
        split = int(n * (1 - VALIDATION))
        if c < 2 or split < MIN_FIT_PER_INPUT * 2 * c:
            return cls(coef, intercept, explained, r2)
        for j in np.flatnonzero(slow):
            others = [k for k in range(2 * c) if k % c != j]
            x, y = feats[:, others], feats[:, j]
            r2[j] = _r2(x[split:], y[split:], _ridge(x[:split], y[:split]))
            if r2[j] >= min_r2:
                beta = _ridge(x, y)
                coef[others, j], intercept[j] = beta[:-1], beta[-1]
                explained[j] = True
        return cls(coef, intercept, explained, r2)

    def predict(self, scaled: np.ndarray) -> np.ndarray:
        """Predicted window means (B, C) of scaled windows (B, W, C); meaningful only for
        ``explained`` channels."""
        return features(scaled) @ self.coef + self.intercept

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
        if coef.shape != (2 * n_channels, n_channels) or intercept.shape != (n_channels,) \
                or explained.shape != (n_channels,) or r2.shape != (n_channels,):
            raise ValueError(f"level model does not fit {n_channels} channels")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError("level model has non-finite coefficients")
        return cls(coef, intercept, explained, r2)
