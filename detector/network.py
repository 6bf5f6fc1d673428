"""The LSTM networks: encoder (x -> z), generator (z -> x), window critic and latent critic.

Shapes: windows are (batch, window, channels), latents (batch, latent). The encoder lets one forward
pass reconstruct a window (TadGAN's design), so scoring never searches the latent space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkShape:
    """Everything needed to rebuild the networks before loading their weights."""

    kind: str  # "lstm-gan" or "lstm-ae"
    n_channels: int
    window: int
    hidden: int
    latent: int

    def to_dict(self) -> dict:
        return asdict(self)


class LstmEncoder(nn.Module):
    """Reads a window and summarises it as a latent vector."""

    def __init__(self, n_channels: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        # mean over time and the last step: the mean is robust to noise, the last step keeps order
        return self.head(0.5 * (out.mean(dim=1) + out[:, -1]))


class LstmGenerator(nn.Module):
    """Unrolls a latent vector into a window."""

    def __init__(self, n_channels: int, window: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.window = window
        self.init = nn.Linear(latent, 2 * hidden)
        self.lstm = nn.LSTM(latent, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h0, c0 = torch.tanh(self.init(z)).chunk(2, dim=-1)
        steps = z.unsqueeze(1).expand(-1, self.window, -1)
        out, _ = self.lstm(steps, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        return self.head(out)


class LstmCritic(nn.Module):
    """Wasserstein critic on windows: higher output means more like the normal training data."""

    def __init__(self, n_channels: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_channels, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(torch.cat([out.mean(dim=1), out[:, -1]], dim=-1)).squeeze(-1)


class LatentCritic(nn.Module):
    """Critic on latents: pushes encoded windows towards the N(0, I) prior, as TadGAN's critic_z."""

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2), nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class Networks(nn.Module):
    """All networks of one model; ``state_dict`` keys are the artifact's tensor names."""

    def __init__(self, shape: NetworkShape) -> None:
        super().__init__()
        if shape.kind not in ("lstm-gan", "lstm-ae"):
            raise ValueError(f"unknown model kind {shape.kind!r} (expected lstm-gan or lstm-ae)")
        self.shape = shape
        c, w, h, z = shape.n_channels, shape.window, shape.hidden, shape.latent
        self.encoder = LstmEncoder(c, h, z)
        self.generator = LstmGenerator(c, w, h, z)
        if shape.kind == "lstm-gan":
            self.critic_x = LstmCritic(c, h)
            self.critic_z = LatentCritic(z, h)

    @property
    def adversarial(self) -> bool:
        return self.shape.kind == "lstm-gan"

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(x))
