"""Fit the LSTM GAN (or the LSTM autoencoder baseline) on windows of normal readings.

Shaped like pytorch/examples ``dcgan/main.py``: per epoch, per batch, critic steps then one
encoder/generator step. Losses: Wasserstein with gradient penalty for the window critic and the
latent critic (TadGAN's pair), plus a reconstruction loss so that encoder + generator reconstruct a
window in one pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from detector.level import LevelModel
from detector.model import LstmGanDetector, ScoreNormaliser, prepare_windows, resolve_device
from detector.network import Networks, NetworkShape
from detector.offline import iter_windows, window_array
from detector.scaler import StandardScaler
from detector.score import Threshold
from detector.stream import StreamConfig
from training.calibration import calibrate
from training.config import TrainConfig  # re-exported: defined apart so the CLI needs no torch

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    networks: Networks
    scaler: StandardScaler
    normaliser: ScoreNormaliser
    threshold: Threshold
    slow: np.ndarray
    level: LevelModel | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    train_scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    calib_scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    metrics: dict = field(default_factory=dict)
    center_inputs: bool = True

    def artifact_meta(self, channels: list[str]) -> dict:
        """What scoring needs besides weights, scaler and calibration, for ``save_artifact``."""
        meta = {"slow_channels": [c for c, s in zip(channels, self.slow) if s],
                "center_inputs": self.center_inputs}
        if self.level is not None and self.level.explained.any():
            meta["level_model"] = self.level.to_dict()
        return meta

    def detector(self, channels: list[str], version: str = "training",
                 device: str = "cpu") -> LstmGanDetector:
        """The trained model behind the ``Detector`` contract, exactly as a saved artifact loads."""
        return LstmGanDetector(self.networks, self.scaler, self.normaliser, channels, version,
                               device, slow=self.slow, center_inputs=self.center_inputs,
                               level=self.level)


def make_windows(ts_ms: np.ndarray, values: np.ndarray, window: int, max_gap_ms: int | None):
    """All stride-1 windows through the stream rules; returns (windows, index of last row)."""
    parts, ends = [], []
    for start, windows, _ in iter_windows(ts_ms, values, StreamConfig(window, 1, max_gap_ms)):
        if windows:
            parts.append(window_array(windows))
            ends.extend(start + w.index for w in windows)
    if not parts:
        return np.empty((0, window, values.shape[1])), np.empty(0, dtype=np.int64)
    return np.concatenate(parts), np.asarray(ends, dtype=np.int64)


def slow_channels(values: np.ndarray, limit: float) -> np.ndarray:
    """Channels whose lag-1 autocorrelation exceeds ``limit``: slow signals that drift."""
    x = values - values.mean(axis=0)
    denom = (x * x).sum(axis=0)
    ac = np.divide((x[1:] * x[:-1]).sum(axis=0), denom, out=np.zeros(x.shape[1]), where=denom > 0)
    return ac > limit


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: penalise critic gradients away from norm 1 on points between real and fake."""
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    # cuDNN's LSTM has no double backward; the native kernels do
    with torch.backends.cudnn.flags(enabled=False):
        out = critic(mixed)
        (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def train(
    ts_ms: np.ndarray, values: np.ndarray, channels: list[str], config: TrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fit scaler, networks and calibration on normal rows (oldest first)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"

    n_fit = int(round(len(values) * (1 - config.calib_fraction)))
    scaler = StandardScaler.fit(values[:n_fit])
    windows, ends = make_windows(ts_ms, values, config.window, config.max_gap_ms)
    fit_windows = windows[ends < n_fit]
    calib_windows = windows[ends >= n_fit]
    if len(fit_windows) < 2 or len(calib_windows) < 1:
        raise ValueError(
            f"too few windows to train: {len(fit_windows)} for fitting and {len(calib_windows)} "
            f"held back; use more rows or a smaller --window (now {config.window})"
        )
    slow = slow_channels(values[:n_fit], config.slow_autocorr)
    level = LevelModel.fit(scaler.transform(fit_windows), slow, config.level_r2)
    inputs, targets = prepare_windows(scaler, fit_windows, slow, config.center_inputs, level)
    in_all = torch.from_numpy(inputs).to(device)
    tgt_all = torch.from_numpy(targets).to(device)

    shape = NetworkShape(config.model, len(channels), config.window, config.hidden, config.latent)
    nets = Networks(shape).to(device)
    gen_params = list(nets.encoder.parameters()) + list(nets.generator.parameters())
    opt_g = torch.optim.Adam(gen_params, lr=config.lr, betas=(0.5, 0.9))
    opt_c = None
    if nets.adversarial:
        critic_params = list(nets.critic_x.parameters()) + list(nets.critic_z.parameters())
        opt_c = torch.optim.Adam(critic_params, lr=config.lr, betas=(0.5, 0.9))

    history: dict[str, list[float]] = {"reconstruction": []}
    if nets.adversarial:
        history.update({"critic_x": [], "critic_z": [], "adversarial": []})
    started = time.perf_counter()
    for epoch in range(config.epochs):
        nets.train()
        sums = dict.fromkeys(history, 0.0)
        order = torch.from_numpy(rng.permutation(len(in_all))).to(device)
        n_batches = 0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            x, y = in_all[idx], tgt_all[idx]
            if len(x) < 2:
                continue
            n_batches += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if nets.adversarial:
                    for _ in range(config.n_critic):
                        cx, cz = critic_step(nets, x, y, opt_c, config)
                    sums["critic_x"] += cx
                    sums["critic_z"] += cz
                rec, adv = generator_step(nets, x, y, opt_g, config)
            sums["reconstruction"] += rec
            if nets.adversarial:
                sums["adversarial"] += adv
        for key in history:
            history[key].append(sums[key] / max(n_batches, 1))
        if progress:
            progress(epoch + 1, {k: v[-1] for k, v in history.items()})
        log.debug("epoch %d: %s", epoch + 1, {k: round(v[-1], 5) for k, v in history.items()})
    train_seconds = time.perf_counter() - started

    nets.eval()
    detector = LstmGanDetector(
        nets, scaler, ScoreNormaliser(0.0, 1.0, bias_weight=config.bias_weight), channels,
        "training", device, slow=slow, center_inputs=config.center_inputs, level=level,
    )
    normaliser, threshold, train_scores, calib_scores = calibrate(
        detector, fit_windows, calib_windows, config
    )
    metrics = {
        "train_seconds": round(train_seconds, 3),
        "fit_windows": int(len(fit_windows)),
        "calibration_windows": int(len(calib_windows)),
        "final_losses": {k: v[-1] for k, v in history.items() if v},
        "calibration_false_alarm_rate": float(np.mean(calib_scores >= threshold.value)),
    }
    return TrainResult(nets.cpu(), scaler, normaliser, threshold, slow, level, history,
                       train_scores, calib_scores, metrics, config.center_inputs)


def critic_step(
    nets: Networks, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, config: TrainConfig
):
    """One Wasserstein step for both critics: real windows ``y`` vs generated, prior vs encoded."""
    z_prior = torch.randn(len(x), config.latent, device=x.device)
    with torch.no_grad():
        fake = nets.generator(z_prior)
        z_enc = nets.encoder(x)
    loss_x = nets.critic_x(fake).mean() - nets.critic_x(y).mean()
    loss_x = loss_x + config.gp_weight * gradient_penalty(nets.critic_x, y, fake)
    loss_z = nets.critic_z(z_enc).mean() - nets.critic_z(z_prior).mean()
    loss_z = loss_z + config.gp_weight * gradient_penalty(nets.critic_z, z_prior, z_enc)
    opt.zero_grad(set_to_none=True)
    (loss_x + loss_z).backward()
    opt.step()
    return float(loss_x.detach()), float(loss_z.detach())


def generator_step(
    nets: Networks, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, config: TrainConfig
):
    """Encoder + generator: reconstruct target ``y`` from input ``x``; for the GAN, fool the critics."""
    z_enc = nets.encoder(x)
    rec_loss = (nets.generator(z_enc) - y).pow(2).mean()
    loss = config.rec_weight * rec_loss
    adv = 0.0
    if nets.adversarial:
        z_prior = torch.randn(len(x), config.latent, device=x.device)
        adv_loss = -nets.critic_x(nets.generator(z_prior)).mean() - nets.critic_z(z_enc).mean()
        loss = loss + config.adv_weight * adv_loss
        adv = float(adv_loss.detach())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(rec_loss.detach()), adv
