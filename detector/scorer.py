"""Where a batch's scores come from: a background thread at pipeline depth 1, the loop's own thread
at depth 0 (the result, or the failure, in an already completed future either way)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from detector.batch import Prepared, Scored, StageFailed, score_batch
from detector.metric import Metrics
from detector.phase import Batch, Phase


class ScoreTimeout(RuntimeError):
    """A batch's scores did not come within ``score_timeout_s`` (not an outage: retries are
    bounded, then the batch is isolated)."""


class ThreadScorer:
    """Scores prepared batches for the worker; one thread, started on first use."""

    def __init__(self, depth: int, max_batch: int, metrics: Metrics, timeout_s: float) -> None:
        self.depth, self.max_batch, self.metrics, self.timeout_s = depth, max_batch, metrics, timeout_s
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, prepared: Prepared) -> Future:
        """Start scoring ``prepared``: on the background thread at depth 1, here at depth 0."""
        if self.depth == 0:
            future: Future = Future()
            try:
                future.set_result(self.now(prepared))
            except Exception as exc:
                future.set_exception(exc)
            return future
        executor = self._executor = self._executor or ThreadPoolExecutor(
            1, thread_name_prefix="ganwatch-score")
        return executor.submit(self.now, prepared)

    def now(self, prepared: Prepared) -> Scored:
        """Score ``prepared`` on the calling thread (a retry from the store)."""
        return score_batch(prepared, self.max_batch, self.metrics)

    def result(self, pending: Batch) -> Scored:
        """The in-flight batch's scores, waited for at most twice ``timeout_s`` (the scoring
        process's own deadline, ``ProcessDetector.timeout_s``, normally ends it first)."""
        pending.expect(Phase.SCORING)
        try:
            return pending.future.result(timeout=2 * self.timeout_s)
        except FutureTimeout:
            if self._executor is not None:  # its one thread is stuck: later batches get another
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            raise StageFailed("score", ScoreTimeout(f"no scores within {2 * self.timeout_s:g} s")
                              ) from None

    def close(self) -> None:
        """Stop the scoring thread (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
