"""``LstmGanDetector``: scales windows, reconstructs them, and scores them by the terms of
``detector.term.WindowScore`` (reconstruction error, critic output, stuck sensors, spikes).

``ModelSpec`` is the model's own description, everything but the weights: channels, network shape,
scaler, which channels are judged by shape (slow) and how, the fitted score, the daily or weekly
profile where training found one (``detector.season``: such a model needs each reading's
timestamp) and, for a model trained on a fleet, each trained entity's baseline
(``detector.baseline``). It is what
``model.json`` stores, read and written in one place (``ModelSpec.meta``, ``ModelSpec.from_meta``).
Every statistic is frozen at training time, never taken from the batch being scored, so a window
scores the same alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from detector.baseline import KEY as BASELINES_KEY, EntityBaselines
from detector.level import LevelModel
from detector.network import Networks, NetworkShape
from detector.scaler import StandardScaler
from detector.score import ScoreBatch
from detector.season import SeasonProfile
from detector.term import Parts, WindowScore


FLAT_EPS = 1e-3  # in scaled units: variation below this counts as a flat line
CPU_CHUNK, GPU_CHUNK = 512, 8192  # windows per forward pass (see LstmGanDetector)
SEASON_KEY = "season_profile"


def variation(scaled: np.ndarray) -> np.ndarray:
    """Log standard deviation of first differences per window and channel, (B, W, C) -> (B, C).

    Unchanged by adding a constant to a channel's window, so centred inputs give the same values."""
    if scaled.shape[-2] < 2:
        return np.zeros(scaled.shape[:-2] + scaled.shape[-1:])
    return np.log(np.diff(scaled, axis=-2).std(axis=-2) + FLAT_EPS)


