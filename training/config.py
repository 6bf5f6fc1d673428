"""Every training default, in one place that imports no torch, so ``ganwatch train --help`` can
show them at once. ``training.trainer`` re-exports ``TrainConfig``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    """The options of `ganwatch train`, with their defaults."""

    model: str = "lstm-gan"
    window: int = 32
    epochs: int = 15  # at most; fewer when the sample budget runs out first
    sample_budget: int = 40_000  # windows visited in all epochs together (see epoch_plan)
    torch_threads: int = 1  # torch CPU threads in train (epochs, calibration); 0 = default
    batch_size: int = 32  # windows per training step
    # ... where the sample budget cuts epochs (a long history): the window critic's gradient
    # penalty costs about the same per step at any batch up to 64 on a CPU (see epoch_plan)
    long_batch_size: int = 64
    hidden: int = 32
    latent: int = 16
    lr: float = 1e-3
    n_critic: int = 1
    gp_weight: float = 10.0
    rec_weight: float = 10.0
    adv_weight: float = 1.0
    critic_weight: float = 0.25  # weight of the critic term in the score, after normalisation
    channel_norm: bool = True  # each channel's error relative to its median held-back error
    flat_weight: float = 1.0  # weight of the stuck-sensor term (0 turns it off)
    noise_weight: float = 4.0  # weight of the noise term (0 turns it off)
    noise_margin: float = math.log(1.2)  # only variation over 1.2 x the roughest training window
    peak_weight: float = 2.0  # weight of the spike term (0 turns it off)
    peak_margin: float = math.log(10.0)  # only row peaks over 10 x the held-back highest count
    season_weight: float = 2.0  # weight of the seasonal term where a cycle is found (0: off)
    bias_weight: float = 0.5  # weight of sustained offsets in the error (detector.term.ErrorTerm)
    calib_fraction: float = 0.25  # last share of the training rows held back for calibration
    # the share of normal windows allowed above the threshold (training.calibration)
    false_alarm_target: float = 1e-3
    # instead of the target: threshold = max held-back score + margin * their robust spread
    threshold_margin: float | None = None
    # the share of held-back stretches that may hold incidents (training.calibration); 0 = none
    contamination: float = 0.1
    slow_autocorr: float = 0.7  # channels with lag-1 autocorrelation above this are centred
    level_r2: float = 0.9  # slow channels the others predict this well keep a relative level
    center_inputs: bool = True  # the encoder sees shapes only (see detector.model.prepare_windows)
    # no window spans a longer gap: None learns it (GAP_STEPS median steps), 0 means never
    max_gap_ms: int | None = None
    device: str = "auto"
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA only

    def to_dict(self) -> dict:
        return asdict(self)
