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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from detector.alert import stack_ts
from detector.artifact import save_artifact
from detector.baseline import EntityBaselines
from detector.level import LevelModel
from detector.model import LstmGanDetector, ModelSpec, resolve_device
from detector.network import Networks, NetworkShape
from detector.offline import iter_windows, window_array
from detector.scaler import StandardScaler
from detector.season import SeasonProfile
from detector.score import Threshold
from detector.stream import AdvanceStats, StreamConfig, learn_max_gap_ms
from training.calibration import calibrate
from training.config import TrainConfig  # re-exported: defined apart so the CLI needs no torch

__all__ = ["TrainConfig", "TrainResult", "train", "slow_channels", "make_windows", "epoch_plan"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    networks: Networks
    spec: ModelSpec  # calibrated
    threshold: Threshold
    history: dict[str, list[float]] = field(default_factory=dict)
    train_scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    calib_scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    metrics: dict = field(default_factory=dict)
    max_gap_ms: int | None = None  # the gap rule training used, stored for score and serve

    def detector(self, version: str = "training", device: str = "cpu") -> LstmGanDetector:
        """The trained model behind the ``Detector`` contract, exactly as a saved artifact loads."""
        return LstmGanDetector(self.networks, self.spec, version, device)

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the artifact (``detector.artifact.save_artifact``); returns its metadata."""
        return save_artifact(directory, self.networks, self.spec, self.threshold,
                             {"max_gap_ms": self.max_gap_ms, **(extra or {})})


def make_windows(ts_ms: np.ndarray, values: np.ndarray, window: int, max_gap_ms: int | None
                 ) -> tuple[np.ndarray, np.ndarray, AdvanceStats, np.ndarray]:
    """All stride-1 windows through the stream rules; returns (windows, index of last row, the
    rules' counts of accepted, repeated or out-of-order, and gap rows, each window's reading
    timestamps (n, window))."""
    parts, ends, times = [], [], []
    stats = AdvanceStats()
    for start, windows, stats in iter_windows(ts_ms, values, StreamConfig(window, 1, max_gap_ms)):
        if windows:
            parts.append(window_array(windows))
            times.append(stack_ts(windows))
            ends.extend(start + w.index for w in windows)
    if not parts:
        return (np.empty((0, window, values.shape[1])), np.empty(0, dtype=np.int64), stats,
                np.empty((0, window), dtype=np.int64))
    return (np.concatenate(parts), np.asarray(ends, dtype=np.int64), stats,
            np.concatenate(times).astype(np.int64))


def resolve_max_gap_ms(ts_ms: np.ndarray, configured: int | None) -> int | None:
    """The gap rule: ``configured`` ms, none for 0, or learned from the data for None."""
    if configured is None:
        return learn_max_gap_ms(ts_ms)
    return int(configured) or None


def epoch_plan(n_windows: int, config: TrainConfig) -> tuple[int, int, int]:
    """(epochs, windows per epoch, batch) within ``sample_budget``: a short history gets every
    epoch, a long one fewer epochs, and one longer than the budget a random subset per epoch.
    Training time then grows with the budget, not with the file. Where the budget cuts epochs the
    batch is ``long_batch_size``: the gradient penalty's double backward through the critic's
    LSTM costs about the same per step whatever the batch, so larger batches halve its share."""
    per_epoch = min(n_windows, max(config.sample_budget, config.batch_size))
    epochs = max(1, min(config.epochs, config.sample_budget // max(per_epoch, 1)))
    batch = config.long_batch_size if epochs < config.epochs else config.batch_size
    return epochs, per_epoch, batch


def slow_channels(values: np.ndarray, limit: float, breaks: np.ndarray | None = None
                  ) -> np.ndarray:
    """Channels whose lag-1 autocorrelation exceeds ``limit``: slow signals that drift.
    ``breaks``: rows that start a new series (a fleet's next entity), not paired with the row
    before them."""
    x = values - values.mean(axis=0)
    denom = (x * x).sum(axis=0)
    pairs = x[1:] * x[:-1]
    if breaks is not None and len(breaks):
        pairs[np.asarray(breaks) - 1] = 0.0
    ac = np.divide(pairs.sum(axis=0), denom, out=np.zeros(x.shape[1]), where=denom > 0)
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


@dataclass
class TrainingWindows:
    """What a run fits and calibrates on: windows (already centred for a fleet), and the scaler,
    slow channels, gap rule and baselines fitted to make them."""

    fit: np.ndarray
    calib: np.ndarray
    scaler: StandardScaler
    slow: np.ndarray
    max_gap_ms: int | None
    stats: AdvanceStats
    baselines: EntityBaselines | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    fit_ts: np.ndarray | None = None  # (n, window) reading timestamps: for the seasonal profile
    calib_ts: np.ndarray | None = None
    season: SeasonProfile | None = None


def series_windows(ts_ms: np.ndarray, values: np.ndarray, config: TrainConfig) -> TrainingWindows:
    """One asset's rows: the first ``1 - calib_fraction`` fit, the windows ending after them are
    held back for calibration."""
    n_fit = int(round(len(values) * (1 - config.calib_fraction)))
    scaler = StandardScaler.fit(values[:n_fit])
    max_gap_ms = resolve_max_gap_ms(ts_ms, config.max_gap_ms)
    windows, ends, stats, times = make_windows(ts_ms, values, config.window, max_gap_ms)
    warn_skipped(stats, len(ts_ms))
    fitted = ends < n_fit
    fit_windows, calib_windows = windows[fitted], windows[~fitted]
    if len(fit_windows) < 2 or len(calib_windows) < 1:
        raise ValueError(too_few_windows(len(fit_windows), len(calib_windows), stats, max_gap_ms,
                                         config.window))
    slow = slow_channels(values[:n_fit], config.slow_autocorr)
    season = None
    if config.season_weight > 0:
        season = SeasonProfile.fit(ts_ms[:n_fit], values[:n_fit], ts_ms[n_fit:], values[n_fit:])
    hours = season.period_ms / 3_600_000 if season else None
    if season is not None:
        log.info("seasonal profile: a %g-hour cycle on %d of %d channels", hours,
                 int(season.active.sum()), len(season.active))
    return TrainingWindows(fit_windows, calib_windows, scaler, slow, max_gap_ms, stats,
                           metrics={"season_period_h": hours}, fit_ts=times[fitted],
                           calib_ts=times[~fitted], season=season)


def warn_skipped(stats: AdvanceStats, rows: int) -> None:
    if stats.duplicates:
        log.warning("skipped %d of %d rows whose timestamp repeats or goes back (the stream "
                    "rules of score and serve skip them too)", stats.duplicates, rows)


def train(
    ts_ms: np.ndarray, values: np.ndarray, channels: list[str], config: TrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    entities: np.ndarray | None = None,
) -> TrainResult:
    """Fit scaler, networks and calibration on normal rows (oldest first). With ``entities`` (one
    name per row) the rows are a fleet's: see ``training.fleet``."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"

    if entities is None:
        data = series_windows(ts_ms, values, config)
    else:
        from training.fleet import fleet_windows  # it builds on this module's helpers

        data = fleet_windows(ts_ms, values, entities, config)
    stats, max_gap_ms, scaler, slow = data.stats, data.max_gap_ms, data.scaler, data.slow
    fit_windows, calib_windows = data.fit, data.calib
    level = LevelModel.fit(scaler.transform(fit_windows), slow, config.level_r2)
    shape = NetworkShape(config.model, len(channels), config.window, config.hidden, config.latent)
    spec = ModelSpec(channels, shape, scaler, slow, config.center_inputs, level,
                     baselines=data.baselines, season=data.season)
    inputs, targets = spec.prepare(fit_windows)
    in_all = torch.from_numpy(inputs).to(device)
    tgt_all = torch.from_numpy(targets).to(device)

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
    epochs, per_epoch, batch = epoch_plan(len(in_all), config)
    threads_before = torch.get_num_threads()
    if config.torch_threads:  # for calibration too: extra threads spin when a core is taken
        torch.set_num_threads(config.torch_threads)
    try:
        started = time.perf_counter()
        for epoch in range(epochs):
            _epoch(nets, in_all, tgt_all, rng, per_epoch, batch, opt_g, opt_c, config, use_amp,
                   history)
            if progress:
                progress(epoch + 1, {k: v[-1] for k, v in history.items()})
            log.debug("epoch %d: %s", epoch + 1, {k: round(v[-1], 5) for k, v in history.items()})
        train_seconds = time.perf_counter() - started

        nets.eval()
        score, threshold, train_scores, calib_scores = calibrate(
            LstmGanDetector(nets, spec, "training", device), fit_windows, calib_windows, config,
            data.fit_ts, data.calib_ts)
    finally:
        torch.set_num_threads(threads_before)
    metrics = {
        "train_seconds": round(train_seconds, 3),
        "epochs": epochs, "windows_per_epoch": per_epoch, "batch_size": batch,
        "max_gap_ms": max_gap_ms,
        "skipped_rows": stats.duplicates, "gaps": stats.gaps,
        "fit_windows": int(len(fit_windows)),
        "calibration_windows": int(len(calib_windows)),
        "final_losses": {k: v[-1] for k, v in history.items() if v},
        "calibration_false_alarm_rate": float(np.mean(calib_scores >= threshold.value)),
        "false_alarm_target": threshold.false_alarm_target,
        **data.metrics,
    }
    return TrainResult(nets.cpu(), spec.calibrated(score), threshold, history, train_scores,
                       calib_scores, metrics, max_gap_ms)


def _epoch(
    nets: Networks, in_all: torch.Tensor, tgt_all: torch.Tensor, rng: np.random.Generator,
    per_epoch: int, batch: int, opt_g: torch.optim.Optimizer,
    opt_c: torch.optim.Optimizer | None, config: TrainConfig, use_amp: bool,
    history: dict[str, list[float]],
) -> None:
    """One pass over ``per_epoch`` windows in random order, ``batch`` at a time; appends the mean
    losses to ``history``."""
    nets.train()
    device = in_all.device
    sums = dict.fromkeys(history, 0.0)
    order = torch.from_numpy(rng.permutation(len(in_all))[:per_epoch]).to(device)
    n_batches = 0
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
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


def too_few_windows(n_fit: int, n_calib: int, stats: AdvanceStats, max_gap_ms: int | None,
                    window: int) -> str:
    """The error for a history that yields too few windows, naming the cause and the flag."""
    head = f"too few windows to train: {n_fit} for fitting and {n_calib} held back"
    if stats.gaps and max_gap_ms is not None and stats.gaps * window >= stats.accepted / 2:
        return (f"{head}: {stats.gaps} steps longer than the gap rule ({max_gap_ms / 1000:g} s) "
                f"restart the window; raise --max-gap-s (0 = never) or lower --window "
                f"(now {window})")
    if stats.duplicates and stats.duplicates >= stats.accepted:
        return (f"{head}: {stats.duplicates} rows repeat or go back in time and were skipped; "
                f"sort the file by its timestamp column")
    return f"{head}; use more rows or a smaller --window (now {window})"


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
