"""``LstmGanDetector``: scales windows, reconstructs them, and turns errors into one score.

score = z(log reconstruction error) + critic_weight * |z(critic output)| + flat term, where the
error is the mean over channels of each channel's error relative to its typical held-back error,
and each z(.) uses a centre and spread frozen at training time (``ScoreNormaliser``), never statistics of the
batch being scored, so a window scores the same alone or in any batch. The error is compared on a
log scale because faults multiply it; the critic counts in either direction, as TadGAN's critic
score does. The flat term catches stuck sensors, which a reconstruction model that cannot rebuild
sensor noise does not see: per channel, how far the window's step-to-step variation (log std of
first differences) falls below a tenth of the flattest window seen in training, in robust spreads
of that variation; zero for anything near what training has seen. The peak term catches short
spikes, which the window's mean error dilutes (3 rows of 32): per channel, how far the log of the
largest squared residual of a row in the window (in units of the channel's typical held-back error)
rises above ``peak_margin`` plus the highest value on held-back windows, in robust spreads of the
channel's log error on held-back windows; zero for anything near what calibration has seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from detector.level import LevelModel
from detector.network import Networks
from detector.scaler import StandardScaler
from detector.score import ScoreBatch, shares


@dataclass(frozen=True)
class ScoreNormaliser:
    """Frozen statistics that put reconstruction error and critic output on one scale."""

    rec_center: float  # of the log error
    rec_scale: float
    critic_center: float = 0.0
    critic_scale: float = 1.0
    critic_weight: float = 0.0
    bias_weight: float = 0.0  # weight of the sustained-offset part of the error (see error)
    flat_floor: tuple[float, ...] = ()  # per channel: lowest log variation in training windows
    flat_scale: tuple[float, ...] = ()  # per channel: robust spread of that log variation
    flat_weight: float = 1.0
    flat_margin: float = float(np.log(10.0))  # only variation under a tenth of the floor counts
    # per channel: median error on held-back windows; errors count relative to it (empty: as is)
    channel_scale: tuple[float, ...] = ()
    peak_ceiling: tuple[float, ...] = ()  # per channel: highest log peak on held-back windows
    peak_scale: tuple[float, ...] = ()  # per channel: robust spread of its held-back log error
    peak_weight: float = 1.0
    peak_margin: float = float(np.log(10.0))  # only peaks over 10 times the held-back highest count

    def relative(self, rec: np.ndarray) -> np.ndarray:
        """Per-channel errors (B, C) in units of each channel's typical held-back error, so a
        channel the model rebuilds closely weighs as much as one it never rebuilds well."""
        return rec / np.asarray(self.channel_scale) if self.channel_scale else rec

    def flat_terms(self, variation: np.ndarray) -> np.ndarray:
        """Per window and channel (B, C): spreads below the training floor, never negative."""
        if not self.flat_floor:
            return np.zeros_like(variation)
        floor = np.asarray(self.flat_floor) - self.flat_margin
        below = (floor - variation) / np.asarray(self.flat_scale)
        return self.flat_weight * np.maximum(below, 0.0)

    def peak_terms(self, peak: np.ndarray) -> np.ndarray:
        """Per window and channel (B, C): spreads of the log peak above the held-back ceiling plus
        the margin, never negative; ``peak`` is the largest squared residual of a row (B, C)."""
        if not self.peak_ceiling:
            return np.zeros_like(peak)
        log_peak = np.log(np.maximum(self.relative(peak), 1e-12))
        excess = log_peak - np.asarray(self.peak_ceiling) - self.peak_margin
        above = excess / np.asarray(self.peak_scale)
        return self.peak_weight * np.maximum(above, 0.0)

    def combine(
        self, rec: np.ndarray, critic: np.ndarray | None, flat: np.ndarray | None = None,
        peak: np.ndarray | None = None,
    ) -> np.ndarray:
        """``rec``: mean squared reconstruction error per window; ``critic``: critic output;
        ``flat``, ``peak``: the per-channel flat and peak terms (B, C) from ``flat_terms`` and
        ``peak_terms``; the largest channel of each counts."""
        score = (np.log(np.maximum(rec, 1e-12)) - self.rec_center) / self.rec_scale
        if critic is not None and self.critic_weight > 0:
            score = score + self.critic_weight * np.abs(critic - self.critic_center) / self.critic_scale
        if flat is not None and flat.size:
            score = score + flat.max(axis=1)
        if peak is not None and peak.size:
            score = score + peak.max(axis=1)
        return score

    def to_dict(self) -> dict:
        out = asdict(self)
        out["flat_floor"], out["flat_scale"] = list(self.flat_floor), list(self.flat_scale)
        out["channel_scale"] = list(self.channel_scale)
        out["peak_ceiling"], out["peak_scale"] = list(self.peak_ceiling), list(self.peak_scale)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreNormaliser":
        data = dict(data)
        floor = tuple(float(v) for v in data.pop("flat_floor", ()))
        scale = tuple(float(v) for v in data.pop("flat_scale", ()))
        channel = tuple(float(v) for v in data.pop("channel_scale", ()))  # older artifacts: none
        ceiling = tuple(float(v) for v in data.pop("peak_ceiling", ()))  # older artifacts: none
        peak_scale = tuple(float(v) for v in data.pop("peak_scale", ()))
        out = cls(**{k: float(v) for k, v in data.items()}, flat_floor=floor, flat_scale=scale,
                  channel_scale=channel, peak_ceiling=ceiling, peak_scale=peak_scale)
        if (not out.rec_scale > 0 or not out.critic_scale > 0
                or not all(v > 0 and np.isfinite(v) for v in scale + channel + peak_scale)):
            raise ValueError("score normaliser scales must be positive")
        if len(floor) != len(scale):
            raise ValueError("flat_floor and flat_scale must have one value per channel")
        if len(ceiling) != len(peak_scale) or not all(np.isfinite(v) for v in ceiling):
            raise ValueError("peak_ceiling and peak_scale must have one finite value per channel")
        return out


FLAT_EPS = 1e-3  # in scaled units: variation below this counts as a flat line
CPU_CHUNK, GPU_CHUNK = 512, 8192  # windows per forward pass (see LstmGanDetector)


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


def error(residual: torch.Tensor, bias_weight: float) -> torch.Tensor:
    """Per-channel error of residuals (B, W, C): mean square + bias_weight * W * (mean)^2.

    For residuals that are pure noise both parts have the same expectation; an offset d that
    lasts the whole window adds d^2 to the first and W * d^2 to the second, so the second part is
    a matched filter for sustained offsets (a drop in flow) that the mean square dilutes.
    """
    err = residual.pow(2).mean(dim=1)
    if bias_weight > 0:
        err = err + bias_weight * residual.shape[1] * residual.mean(dim=1).pow(2)
    return err


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


class LstmGanDetector:
    """A trained model behind the ``Detector`` contract; also serves ``lstm-ae`` (no critic)."""

    def __init__(
        self, networks: Networks, scaler: StandardScaler, normaliser: ScoreNormaliser,
        channels: list[str], version: str, device: str | torch.device = "cpu",
        slow: np.ndarray | None = None, center_inputs: bool = True, chunk: int | None = None,
        level: LevelModel | None = None,
    ) -> None:
        """``chunk``: most windows per pass; by default 512 on CPU, where larger passes fall out
        of cache (batch 2048 scores half as fast in one pass), and 8192 on a GPU."""
        self.slow = None if slow is None else np.asarray(slow, dtype=bool)
        self.level = level
        self.center_inputs = center_inputs
        self.networks = networks.eval()
        self.scaler, self.normaliser = scaler, normaliser
        self.channels, self.window, self.version = list(channels), networks.shape.window, version
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.networks.to(self.device)
        self.chunk = chunk or (CPU_CHUNK if self.device.type == "cpu" else GPU_CHUNK)
        for name in ("flat_floor", "channel_scale", "peak_ceiling"):
            if len(getattr(normaliser, name)) not in (0, len(self.channels)):
                raise ValueError(f"score normaliser {name} needs one value per channel")

    def prepare(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return prepare_windows(self.scaler, windows, self.slow, self.center_inputs, self.level)

    def components(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Per-channel reconstruction error (B, C, see ``error``), critic output (B,) or None, and
        each channel's largest squared residual of a row (B, C, see ``peak``)."""
        return self._forward(*self.prepare(windows), with_peak=True)

    @torch.inference_mode()
    def _forward(self, inputs: np.ndarray, targets: np.ndarray, with_peak: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        rec_parts, critic_parts, peak_parts = [], [], []
        for start in range(0, len(inputs), self.chunk):
            stop = start + self.chunk
            x = torch.from_numpy(np.ascontiguousarray(inputs[start:stop])).to(self.device)
            y = torch.from_numpy(np.ascontiguousarray(targets[start:stop])).to(self.device)
            residual = self.networks.reconstruct(x) - y
            err = error(residual, self.normaliser.bias_weight)
            rec_parts.append(err.double().cpu().numpy())
            if with_peak:
                peak_parts.append(peak(residual).double().cpu().numpy())
            if self.networks.adversarial:
                critic_parts.append(self.networks.critic_x(y).double().cpu().numpy())
        c = len(self.channels)
        rec = np.concatenate(rec_parts) if rec_parts else np.empty((0, c))
        critic = None
        if self.networks.adversarial:
            critic = np.concatenate(critic_parts) if critic_parts else np.empty(0)
        peaks = None
        if with_peak:
            peaks = np.concatenate(peak_parts) if peak_parts else np.empty((0, c))
        return rec, critic, peaks

    def score(self, windows: np.ndarray) -> ScoreBatch:
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, len(self.channels)):
            raise ValueError(
                f"windows must have shape (batch, {self.window}, {len(self.channels)}), "
                f"got {windows.shape}"
            )
        if len(windows) <= self.chunk:
            return self._score(windows)
        # windows score independently, so chunks change nothing but the memory they touch
        parts = [self._score(windows[i : i + self.chunk]) for i in range(0, len(windows), self.chunk)]
        return ScoreBatch(scores=np.concatenate([p.scores for p in parts]),
                          contributions=np.concatenate([p.contributions for p in parts]))

    def _score(self, windows: np.ndarray) -> ScoreBatch:
        inputs, targets = self.prepare(windows)
        with_peak = bool(self.normaliser.peak_ceiling)
        rec, critic, peaks = self._forward(inputs, targets, with_peak=with_peak)
        rec = self.normaliser.relative(rec)
        flat = None
        if self.normaliser.flat_floor:  # inputs differ from scaled windows by per-window offsets only
            flat = self.normaliser.flat_terms(variation(inputs))
        if peaks is not None:
            peaks = self.normaliser.peak_terms(peaks)
        scores = self.normaliser.combine(rec.mean(axis=1), critic, flat, peaks)
        extra = [t for t in (flat, peaks) if t is not None]
        if not any(t.any() for t in extra):
            return ScoreBatch(scores=scores, contributions=shares(rec))
        # attribution: the rest of the score split by per-channel error, plus each channel's flat
        # and peak terms
        terms = sum(extra)
        rest = np.maximum(scores - sum(t.max(axis=1) for t in extra), 0.0)[:, None]
        extra_rows = terms.any(axis=1)[:, None]  # row by row, so a batch never changes a window's
        contributions = np.where(extra_rows, shares(shares(rec) * rest + terms), shares(rec))
        return ScoreBatch(scores=scores, contributions=contributions)
