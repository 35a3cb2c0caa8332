"""Bounded scorer calls: a timeout per batch call, retries with backoff, and per-sample failures.

``GuardedScorer`` wraps any scorer. Each batch call runs in a worker thread and
the caller stops waiting after ``timeout_s`` seconds. A call that raises is
retried ``retries`` times, sleeping ``backoff_s``, then twice as long, and so on.
When the batch still fails, it is split in halves (one attempt each, recursively)
so that only the samples that fail on their own get a NaN score with the error
message, and the others are scored. A batch that times out is not retried or
split, and all its samples get NaN with a "timed out" error.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cogrpo.rewards.base import ImageLike, Scorer, ScoreResult

logger = logging.getLogger(__name__)


@dataclass
class _Outcome:
    result: ScoreResult | None = None
    error: str | None = None
    # False after a timeout or while a timed-out call still runs, because another attempt would wait again.
    retryable: bool = True


class GuardedScorer(Scorer):
    """A scorer whose batch calls are bounded by a timeout and retried on errors.

    ``timeout_s`` of None or 0 disables the timeout and runs calls in the
    caller's thread. ``retries`` counts the attempts after the first one.
    """

    def __init__(self, scorer: Scorer, timeout_s: float | None = 600.0, retries: int = 2, backoff_s: float = 1.0,
                 split: bool = True):
        if timeout_s is not None and timeout_s < 0:
            raise ValueError(f"invalid timeout_s={timeout_s}; expected seconds >= 0 (0 disables the timeout)")
        if retries < 0:
            raise ValueError(f"invalid retries={retries}; expected an integer >= 0")
        if backoff_s < 0:
            raise ValueError(f"invalid backoff_s={backoff_s}; expected seconds >= 0")
        self.inner = scorer
        self.timeout_s = timeout_s or None
        self.retries = retries
        self.backoff_s = backoff_s
        self.split = split
        self.name = scorer.name
        self.version = scorer.version
        self.higher_is_better = scorer.higher_is_better
        self.weights = scorer.weights
        self.bounds = scorer.bounds
        self._abandoned: threading.Thread | None = None

    @classmethod
    def wrap(cls, scorer: Scorer, timeout_s: float | None = 600.0, retries: int = 2, backoff_s: float = 1.0) -> GuardedScorer:
        """Guard ``scorer``. A scorer that is already guarded is rewrapped with the new settings."""
        if isinstance(scorer, GuardedScorer):
            scorer = scorer.inner
        return cls(scorer, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)

    def score_detailed(
        self, images: Sequence[ImageLike], prompts: Sequence[str], metadata: Sequence[dict | None] | None = None
    ) -> ScoreResult:
        """Score a batch, giving NaN and an error to a batch or sample that keeps failing instead of raising."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        if metadata is not None and len(metadata) != len(images):
            raise ValueError(f"got {len(images)} images but {len(metadata)} metadata entries; pass one per image")
        images, prompts = list(images), list(prompts)
        metadata = list(metadata) if metadata is not None else [None] * len(images)
        if not images:
            return self.inner.score_detailed(images, prompts, metadata)

        outcome = self._attempt(images, prompts, metadata)
        for retry in range(1, self.retries + 1):
            if outcome.result is not None or not outcome.retryable:
                break
            delay = self.backoff_s * 2 ** (retry - 1)
            logger.warning("%s: scoring a batch of %d images failed (%s); retry %d of %d in %.1f s",
                           self.name, len(images), outcome.error, retry, self.retries, delay)
            time.sleep(delay)
            outcome = self._attempt(images, prompts, metadata)
        if outcome.result is not None:
            return outcome.result
        if not outcome.retryable:
            return _failed(len(images), outcome.error)
        logger.warning("%s: scoring a batch of %d images failed after %d attempts (%s)%s",
                       self.name, len(images), self.retries + 1, outcome.error,
                       "; scoring halves to find the failing images" if self.split and len(images) > 1 else "")
        return self._isolate(images, prompts, metadata, outcome.error)

    def _isolate(self, images, prompts, metadata, error: str | None, offset: int = 0) -> ScoreResult:
        """Score halves of a failed batch (one attempt each) until the failing samples are single.

        ``offset`` is the position of ``images[0]`` in the caller's batch, for the log.
        """
        if not self.split or len(images) == 1:
            for index in range(len(images)):
                logger.warning("%s: image %d of the batch gets no score: %s", self.name, offset + index, error)
            return _failed(len(images), error)
        middle = len(images) // 2
        parts = []
        for part in (slice(0, middle), slice(middle, None)):
            outcome = self._attempt(images[part], prompts[part], metadata[part])
            if outcome.result is not None:
                parts.append(outcome.result)
            elif not outcome.retryable:
                parts.append(_failed(len(images[part]), outcome.error))
            else:
                parts.append(self._isolate(images[part], prompts[part], metadata[part], outcome.error, offset + part.start))
        return _concatenate(parts)

    def _attempt(self, images, prompts, metadata) -> _Outcome:
        """Make one call, in a worker thread when a timeout is set."""
        if self.timeout_s is None:
            try:
                return _Outcome(result=self._checked(self.inner.score_detailed(images, prompts, metadata), len(images)))
            except Exception as error:  # a scorer may raise anything, and the caller gets NaN and the message
                return _Outcome(error=f"{type(error).__name__}: {error}")

        if self._abandoned is not None and self._abandoned.is_alive():
            # Starting another call would run the model in two threads at once.
            error = f"scorer {self.name!r} is still running a call that timed out earlier"
            logger.warning("%s: batch of %d images not scored: %s", self.name, len(images), error)
            return _Outcome(error=error, retryable=False)
        box: dict[str, object] = {}
        caller_state = _torch_thread_state()

        def call() -> None:
            try:
                _restore_torch_thread_state(caller_state)
                box["result"] = self.inner.score_detailed(images, prompts, metadata)
            except BaseException as error:  # a worker thread cannot raise to the caller, so it reports
                box["error"] = error

        # NOTE: Python cannot kill a thread, so a call that times out keeps running (and holding its
        # memory) until it returns by itself. The thread is a daemon so it does not block process exit.
        thread = threading.Thread(target=call, name=f"scorer-{self.name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._abandoned = thread
            error = f"timed out after {self.timeout_s:g} s"
            logger.warning("%s: scoring a batch of %d images %s; its samples get no score", self.name, len(images), error)
            return _Outcome(error=error, retryable=False)
        if "error" in box:
            error = box["error"]
            return _Outcome(error=f"{type(error).__name__}: {error}")
        try:
            return _Outcome(result=self._checked(box["result"], len(images)))
        except ValueError as error:
            return _Outcome(error=str(error))

    def _checked(self, result: ScoreResult, count: int) -> ScoreResult:
        scores = np.asarray(result.scores, dtype=np.float32)
        if scores.shape != (count,):
            raise ValueError(f"scorer {self.name!r} returned scores of shape {scores.shape} for {count} images")
        errors = list(result.errors) if result.errors else [None] * count
        details = list(result.details) if result.details else [{} for _ in range(count)]
        return ScoreResult(scores=scores, errors=errors, details=details)


def _torch_thread_state() -> tuple[bool, int | None] | None:
    """Return the caller's grad mode and current CUDA device, which PyTorch keeps per thread.

    Returns None when torch is not imported, because then no scorer code has set either.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.is_grad_enabled(), device


def _restore_torch_thread_state(state: tuple[bool, int | None] | None) -> None:
    if state is None:
        return
    import torch

    grad_enabled, device = state
    torch.set_grad_enabled(grad_enabled)
    if device is not None:
        torch.cuda.set_device(device)


def _failed(count: int, error: str | None) -> ScoreResult:
    return ScoreResult(scores=np.full(count, np.nan, dtype=np.float32), errors=[error or "scoring failed"] * count,
                       details=[{} for _ in range(count)])


def _concatenate(parts: list[ScoreResult]) -> ScoreResult:
    return ScoreResult(scores=np.concatenate([p.scores for p in parts]).astype(np.float32),
                       errors=[e for p in parts for e in p.errors], details=[d for p in parts for d in p.details])