def prepare_windows(
    scaler: StandardScaler, windows: np.ndarray, slow: np.ndarray | None, center_inputs: bool,
    level: LevelModel | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale raw windows into (network inputs, reconstruction targets), both float32.

    Slow channels (flagged in ``slow``) lose their window mean in both: the model judges their
    shape, not their level, so slow plant drifts (temperatures following the weather) do not read
    as faults. With ``center_inputs`` the encoder sees every channel without its window mean while
    the targets keep the level of the other channels: the generator must infer the normal level
    from the shape, so a window whose level moved cannot be reconstructed - an autoencoder that
    saw the level would simply copy it. Slow channels that ``level`` explains from the others
    keep, instead of their own mean, their departure from the level it predicts (detector.level).
    """
    scaled = scaler.transform(windows)
    mean = scaled.mean(axis=-2, keepdims=True)
    targets = scaled
    if slow is not None and slow.any():
        offset = np.where(slow, mean, 0.0)
        if level is not None and level.explained.any():
            offset = np.where(slow & level.explained, level.predict(scaled)[:, None, :], offset)
        targets = (scaled - offset).astype(np.float32)
    inputs = (scaled - mean).astype(np.float32) if center_inputs else targets
    return inputs, targets


def peak(residual: torch.Tensor) -> torch.Tensor:
    """Largest squared residual of a row per window and channel, (B, W, C) -> (B, C)."""
    return residual.pow(2).amax(dim=1)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


@dataclass(frozen=True)
class ModelSpec:
    """Everything but the weights that a trained model scores with; ``score`` is None until
    calibration has fitted it."""

    channels: tuple[str, ...]
    shape: NetworkShape
    scaler: StandardScaler
    slow: np.ndarray  # (C,) bool: judged by shape, not level
    center_inputs: bool = True
    level: LevelModel | None = None
    score: WindowScore | None = None
    # a fleet model's operating points: windows reach it centred (detector.baseline.centre_windows)
    baselines: EntityBaselines | None = None
    season: SeasonProfile | None = None  # time of day or week, where training found a cycle

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "slow", np.asarray(self.slow, dtype=bool))
        if len(self.channels) != self.shape.n_channels or len(self.scaler.mean) != len(self.channels):
            raise ValueError("channels, scaler and network disagree in size")
        if self.score is not None:
            self.score.check(len(self.channels))
        if self.baselines is not None and self.baselines.values.shape[1] != len(self.channels):
            raise ValueError("entity baselines and channels disagree in size")
        if self.season is not None and self.season.profile.shape[1] != len(self.channels):
            raise ValueError("season profile and channels disagree in size")
        if self.score is not None and (self.season is None) != (self.score.season is None):
            raise ValueError(f"{SEASON_KEY} and the score's seasonal term come together")

    def calibrated(self, score: WindowScore) -> "ModelSpec":
        return replace(self, score=score)

    def prepare(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return prepare_windows(self.scaler, windows, self.slow, self.center_inputs, self.level)

    def meta(self) -> dict[str, Any]:
        """The artifact's description of the model (``model.json`` keys)."""
        if self.score is None:
            raise ValueError("the model is not calibrated yet")
        meta: dict[str, Any] = {
            "model_kind": self.shape.kind, "channels": list(self.channels),
            "window": self.shape.window, "network": self.shape.to_dict(),
            "scaler": self.scaler.to_dict(), "score_normaliser": self.score.to_dict(),
            "slow_channels": [c for c, s in zip(self.channels, self.slow) if s],
            "center_inputs": self.center_inputs,
        }
        if self.level is not None and self.level.explained.any():
            meta["level_model"] = self.level.to_dict()
        if self.baselines is not None:
            meta[BASELINES_KEY] = self.baselines.to_dict()
        if self.season is not None:
            meta[SEASON_KEY] = self.season.to_dict()
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "ModelSpec":
        """Strict: raises ``ValueError`` (or ``KeyError``/``TypeError``) on anything inconsistent."""
        shape = NetworkShape(**meta["network"])
        channels = list(meta["channels"])
        unknown = sorted(set(meta.get("slow_channels", [])) - set(channels))
        if unknown:
            raise ValueError(f"slow_channels names unknown channels {unknown}")
        level = None
        if "level_model" in meta:
            try:
                level = LevelModel.from_dict(meta["level_model"], shape.n_channels)
            except (TypeError, KeyError, ValueError) as exc:
                raise ValueError(f"level_model is inconsistent: {exc}") from None
        baselines = None
        if BASELINES_KEY in meta:
            baselines = EntityBaselines.from_dict(meta[BASELINES_KEY], shape.n_channels)
        season = None
        if SEASON_KEY in meta:
            season = SeasonProfile.from_dict(meta[SEASON_KEY], shape.n_channels)
        return cls(channels, shape, StandardScaler.from_dict(meta["scaler"]),
                   np.isin(channels, meta.get("slow_channels", [])),
                   bool(meta.get("center_inputs", True)), level,
                   WindowScore.from_dict(meta["score_normaliser"]), baselines, season)


class LstmGanDetector:
    """A trained model behind the ``Detector`` contract; also serves ``lstm-ae`` (no critic)."""

    def __init__(self, networks: Networks, spec: ModelSpec, version: str,
                 device: str | torch.device = "cpu", chunk: int | None = None) -> None:
        """``chunk``: most windows per pass; by default 512 on CPU, where larger passes fall out
        of cache (batch 2048 scores half as fast in one pass), and 8192 on a GPU."""
        self.networks = networks.eval()
        self.spec = spec
        self.channels, self.window, self.version = list(spec.channels), networks.shape.window, version
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.networks.to(self.device)
        self.chunk = chunk or (CPU_CHUNK if self.device.type == "cpu" else GPU_CHUNK)

    @property
    def level(self) -> LevelModel | None:
        return self.spec.level

    @property
    def baselines(self) -> EntityBaselines | None:
        """A fleet model's operating points; its windows must come centred by them."""
        return self.spec.baselines

    @property
    def uses_time(self) -> bool:
        """Whether scores read the time of day or week: ``score`` then needs ``ts_ms``."""
        return self.spec.season is not None

    @torch.inference_mode()
    def parts(self, windows: np.ndarray, ts_ms: np.ndarray | None = None) -> Parts:
        """One forward pass over raw windows (B, W, C): what every score term reads. ``ts_ms``
        (B, W): each reading's epoch ms, which a model with a seasonal profile needs."""
        windows = np.asarray(windows, dtype=np.float64)
        season = None
        if self.spec.season is not None:
            if ts_ms is None:
                raise ValueError("this model scores the time of day or week (season_profile): "
                                 "pass each reading's timestamp")
            season = self.spec.season.residual(ts_ms, windows)
        inputs, targets = self.spec.prepare(windows)
        out = []
        for start in range(0, len(inputs), self.chunk):
            stop = start + self.chunk
            x = torch.from_numpy(np.ascontiguousarray(inputs[start:stop])).to(self.device)
            y = torch.from_numpy(np.ascontiguousarray(targets[start:stop])).to(self.device)
            residual = self.networks.reconstruct(x) - y
            critic = None
            if self.networks.adversarial:
                critic = self.networks.critic_x(y).double().cpu().numpy()
            out.append(Parts(
                self.window, residual.pow(2).mean(dim=1).double().cpu().numpy(),
                residual.mean(dim=1).double().cpu().numpy(), peak(residual).double().cpu().numpy(),
                # inputs differ from scaled windows by per-window offsets only
                variation(inputs[start:stop]), critic))
        parts = Parts.concat(out, self.window, len(self.channels))
        return parts if season is None else replace(parts, season=season)

    def score(self, windows: np.ndarray, ts_ms: np.ndarray | None = None) -> ScoreBatch:
        """Scores of raw windows (B, W, C); ``ts_ms`` (B, W) each reading's epoch ms (read only
        by a model with a seasonal profile, which needs it)."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, len(self.channels)):
            raise ValueError(
                f"windows must have shape (batch, {self.window}, {len(self.channels)}), "
                f"got {windows.shape}"
            )
        if self.spec.score is None:
            raise ValueError("the model is not calibrated yet")
        if len(windows) <= self.chunk:
            return self.spec.score.score(self.parts(windows, ts_ms))
        # windows score independently, so chunks change nothing but the memory they touch
        part_ts = lambda i: None if ts_ms is None else ts_ms[i : i + self.chunk]
        parts = [self.spec.score.score(self.parts(windows[i : i + self.chunk], part_ts(i)))
                 for i in range(0, len(windows), self.chunk)]
        return ScoreBatch(scores=np.concatenate([p.scores for p in parts]),
                          contributions=np.concatenate([p.contributions for p in parts]))
