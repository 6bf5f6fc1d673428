"""Every training default, in one place that imports no torch, so ``ganwatch train --help`` can
show them at once. ``training.trainer`` re-exports ``TrainConfig``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from detector.stream import DEFAULT_MAX_GAP_S


@dataclass
class TrainConfig:
    """Every training default, defined once: the CLI and the benchmark read them from here."""

    model: str = "lstm-gan"
    window: int = 32
    epochs: int = 15
    batch_size: int = 32
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
    peak_weight: float = 1.0  # weight of the spike term (0 turns it off)
    peak_margin: float = math.log(10.0)  # only row peaks over 10 x the held-back highest count
    bias_weight: float = 0.5  # weight of sustained offsets in the error (detector.model.error)
    calib_fraction: float = 0.25  # last share of the training rows held back for calibration
    threshold_margin: float = 4.5  # threshold = max held-back score + margin * their spread
    slow_autocorr: float = 0.7  # channels with lag-1 autocorrelation above this are centred
    level_r2: float = 0.9  # slow channels the others predict this well keep a relative level
    center_inputs: bool = True  # the encoder sees shapes only (see detector.model.prepare_windows)
    max_gap_ms: int | None = DEFAULT_MAX_GAP_S * 1000  # no training window spans a longer gap
    device: str = "auto"
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA only

    def to_dict(self) -> dict:
        return asdict(self)
