"""Stream rules shared by offline scoring and the worker: duplicates, gaps, stride, windows.

One entity's readings are pushed through ``advance`` in arrival order. A reading whose timestamp is
not after the entity's last accepted one is a duplicate (or out of order) and is skipped, which is
what makes replays after a crash idempotent. A gap longer than ``max_gap_ms`` restarts the window.
Once ``window`` readings are buffered, the reading that completes a window scores it, and then every
``stride``-th reading after it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# A reading more than this many seconds after the previous one starts a new window: the rule for
# artifacts that do not carry a learned gap (written before it was learned).
DEFAULT_MAX_GAP_S = 300
# A learned gap is this many median steps of the training data: a 1 Hz pump restarts its window
# after 10 s without readings, an hourly signal after 10 h (see ``learn_max_gap_ms``).
GAP_STEPS = 10


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How readings become windows; identical offline and online."""

    window: int
    stride: int = 1
    max_gap_ms: int | None = None

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be at least 2, got {self.window}")
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1, got {self.stride}")
        if self.max_gap_ms is not None and self.max_gap_ms <= 0:
            raise ValueError(f"max_gap_ms must be positive, got {self.max_gap_ms}")


def learn_max_gap_ms(ts_ms: np.ndarray, steps: int = GAP_STEPS) -> int | None:
    """``steps`` times the median step between increasing timestamps; None (no gap rule) when
    there are fewer than two distinct timestamps. Repeated and out-of-order readings, which the
    stream rules skip, are left out of the median."""
    return _gap_from_steps(increasing_steps(ts_ms), steps)


def learn_entities_max_gap_ms(series: Sequence[np.ndarray], steps: int = GAP_STEPS) -> int | None:
    """``learn_max_gap_ms`` of a fleet: the median of every entity's own steps, never a step
    from one entity's reading to another's."""
    found = [increasing_steps(ts) for ts in series]
    return _gap_from_steps(np.concatenate(found) if found else np.empty(0, np.int64), steps)


def increasing_steps(ts_ms: np.ndarray) -> np.ndarray:
    """Steps between the timestamps the stream rules accept (each after every earlier one)."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    if len(ts) < 2:
        return np.empty(0, dtype=np.int64)
    return np.diff(ts[np.concatenate([[True], ts[1:] > np.maximum.accumulate(ts)[:-1]])])


def _gap_from_steps(diffs: np.ndarray, steps: int) -> int | None:
    if not len(diffs):
        return None
    return max(int(steps * float(np.median(diffs))), 1)


@dataclass(slots=True)
class EntityState:
    """What the worker keeps per entity: the last ``window`` raw readings and episode state."""

    entity: str
    n_channels: int
    version: int = 0
    last_ts_ms: int | None = None
    count: int = 0  # readings accepted since the window last (re)started
    ts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    values: np.ndarray | None = None  # (len(ts), n_channels) float64, raw units
    episode: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values is None:
            self.values = np.empty((0, self.n_channels), dtype=np.float64)


@dataclass(slots=True)  # not frozen: one per scored window, and frozen ones build slowly
class WindowRef:
    """A complete window, ready to score: ``values`` are raw readings, oldest first."""

    entity: str
    index: int  # position of the completing reading in the batch passed to ``advance``
    ts_ms: int  # timestamp of the completing reading
    start_ms: int  # timestamp of the window's first reading
    values: np.ndarray  # (window, n_channels) float64
    row_ts: np.ndarray | None = None  # (window,) int64: each reading's timestamp


@dataclass(slots=True)
class AdvanceStats:
    accepted: int = 0
    duplicates: int = 0
    gaps: int = 0

    def add(self, other: "AdvanceStats") -> None:
        """Count ``other``'s readings in these (another chunk or another entity)."""
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.gaps += other.gaps


def advance(
    state: EntityState, ts_ms: np.ndarray, values: np.ndarray, config: StreamConfig
) -> tuple[list[WindowRef], AdvanceStats]:
    """Push a batch of one entity's readings into ``state`` (in place); return the windows to score."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64).reshape(len(ts_ms), state.n_channels)
    w, stride, max_gap = config.window, config.stride, config.max_gap_ms
    stats = AdvanceStats()

    ring_n = len(state.ts)
    last, count = state.last_ts_ms, state.count
    if _in_order(ts_ms, last, max_gap):  # the usual case, without a loop over readings
        n = len(ts_ms)
        counts = np.arange(count + 1, count + n + 1)
        done = np.flatnonzero((counts >= w) & ((counts - w) % stride == 0))
        emits = list(zip(done.tolist(), (done + ring_n + 1).tolist()))
        seg_start, pos = 0, ring_n + n
        all_ts, all_values = np.concatenate([state.ts, ts_ms]), np.concatenate([state.values, values])
        stats.accepted = n
        if n:
            last, count = int(ts_ms[-1]), count + n
    else:
        keep, emits, seg_start, pos, last, count = _walk(ts_ms, last, count, ring_n, config, stats)
        stats.accepted = int(keep.sum())
        all_ts = np.concatenate([state.ts, ts_ms[keep]])
        all_values = np.concatenate([state.values, values[keep]])
    windows = [
        WindowRef(
            entity=state.entity,
            index=i,
            ts_ms=int(all_ts[end - 1]),
            start_ms=int(all_ts[end - w]),
            values=all_values[end - w : end],
            row_ts=all_ts[end - w : end],
        )
        for i, end in emits
    ]
    tail = max(seg_start, pos - w)
    state.ts = all_ts[tail:pos].copy()
    state.values = all_values[tail:pos].copy()
    state.last_ts_ms, state.count = last, count
    return windows, stats


def _in_order(ts_ms: np.ndarray, last: int | None, max_gap: int | None) -> bool:
    """No duplicate, nothing out of order and no gap: every reading is accepted in turn."""
    if not len(ts_ms):
        return True
    steps = np.diff(ts_ms) if last is None else np.diff(ts_ms, prepend=last)
    if len(steps) and steps.min() <= 0:
        return False
    return max_gap is None or not len(steps) or steps.max() <= max_gap


def _walk(
    ts_ms: np.ndarray, last: int | None, count: int, ring_n: int, config: StreamConfig,
    stats: AdvanceStats,
) -> tuple[np.ndarray, list[tuple[int, int]], int, int, int | None, int]:
    """The rules reading by reading: (keep mask, emits, segment start, end position, last ts,
    count). Emits are (batch index, end position in the combined buffer)."""
    w, stride, max_gap = config.window, config.stride, config.max_gap_ms
    keep = np.zeros(len(ts_ms), dtype=bool)
    seg_start = 0  # position in the combined buffer where the current unbroken segment begins
    pos = ring_n
    emits: list[tuple[int, int]] = []
    for i, t in enumerate(ts_ms.tolist()):
        if last is not None and t <= last:
            stats.duplicates += 1
            continue
        if last is not None and max_gap is not None and t - last > max_gap:
            stats.gaps += 1
            seg_start, count = pos, 0
        keep[i] = True
        pos += 1
        count += 1
        last = t
        if count >= w and (count - w) % stride == 0:
            emits.append((i, pos))
    return keep, emits, seg_start, pos, last, count
