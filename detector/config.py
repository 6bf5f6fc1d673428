"""``WorkerConfig``: everything the worker loop needs besides its collaborators."""

from __future__ import annotations

from dataclasses import dataclass, field

from detector.alert import ALERT_MODES, DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS
from detector.message import MAX_DEAD_LETTER_BYTES, FieldNames
from detector.stream import StreamConfig

CARRY, DEAD_LETTER = "carry", "dead-letter"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the loop needs besides its collaborators."""

    stream: StreamConfig
    alert_mode: str = DEFAULT_ALERT_MODE
    episode_end_windows: int = DEFAULT_END_WINDOWS
    missing_channel: str = CARRY
    fields: FieldNames = field(default_factory=FieldNames)
    alerts_topic: str = "ganwatch.alerts"
    dead_letter_topic: str = "ganwatch.dead-letter"
    scores_topic: str | None = None
    max_batch: int = 500
    max_wait_ms: int = 500
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0
    lag_interval_s: float = 5.0
    live_timeout_s: float = 120.0  # stuck on one batch this long: not alive (retries included)
    max_retries: int = 5  # per stage, for failures other than outages; then the batch is isolated
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES  # a longer dead letter is cut to fit
    max_future_s: float = 300.0  # readings dated further ahead of the clock: ``future_ts`` (0 = off)
    score_timeout_s: float = 60.0  # the pipelined loop's wait for one batch's scores
    pipeline: bool = True  # pipeline depth 1: one batch scores while the next one is polled (0: off)
    fast_decode: bool | None = None  # msgspec when installed (None), required, or never

    def __post_init__(self) -> None:
        if self.alert_mode not in ALERT_MODES:
            raise ValueError(f"alert_mode must be one of {ALERT_MODES}, got {self.alert_mode!r}")
        if self.missing_channel not in (CARRY, DEAD_LETTER):
            raise ValueError(f"missing_channel must be {CARRY!r} or {DEAD_LETTER!r}")
        if self.episode_end_windows < 1 or self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("episode_end_windows and max_batch must be >= 1, max_wait_ms >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.max_future_s < 0 or self.max_retries < 0:
            raise ValueError("max_future_s (0 = off) and max_retries must be >= 0")
        if self.max_dead_letter_bytes < 4096 or self.score_timeout_s <= 0:
            raise ValueError("max_dead_letter_bytes must be >= 4096 and score_timeout_s > 0")


def describe(exc: BaseException) -> str:
    """Type and (truncated) message; tracebacks and connection settings stay out of the logs."""
    return f"{type(exc).__name__}: {exc}"[:300]
