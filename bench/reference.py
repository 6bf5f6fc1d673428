"""Reference detectors for the quality benchmark: yardsticks a deep model has to beat, not features.

* ``PcaReference``: PCA on standardised normal rows (Chiang, Russell & Braatz 2000). Keeps the
  fewest components explaining ``variance`` (90 %) of the standardised variance; scores every row
  with Hotelling's T² in the kept subspace and Q (SPE, squared residual) outside it. Both 99 %
  limits are analytic, computed with numpy and the standard library (scipy is not a dependency):
  T² limit ``k(n-1)(n+1)/(n(n-k)) F(α; k, n-k)`` with the F quantile found by bisection on the
  regularised incomplete beta function; Q limit by Jackson & Mudholkar (1979) from the discarded
  eigenvalues and the normal quantile of ``statistics.NormalDist``.
* ``rolling_z``: causal rolling z-score of a single channel, ``|x_t - mean| / std`` over the
  ``window`` rows before ``t`` (row ``t`` itself excluded), flagged above ``sigmas``. Rows with
  fewer than ``window`` predecessors are not scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 0.99  # the textbook 99 % control limits
VARIANCE = 0.90  # share of standardised variance the kept components explain


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def f_cdf(x: float, d1: float, d2: float) -> float:
    """CDF of the F distribution with ``d1``, ``d2`` degrees of freedom."""
    return 0.0 if x <= 0 else betainc(d1 / 2.0, d2 / 2.0, d1 * x / (d1 * x + d2))


def f_quantile(p: float, d1: float, d2: float) -> float:
    """``F(p; d1, d2)`` by bisection on ``f_cdf``."""
    lo, hi = 0.0, 1.0
    while f_cdf(hi, d1, d2) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f_cdf(mid, d1, d2) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t2_limit(k: int, n: int, alpha: float = ALPHA) -> float:
    """Hotelling T² control limit for ``k`` components fitted on ``n`` rows."""
    return k * (n - 1) * (n + 1) / (n * (n - k)) * f_quantile(alpha, k, n - k)


def q_limit(residual_eigenvalues: np.ndarray, alpha: float = ALPHA) -> float:
    """Jackson–Mudholkar limit of Q from the eigenvalues of the discarded components."""
    lam = np.asarray(residual_eigenvalues, dtype=np.float64)
    t1, t2, t3 = (float(np.sum(lam ** i)) for i in (1, 2, 3))
    if t1 <= 0:
        return 0.0
    h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 ** 2)
    z = NormalDist().inv_cdf(alpha)
    inner = z * math.sqrt(2.0 * t2 * h0 ** 2) / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / t1 ** 2
    return t1 * inner ** (1.0 / h0)


@dataclass
class PcaReference:
    """PCA monitoring statistics fitted on normal rows; ``score`` gives T² and Q per row."""

    mean: np.ndarray
    std: np.ndarray
    loadings: np.ndarray  # (channels, k)
    eigenvalues: np.ndarray  # all of them, descending
    t2_limit: float
    q_limit: float

    @classmethod
    def fit(cls, rows: np.ndarray, variance: float = VARIANCE,
            alpha: float = ALPHA) -> "PcaReference":
        rows = np.asarray(rows, dtype=np.float64)
        n = len(rows)
        mean, std = rows.mean(axis=0), rows.std(axis=0, ddof=1)
        std = np.where(std > 1e-12, std, 1.0)  # a constant channel contributes nothing
        z = (rows - mean) / std
        eigenvalues, vectors = np.linalg.eigh(z.T @ z / (n - 1))
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        vectors = vectors[:, order]
        share = np.cumsum(eigenvalues) / eigenvalues.sum()
        k = min(int(np.searchsorted(share, variance - 1e-12)) + 1, len(eigenvalues), n - 1)
        return cls(mean, std, vectors[:, :k], eigenvalues,
                   t2_limit(k, n, alpha), q_limit(eigenvalues[k:], alpha))

    @property
    def components(self) -> int:
        return int(self.loadings.shape[1])

    def score(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T², Q) of every row."""
        z = (np.asarray(rows, dtype=np.float64) - self.mean) / self.std
        t = z @ self.loadings
        t2 = np.sum(t ** 2 / np.maximum(self.eigenvalues[: self.components], 1e-12), axis=1)
        q = np.sum((z - t @ self.loadings.T) ** 2, axis=1)
        return t2, q

    def flags(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """0/1 flags per row for ``pca-t2`` and ``pca-q``."""
        t2, q = self.score(rows)
        return {"pca-t2": (t2 > self.t2_limit).astype(np.int64),
                "pca-q": (q > self.q_limit).astype(np.int64)}


def rolling_z(values: np.ndarray, window: int = 288) -> np.ndarray:
    """Causal z-score of each row against the ``window`` rows before it; NaN while warming up."""
    x = np.asarray(values, dtype=np.float64).ravel()
    out = np.full(len(x), np.nan)
    if len(x) <= window:
        return out
    past = np.lib.stride_tricks.sliding_window_view(x[:-1], window)  # past[i] = rows i..i+window-1
    mean, std = past.mean(axis=1), past.std(axis=1, ddof=1)  # exact, no cumulative-sum cancellation
    t = np.arange(window, len(x))
    dev = np.abs(x[t] - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), dev / std,
                     np.where(dev > 1e-12 * np.maximum(1.0, np.abs(mean)), np.inf, 0.0))
    out[window:] = z
    return out


def rolling_z_flags(values: np.ndarray, window: int = 288, sigmas: float = 4.0) -> np.ndarray:
    """0/1 flags of ``rolling_z`` above ``sigmas`` (unscored rows are 0)."""
    z = rolling_z(values, window)
    return (np.nan_to_num(z, nan=0.0) > sigmas).astype(np.int64)
